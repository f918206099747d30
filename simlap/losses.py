"""SimLAP losses in pure JAX: subspace-masked multi-positive NT-Xent, its baselines and ablations.

Imports only jax and the standard library, so other projects can copy or import this file.
Notation: anchors (B, D) of view 1, keys (N, D) of view 2 over the *global* batch, gates (B, D)
in [0, 1], labels y1, y2 (B,) and yk (N,), scale s = 1 / temperature (docs/method.md, "The
loss"). Called on global arrays under `jax.jit`, XLA inserts the all-gather of the keys across
devices and the gradient through it is exact.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

# Added under square roots of squared norms: keeps zero vectors and fully closed gates finite.
# Tiny against real embeddings (LayerNorm outputs have squared norm ~D), so the cosine is
# scale-invariant to ~1e-12 relative.
_EPS = 1e-12
VARIANTS = ("cosine", "weighted")
REDUCTIONS = ("anchor", "pair")
PAIR_KINDS = ("arbitrary", "identical", "distinct", "selective")


# ------------------------------------------------------------------------------------------------
# Argument checks: run at trace time, so a mistake fails before anything is compiled.
# ------------------------------------------------------------------------------------------------
def _check_matrix(name: str, x: Any) -> None:
  if not hasattr(x, "shape") or x.ndim != 2:
    raise ValueError(f"{name} must be a 2-D array (rows, dim), got shape {getattr(x, 'shape', x)}")
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(f"{name} must be a floating array, got dtype {x.dtype}")


def _check_labels(name: str, y: Any, length: int) -> None:
  if not hasattr(y, "shape") or y.shape != (length,):
    raise ValueError(f"{name} must have shape ({length},), got {getattr(y, 'shape', y)}")
  if not jnp.issubdtype(y.dtype, jnp.integer):
    raise TypeError(f"{name} must be an integer array, got dtype {y.dtype}")


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not one of {choices}")


def _check_pair(anchors: Array, keys: Array, gates: Array | None = None) -> None:
  _check_matrix("anchors", anchors)
  _check_matrix("keys", keys)
  if anchors.shape[1] != keys.shape[1]:
    raise ValueError(f"anchors {anchors.shape} and keys {keys.shape} differ in dimension")
  if gates is not None:
    _check_matrix("gates", gates)
    if gates.shape != anchors.shape:
      raise ValueError(f"gates must match anchors {anchors.shape}, got {gates.shape}")


# ------------------------------------------------------------------------------------------------
# Similarities.
# ------------------------------------------------------------------------------------------------
def _compute_dtype(*xs: Array) -> jnp.dtype:
  """At least float32: bfloat16 inputs are promoted, float64 (under x64) is kept."""
  return jnp.result_type(jnp.float32, *(x.dtype for x in xs))


def l2_normalize(x: Array, eps: float = _EPS) -> Array:
  """Row-wise L2 normalisation of (..., D), in at least float32; all-zero rows stay zero.

  The one jax L2-normalisation of the project (the losses and simlap.evaluation use it).
  """
  x = jnp.asarray(x, _compute_dtype(jnp.asarray(x)))
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def subspace_logits(anchors: Array, keys: Array, gates: Array, *,
                    variant: str = "cosine") -> Array:
  """Similarity of each anchor to each key inside the anchor's gated subspace (no scale).

  Args:
    anchors: (B, D) embeddings.
    keys: (N, D) embeddings.
    gates: (B, D) gate of each anchor's class pair, usually in [0, 1].
    variant: "cosine": cos(g_b * a_b, g_b * k_n), renormalised inside the subspace;
      "weighted": sum_d g_bd^2 a_hat_bd k_hat_nd after normalising in the full space.
  Returns:
    (B, N) similarities in at least float32. The cosine form uses two matmuls, numerator
    (a g^2) k^T and squared key norms (g^2)(k^2)^T, and never builds the (B, N, D) tensor.
  """
  _check_pair(anchors, keys, gates)
  _check_choice("variant", variant, VARIANTS)
  dtype = _compute_dtype(anchors, keys, gates)
  a, k, g = (x.astype(dtype) for x in (anchors, keys, gates))
  g2 = g * g
  if variant == "weighted":
    return (l2_normalize(a) * g2) @ l2_normalize(k).T
  numerator = (a * g2) @ k.T
  anchor_norm2 = jnp.sum(g2 * a * a, axis=-1, keepdims=True)
  key_norm2 = g2 @ (k * k).T
  return numerator * jax.lax.rsqrt(anchor_norm2 + _EPS) * jax.lax.rsqrt(key_norm2 + _EPS)


# ------------------------------------------------------------------------------------------------
# Pair labels.
# ------------------------------------------------------------------------------------------------
def selective_pair_weights(distances: Array, *, alpha: float = 0.0,
                           max_level: float | None = None) -> Array:
  """Unnormalised probabilities w[y1, y2] = (1 + d[y1, y2])^-alpha of "selective" pairs.

  Args:
    distances: (C, C) class distances d, d[y, y] = 0 (e.g. a class tree: 0 same class, 1 same
      group, 2 otherwise).
    alpha: 0 = uniform over the allowed classes; larger favours close pairs.
    max_level: cut-off: pairs with d >= max_level get weight 0 (1 = identical pairs only);
      the identical pair (y, y) is always allowed. None = no cut-off.
  Returns:
    (C, C) float32 weights; every row has a positive entry (its diagonal).
  """
  d = jnp.asarray(distances, jnp.float32)
  if d.ndim != 2 or d.shape[0] != d.shape[1]:
    raise ValueError(f"distances must be a (C, C) matrix, got shape {d.shape}")
  w = (1.0 + d) ** -jnp.float32(alpha)
  if max_level is None:
    return w
  return jnp.where((d < max_level) | jnp.eye(d.shape[0], dtype=bool), w, 0.0)


def sample_pair_labels(rng: Array, labels: Array, *, kind: str = "arbitrary",
                       num_classes: int | None = None, distances: Array | None = None,
                       alpha: float = 0.0, max_level: float | None = None) -> Array:
  """Pair label y2 for each anchor.

  Args:
    rng: a PRNG key.
    labels: (B,) integer anchor labels y1.
    kind: "arbitrary": y1 permuted over the batch (y2 is always a class present in the batch);
      "identical": y2 = y1; "distinct": y2 = (y1 + U{1..C-1}) mod C, often absent from the batch;
      "selective": y2 drawn independently per anchor from all C classes (not from the batch, so
      it may be absent from it) with probability proportional to `selective_pair_weights`
      (distances, alpha, max_level) of row y1.
    num_classes: C, required for "distinct".
    distances, alpha, max_level: "selective" only; distances (C, C) is required.
  Returns:
    (B,) pair labels, same dtype as `labels`.
  """
  _check_choice("kind", kind, PAIR_KINDS)
  if not hasattr(labels, "ndim") or labels.ndim != 1:
    raise ValueError(f"labels must be 1-D, got shape {getattr(labels, 'shape', labels)}")
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
  if kind == "identical":
    return labels
  if kind == "arbitrary":
    return labels[jax.random.permutation(rng, labels.shape[0])]
  if kind == "selective":
    if distances is None:
      raise ValueError("kind='selective' needs distances, a (C, C) class-distance matrix")
    # log 0 = -inf: a cut-off class is never drawn (its Gumbel-max score stays -inf).
    log_w = jnp.log(selective_pair_weights(distances, alpha=alpha, max_level=max_level))
    return jax.random.categorical(rng, log_w[labels], axis=-1).astype(labels.dtype)
  if num_classes is None or num_classes < 2:
    raise ValueError(f"kind='distinct' needs num_classes >= 2, got {num_classes}")
  shift = jax.random.randint(rng, labels.shape, 1, num_classes, dtype=labels.dtype)
  return (labels + shift) % num_classes


# ------------------------------------------------------------------------------------------------
# The SimLAP loss: shared pieces.
# ------------------------------------------------------------------------------------------------
def _masks(anchor_labels, pair_labels, key_labels):
  """(b, N) positive and negative masks; everything else is excluded."""
  positive = key_labels[None, :] == pair_labels[:, None]
  negative = ~positive & (key_labels[None, :] != anchor_labels[:, None])
  return positive, negative


def _negative_logsumexp(logits, negative):
  """(b,) log sum_{negatives} exp(logits); -inf for rows without negatives, never NaN."""
  row_max = jnp.max(jnp.where(negative, logits, -jnp.inf), axis=1)
  row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  sum_exp = jnp.sum(jnp.where(negative, jnp.exp(logits - row_max[:, None]), 0.0), axis=1)
  has_negative = sum_exp > 0
  # Double `where`: log is evaluated on 1.0 for empty rows so its gradient is finite (zero).
  return jnp.where(has_negative, jnp.log(jnp.where(has_negative, sum_exp, 1.0)) + row_max,
                   -jnp.inf)


def _row_weights(num_positives, reduction, num_anchors, total_positives):
  """Weight of each positive pair of a row so the weighted sum is the requested reduction."""
  if reduction == "anchor":
    return 1.0 / (num_anchors * jnp.maximum(num_positives, 1))
  return jnp.ones(num_positives.shape) / jnp.maximum(total_positives, 1)


def _count_positives(pair_labels, key_labels):
  # A compare-and-sum that XLA fuses into one loop: the (B, N) mask is never stored.
  return jnp.sum(key_labels[None, :] == pair_labels[:, None], dtype=jnp.int32)


def _masked_nt_xent(logits: Array, anchor_labels: Array, pair_labels: Array,
                    key_labels: Array, reduction: str) -> Array:
  """The subspace-masked multi-positive NT-Xent of (B, N) scaled logits, by autodiff."""
  positive, negative = _masks(anchor_labels, pair_labels, key_labels)
  lse = _negative_logsumexp(logits, negative)
  per_pair = jnp.where(positive, jax.nn.softplus(lse[:, None] - logits), 0.0)
  num_pos = jnp.sum(positive, axis=1)
  weights = _row_weights(num_pos, reduction, logits.shape[0], jnp.sum(num_pos)).astype(
      logits.dtype)
  return jnp.sum(weights * jnp.sum(per_pair, axis=1))


def simlap_loss_reference(anchors: Array, keys: Array, gates: Array, anchor_labels: Array,
                          pair_labels: Array, key_labels: Array, *, scale: float | Array = 10.0,
                          variant: str = "cosine", reduction: str = "anchor") -> Array:
  """Plain autodiff form of `simlap_loss` (same arguments and value); used as the test oracle."""
  _validate(anchors, keys, gates, anchor_labels, pair_labels, key_labels, variant, reduction)
  sims = subspace_logits(anchors, keys, gates, variant=variant)
  logits = jnp.asarray(scale, sims.dtype) * sims
  return _masked_nt_xent(logits, anchor_labels, pair_labels, key_labels, reduction)


def _validate(anchors, keys, gates, anchor_labels, pair_labels, key_labels, variant, reduction):
  _check_pair(anchors, keys, gates)
  _check_labels("anchor_labels", anchor_labels, anchors.shape[0])
  _check_labels("pair_labels", pair_labels, anchors.shape[0])
  _check_labels("key_labels", key_labels, keys.shape[0])
  _check_choice("variant", variant, VARIANTS)
  _check_choice("reduction", reduction, REDUCTIONS)


# ------------------------------------------------------------------------------------------------
# The SimLAP loss: fused loss-and-gradient over blocks of anchor rows.
# ------------------------------------------------------------------------------------------------
def _block_loss_and_grads(a, g, y1, y2, k, k_sq, yk, scale, weights_fn, variant):
  """Loss sum and input gradients for a block of b anchor rows against all N keys.

  Returns (loss_sum, d_anchors (b, D), d_gates (b, D), d_keys (N, D), d_scale). Temporaries are
  O(b * N); the gradient d loss / d logits (G below) is derived by hand:
    loss = sum_b w_b sum_{p in P_b} softplus(lse_b - l_bp)
    dL/dl_bp = -w_b sigmoid(lse_b - l_bp)                       (positives)
    dL/dl_bn = c_b exp(l_bn - lse_b),  c_b = w_b sum_p sigmoid(lse_b - l_bp)   (negatives)
  """
  g2 = g * g
  if variant == "cosine":
    ag2 = a * g2
    numerator = ag2 @ k.T
    key_norm2 = g2 @ k_sq.T
    inv_anchor_norm = jax.lax.rsqrt(jnp.sum(ag2 * a, axis=1) + _EPS)
    inv_key_norm = jax.lax.rsqrt(key_norm2 + _EPS)
    cos = numerator * inv_anchor_norm[:, None] * inv_key_norm
  else:
    (a_hat, k_hat), normalize_vjp = jax.vjp(lambda u, v: (l2_normalize(u), l2_normalize(v)),
                                            a, k)
    cos = (a_hat * g2) @ k_hat.T
  logits = scale * cos

  positive, negative = _masks(y1, y2, yk)
  lse = _negative_logsumexp(logits, negative)
  lse_finite = jnp.where(jnp.isfinite(lse), lse, 0.0)
  weights = weights_fn(jnp.sum(positive, axis=1)).astype(logits.dtype)
  shifted = lse[:, None] - logits  # -inf on rows without negatives: softplus 0, sigmoid 0
  loss_sum = jnp.sum(weights * jnp.sum(jnp.where(positive, jax.nn.softplus(shifted), 0.0), 1))
  pos_sigmoid = jnp.where(positive, jax.nn.sigmoid(shifted), 0.0)
  neg_weight = weights * jnp.sum(pos_sigmoid, axis=1)
  grad_logits = (jnp.where(negative, neg_weight[:, None] * jnp.exp(logits - lse_finite[:, None]),
                           0.0) - weights[:, None] * pos_sigmoid)
  d_scale = jnp.sum(grad_logits * cos)
  grad_cos = scale * grad_logits

  if variant == "cosine":
    # cos = numerator * ra * rk with ra = (|g a|^2)^-1/2 and rk = ((g^2)(k^2)^T)^-1/2.
    d_numerator = grad_cos * inv_anchor_norm[:, None] * inv_key_norm
    d_key_norm2 = -0.5 * grad_cos * numerator * inv_anchor_norm[:, None] * inv_key_norm ** 3
    d_anchor_norm2 = -0.5 * inv_anchor_norm ** 3 * jnp.sum(grad_cos * numerator * inv_key_norm,
                                                           axis=1)
    dn_k = d_numerator @ k
    d_a = g2 * dn_k + 2.0 * g2 * a * d_anchor_norm2[:, None]
    d_g2 = a * dn_k + d_key_norm2 @ k_sq + a * a * d_anchor_norm2[:, None]
    d_k = d_numerator.T @ ag2 + 2.0 * k * (d_key_norm2.T @ g2)
  else:
    d_weighted_anchor = grad_cos @ k_hat  # d/d(a_hat * g2)
    d_g2 = a_hat * d_weighted_anchor
    d_a, d_k = normalize_vjp((g2 * d_weighted_anchor, grad_cos.T @ (a_hat * g2)))
  return loss_sum, d_a, 2.0 * g * d_g2, d_k, d_scale


def _fused_loss_and_grads(a, k, g, y1, y2, yk, scale, variant, reduction, chunk_size):
  """Loss and gradients w.r.t. (a, k, g, scale); rows processed `chunk_size` at a time."""
  num_anchors = a.shape[0]
  total_positives = (_count_positives(y2, yk) if reduction == "pair" else None)
  weights_fn = functools.partial(_row_weights, reduction=reduction, num_anchors=num_anchors,
                                 total_positives=total_positives)
  # k * k is loop-invariant: computed once here rather than in every chunk.
  block = functools.partial(_block_loss_and_grads, k=k, k_sq=k * k, yk=yk, scale=scale,
                            weights_fn=weights_fn, variant=variant)
  if not chunk_size or chunk_size >= num_anchors:
    loss, d_a, d_g, d_k, d_s = block(a, g, y1, y2)
    return loss, (d_a, d_k, d_g, d_s)

  # Pad rows to a multiple of the chunk: padded rows get pair label -1, which no key has, so
  # they have no positives and contribute exactly zero loss and gradient.
  num_chunks = -(-num_anchors // chunk_size)
  pad = num_chunks * chunk_size - num_anchors
  a_p, g_p = (jnp.pad(x, ((0, pad), (0, 0))) for x in (a, g))
  y1_p = jnp.pad(y1, (0, pad))
  y2_p = jnp.pad(y2, (0, pad), constant_values=-1)
  chunked = [x.reshape(num_chunks, chunk_size, *x.shape[1:]) for x in (a_p, g_p, y1_p, y2_p)]

  def body(carry, xs):
    loss, d_k, d_s = carry
    block_loss, d_a, d_g, block_d_k, block_d_s = block(*xs)
    return (loss + block_loss, d_k + block_d_k, d_s + block_d_s), (d_a, d_g)

  init = (jnp.zeros((), a.dtype), jnp.zeros_like(k), jnp.zeros((), a.dtype))
  (loss, d_k, d_s), (d_a, d_g) = jax.lax.scan(body, init, chunked)
  d_a = d_a.reshape(-1, a.shape[1])[:num_anchors]
  d_g = d_g.reshape(-1, g.shape[1])[:num_anchors]
  return loss, (d_a, d_k, d_g, d_s)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _fused_loss(a, k, g, y1, y2, yk, variant, reduction, chunk_size, scale):
  return _fused_loss_and_grads(a, k, g, y1, y2, yk, scale, variant, reduction, chunk_size)[0]


def _fused_loss_fwd(a, k, g, y1, y2, yk, variant, reduction, chunk_size, scale):
  loss, grads = _fused_loss_and_grads(a, k, g, y1, y2, yk, scale, variant, reduction, chunk_size)
  return loss, grads


def _fused_loss_bwd(variant, reduction, chunk_size, grads, cotangent):
  del variant, reduction, chunk_size
  d_a, d_k, d_g, d_s = (cotangent * x for x in grads)
  return d_a, d_k, d_g, None, None, None, d_s


_fused_loss.defvjp(_fused_loss_fwd, _fused_loss_bwd)


def simlap_loss(anchors: Array, keys: Array, gates: Array, anchor_labels: Array,
                pair_labels: Array, key_labels: Array, *, scale: float | Array = 10.0,
                variant: str = "cosine", reduction: str = "anchor",
                chunk_size: int | None = None) -> Array:
  """Subspace-masked multi-positive NT-Xent (SimLAP).

  With logits l = scale * `subspace_logits` and, for anchor b and key n,

    positives  P[b, n] = (yk[n] == y2[b])
    excluded   X[b, n] = P[b, n] or (yk[n] == y1[b])     (same-class keys: neither pos nor neg)
    loss[b, p] = log(exp(l[b, p]) + sum_{n not in X_b} exp(l[b, n])) - l[b, p]
               = softplus(lse_neg[b] - l[b, p])

  The gradient is computed in the same sweep as the loss (a `jax.custom_vjp` whose forward pass
  also yields the input gradients), so nothing of size B x N outlives the forward pass.

  Args:
    anchors: (B, D) anchor embeddings (view 1). Any float dtype; computed in at least float32.
    keys: (N, D) key embeddings (view 2) over the global batch.
    gates: (B, D) gate g(y1_b, y2_b) of each anchor's class pair.
    anchor_labels: (B,) int, y1.
    pair_labels: (B,) int, y2 (see `sample_pair_labels`).
    key_labels: (N,) int, yk.
    scale: s = 1 / temperature; a float or a traced scalar (learned log-scale: pass exp of it).
    variant: "cosine" or "weighted" (see `subspace_logits`).
    reduction: "anchor": mean over anchors of the mean over that anchor's positives (rows with
      no positive count 0); "pair": mean over all positive pairs.
    chunk_size: process anchors this many rows at a time (temporaries O(chunk_size * N)); None
      or 0 processes all rows at once.
  Returns:
    scalar loss, float32 (float64 for float64 inputs).
  """
  _validate(anchors, keys, gates, anchor_labels, pair_labels, key_labels, variant, reduction)
  # Cast outside the custom_vjp: its cotangents then match the caller's dtypes automatically.
  dtype = _compute_dtype(anchors, keys, gates)
  a, k, g = (x.astype(dtype) for x in (anchors, keys, gates))
  return _fused_loss(a, k, g, anchor_labels, pair_labels, key_labels, variant, reduction,
                     chunk_size, jnp.asarray(scale, dtype))


# ------------------------------------------------------------------------------------------------
# Baselines.
# ------------------------------------------------------------------------------------------------
def supcon_loss(anchors: Array, keys: Array, anchor_labels: Array, key_labels: Array, *,
                scale: float | Array = 10.0, exclude_self: bool = False) -> Array:
  """Supervised contrastive loss, the L_out form of Khosla et al. (2020), eq. 2.

  For anchor i with positives P(i) = {n : yk_n == ya_i} and denominator set A(i) (all keys):
    L_i = -1/|P(i)| sum_{p in P(i)} log( exp(l_ip) / sum_{n in A(i)} exp(l_in) ),
  averaged over anchors with at least one positive (others count 0, as in SimLAP's "anchor"
  reduction). With `exclude_self=True` (anchors and keys are the same set, e.g. both views
  concatenated), key i is removed from P(i) and A(i) for anchor i: exactly the paper's form.

  Args:
    anchors: (B, D); keys: (N, D); anchor_labels: (B,) int; key_labels: (N,) int.
    scale: 1 / temperature.
    exclude_self: requires B == N; drops the diagonal.
  Returns:
    scalar loss, float32 (float64 for float64 inputs).
  """
  _check_pair(anchors, keys)
  _check_labels("anchor_labels", anchor_labels, anchors.shape[0])
  _check_labels("key_labels", key_labels, keys.shape[0])
  if exclude_self and anchors.shape[0] != keys.shape[0]:
    raise ValueError(f"exclude_self needs as many anchors as keys, got {anchors.shape[0]} and "
                     f"{keys.shape[0]}")
  dtype = _compute_dtype(anchors, keys)
  logits = jnp.asarray(scale, dtype) * (
      l2_normalize(anchors.astype(dtype)) @ l2_normalize(keys.astype(dtype)).T)
  valid = jnp.ones(logits.shape, bool)
  if exclude_self:
    valid = ~jnp.eye(logits.shape[0], dtype=bool)
  positive = (key_labels[None, :] == anchor_labels[:, None]) & valid
  log_prob = logits - jax.nn.logsumexp(jnp.where(valid, logits, -jnp.inf), axis=1,
                                       keepdims=True)
  num_pos = jnp.sum(positive, axis=1)
  per_anchor = -jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(num_pos, 1)
  return jnp.mean(per_anchor)


def nt_xent(anchors: Array, keys: Array, *, scale: float | Array = 10.0,
            same_view_negatives: bool = False) -> Array:
  """SimCLR's instance-discrimination loss: key i is the positive of anchor i.

  Args:
    anchors: (B, D) view-1 embeddings; keys: (B, D) view-2 embeddings of the same images.
    scale: 1 / temperature.
    same_view_negatives: False: cross-entropy of anchor i over the B keys (InfoNCE, one
      direction). True: SimCLR's NT-Xent exactly: both views as 2B samples, each sample's positive
      is its other view and its negatives are the other 2B - 2 samples; mean over 2B.
  Returns:
    scalar loss, float32 (float64 for float64 inputs).
  """
  _check_pair(anchors, keys)
  if anchors.shape[0] != keys.shape[0]:
    raise ValueError(f"nt_xent needs one key per anchor, got {anchors.shape[0]} anchors and "
                     f"{keys.shape[0]} keys")
  index = jnp.arange(anchors.shape[0], dtype=jnp.int32)
  if same_view_negatives:
    both = jnp.concatenate([anchors, keys])
    labels = jnp.concatenate([index, index])
    return supcon_loss(both, both, labels, labels, scale=scale, exclude_self=True)
  dtype = _compute_dtype(anchors, keys)
  a, k = l2_normalize(anchors.astype(dtype)), l2_normalize(keys.astype(dtype))
  scale = jnp.asarray(scale, dtype)
  # The positive logit as a row-wise dot, not jnp.diagonal(logits): diagonal lowers to a
  # platform-dependent conditional, and on XLA:CPU a batch-sharded conditional holding a
  # collective can run in a different order on each device and deadlock the step.
  return jnp.mean(jax.nn.logsumexp(scale * (a @ k.T), axis=1) - scale * jnp.sum(a * k, axis=1))


# ------------------------------------------------------------------------------------------------
# Diagnostics for the trainer's logs.
# ------------------------------------------------------------------------------------------------
def bernoulli_entropy(gates: Array, *, eps: float = 1e-6) -> Array:
  """Elementwise entropy (nats) of Bernoulli(g); 0 at g in {0, 1}, log 2 at g = 0.5.

  g is clipped to [eps, 1 - eps] so the logs stay finite; gates already that close to 0 or 1
  get zero gradient from the clip (they are binary anyway).
  """
  g = jnp.clip(jnp.asarray(gates, jnp.float32), eps, 1.0 - eps)
  return -(g * jnp.log(g) + (1.0 - g) * jnp.log1p(-g))


def subspace_diagnostics(anchors: Array, keys: Array, gates: Array, anchor_labels: Array,
                         pair_labels: Array, key_labels: Array, *,
                         variant: str = "cosine") -> dict[str, Array]:
  """Scalars for logging (no gradient): mean subspace similarity per key group and gate stats.

  Returns a dict of float32 scalars: `cos_positive` (keys of the pair class y2), `cos_same_class`
  (keys of the anchor's class y1 that are not positives), `cos_negative`, `gate_activation`
  (mean over anchors of sum_d g), `gate_open_fraction` (g > 0.5) and `gate_entropy` (mean
  Bernoulli entropy per dimension). A group absent from the batch gives NaN-free 0.
  """
  _validate(anchors, keys, gates, anchor_labels, pair_labels, key_labels, variant, "anchor")
  sims = jax.lax.stop_gradient(subspace_logits(anchors, keys, gates, variant=variant))
  positive, negative = _masks(anchor_labels, pair_labels, key_labels)
  same_class = ~positive & ~negative

  def masked_mean(mask):
    return jnp.sum(jnp.where(mask, sims, 0.0)) / jnp.maximum(jnp.sum(mask), 1)

  g = jax.lax.stop_gradient(gates.astype(jnp.float32))
  return {
      "cos_positive": masked_mean(positive),
      "cos_same_class": masked_mean(same_class),
      "cos_negative": masked_mean(negative),
      "gate_activation": jnp.mean(jnp.sum(g, axis=1)),
      "gate_open_fraction": jnp.mean(g > 0.5),
      "gate_entropy": jnp.mean(bernoulli_entropy(g)),
  }


# ------------------------------------------------------------------------------------------------
# Ablations: a pair-conditioned low-rank projection instead of the diagonal gate, and X-CLR.
# ------------------------------------------------------------------------------------------------
def _check_directions(anchors: Array, directions: Array) -> None:
  if not hasattr(directions, "shape") or directions.ndim != 3 or (
      directions.shape[:2] != anchors.shape):
    raise ValueError(f"directions must have shape (B, D, r) = ({anchors.shape[0]}, "
                     f"{anchors.shape[1]}, r), got {getattr(directions, 'shape', directions)}")


def _cholesky_lower(gram: Array) -> Array:
  """Lower Cholesky factor of each (r, r) matrix of (B, r, r), one column per loop step.

  Plain XLA ops (matmuls and selects) rather than `jnp.linalg.cholesky`: on XLA:CPU that is a
  LAPACK custom call, and inside a batch-sharded step over several devices those calls can
  deadlock against the step's collectives. r is small, so r steps of O(B r^2) cost nothing.
  """
  r = gram.shape[-1]
  rows = jnp.arange(r)

  def column(j, chol):
    e_j = (rows == j).astype(gram.dtype)
    # col_i = G_ij - sum_{k<j} L_ik L_jk; columns >= j of L are still zero.
    col = jnp.einsum("bij,j->bi", gram, e_j) - jnp.einsum(
        "bik,bk->bi", chol, jnp.einsum("bjk,j->bk", chol, e_j))
    diag = jnp.einsum("bi,i->b", col, e_j)
    new = jnp.where(rows >= j, col * jax.lax.rsqrt(diag)[:, None], 0.0)
    return chol + new[:, :, None] * e_j[None, None, :]

  return jax.lax.fori_loop(0, r, column, jnp.zeros_like(gram))


def _lower_inverse(chol: Array) -> Array:
  """L^-1 of each lower-triangular (r, r) matrix of (B, r, r) by forward substitution on I
  (plain XLA ops, see `_cholesky_lower`)."""
  r = chol.shape[-1]
  rows = jnp.arange(r)
  eye = jnp.eye(r, dtype=chol.dtype)

  def row(j, inv):
    e_j = (rows == j).astype(chol.dtype)
    l_row = jnp.einsum("bjk,j->bk", chol, e_j)  # row j of L
    l_jj = jnp.einsum("bk,k->b", l_row, e_j)
    # X_j = (I_j - sum_{k<j} L_jk X_k) / L_jj; rows >= j of X are still zero.
    x_j = (eye[j][None, :] - jnp.einsum("bk,bkm->bm", l_row, inv)) / l_jj[:, None]
    return inv + e_j[None, :, None] * x_j[:, None, :]

  return jax.lax.fori_loop(0, r, row, jnp.zeros_like(chol))


def _subspace_basis(directions: Array, ridge: float) -> Array:
  """Q = U L^-T (B, D, r) with L L^T = U^T U + lambda I, lambda = ridge * tr(U^T U) / r + 1e-12.

  x^T P y = (Q^T x) . (Q^T y) for P = U (U^T U + lambda I)^-1 U^T = Q Q^T: Q is an orthonormal
  basis of the subspace (up to lambda). The ridge is relative, so it stays negligible for
  well-conditioned U of any scale and keeps the factorisation finite for rank-deficient U.
  """
  r = directions.shape[-1]
  gram = jnp.einsum("bdr,bds->brs", directions, directions)
  trace = jnp.sum(directions * directions, axis=(1, 2))  # tr(U^T U), without a diagonal op
  lam = ridge * jax.lax.stop_gradient(trace) / r + 1e-12
  chol = _cholesky_lower(gram + lam[:, None, None] * jnp.eye(r, dtype=gram.dtype))
  return jnp.einsum("bds,brs->bdr", directions, _lower_inverse(chol))


def lowrank_subspace_logits(anchors: Array, keys: Array, directions: Array, *,
                            ridge: float = 1e-4) -> Array:
  """Cosine of each anchor and key after projecting both onto the anchor's pair subspace.

    l[b, n] = <P_b a_b, P_b k_n> / (|P_b a_b| |P_b k_n|),  P_b = U_b (U_b^T U_b + lambda)^-1 U_b^T

  the low-rank counterpart of `subspace_logits(variant="cosine")`, whose diag(g_b^2) P_b
  replaces (docs/method.md, "Low-rank pair subspaces").

  Args:
    anchors: (B, D) embeddings.
    keys: (N, D) embeddings.
    directions: (B, D, r) U_b, r directions spanning each anchor's pair subspace.
    ridge: relative Tikhonov term lambda (see `_subspace_basis`).
  Returns:
    (B, N) similarities in at least float32. Temporaries are O(B * N * r): the keys'
    coordinates in each anchor's subspace; the (B, N, D) tensor is never built.
  """
  _check_pair(anchors, keys)
  _check_directions(anchors, directions)
  dtype = _compute_dtype(anchors, keys, directions)
  a, k, u = (x.astype(dtype) for x in (anchors, keys, directions))
  basis = _subspace_basis(u, ridge)
  a_coord = jnp.einsum("bdr,bd->br", basis, a)  # (B, r)
  k_coord = jnp.einsum("bdr,nd->brn", basis, k)  # (B, r, N)
  numerator = jnp.einsum("br,brn->bn", a_coord, k_coord)
  anchor_norm2 = jnp.sum(a_coord * a_coord, axis=1, keepdims=True)
  key_norm2 = jnp.sum(k_coord * k_coord, axis=1)
  return numerator * jax.lax.rsqrt(anchor_norm2 + _EPS) * jax.lax.rsqrt(key_norm2 + _EPS)


def projection_diagonal(directions: Array, *, ridge: float = 1e-4) -> Array:
  """diag(P_b) of each pair subspace: (B, D, r) -> (B, D) in [0, 1], rows summing to ~r.

  The low-rank subspace's stand-in for a gate vector in analyses: for axis-aligned U (columns
  = unit vectors e_d), diag(P) is the binary gate of those dimensions.
  """
  basis = _subspace_basis(directions.astype(_compute_dtype(directions)), ridge)
  return jnp.sum(basis * basis, axis=2)


def lowrank_simlap_loss(anchors: Array, keys: Array, directions: Array, anchor_labels: Array,
                        pair_labels: Array, key_labels: Array, *,
                        scale: float | Array = 10.0, reduction: str = "anchor",
                        ridge: float = 1e-4) -> Array:
  """The SimLAP loss with low-rank pair subspaces (`lowrank_subspace_logits`) for logits.

  Same masks and reductions as `simlap_loss`; plain autodiff (temporaries O(B * N * r)).

  Args:
    anchors: (B, D); keys: (N, D); directions: (B, D, r) U(y1_b, y2_b).
    anchor_labels, pair_labels: (B,) int; key_labels: (N,) int.
    scale: 1 / temperature. reduction: "anchor" | "pair". ridge: see `lowrank_subspace_logits`.
  Returns:
    scalar loss, float32 (float64 for float64 inputs).
  """
  _check_pair(anchors, keys)
  _check_directions(anchors, directions)
  _check_labels("anchor_labels", anchor_labels, anchors.shape[0])
  _check_labels("pair_labels", pair_labels, anchors.shape[0])
  _check_labels("key_labels", key_labels, keys.shape[0])
  _check_choice("reduction", reduction, REDUCTIONS)
  sims = lowrank_subspace_logits(anchors, keys, directions, ridge=ridge)
  logits = jnp.asarray(scale, sims.dtype) * sims
  return _masked_nt_xent(logits, anchor_labels, pair_labels, key_labels, reduction)


def xclr_loss(embeddings: Array, labels: Array, class_similarity: Array, *,
              scale: float | Array = 10.0, graph_scale: float | Array = 10.0) -> Array:
  """X-CLR (Sobal et al. 2024): soft cross-entropy against a class-similarity graph.

  As the SimLAP authors implement it (erow/hydra, cl/losses.py, `xclr`), over M samples (both
  views stacked), self excluded from both distributions:
    G[i, j] = S[y_i, y_j] * graph_scale,   l[i, j] = scale * cos(z_i, z_j),   i != j
    L = -1/M sum_i sum_{j != i} softmax_j(G[i, :])[j] * log_softmax_j(l[i, :])[j]
  With S = identity and graph_scale -> inf this is SupCon (L_out) with self excluded.

  Args:
    embeddings: (M, D) embeddings of all views.
    labels: (M,) int class of each row.
    class_similarity: (C, C) class similarity S (the authors: cosine of caption embeddings).
    scale: 1 / temperature of the embedding similarities.
    graph_scale: 1 / tau_s, the temperature of the target graph.
  Returns:
    scalar loss, float32 (float64 for float64 inputs).
  """
  _check_matrix("embeddings", embeddings)
  _check_labels("labels", labels, embeddings.shape[0])
  _check_matrix("class_similarity", class_similarity)
  dtype = _compute_dtype(embeddings, class_similarity)
  z = l2_normalize(embeddings.astype(dtype))
  not_self = ~jnp.eye(z.shape[0], dtype=bool)
  logits = jnp.where(not_self, jnp.asarray(scale, dtype) * (z @ z.T), -jnp.inf)
  graph = class_similarity.astype(dtype)[labels[:, None], labels[None, :]]
  graph = jnp.where(not_self, jnp.asarray(graph_scale, dtype) * graph, -jnp.inf)
  target = jax.nn.softmax(graph, axis=1)
  log_p = jnp.where(not_self, jax.nn.log_softmax(logits, axis=1), 0.0)
  return -jnp.mean(jnp.sum(target * log_p, axis=1))
