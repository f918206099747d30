"""One SimLAP train step against an independent recomputation: pair labels, gates, loss, update.

tests/test_train.py checks that the trainer runs, agrees across device counts and lowers the
loss; none of that would notice the step training the wrong objective (e.g. SimLAP fed
identical pairs, y2 = y1, which still trains and still lowers its loss). Here one step of
`trainer.step_fn` on a fixed batch is recomputed from its documented recipe:

  rng = fold_in(key(seed), step); pair_rng, gate_rng = split(rng)
  y2 = losses.sample_pair_labels(pair_rng, y, kind=loss.pair_kind)
  out = model.apply(pre-step variables, [view1; view2], y, y2, train=True)
  loss = 1/2 [L(z1, z2) + L(z2, z1)]   with the gates of (y, y2)
  update: plain SGD on that loss for the model, the probe's own Adam on the probe's CE only.

and the logged metrics, the new batch statistics (which record what the gate table was fed)
and the new parameters are compared with it.
"""
from __future__ import annotations
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simlap import config_schema
from simlap import losses
from simlap.runtime import sharding
from simlap.training import loop as train

B, C, SIZE = 16, 10, 8  # global batch (2 per device on the 8-device mesh), classes, image side
LR, PROBE_LR, TEMPERATURE = 0.05, 0.01, 0.2


def tiny_simlap_config():
  c = config_schema.apply_method(config_schema.base_config(), "simlap")
  assert (c.objective, c.loss.pair_kind, c.gate.kind) == ("simlap", "arbitrary", "sigmoid")
  c.seed = 3
  c.dataset.num_classes = C
  c.dataset.image_size = SIZE
  c.dataset.channels = 1
  c.model.backbone = "resnet_tiny"
  c.model.projector_hidden = (16,)
  c.model.projector_dim = 8
  c.gate.embed_dim = 8
  c.gate.hidden_dim = 16
  c.loss.symmetric = True
  c.loss.temperature = TEMPERATURE
  c.batch_size = B
  c.num_steps = 4
  # Plain SGD at a constant rate and no decay: the first update is exactly -LR * gradient (the
  # momentum trace starts at 0), so the new params reveal the step's gradient.
  c.optimizer.name = "sgd"
  c.optimizer.lr = LR
  c.optimizer.weight_decay = 0.0
  c.optimizer.warmup_epochs = 0.0
  c.optimizer.schedule = "constant"
  c.optimizer.probe_lr = PROBE_LR
  return c


def dataset_info_stand_in():
  """Duck-typed DatasetInfo: what make_trainer reads, without touching any dataset."""
  return types.SimpleNamespace(num_classes=C, class_names=tuple(f"class{i}" for i in range(C)),
                               num_train=64 * B, num_eval=B, image_shape=(SIZE, SIZE, 1),
                               extra_label_keys=())


def fixed_batch():
  rng = np.random.default_rng(7)
  view1 = rng.normal(size=(B, SIZE, SIZE, 1)).astype(np.float32)
  view2 = (view1 + 0.3 * rng.normal(size=view1.shape)).astype(np.float32)
  label = rng.integers(0, C, size=B).astype(np.int32)
  return {"view1": view1, "view2": view2, "label": label}


def oracle(config, model, params, batch_stats, batch, step):
  """The step recomputed from its recipe (module docstring), for the state at `step`."""
  rng = jax.random.fold_in(jax.random.key(config.seed), step)
  pair_rng, gate_rng = jax.random.split(rng)
  labels = jnp.asarray(batch["label"])
  pair_labels = losses.sample_pair_labels(pair_rng, labels, kind=config.loss.pair_kind,
                                          num_classes=C)
  images = jnp.concatenate([batch["view1"], batch["view2"]])
  scale = 1.0 / config.loss.temperature

  def forward(p, y2):
    return model.apply({"params": p, "batch_stats": batch_stats}, images, labels, y2,
                       train=True, mutable=["batch_stats"], rngs={"gate": gate_rng})

  def simlap(p, y2, loss_pairs, loss_fn=losses.simlap_loss_reference):
    """Symmetric loss with the gates of (y, y2), the loss told pair labels `loss_pairs`."""
    out, _ = forward(p, y2)
    z1, z2 = out["embeddings"][:B], out["embeddings"][B:]
    g = out["gates"]
    return 0.5 * (loss_fn(z1, z2, g, labels, loss_pairs, labels, scale=scale) +
                  loss_fn(z2, z1, g, labels, loss_pairs, labels, scale=scale))

  def probe_ce(p):
    out, _ = forward(p, pair_labels)
    logits = out["probe_logits"]
    y = jnp.concatenate([labels, labels])
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=1))

  out, updates = forward(params, pair_labels)
  out_same, updates_same = forward(params, labels)  # what identical pairs would have given
  loss, grads = jax.value_and_grad(simlap)(params, pair_labels, pair_labels)
  probe_loss, probe_grads = jax.value_and_grad(probe_ce)(params)
  return dict(
      pair_labels=pair_labels, gates=out["gates"], gates_same=out_same["gates"],
      batch_stats=updates["batch_stats"], batch_stats_same=updates_same["batch_stats"],
      loss=loss, loss_fused=simlap(params, pair_labels, pair_labels, losses.simlap_loss),
      loss_identical_pairs=simlap(params, pair_labels, labels, losses.simlap_loss),
      grads=grads, probe_loss=probe_loss, probe_grads=probe_grads["probe"])


@pytest.fixture(scope="module")
def step():
  """One compiled trainer step and one compiled oracle, shared by every test below."""
  config = tiny_simlap_config()
  mesh = sharding.make_mesh(config.mesh)
  assert mesh.size == 8
  trainer = train.make_trainer(config, mesh, dataset_info_stand_in())
  state = trainer.init_fn()
  before = jax.device_get(state)  # step_fn donates its input state
  batch = fixed_batch()
  new_state, metrics = trainer.step_fn(state, jax.device_put(batch,
                                                             sharding.batch_sharding(mesh)))
  step0 = int(before.step)
  expected = jax.jit(lambda p, s, b: oracle(config, trainer.model, p, s, b, step0))(
      before.params["model"], before.batch_stats, batch)
  return dict(config=config, before=before, after=jax.device_get(new_state),
              metrics=jax.device_get(metrics), expected=jax.device_get(expected), batch=batch)


def test_pair_labels_are_a_nontrivial_permutation(step):
  labels, pair_labels = step["batch"]["label"], step["expected"]["pair_labels"]
  assert int(step["before"].step) == 0
  np.testing.assert_array_equal(np.sort(pair_labels), np.sort(labels))  # "arbitrary" pairs
  assert np.sum(pair_labels != labels) >= B // 2, (labels, pair_labels)


def test_loss_is_symmetric_simlap_on_the_sampled_pairs(step):
  m, e = step["metrics"], step["expected"]
  np.testing.assert_allclose(e["loss_fused"], e["loss"], rtol=1e-5)  # oracle self-check
  # Teeth: the same step with y2 = y1 in the loss would log a clearly different number.
  assert abs(e["loss_identical_pairs"] - e["loss"]) > 1e-2 * abs(e["loss"]), e
  np.testing.assert_allclose(m["loss"], e["loss"], rtol=1e-5,
                             err_msg="the logged loss is not SimLAP on (labels, pair_labels)")
  np.testing.assert_allclose(m["probe_loss"], e["probe_loss"], rtol=1e-5)
  assert float(m["logit_scale"]) == np.float32(1 / TEMPERATURE)
  assert float(m["learning_rate"]) == np.float32(LR)


def test_gates_are_those_of_the_sampled_pairs(step):
  m, e = step["metrics"], step["expected"]
  gates, gates_same = np.asarray(e["gates"], np.float64), np.asarray(e["gates_same"], np.float64)
  assert np.abs(gates - gates_same).max() > 1e-3  # (labels, labels) would be visible
  # The gate statistics the step logged are those of g(y, y2), not of g(y, y).
  activation = gates.sum(1).mean()
  assert abs(gates_same.sum(1).mean() - activation) > 1e-4 * activation
  msg = "the step's gates are not g(labels, pair_labels)"
  np.testing.assert_allclose(m["gate_activation"], activation, rtol=1e-5, err_msg=msg)
  np.testing.assert_allclose(m["gate_open_fraction"], np.mean(gates > 0.5), rtol=1e-6,
                             err_msg=msg)
  g = np.clip(gates, 1e-6, 1 - 1e-6)
  np.testing.assert_allclose(m["gate_entropy"],
                             np.mean(-(g * np.log(g) + (1 - g) * np.log1p(-g))), rtol=1e-5,
                             err_msg=msg)
  # The gate table's BatchNorm statistics record which embeddings it was fed.
  got = step["after"].batch_stats["gate"]
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(e["batch_stats_same"]["gate"])):
    assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6,
                                                       err_msg=msg + " (gate batch_stats)"),
               got, e["batch_stats"]["gate"])
  # And every other running statistic is the one of this forward pass.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               step["after"].batch_stats, e["batch_stats"])


def _leaves(tree):
  return {jax.tree_util.keystr(p): np.asarray(v, np.float64)
          for p, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_update_is_the_gradient_of_that_loss(step):
  """params_1 = params_0 - LR * dL/dparams for the model (gates included), while the probe moves
  by its own Adam on its own CE only, and its CE reaches no other parameter."""
  before = _leaves(step["before"].params["model"])
  after = _leaves(step["after"].params["model"])
  grads = _leaves(step["expected"]["grads"])
  probe_grads = _leaves(step["expected"]["probe_grads"])
  # The gradient of a bias just before a BatchNorm is 0 up to round-off (~1e-7), so each leaf
  # is judged by the norm of its error against the norm of the whole gradient as well as its
  # own. Measured: errors <= 1.5e-5 of the leaf's norm, and <= 6e-7 absolute on the near-0 ones.
  global_norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()))
  gate_total = 0.0
  for name, p0 in before.items():
    delta = after[name] - p0
    if name.startswith("['probe']"):
      g = probe_grads[name[len("['probe']"):]]
      np.testing.assert_array_equal(grads[name], 0.0)  # the contrastive loss ignores the probe
      # Adam's first step: -lr * g / (|g| + eps).
      np.testing.assert_allclose(delta, -PROBE_LR * g / (np.abs(g) + 1e-8), rtol=1e-4,
                                 atol=1e-7, err_msg=name)
      continue
    error = np.linalg.norm(-delta / LR - grads[name])
    bound = 1e-4 * np.linalg.norm(grads[name]) + 1e-5 * global_norm
    assert error <= bound, (
        f"{name}: the update is not -LR * dL/dparam of the oracle's loss: |update / -LR - grad| "
        f"= {error:.3g} > {bound:.3g} (|grad| = {np.linalg.norm(grads[name]):.3g}, "
        f"|update / LR| = {np.linalg.norm(delta) / LR:.3g})")
    if name.startswith("['gate']"):
      gate_total += np.abs(grads[name]).sum()
  assert gate_total > 0  # the gate table is trained by the loss
  expected_norm = np.sqrt(sum(np.sum(g ** 2) for g in grads.values()) +
                          sum(np.sum(g ** 2) for g in probe_grads.values()))
  np.testing.assert_allclose(step["metrics"]["grad_norm"], expected_norm, rtol=1e-4)


def test_gate_table_receives_gradient(step):
  """Every gate parameter moves in the step (the loss reaches the gates, not only the penalty:
  gate.penalty is 0 here), by the oracle's gradient."""
  assert step["config"].gate.penalty == 0.0
  before = _leaves(step["before"].params["model"]["gate"])
  after = _leaves(step["after"].params["model"]["gate"])
  grads = _leaves(step["expected"]["grads"]["gate"])
  for name in before:
    assert np.abs(grads[name]).max() > 0, name
    moved = np.abs(after[name] - before[name]).max()
    assert moved > 0.1 * LR * np.abs(grads[name]).max(), (
        f"gate parameter {name} did not move (max |delta| = {moved}) although "
        f"dL/d{name} reaches {np.abs(grads[name]).max():.3g}")
