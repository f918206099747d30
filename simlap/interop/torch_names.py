"""PyTorch state-dict names -> simlap variables, tensor by tensor (used by `interop.convert`).

Pure NumPy: no torch, no JAX. Every source tensor is mapped by a rule below, dropped as having no
simlap counterpart (`DROPPED`) or because the caller asked (`skip`); anything else is an error
that names the key. Layouts (`_LAYOUTS`): conv (O, I, kh, kw) -> kernel (kh, kw, I, O), linear
(O, I) -> kernel (I, O), BatchNorm running_mean/_var -> batch_stats mean/var, scale_logit (1,)
-> log_scale (). The three source formats: `detect_format`.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterable

import numpy as np

StateDict = dict[str, np.ndarray]
# (collection, path inside it, layout) for one source tensor; collection "params"/"batch_stats".
Target = tuple[str, tuple[str, ...], str]

DROPPED = ("num_batches_tracked",)  # a step counter; Flax BatchNorm has a fixed momentum
FORMATS = ("resnet", "simlap", "vit")
POS_EMBED = "pos_embed"  # checked against simlap's sin-cos table by the caller, never loaded
_BN = {"weight": ("params", "scale"), "bias": ("params", "bias"),
       "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
# timm's deep stem: conv1 is Sequential(conv, bn, relu, conv, bn, relu, conv); bn1 follows.
_DEEP_STEM = {"0": "stem_conv0", "1": "stem_bn0", "3": "stem_conv1", "4": "stem_bn1",
              "6": "stem_conv2"}


def _conv(path: tuple[str, ...]) -> Target:
  return "params", (*path, "kernel"), "conv"


def _bn(path: tuple[str, ...], field: str) -> Target:
  collection, name = _BN[field]
  return collection, (*path, name), "copy"


def resnet_target(key: str, module: str = "backbone") -> Target | None:
  """The simlap variable of one timm/torchvision ResNet tensor, or None if no rule matches."""
  if m := re.fullmatch(r"layer(\d+)\.(\d+)\.(conv|bn)(\d)\.(\w+)", key):
    stage, block, kind, k, field = m.groups()
    base = (module, f"stage{stage}_block{int(block) + 1}")
    index = int(k) - 1
    if kind == "conv" and field == "weight":
      return _conv((*base, f"Conv_{index}"))
    return _bn((*base, f"BatchNorm_{index}"), field) if field in _BN else None
  if m := re.fullmatch(r"layer(\d+)\.(\d+)\.downsample\.([01])\.(\w+)", key):
    stage, block, index, field = m.groups()
    base = (module, f"stage{stage}_block{int(block) + 1}")
    if index == "0":
      return _conv((*base, "proj_conv")) if field == "weight" else None
    return _bn((*base, "proj_bn"), field) if field in _BN else None
  if key == "conv1.weight":
    return _conv((module, "stem_conv"))
  if m := re.fullmatch(r"conv1\.(\d)\.(\w+)", key):
    name = _DEEP_STEM.get(m.group(1))
    if name is None:
      return None
    if name.startswith("stem_conv"):
      return _conv((module, name)) if m.group(2) == "weight" else None
    return _bn((module, name), m.group(2)) if m.group(2) in _BN else None
  if m := re.fullmatch(r"bn1\.(\w+)", key):
    # bn1 closes the stem: stem_bn for the 7x7 stem, stem_bn2 after timm's deep stem.
    return _bn((module, "stem_bn"), m.group(1)) if m.group(1) in _BN else None
  if m := re.fullmatch(r"fc\.(weight|bias)", key):
    return "params", ("probe", "fc", "kernel" if m.group(1) == "weight" else "bias"), (
        "linear" if m.group(1) == "weight" else "copy")
  return None


def _projector_targets(keys: Iterable[str], sd: StateDict) -> dict[str, Target]:
  """projector.N.*: Linear / BatchNorm1d / LayerNorm told apart by their tensors, numbered in
  order (dense0, bn0, dense1, bn1, ..., out, norm); the last Linear is `out`, without bias."""
  indices = sorted({int(k.split(".")[1]) for k in keys})
  linears = [i for i in indices if sd[f"projector.{i}.weight"].ndim == 2]
  out: dict[str, Target] = {}
  n_bn = 0
  for i in indices:
    prefix = f"projector.{i}."
    if i in linears:
      name = "out" if i == linears[-1] else f"dense{linears.index(i)}"
      out[prefix + "weight"] = ("params", ("projector", name, "kernel"), "linear")
      if prefix + "bias" in sd:
        out[prefix + "bias"] = ("params", ("projector", name, "bias"), "copy")
    elif prefix + "running_mean" in sd:
      for field in _BN:
        out[prefix + field] = _bn(("projector", f"bn{n_bn}"), field)
      n_bn += 1
    else:  # LayerNorm: weight and bias, no running statistics
      out[prefix + "weight"] = ("params", ("projector", "norm", "scale"), "copy")
      out[prefix + "bias"] = ("params", ("projector", "norm", "bias"), "copy")
  return out


_GATE = {"1": "bn1", "2": "fc1", "4": "bn2", "5": "fc2"}  # filter.mlp.N (0 and 3 are ReLUs)


def simlap_target(key: str) -> Target | None:
  """The simlap variable of one tensor of the authors' model, projector excepted."""
  if key.startswith("backbone."):
    return resnet_target(key.removeprefix("backbone."))
  if key == "filter.label_embedding.weight":
    return "params", ("gate", "embedding"), "copy"
  if m := re.fullmatch(r"filter\.mlp\.(\d)\.(\w+)", key):
    name, field = _GATE.get(m.group(1)), m.group(2)
    if name is None:
      return None
    if name.startswith("fc"):
      return "params", ("gate", name, "kernel" if field == "weight" else "bias"), (
          "linear" if field == "weight" else "copy")
    return _bn(("gate", name), field) if field in _BN else None
  if m := re.fullmatch(r"cls_head\.(weight|bias)", key):
    return "params", ("probe", "fc", "kernel" if m.group(1) == "weight" else "bias"), (
        "linear" if m.group(1) == "weight" else "copy")
  if key == "scale_logit":
    return "params", ("log_scale",), "scalar"
  return None


_SIMLAP_PREFIXES = ("backbone.", "projector.", "filter.", "cls_head.", "scale_logit")
# A ViT block's layers -> simlap's module path inside `block{i}`.
_VIT_BLOCK = {"norm1": ("norm1",), "norm2": ("norm2",), "attn.qkv": ("attn", "qkv"),
              "attn.proj": ("attn", "proj"), "mlp.fc1": ("fc1",), "mlp.fc2": ("fc2",)}


def vit_target(key: str) -> Target | None:
  """The simlap variable of one MoCo-v3 / timm ViT tensor, or None if no rule matches."""
  key = key.removeprefix("base_encoder.")
  if key in ("patch_embed.proj.weight", "patch_embed.proj.bias"):
    leaf = "kernel" if key.endswith("weight") else "bias"
    return "params", ("backbone", "patch_embed", leaf), "conv" if leaf == "kernel" else "copy"
  if key == "cls_token":
    return "params", ("backbone", "cls_token"), "flatten"
  if m := re.fullmatch(r"(norm)\.(weight|bias)", key):
    return "params", ("backbone", "norm", "scale" if m.group(2) == "weight" else "bias"), "copy"
  if m := re.fullmatch(r"blocks\.(\d+)\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)"
                       r"\.(weight|bias)", key):
    block, layer, field = m.groups()
    path = ("backbone", f"block{block}", *_VIT_BLOCK[layer])
    if layer.startswith("norm"):
      return "params", (*path, "scale" if field == "weight" else "bias"), "copy"
    return "params", (*path, "kernel" if field == "weight" else "bias"), (
        "linear" if field == "weight" else "copy")
  return None


def detect_format(sd: StateDict) -> str:
  """"simlap" if any name starts like the authors' modules (`backbone.`, ...), "vit" if it has
  ViT blocks or MoCo-v3's `base_encoder.`, else "resnet".

    "resnet":  a timm or torchvision ResNet (conv1, bn1, layerI.J.{conv,bn}K, downsample.{0,1},
               fc); timm's deep stem is conv1.{0,1,3,4,6} + bn1. -> backbone (+ fc -> probe).
    "simlap":  the authors' SimLAP model (vitookit, FastSSL): `backbone.` (a ResNet as above),
               `projector.` (Linear, BN, ReLU, ..., Linear without bias, LayerNorm), `filter.`
               (label_embedding, mlp = ReLU, BN, Linear, ReLU, BN, Linear), `cls_head.` (the
               online linear head) and FastSSL's learned `scale_logit`.
    "vit":     a MoCo-v3 (timm-named) ViT: patch_embed.proj, cls_token, blocks.I.{norm1,
               attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}, norm; a `base_encoder.` prefix is
               removed. pos_embed must equal simlap's fixed sin-cos table (checked, not loaded).
               MoCo-v3's `head.`, `predictor.` and `momentum_encoder.` have no simlap
               counterpart: --skip them.
  """
  if any(k.startswith(_SIMLAP_PREFIXES) for k in sd):
    return "simlap"
  if any(k.startswith(("base_encoder.", "blocks.0.", "patch_embed.")) for k in sd):
    return "vit"
  return "resnet"


_LAYOUTS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "conv": lambda w: np.transpose(w, (2, 3, 1, 0)),  # OIHW -> HWIO
    "linear": lambda w: np.transpose(w),  # (out, in) -> (in, out)
    "copy": lambda w: w,
    "scalar": lambda w: np.reshape(w, ()),
    "flatten": lambda w: np.reshape(w, (-1,)),
}


def convert(sd: StateDict, fmt: str, skip: Iterable[str] = ()) -> dict[str, dict]:
  """Maps every tensor of `sd` to simlap's nested {"params": ..., "batch_stats": ...}.

  Args:
    sd: name -> array (float), as PyTorch's `state_dict()` names them.
    fmt: one of FORMATS.
    skip: name prefixes to drop on purpose (e.g. "fc." for an ImageNet classifier).

  Returns:
    {"params": nested dict, "batch_stats": nested dict} of float32 arrays. Top-level keys are
    simlap's modules ("backbone", "projector", "gate", "probe") and "log_scale".

  Raises:
    KeyError naming every source tensor no rule maps (and not skipped).
  """
  if fmt not in FORMATS:
    raise ValueError(f"unknown source format {fmt!r}; expected one of {FORMATS}")
  skip = tuple(skip)
  keys = [k for k in sd if not k.startswith(skip) and k.rsplit(".", 1)[-1] not in DROPPED]
  targets: dict[str, Target | None] = {}
  if fmt == "vit":
    keys = [k for k in keys if k.removeprefix("base_encoder.") != POS_EMBED]
    targets.update({k: vit_target(k) for k in keys})
  elif fmt == "simlap":
    proj = [k for k in keys if k.startswith("projector.")]
    targets.update(_projector_targets(proj, sd))
    targets.update({k: simlap_target(k) for k in keys if k not in targets})
  else:
    targets.update({k: resnet_target(k) for k in keys})
  unmapped = sorted(k for k, t in targets.items() if t is None)
  if unmapped:
    more = f" and {len(unmapped) - 20} more" if len(unmapped) > 20 else ""
    raise KeyError(f"no simlap variable for source tensor(s) {unmapped[:20]}{more} (format "
                   f"{fmt!r}); pass their prefixes to --skip to drop them on purpose")
  out: dict[str, dict] = {"params": {}, "batch_stats": {}}
  for key in keys:
    collection, path, layout = targets[key]
    node = out[collection]
    for name in path[:-1]:
      node = node.setdefault(name, {})
    if path[-1] in node:
      raise KeyError(f"two source tensors map to {collection}/{'/'.join(path)} (one is {key!r})")
    node[path[-1]] = np.asarray(_LAYOUTS[layout](np.asarray(sd[key], np.float32)))
  _fix_stem_bn(out)
  return out


def _fix_stem_bn(tree: dict[str, dict]) -> None:
  """bn1 follows the last conv of the stem: `stem_bn` after a 7x7 conv, `stem_bn2` after
  timm's deep stem (whose convs are stem_conv0..2)."""
  for collection in tree.values():
    backbone = collection.get("backbone", {})
    if "stem_bn" in backbone and "stem_conv2" in tree["params"].get("backbone", {}):
      backbone["stem_bn2"] = backbone.pop("stem_bn")


def identity_probe_norm(features: int, epsilon: float = 1e-5) -> dict[str, np.ndarray]:
  """Running statistics that make simlap's affine-free probe BatchNorm the identity in eval
  mode (var = 1 - eps, so 1/sqrt(var + eps) = 1): for linear heads trained without one."""
  return {"mean": np.zeros((features,), np.float32),
          "var": np.full((features,), 1.0 - epsilon, np.float32)}
