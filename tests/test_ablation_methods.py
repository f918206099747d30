"""The ablation methods: random labels, low-rank pair subspaces and X-CLR.

Each trains on real Fashion-MNIST; each loss equals a NumPy reference; the random labels keep
class sizes exactly and are one table on every process; the low-rank table's parameter count
matches the gate's within (r - 1) * D; a subspace spanning R^D gives the open gate's logits.
"""
from __future__ import annotations
import hashlib
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from simlap import config_schema
from simlap import losses
from simlap import objectives
from simlap.runtime import sharding
from simlap.training import loop as train
from simlap.data import datasets
from simlap.data import random_labels
from simlap.data import train_stream
from simlap.models import gates as gates_lib
from simlap.models import lowrank
import test_train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("simlap_random_labels", "simlap_lowrank", "xclr")


def tiny_config(data_dir: str, method: str):
  """tests/test_train.py's ~10k-parameter model (D = 16, gate hidden 32), rank 4, 2 steps."""
  c = test_train.tiny_config(
      data_dir, **{"gate.rank": 4, "num_steps": 2, "optimizer.lr": 3e-3,
                   # the schema's cadence and eval batch, as these tests were written with
                   "eval_batch_size": 512, "log_every": 50, "checkpoint_every": 500})
  return config_schema.apply_method(c, method)


# ------------------------------------------------------------------------------------------------
# Training: two steps of each method on real data.
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_method_trains_two_steps(fmnist_data_dir, method):
  config = tiny_config(fmnist_data_dir, method)
  config_schema.validate(config)
  mesh = sharding.make_mesh(config.mesh)
  batches = train_stream.train_iterator(config, mesh, seed=config.seed)
  trainer = train.make_trainer(config, mesh, datasets.get_dataset_info(config))
  state = trainer.init_fn()
  batch = next(batches)
  assert ("true_label" in batch) == (method == "simlap_random_labels")
  values = []
  for _ in range(2):
    state, metrics = trainer.step_fn(state, batch)  # the same batch: only the weights change
    values.append(float(metrics["loss"]))
  assert np.all(np.isfinite(values)) and values[0] != values[1], (method, values)
  if method == "simlap_random_labels":
    # The objective sees only the random labels, the online probe only the true ones.
    assert np.mean(np.asarray(batch["label"]) != np.asarray(batch["true_label"])) > 0.5
    _, truth = trainer.step_fn(trainer.init_fn(), batch)
    _, swapped = trainer.step_fn(trainer.init_fn(), {**batch, "true_label": batch["label"]})
    assert float(truth["loss"]) == float(swapped["loss"])
    assert float(truth["probe_loss"]) != float(swapped["probe_loss"])
  if method == "simlap_lowrank":
    gate = trainer.model.gate
    assert isinstance(gate, lowrank.LowRankTable) and gate.rank == 4
    variables = {"params": state.params["model"], "batch_stats": state.batch_stats}
    diag = np.asarray(trainer.model.apply(variables, method="class_gates"))
    assert diag.shape == (10, 16)  # diag(P) for the analyses: entries in [0, 1], sum r
    assert diag.min() >= 0 and diag.max() <= 1 + 1e-5
    np.testing.assert_allclose(diag.sum(1), 4.0, atol=1e-2)


def test_main_accepts_the_methods():
  for method in METHODS:
    config = config_schema.apply_method(config_schema.base_config(), method)
    config_schema.validate(config)
    assert config.method == method
  assert config_schema.parse_config_arg("simlap_lowrank")[0] == "simlap_lowrank"


def test_bad_ablation_configs_fail_early():
  c = config_schema.apply_method(config_schema.base_config(), "simlap_lowrank")
  c.gate.rank = 3  # does not divide hidden_dim 1024
  with pytest.raises(ValueError, match="gate.rank"):
    config_schema.validate(c)
  c = config_schema.apply_method(config_schema.base_config(), "xclr")
  c.dataset.name = "cifar100"
  with pytest.raises(ValueError, match="class tree"):
    config_schema.validate(c)


# ------------------------------------------------------------------------------------------------
# Random labels.
# ------------------------------------------------------------------------------------------------
def test_random_labels_keep_class_sizes_and_differ_from_the_true_ones():
  true = np.repeat(np.arange(10, dtype=np.int64), [600, 50, 700, 3, 900, 1, 420, 77, 301, 8])
  new = random_labels.relabel(true, seed=0)
  assert new.dtype == true.dtype
  np.testing.assert_array_equal(np.bincount(new, minlength=10), np.bincount(true, minlength=10))
  # A random permutation agrees with the truth on about sum_c p_c^2 of the examples.
  p = np.bincount(true) / len(true)
  assert abs(np.mean(new == true) - np.sum(p * p)) < 0.05
  np.testing.assert_array_equal(new, random_labels.relabel(true, seed=0))  # deterministic
  assert np.mean(random_labels.relabel(true, seed=1) != new) > 0.5  # the seed matters


def test_random_label_permutation_is_fixed_across_processes():
  """The table is the same in another interpreter (hash seed, NumPy streams play no part)."""
  digest = hashlib.sha256(random_labels.permutation(3, 5000).tobytes()).hexdigest()
  code = ("import hashlib; from simlap.data import random_labels as r; "
          "print(hashlib.sha256(r.permutation(3, 5000).tobytes()).hexdigest())")
  env = dict(os.environ, PYTHONHASHSEED="123", PYTHONPATH=os.environ.get("PYTHONPATH", REPO))
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       check=True, cwd=REPO)
  assert out.stdout.strip() == digest
  assert sorted(random_labels.permutation(3, 5000)) == list(range(5000))


def test_random_labels_reach_the_stream_and_split_over_processes(fmnist_data_dir):
  config = tiny_config(fmnist_data_dir, "simlap_random_labels")
  builder = datasets.prepared_builder(config)
  d = config.dataset
  true = datasets.load_arrays(builder, d.train_split, d, False)["label"]
  table = random_labels.relabel(true, config.seed)
  np.testing.assert_array_equal(np.bincount(table), np.bincount(true))
  # Two processes' slices are the one-process table, cut in order.
  parts = [random_labels.process_labels(builder, config, p, 2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate(parts), table)
  np.testing.assert_array_equal(random_labels.process_labels(builder, config, 0, 1), table)
  # Each streamed example carries its table entry as "label" and its true label beside it.
  ds = train_stream.local_train_dataset(config, seed=config.seed, with_ids=True,
                                        process_index=1, process_count=2)
  batch = next(ds.as_numpy_iterator())
  index = np.array([int(i.decode().rsplit("__", 1)[1]) for i in batch["tfds_id"]])
  np.testing.assert_array_equal(batch["label"], table[index])
  np.testing.assert_array_equal(batch["true_label"], true[index])
  assert index.min() >= len(parts[0])  # process 1 reads the second half


# ------------------------------------------------------------------------------------------------
# Low-rank pair subspaces.
# ------------------------------------------------------------------------------------------------
def _numpy_lowrank_loss(a, k, u, y1, y2, yk, scale, ridge):
  """The definition, in float64: explicit P, cosine of the projections, SimLAP masks."""
  b, r = a.shape[0], u.shape[2]
  logits = np.zeros((b, k.shape[0]))
  for i in range(b):
    gram = u[i].T @ u[i]
    lam = ridge * np.trace(gram) / r + 1e-12
    proj = u[i] @ np.linalg.inv(gram + lam * np.eye(r)) @ u[i].T
    pa, pk = proj @ a[i], k @ proj.T
    logits[i] = scale * (pk @ pa) / (np.linalg.norm(pa) * np.linalg.norm(pk, axis=1))
  total = 0.0
  for i in range(b):
    pos = yk == y2[i]
    neg = ~pos & (yk != y1[i])
    lse = np.log(np.sum(np.exp(logits[i][neg])))
    per = np.log(np.exp(logits[i][pos]) + np.exp(lse)) - logits[i][pos]
    total += per.sum() / max(pos.sum(), 1) / b
  return total


def test_lowrank_loss_matches_numpy():
  rng = np.random.default_rng(0)
  a, k = rng.normal(size=(6, 5)), rng.normal(size=(9, 5))
  u = rng.normal(size=(6, 5, 2))
  y1, y2 = np.array([0, 1, 2, 0, 1, 2]), np.array([1, 1, 0, 2, 0, 2])
  yk = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2])
  want = _numpy_lowrank_loss(a, k, u, y1, y2, yk, 10.0, 1e-4)
  got = losses.lowrank_simlap_loss(*(jnp.asarray(x, jnp.float32) for x in (a, k, u)),
                                   jnp.asarray(y1), jnp.asarray(y2), jnp.asarray(yk),
                                   scale=10.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  grads = jax.grad(losses.lowrank_simlap_loss, argnums=(0, 1, 2))(
      *(jnp.asarray(x, jnp.float32) for x in (a, k, u)), jnp.asarray(y1), jnp.asarray(y2),
      jnp.asarray(yk))
  assert all(np.all(np.isfinite(g)) and np.any(g != 0) for g in grads)


def test_lowrank_logits_spanning_everything_are_the_open_gate_logits():
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(7, 6)), jnp.float32)
  open_logits = losses.subspace_logits(a, k, jnp.ones((4, 6)))
  # A scaled rotation per anchor (U^T U = c^2 I): P is the identity up to 1 / (1 + ridge).
  q = np.stack([np.linalg.qr(rng.normal(size=(6, 6)))[0] * (i + 0.5) for i in range(4)])
  got = losses.lowrank_subspace_logits(a, k, jnp.asarray(q, jnp.float32))
  np.testing.assert_allclose(got, open_logits, atol=1e-5)
  # Any full-rank U spans R^D: P -> I as the ridge -> 0.
  u = jnp.asarray(rng.normal(size=(4, 6, 6)) + 3 * np.eye(6), jnp.float32)
  got = losses.lowrank_subspace_logits(a, k, u, ridge=1e-9)
  np.testing.assert_allclose(got, open_logits, atol=1e-4)
  y = jnp.array([0, 1, 0, 1])
  yk = jnp.array([0, 1, 2, 0, 1, 2, 0])
  np.testing.assert_allclose(
      losses.lowrank_simlap_loss(a, k, u, y, y[::-1], yk, ridge=1e-9),
      losses.simlap_loss(a, k, jnp.ones((4, 6)), y, y[::-1], yk), rtol=1e-4)
  # A proper subspace is not the full space.
  assert np.abs(losses.lowrank_subspace_logits(a, k, u[..., :2]) - open_logits).max() > 0.1


def test_lowrank_loss_lowers_to_plain_xla_ops():
  """No LAPACK custom calls (jnp.linalg.cholesky on CPU): in a batch-sharded step over several
  CPU devices they deadlocked against the step's collectives."""
  args = (jnp.ones((4, 6)), jnp.ones((5, 6)), jnp.ones((4, 6, 3)), jnp.zeros(4, jnp.int32),
          jnp.zeros(4, jnp.int32), jnp.zeros(5, jnp.int32))
  text = jax.jit(jax.grad(losses.lowrank_simlap_loss, argnums=(0, 1, 2))).lower(*args).as_text()
  assert "custom_call" not in text


def _count(module, num_classes):
  y = jnp.zeros((2,), jnp.int32)
  shapes = jax.eval_shape(lambda: module.init(jax.random.key(0), y, y, train=False))
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes["params"]))


@pytest.mark.parametrize("dims", [(10, 256, 512, 1024, 16), (10, 16, 16, 32, 4)])
def test_lowrank_parameter_count_matches_the_gate(dims):
  c, d, e, h, r = dims
  gate = _count(gates_lib.GateTable(num_classes=c, dim=d, embed_dim=e, hidden_dim=h), c)
  low = _count(lowrank.LowRankTable(num_classes=c, dim=d, embed_dim=e, hidden_dim=h, rank=r), c)
  assert gate == lowrank.parameter_count(c, d, e, h)
  assert low == lowrank.parameter_count(c, d, e, h, r)
  assert 0 <= low - gate <= (r - 1) * d  # the stated margin: r - 1 extra bias vectors
  if dims[1] == 256:  # the default: 795,904 vs 799,744 parameters (+0.48%)
    assert (gate, low) == (795_904, 799_744)


# ------------------------------------------------------------------------------------------------
# X-CLR.
# ------------------------------------------------------------------------------------------------
def _numpy_xclr(z, y, sim, scale, graph_scale):
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  m = len(y)
  total = 0.0
  for i in range(m):
    others = np.arange(m) != i
    logits = scale * z[others] @ z[i]
    graph = graph_scale * sim[y[i], y[others]]
    target = np.exp(graph - graph.max()) / np.sum(np.exp(graph - graph.max()))
    log_p = logits - np.log(np.sum(np.exp(logits)))
    total -= np.sum(target * log_p) / m
  return total


def test_xclr_matches_numpy_and_reduces_to_supcon():
  rng = np.random.default_rng(2)
  z = rng.normal(size=(8, 5))
  y = np.array([0, 1, 2, 0, 1, 2, 2, 0])
  sim = np.array([[1.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 1.0]])
  got = losses.xclr_loss(jnp.asarray(z, jnp.float32), jnp.asarray(y), jnp.asarray(sim),
                         scale=10.0, graph_scale=10.0)
  np.testing.assert_allclose(float(got), _numpy_xclr(z, y, sim, 10.0, 10.0), rtol=1e-5)
  # Identity graph at a tiny tau_s: SupCon's L_out with self excluded (the authors' check).
  zj, yj = jnp.asarray(z, jnp.float32), jnp.asarray(y)
  np.testing.assert_allclose(losses.xclr_loss(zj, yj, jnp.eye(3), graph_scale=1e5),
                             losses.supcon_loss(zj, zj, yj, yj, exclude_self=True), rtol=1e-5)


def test_objectives_wire_the_ablation_losses():
  """The trainer's objective = the loss above with the config's temperatures and class graph."""
  rng = np.random.default_rng(3)
  z1, z2 = (jnp.asarray(rng.normal(size=(6, 4)), jnp.float32) for _ in range(2))
  y = jnp.array([0, 1, 2, 3, 7, 9])  # Fashion-MNIST: tops 0, 2; other 1, 3; footwear 7, 9
  scale = jnp.float32(10.0)
  config = config_schema.apply_method(config_schema.base_config(), "xclr")
  config.loss.xclr_tau_s = 0.25
  got, _ = objectives.get(config.objective).embedding_loss(config, z1, z2, y, None, None, scale)
  sim = np.where(np.eye(10, dtype=bool), 1.0, 0.0)
  for group in ((0, 2, 4, 6), (5, 7, 9), (1, 3, 8)):  # the class tree: same group 1/2
    for i in group:
      for j in group:
        sim[i, j] = 1.0 if i == j else 0.5
  want = _numpy_xclr(np.concatenate([z1, z2]), np.concatenate([y, y]), sim, 10.0, 4.0)
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  config = config_schema.apply_method(config_schema.base_config(), "simlap_lowrank")
  u = jnp.asarray(rng.normal(size=(6, 4, 2)), jnp.float32)
  y2 = y[::-1]
  got, _ = objectives.get(config.objective).embedding_loss(config, z1, z2, y, y2, u, scale)
  want = 0.5 * (losses.lowrank_simlap_loss(z1, z2, u, y, y2, y)
                + losses.lowrank_simlap_loss(z2, z1, u, y, y2, y))
  np.testing.assert_allclose(float(got), float(want), rtol=1e-6)
