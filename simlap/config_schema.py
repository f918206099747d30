"""The config schema: every field, its default and a one-line description; the method presets.

These are the only defaults: code reads a field without a fallback, so a missing one fails
loudly. Config files (configs/*.py) start from `base_config()`; `apply_method` turns one config
into each method of a fair comparison (only the fields that define the method change);
`validate` checks a whole config before any data or model is touched. Derived values are
computed in code, never stored in the config.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import ml_collections

from simlap import losses
from simlap import objectives
from simlap.training import optim
from simlap.runtime import sharding
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


class Field(NamedTuple):
  """A schema leaf: its default and a one-line description (`--config_help` prints both)."""
  default: Any
  help: str


def _maybe(field_type: type) -> ml_collections.FieldReference:
  """A field whose default is None yet that the command line may set (to a `field_type`)."""
  return ml_collections.FieldReference(None, field_type=field_type)


def _view() -> dict[str, Field]:
  """The augmentation of one view (simlap/data/augment.py)."""
  return dict(
      crop_scale=Field((0.2, 1.0), "random resized crop: range of the area fraction kept"),
      crop_ratio=Field((3 / 4, 4 / 3), "random resized crop: range of the aspect ratio"),
      flip_prob=Field(0.5, "probability of a horizontal flip"),
      jitter_prob=Field(0.8, "probability of colour jitter"),
      brightness=Field(0.4, "jitter: brightness factor ~ U[1 - s, 1 + s]"),
      contrast=Field(0.4, "jitter: contrast factor ~ U[1 - s, 1 + s]"),
      saturation=Field(0.4, "jitter: saturation factor ~ U[1 - s, 1 + s] (RGB only)"),
      hue=Field(0.1, "jitter: hue rotation ~ 2 pi U[-h, h] (RGB only)"),
      grayscale_prob=Field(0.2, "probability of grayscale (RGB only)"),
      blur_prob=Field(0.0, "probability of a Gaussian blur, sigma ~ U[0.1, 2]"),
      solarize_prob=Field(0.0, "probability of solarizing at 0.5"),
      randaugment_layers=Field(0, "RandAugment ops per image, after crop and flip; 0 = off"),
      randaugment_magnitude=Field(9, "RandAugment magnitude (0..10)"),
  )


def _schema() -> dict[str, Any]:
  """Every field as a nested dict of `Field`s (fresh FieldReferences on each call)."""
  return dict(
      seed=Field(0, "seed of every random key and of the data order"),
      method=Field("simlap", "a name from METHODS (set by apply_method), for reports"),
      # A tuple, not a list: ml_collections overrides tuples from the command line.
      mesh=Field((("data", -1),), "device mesh axes as (name, size); -1 = the rest of the "
                 "devices, e.g. --config.mesh=\"(('data',4),('x',2))\""),
      sharding=dict(
          params=Field("replicated", "replicated | fsdp (ZeRO-3: params and optimizer state "
                       "split over devices; docs/scaling.md)"),
          fsdp_min_size=Field(2**16, "under fsdp, leaves with fewer elements stay replicated"),
      ),
      # ---- data (simlap/data) ----
      dataset=dict(
          name=Field("fashion_mnist_local", "fashion_mnist_local or a TFDS name: cifar10, "
                     "cifar100, imagenet2012, ..."),
          data_dir=Field(_maybe(str), "TFDS data dir; None = TFDS's default"),
          manual_dir=Field(_maybe(str), "folder holding the imagenet2012 tars"),
          source_dir=Field(_maybe(str), "Fashion-MNIST IDX .gz folder; None = "
                           "$SIMLAP_FASHION_MNIST_DIR or Debian's location"),
          download=Field(False, "let TFDS download a missing dataset (else never the network)"),
          train_split=Field("train", "the split trained on"),
          eval_split=Field("test", "the split evaluated on"),
          image_key=Field("image", "the feature holding the image"),
          label_key=Field("label", "the feature holding the class label"),
          extra_label_keys=Field((), "more label features to carry, e.g. ('coarse_label',)"),
          num_classes=Field(10, "C, the classes of label_key"),
          image_size=Field(28, "side of the augmented views fed to the model"),
          channels=Field(1, "image channels: 1 (gray) or 3 (RGB)"),
          shuffle_buffer=Field(20_000, "TFRecord-streamed train split: records per shuffled "
                               "block (two blocks are held)"),
          repeats=Field(1, "repeated augmentation: each image this many times per batch"),
          classes_per_batch=Field(0, "class-balanced P x K sampler: P classes a batch; 0 = off"),
          samples_per_class=Field(0, "class-balanced sampler: K images per class"),
          prefetch=Field(2, "device batches prepared ahead of the step"),
          in_memory=Field(_maybe(bool), "train split in memory (exact, free resume) or "
                          "streamed; None = in memory when the prepared split is <= 1 GiB"),
          random_labels=Field(False, "train on a seeded permutation of the labels (in-memory "
                              "split); evaluation and the probe keep the true ones"),
          view_dtype=Field(_maybe(str), "uint8 | float32, the views sent to the device; None = "
                           "uint8 when the split is streamed, float32 in memory"),
          random_access=Field(_maybe(bool), "read a streamed split by index (ArrayRecord) or as "
                              "a TFRecord stream; None = by index for ArrayRecord files"),
      ),
      augment=dict(
          view1=_view(), view2=_view(),
          eval_crop_fraction=Field(1.0, "eval: resize to size / f, center crop (ImageNet 0.875)"),
          colour_stage=Field(_maybe(str), "host | device: where colour jitter, grayscale, blur "
                             "and solarize run; None = the device for uint8 views, else host"),
      ),
      # ---- model (simlap/models) ----
      model=dict(
          backbone=Field("resnet18", "resnet_tiny | resnet_small | resnet14 | resnet20 | "
                         "resnet18/34/50 | vit_tiny | vit_ti16 | vit_s16/b16/l16"),
          stem=Field("cifar", "ResNets: imagenet | timm_deep | cifar | cifar_deep"),
          output_stride=Field(32, "ResNets: 8 | 16 | 32, the largest total stride; later "
                              "stages dilate"),
          width=Field(1.0, "ResNets: multiplier on the 64 base filters"),
          freeze_patch_embed=Field(False, "ViTs: stop-gradient on the patch projection "
                                   "(MoCo-v3)"),
          bn_momentum=Field(0.9, "running-average decay of every BatchNorm"),
          dtype=Field("float32", "compute dtype (float32 | bfloat16); parameters stay float32"),
          # Never changes what is learned, so a resumed run may change it.
          conv_impl=Field("auto", "ResNets: auto | xla | cpu, convs and pools in XLA:CPU's fast "
                          "forms (cpu); auto = cpu when compiling for a CPU"),
          projector_hidden=Field((2048,), "projector hidden widths, Dense -> BN -> ReLU each"),
          projector_dim=Field(256, "D, the embedding (and gate) dimension"),
          projector_bias=Field(True, "biases in the projector's hidden Dense layers"),
          predictor_hidden=Field((), "objective moco: predictor hidden widths; () = the "
                                 "projector's last hidden width"),
          probe_stop_gradient=Field(True, "the online linear probe sees stop-gradient features"),
          pixel_mean=Field((), "per-channel mean subtracted before the backbone; () = none"),
          pixel_std=Field((), "per-channel std divided by before the backbone; () = none"),
      ),
      gate=dict(
          kind=Field("sigmoid", "sigmoid | open | gumbel | stochastic | lowrank"),
          fuse=Field("mean", "mean | product, how the two classes' embeddings combine"),
          embed_dim=Field(512, "width of the label embeddings"),
          hidden_dim=Field(1024, "hidden width of the gate MLP"),
          tau=Field(1.0, "kind gumbel: temperature"),
          noise_std=Field(0.5, "kind stochastic: std of the Gaussian noise (STG)"),
          penalty=Field(0.0, "gamma, weight of the gates' mean Bernoulli entropy"),
          rank=Field(16, "kind lowrank: r directions per pair; must divide hidden_dim"),
      ),
      # ---- objective (simlap/objectives/__init__.py, simlap/losses.py) ----
      objective=Field("simlap", "a name in simlap.objectives.REGISTRY: simlap | simclr | supcon "
                      "| xclr | ce | moco | simclr_cross_view"),
      loss=dict(
          pair_kind=Field("arbitrary", "arbitrary | identical | distinct | selective"),
          selective_alpha=Field(0.0, "selective: y2 ~ (1 + d(y1, y2))^-alpha, d the class-tree "
                                "distance"),
          selective_max_level=Field(0, "selective: pairs with d >= this never drawn; 0 = no "
                                    "cut-off, 1 = identical only"),
          variant=Field("cosine", "cosine | weighted"),
          reduction=Field("anchor", "anchor | pair"),
          symmetric=Field(True, "1/2 [L(z1, z2) + L(z2, z1)] with one shared permutation"),
          temperature=Field(0.1, "T; logits are cosine similarities / T"),
          learn_scale=Field(False, "learn log(1/T), initialised at log(1/temperature)"),
          chunk_size=Field(0, "anchor rows per chunk in the loss; 0 = no chunking"),
          xclr_tau_s=Field(0.1, "objective xclr: temperature of the class-similarity targets"),
      ),
      # L = (instance + beta D(y, y2) + alpha D(y, y)) / (1 + alpha + beta), D the gated loss
      # on the momentum keys (simlap/objectives/momentum.py).
      moco=dict(
          momentum=Field(0.99, "EMA decay at step 0, cosine to 1 at the last step"),
          beta=Field(1.0, "weight of the arbitrary-pair gated loss"),
          alpha=Field(0.0, "weight of the identical-pair gated loss (class loss)"),
          gate_warmup_epochs=Field(0.0, "epochs in which the gated loss trains only the gate"),
      ),
      # ---- optimisation (simlap/training/optim.py) ----
      batch_size=Field(256, "global batch, over all devices and processes"),
      eval_batch_size=Field(512, "global batch of feature extraction"),
      num_epochs=Field(10.0, "training length in epochs of num_train // batch_size steps"),
      num_steps=Field(0, "training length in steps; > 0 overrides num_epochs"),
      optimizer=dict(
          name=Field("adamw", "adamw | adam_l2 | sgd | lars"),
          lr=Field(1e-3, "peak learning rate"),
          lr_scaling=Field("none", "none | linear (lr * batch_size / 256)"),
          weight_decay=Field(1e-4, "on weight matrices and kernels, not biases or norms"),
          momentum=Field(0.9, "sgd and lars momentum"),
          warmup_epochs=Field(1.0, "linear warm-up from 0"),
          schedule=Field("cosine", "cosine | constant, after the warm-up"),
          probe_lr=Field(1e-3, "learning rate of the online probe's own Adam"),
      ),
      init_from=Field(_maybe(str), "workdir whose latest weights start this run (fresh "
                      "optimizer, step 0; simlap/training/init_from.py)"),
      # ---- loop ----
      log_every=Field(50, "steps between metrics rows"),
      eval_every=Field(0, "steps between evaluations; 0 = only at the end"),
      eval_at_end=Field(True, "evaluate after the last step"),
      checkpoint_every=Field(500, "steps between checkpoints"),
      keep_checkpoints=Field(2, "newest checkpoints kept"),
      keep_checkpoint_steps=Field((), "steps also saved and never deleted, e.g. "
                                  "--config.keep_checkpoint_steps=\"(468,936)\""),
      knn_k=Field(20, "neighbours of the kNN evaluation"),
      knn_temperature=Field(0.07, "temperature of the kNN vote weights"),
  )


def _build(tree: dict[str, Any]) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({k: _build(v) if isinstance(v, dict) else v.default
                                    for k, v in tree.items()})


def base_config() -> ml_collections.ConfigDict:
  """Every field at its default: where each configs/*.py starts, and what a saved
  config.json is merged onto (a field it lacks keeps its default)."""
  return _build(_schema())


def fields(tree: dict[str, Any] | None = None, prefix: str = "") -> dict[str, Field]:
  """Dotted name -> `Field` for every leaf of the schema, in schema order."""
  out = {}
  for key, value in (_schema() if tree is None else tree).items():
    if isinstance(value, dict):
      out.update(fields(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def help_text() -> str:
  """`field  default  description` lines, one per schema leaf (`simlap.main --config_help`)."""
  def shown(default):
    return repr(default.get() if isinstance(default, ml_collections.FieldReference)
                else default)
  rows = [(name, shown(f.default), f.help) for name, f in fields().items()]
  w0, w1 = (max(len(r[i]) for r in rows) for i in (0, 1))
  return "\n".join(f"{n:<{w0}}  {d:<{w1}}  {h}" for n, d, h in rows)


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
    # Only the selective presets set the selective fields; every other method keeps them.
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
      ("dataset.view_dtype", config.dataset.view_dtype, (None, "uint8", "float32")),
      ("augment.colour_stage", config.augment.colour_stage, (None, "host", "device"))]:
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
  if not config.gate.noise_std >= 0:
    raise ValueError(f"config.gate.noise_std must be >= 0, got {config.gate.noise_std}")
  moco = config.moco
  if not 0.0 <= moco.momentum < 1.0:
    raise ValueError(f"config.moco.momentum must be in [0, 1), got {moco.momentum}")
  for name in ("beta", "alpha", "gate_warmup_epochs"):
    if not moco[name] >= 0:
      raise ValueError(f"config.moco.{name} must be >= 0, got {moco[name]}")
  _validate_lowrank(config.gate, config.model.projector_dim)
  objectives.get(config.objective).validate(config)


def _validate_lowrank(g: ml_collections.ConfigDict, dim: int) -> None:
  """The low-rank subspaces' rank (whether the objective takes them is its own check)."""
  if g.kind == lowrank.KIND and (isinstance(g.rank, bool) or not isinstance(g.rank, int) or not (
      1 <= g.rank <= dim and g.hidden_dim % g.rank == 0)):
    raise ValueError(f"config.gate.rank={g.rank!r} must be an integer in [1, "
                     f"model.projector_dim={dim}] dividing gate.hidden_dim={g.hidden_dim}")
