"""PyTorch checkpoints -> simlap's TrainState: read a state dict, rename it, write a workdir.

Sources (`interop/torch_names.py` has every rule): a timm or torchvision ResNet state dict, the
authors' whole SimLAP model (vitookit / FastSSL), or a MoCo-v3 ViT. `.safetensors` and `.npz`
are read with NumPy alone; `.pth`, `.pth.tar` and `.pt` need torch, which simlap does not
depend on. The workdir's checkpoints/0 is a whole TrainState whose converted modules hold the
source's tensors, the others fresh from config.seed; its meta names the converted modules.
"""
from __future__ import annotations

import logging
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from simlap import config_schema
from simlap.data import datasets
from simlap.interop import torch_names
from simlap.models import backbones
from simlap.models import vit
from simlap.runtime import checkpointing
from simlap.runtime import sharding
from simlap.runtime import workdir as workdir_lib
from simlap.training import init_from
from simlap.training import loop as train

PYTORCH_SUFFIXES = (".pth", ".pth.tar", ".pt", ".bin")
_WRAPPERS = ("state_dict", "model", "module")  # dicts that hold the real state dict


def _torch_state_dict(path: str) -> dict[str, Any]:
  try:
    import torch  # noqa: PLC0415 - optional: only for pickled PyTorch checkpoints
  except ImportError:
    raise ImportError(
        f"{path} is a pickled PyTorch checkpoint and torch is not installed. Either install "
        "torch (CPU wheel) in this environment, or convert it to safetensors where torch is: "
        "`safetensors.torch.save_file(torch.load(p, map_location='cpu')['model'], "
        "'model.safetensors')`, and pass that file.") from None
  obj = torch.load(path, map_location="cpu", weights_only=True)
  return {k: (v.float().numpy() if v.is_floating_point() else v.numpy())
          for k, v in _unwrap(obj).items() if hasattr(v, "numpy")}


def _unwrap(obj: dict[str, Any]) -> dict[str, Any]:
  """The state dict inside a training checkpoint ({"model": ..., "optimizer": ...})."""
  while isinstance(obj, dict) and not any(hasattr(v, "shape") for v in obj.values()):
    inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
    if inner is None:
      raise ValueError(f"no state dict among the checkpoint's keys {sorted(obj)[:10]}")
    obj = inner
  return obj


def read_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> float32 array from `.safetensors`, `.npz` or (with torch) a pickled checkpoint.

  DistributedDataParallel's "module." prefix is removed.
  """
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--source {path!r}: no such file")
  try:
    if path.endswith(".safetensors"):
      from safetensors import numpy as st_numpy  # noqa: PLC0415 - only this format needs it
      sd = st_numpy.load_file(path)
    elif path.endswith(".npz"):
      with np.load(path) as f:
        sd = {k: f[k] for k in f.files}
    elif path.endswith(PYTORCH_SUFFIXES) or zipfile.is_zipfile(path):
      sd = _torch_state_dict(path)
    else:
      raise ValueError(f"unknown checkpoint format {path!r}: expected .safetensors, .npz or a "
                       f"PyTorch file {PYTORCH_SUFFIXES}")
  except (ValueError, OSError, ImportError):
    raise
  except Exception as e:  # pylint: disable=broad-except - SafetensorError, zip and pickle errors
    raise ValueError(f"--source {path!r} is damaged or not a {os.path.splitext(path)[1] or 'known'}"
                     f" checkpoint ({type(e).__name__}: {(str(e).splitlines() or [''])[0]})"
                     ) from e
  return {k.removeprefix("module."): np.asarray(v) for k, v in sd.items()}


def check_position_embedding(sd: dict[str, np.ndarray], model_config, image_size: int) -> None:
  """A ViT source's pos_embed must be simlap's fixed 2-D sin-cos table for this image size:
  simlap's ViT has no position parameters, so a learned embedding cannot be loaded."""
  table = next((v for k, v in sd.items() if k.removeprefix("base_encoder.")
                == torch_names.POS_EMBED), None)
  if table is None:
    return
  size = vit.SIZES[model_config.backbone]
  grid = image_size // size.patch
  want = vit.sincos_position_embedding(grid, grid, size.width)
  got = np.reshape(table, (-1, size.width))
  if got.shape != want.shape or not np.allclose(got, want, atol=1e-5):
    raise ValueError(f"the source's pos_embed {table.shape} is not simlap's fixed sin-cos "
                     f"table {want.shape} for {image_size}-px images (a learned or resized "
                     "embedding?): simlap's ViT has no position parameters to hold it")


def to_simlap(sd: dict[str, np.ndarray], fmt: str = "auto",
              skip: Sequence[str] = ()) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
  """(params, batch_stats, converted module names) of a source state dict.

  `params` maps module names ("backbone", ...) and "log_scale" to nested dicts of arrays,
  laid out like `TrainState.params["model"]`; `batch_stats` like `TrainState.batch_stats`. A
  linear head trained without a BatchNorm (timm's `fc`, the authors' `cls_head`) gets running
  statistics that make the probe's affine-free BatchNorm the identity.
  """
  fmt = torch_names.detect_format(sd) if fmt == "auto" else fmt
  tree = torch_names.convert(sd, fmt, skip)
  params, stats = tree["params"], tree["batch_stats"]
  if "probe" in params and "probe" not in stats:
    stats["probe"] = {"bn": torch_names.identity_probe_norm(params["probe"]["fc"]["kernel"]
                                                            .shape[0])}
  return params, stats, sorted(params)


def convert_to_workdir(source: str, workdir: str, config, *, fmt: str = "auto",
                       skip: Sequence[str] = ()) -> dict[str, Any]:
  """Writes `workdir` (config.json + checkpoints/0) from `source`; returns the checkpoint meta.

  Args:
    source: a `.safetensors`, `.npz` or PyTorch checkpoint file (`read_state_dict`).
    workdir: the workdir to write.
    config: the simlap config whose model the source fills; written as config.json.
    fmt: "auto" or one of `torch_names.FORMATS`.
    skip: source name prefixes to drop on purpose.

  Returns:
    {"step": 0, "seed", "converted_from": the source's path, "converted": module names}.

  Raises:
    KeyError naming the source tensors no rule maps; ValueError naming every model variable
    the source lacks, has in excess or shapes differently.
  """
  config_schema.validate(config)
  sd = read_state_dict(source)
  if backbones.family(config.model.backbone) == "vit":
    check_position_embedding(sd, config.model, config.dataset.image_size)
  params, stats, modules = to_simlap(sd, fmt, skip)
  mesh = sharding.make_mesh(config.mesh)
  # Shapes only: the schedule's length does not matter for a checkpoint at step 0.
  info = datasets.info_from_config(config, num_train=max(config.batch_size, 1))
  state = init_from.overlay(train.make_trainer(config, mesh, info).init_fn(), params, stats,
                            modules, config.objective)
  workdir = workdir_lib.prepare(workdir)
  ckpt = checkpointing.Checkpointer(os.path.join(workdir, "checkpoints"), every_steps=1, keep=1)
  meta = {"step": 0, "seed": config.seed, "converted_from": os.path.abspath(source),
          "converted": modules}
  ckpt.save(0, state, meta, force=True)
  ckpt.close()
  if jax.process_index() == 0:
    workdir_lib.write_config(config, workdir)
  logging.info("converted %s -> %s (%s)", source, workdir, ", ".join(modules))
  return meta
