"""The config schema: every field any config may set, with its default, and the method presets.

Config files (configs/*.py) start from `base_config()` and override what their recipe changes;
`apply_method` turns one config into each method of a fair comparison (same backbone, budget,
augmentation and evaluation; only the objective and gate differ); `validate` is the one check of
a whole config, run before any data or model is touched. Derived values (LR scaling, step
counts) are computed in code, not here.
"""
from __future__ import annotations

import math

import ml_collections

from simlap import losses
from simlap import objectives
from simlap import optim
from simlap import sharding
from simlap.data import class_trees
from simlap.models import backbones
from simlap.models import gates
from simlap.models import lowrank

# name -> what it changes. "simlap" is the default SimLAP (arbitrary pairs, sigmoid gate).
METHODS = {
    "simlap": "SimLAP: arbitrary pairs, sigmoid gate, mean fuse, cosine logits",
    "simlap_open": "arbitrary pairs without a gate (g = 1): the no-gate control",
    "simlap_identical_open": "y2 = y1 and g = 1: the authors' SupCon",
    "simlap_weighted": "SimLAP with the 'weighted' logits (authors' latest code)",
    "simlap_product": "SimLAP with the 'product' gate fuse",
    "simlap_distinct": "SimLAP with pairs of distinct classes only",
    "simlap_selective_a0": "SimLAP with selective pairs, alpha 0: y2 uniform over all classes",
    "simlap_selective_a2": "SimLAP with selective pairs, alpha 2: close classes (class tree) "
                           "drawn more often",
    "simlap_random_labels": "SimLAP on a fixed random relabelling (class sizes kept)",
    "simlap_lowrank": "SimLAP with a pair-conditioned rank-r projection for the gate",
    "xclr": "X-CLR (Sobal et al.): soft targets from a class-similarity graph, both views",
    "supcon": "SupCon (Khosla et al., L_out) over both views",
    "simclr": "SimCLR NT-Xent, labels unused",
    "ce": "supervised cross-entropy through the linear head",
    "hydra": "momentum encoder + predictor: MoCo-v3 instance loss + the gated loss (beta 1)",
    "moco": "MoCo-v3: momentum encoder + predictor, instance loss only (beta = alpha = 0)",
}

SELECTIVE_ALPHAS = {"simlap_selective_a0": 0.0, "simlap_selective_a2": 2.0}


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = "simlap"  # a name from METHODS, for reports
  # Mesh axes: ("data", -1) puts every device on the batch axis. A tuple, not a list: ml_collections
  # can override tuples from the command line, --config.mesh="(('data',4),('x',2))".
  c.mesh = (("data", -1),)
  # How the train state is laid out over the mesh (simlap/sharding.py; docs/scaling.md).
  c.sharding = ml_collections.ConfigDict(dict(
      params="replicated",  # replicated | fsdp (ZeRO-3: params and optimizer state split)
      fsdp_min_size=2**16,  # elements; under fsdp smaller leaves stay replicated
  ))

  # ---- data (simlap/data) ----
  c.dataset = ml_collections.ConfigDict(dict(
      name="fashion_mnist_local",  # or any TFDS name: cifar10, cifar100, imagenet2012, ...
      data_dir=ml_collections.FieldReference(None, field_type=str),  # TFDS data dir
      manual_dir=ml_collections.FieldReference(None, field_type=str),  # imagenet2012 tars
      # Fashion-MNIST IDX .gz dir; None -> $SIMLAP_FASHION_MNIST_DIR or Debian's location.
      source_dir=ml_collections.FieldReference(None, field_type=str),
      download=False,  # never touch the network unless the user asks
      train_split="train",
      eval_split="test",
      image_key="image",
      label_key="label",
      extra_label_keys=(),  # e.g. ("coarse_label",) for cifar100
      num_classes=10,
      image_size=28,  # side of the augmented views fed to the model
      channels=1,
      shuffle_buffer=20_000,
      repeats=1,  # repeated augmentation: each image this many times per batch
      classes_per_batch=0,  # class-balanced P x K sampler; 0 = off
      samples_per_class=0,
      prefetch=2,  # device batches prepared ahead of the step
      # Read the train split into memory (exact, free resume) or stream it from disk;
      # None = in memory when the prepared dataset is at most 1 GiB.
      in_memory=ml_collections.FieldReference(None, field_type=bool),
      # Train on a seeded permutation of the train labels (simlap/data/random_labels.py);
      # evaluation and the online probe keep the true labels. Needs an in-memory split.
      random_labels=False,
      # dtype of the views sent to the device: "uint8" (a quarter of float32's bytes; the
      # step divides by 255) or "float32"; None = uint8 when the train split is streamed from
      # disk (ImageNet), float32 in memory (exact [0, 1] floats, as the published results).
      view_dtype=ml_collections.FieldReference(None, field_type=str),
      # A streamed split read by index from ArrayRecord files (`tfds build
      # --file_format=array_record`: per-epoch permutation, no epoch stall, free resume) or as
      # a TFRecord stream through shuffle_buffer; None = by index when the files are ArrayRecord.
      random_access=ml_collections.FieldReference(None, field_type=bool),
  ))
  view = dict(
      crop_scale=(0.2, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5,
      jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1,
      grayscale_prob=0.2, blur_prob=0.0, solarize_prob=0.0,
      randaugment_layers=0, randaugment_magnitude=9,
  )
  c.augment = ml_collections.ConfigDict(dict(
      view1=dict(view), view2=dict(view),
      eval_crop_fraction=1.0,  # ImageNet: 0.875 (resize to size/0.875, center crop)
  ))

  # ---- model (simlap/models) ----
  c.model = ml_collections.ConfigDict(dict(
      # resnet_tiny | resnet_small | resnet14 | resnet20 | resnet18 | resnet34 | resnet50 |
      # vit_tiny | vit_ti16 | vit_s16 | vit_b16 | vit_l16 (simlap/models/backbones.py)
      backbone="resnet18",
      # imagenet | timm_deep | cifar | cifar_deep (simlap/models/resnet.py); ResNets only, a ViT
      # ignores it and output_stride.
      stem="cifar",
      output_stride=32,  # 8 | 16 | 32: the largest total stride; later stages dilate (timm)
      width=1.0,  # ResNets: multiplier on the 64 base filters; a ViT's size is its name
      freeze_patch_embed=False,  # ViTs: MoCo-v3's stop-gradient on the patch projection
      bn_momentum=0.9,  # 0.99 lags on short runs
      dtype="float32",  # compute dtype; parameters stay float32
      # ResNets: auto | xla | cpu. "cpu" computes convs and the max pool in the forms XLA:CPU
      # runs fast (models/cpu_conv.py, models/pooling.py; same parameters and numbers), which
      # cost a TPU HBM; "auto" = "cpu" when compiling for a CPU, "xla" for TPU and GPU. It never
      # changes what is learned, so a resumed run may change it.
      conv_impl="auto",
      projector_hidden=(2048,),  # hidden widths: Dense -> BN -> ReLU each
      projector_dim=256,  # D, the embedding (and gate) dimension
      projector_bias=True,  # biases in the hidden Dense layers (MoCo-v3 has none)
      # objective "moco" only: the predictor's hidden widths; () = the projector's last hidden
      # width, as in MoCo-v3 (mlp_dim for both)
      predictor_hidden=(),
      probe_stop_gradient=True,  # online linear probe on stop-gradient features
      # (x - mean) / std per channel before the backbone; () = none, images stay in [0, 1].
      pixel_mean=(),
      pixel_std=(),
  ))
  c.gate = ml_collections.ConfigDict(dict(
      kind="sigmoid",  # sigmoid | open | gumbel | stochastic | lowrank (simlap/models/lowrank.py)
      fuse="mean",  # mean | product
      embed_dim=512,
      hidden_dim=1024,
      tau=1.0,  # gumbel temperature
      penalty=0.0,  # gamma, weight of the gate's Bernoulli entropy
      rank=16,  # kind "lowrank": r directions per pair; must divide hidden_dim
  ))

  # ---- objective (simlap/losses.py) ----
  c.objective = "simlap"  # simlap | simclr | supcon | ce | moco | xclr
  c.loss = ml_collections.ConfigDict(dict(
      pair_kind="arbitrary",  # arbitrary | identical | distinct | selective
      # selective: y2 ~ (1 + d(y1, y2))^-alpha over the dataset's class-tree distances d
      # (simlap/data/class_trees.py); pairs with d >= max_level never drawn (0 = no cut-off,
      # 1 = identical pairs only).
      selective_alpha=0.0,
      selective_max_level=0,
      variant="cosine",  # cosine | weighted
      reduction="anchor",  # anchor | pair
      symmetric=True,  # 1/2 [L(z1, z2) + L(z2, z1)] with one shared permutation
      temperature=0.1,
      learn_scale=False,  # learn log(1/T), initialised at log(1/temperature)
      chunk_size=0,  # anchor rows per chunk in the loss; 0 = no chunking
      xclr_tau_s=0.1,  # objective "xclr": temperature of the class-similarity targets
  ))
  # ---- objective "moco": a momentum (key) encoder and a predictor (simlap/momentum.py) ----
  # L = (instance + beta * D(y, y2) + alpha * D(y, y)) / (1 + alpha + beta), D the gated loss
  # with the momentum keys; instance = MoCo-v3's InfoNCE at loss.temperature.
  c.moco = ml_collections.ConfigDict(dict(
      momentum=0.99,  # EMA decay at step 0, cosine to 1 at the last step (0.996 for long runs)
      beta=1.0,  # weight of the arbitrary-pair gated loss
      alpha=0.0,  # weight of the identical-pair gated loss ("class loss")
      gate_warmup_epochs=0.0,  # queries stop-gradient inside D: only the gate learns from it
  ))

  # ---- optimisation ----
  c.batch_size = 256  # global, over all devices and processes
  c.eval_batch_size = 512
  c.num_epochs = 10.0
  c.num_steps = 0  # > 0 overrides num_epochs
  c.optimizer = ml_collections.ConfigDict(dict(
      name="adamw",  # adamw | adam_l2 | sgd | lars
      lr=1e-3,
      lr_scaling="none",  # none | linear (lr * batch / 256)
      weight_decay=1e-4,
      momentum=0.9,
      warmup_epochs=1.0,
      schedule="cosine",  # cosine | constant
      probe_lr=1e-3,  # the online probe's own optimizer
  ))

  # A workdir (or checkpoint folder) whose latest weights start this run: its converted
  # modules (simlap.convert) or all of them; fresh optimizer, step 0 (simlap/init_from.py).
  c.init_from = ml_collections.FieldReference(None, field_type=str)

  # ---- loop ----
  c.log_every = 50
  c.eval_every = 0  # 0 = only at the end
  c.eval_at_end = True
  c.checkpoint_every = 500
  c.keep_checkpoints = 2
  # Steps whose checkpoints are also saved and never deleted (simlap.compare --eval_fractions
  # sets them); a tuple, e.g. --config.keep_checkpoint_steps="(468,936)".
  c.keep_checkpoint_steps = ()
  c.knn_k = 20
  c.knn_temperature = 0.07
  return c


def apply_method(c: ml_collections.ConfigDict, method: str) -> ml_collections.ConfigDict:
  """Switches `c` (in place; returned for chaining) to `method`; nothing else changes."""
  if method not in METHODS:
    raise ValueError(f"method {method!r} is not one of {sorted(METHODS)}")
  c.method = method
  if method in ("hydra", "moco"):
    c.objective = "moco"
    c.moco.beta = 1.0 if method == "hydra" else 0.0
    c.moco.alpha = 0.0
    c.model.probe_stop_gradient = True
    c.loss.pair_kind, c.loss.variant = "arbitrary", "cosine"
    c.gate.kind, c.gate.fuse = "sigmoid", "mean"
    return c
  if method in ("supcon", "simclr", "ce", "xclr"):
    c.objective = method
    c.model.probe_stop_gradient = method != "ce"
    return c
  c.objective = "simlap"
  c.loss.pair_kind = {"simlap_identical_open": "identical",
                      "simlap_distinct": "distinct"}.get(method, "arbitrary")
  if method in SELECTIVE_ALPHAS:
    # Only the selective presets touch the selective fields: other methods' configs (and the
    # config.json of runs saved before these fields existed) stay as they were.
    c.loss.pair_kind = "selective"
    c.loss.selective_alpha = SELECTIVE_ALPHAS[method]
  if method == "simlap_random_labels":  # the only preset touching it (see the selective ones)
    c.dataset.random_labels = True
  c.gate.kind = ("open" if method.endswith("_open") else
                 lowrank.KIND if method == "simlap_lowrank" else "sigmoid")
  c.loss.variant = "weighted" if method == "simlap_weighted" else "cosine"
  c.gate.fuse = "product" if method == "simlap_product" else "mean"
  return c


def parse_config_arg(arg: str | None, variants: tuple[str, ...] = ()) -> tuple[str, set[str]]:
  """The one convention of every configs/*.py: `--config=FILE:TOKENS`, TOKENS a comma list of
  at most one method name (from METHODS; default "simlap") and any of the file's `variants`.

      parse_config_arg("supcon,smoke", ("smoke",)) == ("supcon", {"smoke"})

  Unknown or repeated methods raise, naming the choices.
  """
  tokens = [t.strip() for t in (arg or "").split(",") if t.strip()]
  methods = [t for t in tokens if t in METHODS]
  unknown = [t for t in tokens if t not in METHODS and t not in variants]
  if unknown or len(methods) > 1:
    raise ValueError(f"config argument {arg!r}: expected at most one method from "
                     f"{sorted(METHODS)} and variants from {list(variants)}")
  return (methods[0] if methods else "simlap"), set(tokens) - set(methods)


def validate(config: ml_collections.ConfigDict) -> None:
  """Fails in milliseconds with one message naming the bad field, before any data is read.

  The model, optimizer and loss check their arguments too, but only after dataset preparation,
  which can take hours (ImageNet): a typo must surface here, first.
  """
  o, loss = config.optimizer, config.loss
  for name, value, choices in [
      ("objective", config.objective, objectives.OBJECTIVES),
      ("loss.pair_kind", loss.pair_kind, losses.PAIR_KINDS),
      ("loss.variant", loss.variant, losses.VARIANTS),
      ("loss.reduction", loss.reduction, losses.REDUCTIONS),
      ("model.backbone", config.model.backbone, tuple(sorted(backbones.BACKBONES))),
      ("model.dtype", config.model.dtype, backbones.DTYPES),
      ("model.conv_impl", config.model.conv_impl, backbones.CONV_IMPLS),
      ("gate.kind", config.gate.kind, gates.GATE_KINDS + (lowrank.KIND,)),
      ("gate.fuse", config.gate.fuse, gates.FUSES),
      ("optimizer.name", o.name, optim.OPTIMIZERS),
      ("optimizer.lr_scaling", o.lr_scaling, optim.LR_SCALINGS),
      ("optimizer.schedule", o.schedule, optim.SCHEDULES),
      ("sharding.params", config.sharding.params, sharding.PARAM_MODES),
      ("dataset.view_dtype", config.dataset.get("view_dtype"), (None, "uint8", "float32"))]:
    if value not in choices:
      raise ValueError(f"config.{name}={value!r} is not one of {choices}")
  m = config.model
  if len(m.pixel_mean) != len(m.pixel_std) or (
      m.pixel_mean and len(m.pixel_mean) != config.dataset.channels) or any(
          not s > 0 for s in m.pixel_std):
    raise ValueError(f"config.model.pixel_mean={m.pixel_mean} and pixel_std={m.pixel_std} must "
                     f"both be empty or both hold dataset.channels={config.dataset.channels} "
                     "values, the stds positive")
  # model.stem (ResNets only), width and freeze_patch_embed depend on the backbone's family.
  backbones.check_config(config.model, config.dataset.image_size)
  for name, value in [("batch_size", config.batch_size),
                      ("eval_batch_size", config.eval_batch_size),
                      ("log_every", config.log_every),
                      ("checkpoint_every", config.checkpoint_every),
                      ("loss.temperature", loss.temperature), ("optimizer.lr", o.lr),
                      ("optimizer.probe_lr", o.probe_lr), ("loss.xclr_tau_s", loss.xclr_tau_s)]:
    if not value > 0:
      raise ValueError(f"config.{name} must be positive, got {value}")
  steps = config.keep_checkpoint_steps
  if not isinstance(steps, (tuple, list)) or not all(
      isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in steps):
    raise ValueError(f"config.keep_checkpoint_steps must be a tuple of steps > 0, got {steps!r}")
  min_size = config.sharding.fsdp_min_size
  if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 0:
    raise ValueError(f"config.sharding.fsdp_min_size must be an integer >= 0 (elements), got "
                     f"{min_size!r}")
  try:
    sharding.mesh_axes(config.mesh)
  except ValueError as e:
    raise ValueError(f"config.{e}") from None
  if config.num_steps <= 0 and not config.num_epochs > 0:
    raise ValueError(f"set config.num_steps > 0 or config.num_epochs > 0 (got "
                     f"{config.num_steps} and {config.num_epochs})")
  moco = config.moco
  if not 0.0 <= moco.momentum < 1.0:
    raise ValueError(f"config.moco.momentum must be in [0, 1), got {moco.momentum}")
  for name in ("beta", "alpha", "gate_warmup_epochs"):
    if not moco[name] >= 0:
      raise ValueError(f"config.moco.{name} must be >= 0, got {moco[name]}")
  if config.objective in ("simlap", "moco") and loss.pair_kind == "selective":
    _validate_selective(config)
  _validate_ablations(config)
  if config.objective == "ce" and config.model.probe_stop_gradient:
    raise ValueError("config.objective='ce' trains through the linear head: set "
                     "config.model.probe_stop_gradient=False")


def _validate_selective(config: ml_collections.ConfigDict) -> None:
  """Selective pairs need alpha >= 0, an integer max_level >= 0 and the dataset's class tree."""
  loss = config.loss
  alpha, level = loss.selective_alpha, loss.selective_max_level
  if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not (
      math.isfinite(alpha) and alpha >= 0):
    raise ValueError(f"config.loss.selective_alpha must be a number >= 0, got {alpha!r}")
  if isinstance(level, bool) or not isinstance(level, int) or level < 0:
    raise ValueError(f"config.loss.selective_max_level must be an integer >= 0 (0 = no "
                     f"cut-off, 1 = identical pairs only), got {level!r}")
  if config.dataset.name not in class_trees.TREES:
    raise ValueError(f"config.loss.pair_kind='selective' needs a class tree, and "
                     f"config.dataset.name={config.dataset.name!r} has none (datasets with one: "
                     f"{sorted(class_trees.TREES)})")


def _validate_ablations(config: ml_collections.ConfigDict) -> None:
  """The low-rank subspaces (objective simlap only) and X-CLR's class graph."""
  g = config.gate
  if g.kind == lowrank.KIND:
    if config.objective != "simlap" or g.penalty:
      raise ValueError(f"config.gate.kind='lowrank' needs config.objective='simlap' (got "
                       f"{config.objective!r}) and gate.penalty=0 (got {g.penalty})")
    dim = config.model.projector_dim
    if isinstance(g.rank, bool) or not isinstance(g.rank, int) or not (
        1 <= g.rank <= dim and g.hidden_dim % g.rank == 0):
      raise ValueError(f"config.gate.rank={g.rank!r} must be an integer in [1, "
                       f"model.projector_dim={dim}] dividing gate.hidden_dim={g.hidden_dim}")
  if config.objective == "xclr" and config.dataset.name not in class_trees.TREES:
    raise ValueError(f"config.objective='xclr' takes its class similarity from a class tree; "
                     f"config.dataset.name={config.dataset.name!r} has none")
