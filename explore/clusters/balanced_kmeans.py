"""Capacity-constrained (equal-sized) k-means in JAX.

Points are split into `k` clusters whose sizes may not exceed a capacity, so
that no interest cluster swallows the catalog. Three phases, all with static
shapes under `jit` (no Python loop over points):

1. Greedy k-means++ seeding on a sample drawn in proportion to the weights.
2. Mini-batch centroid updates (`lax.scan`): each step draws a batch, computes
   a *balanced soft assignment* of it with a few log-domain Sinkhorn
   iterations on the logits -distance / eps (rows: one unit of mass per drawn
   point; columns: an equal share per cluster), and moves every centroid
   towards the points it received with a per-centroid learning rate of
   1 / (mass received so far) (Sculley's mini-batch k-means).
3. Hard assignment under capacity (`capacity_assignment`: Sinkhorn cluster
   prices, then greedy rounding), then `refine_iters` Lloyd steps (centroids
   <- means of their members, assign again).

Unweighted, every cluster gets exactly floor(n / k) or ceil(n / k) points, so
max/min <= 2 whenever n >= k; weighted (traffic), capacity is W / k + max weight.

`groups` splits each group of points independently into k clusters in one
compiled call: groups are padded to the same length and run one after another
(`lax.map`); that is how a level of the top-down tree splits all its parents.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import gin
import jax
import jax.numpy as jnp
import numpy as np

from explore.clusters.capacity_assignment import AssignConfig, capacity_assign, sq_distances


class ClusteringError(ValueError):
  """Bad input to clustering: shapes, non-finite values, k out of range."""


@dataclasses.dataclass(frozen=True)
class BalancedKMeansResult:
  """Hard balanced assignment of points to clusters (within their group)."""

  assignment: np.ndarray  # [n] int32 cluster in [0, k) within the point's group
  centroids: np.ndarray  # [groups, k, d] float32
  capacity: np.ndarray  # [groups, k] float32 most points (or weight) a cluster may hold
  cost: float  # weighted mean squared distance of points to their centroids
  rounds: int  # greedy rounding rounds of the last assignment (max over groups)


@dataclasses.dataclass(frozen=True)
class _Config:
  assign: AssignConfig
  num_steps: int
  batch_size: int
  init_sample: int
  temperature: float
  sinkhorn_iters: int
  refine_iters: int


def _sinkhorn(logits: jax.Array, log_row: jax.Array, log_col: jax.Array, iters: int) -> jax.Array:
  """Log of the entropic transport plan with row masses exp(log_row), columns exp(log_col)."""
  f = jnp.zeros(logits.shape[0], logits.dtype)  # [b]
  g = jnp.zeros(logits.shape[1], logits.dtype)  # [k]

  def body(_, fg):
    f, g = fg
    f = log_row - jax.nn.logsumexp(logits + g[None, :], axis=1)
    g = log_col - jax.nn.logsumexp(logits + f[:, None], axis=0)
    return f, g

  f, g = jax.lax.fori_loop(0, iters, body, (f, g))
  return logits + f[:, None] + g[None, :]  # [b, k]


def _kmeans_pp(key: jax.Array, sample: jax.Array, k: int) -> jax.Array:
  """Greedy k-means++ seeding on a sample [s, d] -> centroids [k, d].

  Each step draws 2 + log(k) candidates with probability proportional to the
  squared distance to the chosen centroids and keeps the one that lowers the
  total squared distance most (as scikit-learn does); plain k-means++ often
  puts two seeds in one true cluster, which balanced k-means cannot undo.
  """
  trials = 2 + int(math.log(k))
  keys = jax.random.split(key, k)
  first = jax.random.randint(keys[0], (), 0, sample.shape[0])
  centroids = jnp.zeros((k, sample.shape[1]), sample.dtype).at[0].set(sample[first])
  d2 = sq_distances(sample, sample[first][None])[:, 0]  # [s]

  def body(j, carry):
    centroids, d2 = carry
    picks = jax.random.categorical(keys[j], jnp.log(d2 + 1e-30), shape=(trials,))  # [t]
    new_d2 = jnp.minimum(d2[None, :], sq_distances(sample[picks], sample))  # [t, s]
    best = jnp.argmin(new_d2.sum(1))
    return centroids.at[j].set(sample[picks[best]]), new_d2[best]

  centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, d2))
  return centroids


def _fit_group(key, x, w, valid, cfg: _Config):
  """Balanced k-means of one (padded) group: x [m, d], w [m], valid [m]."""
  k, m = cfg.assign.k, x.shape[0]
  w = jnp.where(valid, w, 0.0)
  total = w.sum()
  key_sample, key_init, key_steps = jax.random.split(key, 3)

  # Draws are proportional to weight, so every drawn point carries the same mass.
  cdf = jnp.cumsum(w)  # [m]

  def draw(key, size):
    u = jax.random.uniform(key, (size,), maxval=total)
    return jnp.clip(jnp.searchsorted(cdf, u, side="right"), 0, m - 1)

  sample = x[draw(key_sample, cfg.init_sample)]  # [s, d]
  centroids = _kmeans_pp(key_init, sample, k)
  d_sample = sq_distances(sample, centroids)  # [s, k]
  spread = jnp.mean(d_sample.mean(1) - d_sample.min(1))
  eps = cfg.temperature * jnp.maximum(spread, 1e-12)

  # Phase 2: mini-batch updates with balanced soft assignments.
  log_row = jnp.full((cfg.batch_size,), -math.log(cfg.batch_size), jnp.float32)
  log_col = jnp.full((k,), -math.log(k), jnp.float32)

  def step(carry, key_t):
    centroids, received = carry
    xb = x[draw(key_t, cfg.batch_size)]  # [b, d]
    log_plan = _sinkhorn(-sq_distances(xb, centroids) / eps, log_row, log_col,
                         cfg.sinkhorn_iters)
    plan = jnp.exp(log_plan) * cfg.batch_size  # [b, k], rows sum to ~1
    mass = plan.sum(0)  # [k]
    received = received + mass
    sums = jnp.einsum("bk,bd->kd", plan, xb)
    centroids = centroids + (sums - mass[:, None] * centroids) / jnp.maximum(
        received, 1e-9)[:, None]
    return (centroids, received), None

  (centroids, _), _ = jax.lax.scan(
      step, (centroids, jnp.zeros(k, jnp.float32)), jax.random.split(key_steps, cfg.num_steps))

  # Phase 3: hard assignment under capacity + Lloyd refinement.
  def member_means(assign, centroids):
    """Weighted means of the points assigned to each cluster (empty: unchanged)."""
    sums = jax.ops.segment_sum(w[:, None] * x, assign, num_segments=k + 1)[:k]  # [k, d]
    mass = jax.ops.segment_sum(w, assign, num_segments=k + 1)[:k]  # [k]
    return jnp.where(mass[:, None] > 0, sums / jnp.maximum(mass, 1e-30)[:, None], centroids)

  def assign_step(_, carry):
    centroids, prices, assign, caps, _ = carry
    centroids = member_means(assign, centroids)  # unchanged at first (nothing assigned)
    assign, prices, caps, rounds = capacity_assign(x, w, valid, centroids, prices, eps,
                                                   cfg.assign)
    return centroids, prices, assign, caps, rounds

  carry = (centroids, jnp.zeros(k, jnp.float32), jnp.full(m, k, jnp.int32),
           jnp.zeros(k, jnp.float32), jnp.array(0, jnp.int32))
  centroids, _, assign, caps, rounds = jax.lax.fori_loop(
      0, cfg.refine_iters + 1, assign_step, carry)

  centroids = member_means(assign, centroids)
  safe = jnp.minimum(assign, k - 1)
  sq = jnp.maximum((x * x).sum(-1) - 2.0 * (x * centroids[safe]).sum(-1)
                   + (centroids * centroids).sum(-1)[safe], 0.0)
  cost_sum = jnp.where(valid, w * sq, 0.0).sum()
  assign = jnp.where(valid, assign, -1)
  return assign, centroids, caps, cost_sum, total, rounds


def _fit_best(keys, x, w, valid, cfg: _Config):
  """Fits one group once per key ([restarts, 2]) and keeps the lowest-cost fit."""
  fits = jax.lax.map(lambda key: _fit_group(key, x, w, valid, cfg), keys)
  best = jnp.argmin(fits[3])  # cost_sum
  return jax.tree.map(lambda a: a[best], fits)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _fit_groups(keys, x, w, valid, cfg: _Config):
  # Groups run one after another (lax.map, not vmap): a vmapped while_loop/cond
  # would run every group for as long as the slowest and evaluate both branches.
  return jax.lax.map(lambda args: _fit_best(*args, cfg=cfg), (keys, x, w, valid))


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def _check_inputs(points, k, weights, groups):
  if points.ndim != 2 or points.shape[0] == 0:
    raise ClusteringError(f"balanced_kmeans: points must be [num_points, dim] with num_points > 0, "
                          f"got shape {points.shape}")
  bad = np.flatnonzero(~np.isfinite(points).all(axis=1))
  if bad.size:
    raise ClusteringError(f"balanced_kmeans: points has {bad.size} rows with NaN or inf "
                          f"values (first: row {bad[0]})")
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise ClusteringError(f"balanced_kmeans: k must be a positive integer, got {k!r}")
  n = points.shape[0]
  if weights is not None:
    if weights.shape != (n,):
      raise ClusteringError(f"balanced_kmeans: weights has shape {weights.shape}, expected ({n},)")
    if not np.isfinite(weights).all() or (weights < 0).any():
      raise ClusteringError("balanced_kmeans: weights must be finite and >= 0")
  if groups is not None:
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
      raise ClusteringError(f"balanced_kmeans: groups must be [{n}] integers, "
                            f"got {groups.dtype} {groups.shape}")
    if groups.min() < 0:
      raise ClusteringError(f"balanced_kmeans: groups has negative id {groups.min()}")


@gin.configurable(denylist=["points", "k", "weights", "groups"])
def balanced_kmeans(
    points: np.ndarray,
    k: int,
    weights: np.ndarray | None = None,
    groups: np.ndarray | None = None,
    *,
    seed: int = 0,
    num_steps: int = 100,
    batch_size: int = 1024,
    chunk_size: int = 8192,
    init_sample: int = 4096,
    temperature: float = 0.05,
    sinkhorn_iters: int = 10,
    dual_passes: int = 5,
    refine_iters: int = 2,
    candidates: int = 8,
    restarts: int = 1,
    max_rounds: int = 10_000,
) -> BalancedKMeansResult:
  """Splits points (each group of points, if `groups` is given) into k balanced clusters.

  Args:
    points: [n, d] float vectors (e.g. L2-normalised item embeddings).
    k: clusters per group.
    weights: optional [n] non-negative traffic weights; capacity is then in weight.
    groups: optional [n] group ids; each group is clustered on its own (ids need
      not be contiguous; the result's centroids are indexed by the group id).
    seed: PRNG seed; equal inputs and seeds give equal results.
    num_steps, batch_size: mini-batch centroid updates.
    chunk_size: points per step of the full passes (bounds memory to chunk x k).
    init_sample: points drawn for k-means++ seeding.
    temperature: Sinkhorn entropy, relative to the mean gap between a point's
      mean and nearest centroid distance at initialisation.
    sinkhorn_iters: Sinkhorn iterations per mini-batch.
    dual_passes: full Sinkhorn passes that set the cluster prices before rounding.
    refine_iters: Lloyd refinements after the first hard assignment.
    candidates: best clusters kept per point during rounding (refreshed when used up).
    restarts: independent fits per group (different seeds); the lowest cost wins.
    max_rounds: safety bound on greedy rounding rounds.

  Returns:
    A `BalancedKMeansResult`.
  """
  points = np.asarray(points, np.float32)
  weights = None if weights is None else np.asarray(weights, np.float32)
  groups = None if groups is None else np.asarray(groups)
  _check_inputs(points, k, weights, groups)
  if restarts < 1:
    raise ClusteringError(f"balanced_kmeans: restarts must be >= 1, got {restarts}")
  n, d = points.shape
  group_of = np.zeros(n, np.int64) if groups is None else groups.astype(np.int64)
  num_groups = int(group_of.max()) + 1
  counts = np.bincount(group_of, minlength=num_groups)
  present = np.flatnonzero(counts)
  too_small = present[counts[present] < k]
  if too_small.size:
    g = too_small[0]
    where = "" if groups is None else f" of group {g}"
    raise ClusteringError(f"balanced_kmeans: k={k} exceeds the {counts[g]} points{where}")
  if weights is not None:
    group_weight = np.bincount(group_of, weights=weights, minlength=num_groups)
    empty = present[group_weight[present] <= 0]
    if empty.size:
      raise ClusteringError(f"balanced_kmeans: the points of group {empty[0]} have zero total weight")

  # Pad every group to the same length m (a multiple of the chunk size).
  longest = int(counts.max())
  chunk = min(chunk_size, _round_up(longest, 8))
  m = _round_up(longest, chunk)
  order = np.argsort(group_of, kind="stable")
  starts = np.concatenate([[0], np.cumsum(counts)])[:-1]
  slot = np.arange(n) - starts[group_of[order]]  # position of each point within its group
  index = np.full((len(present), m), -1, np.int64)  # [groups, m] point index or -1
  row_of_group = np.full(num_groups, -1, np.int64)
  row_of_group[present] = np.arange(len(present))
  index[row_of_group[group_of[order]], slot] = order
  valid = index >= 0
  safe_index = np.where(valid, index, 0)
  x = points[safe_index]  # [groups, m, d]
  w = np.where(valid, 1.0 if weights is None else weights[safe_index], 0.0).astype(np.float32)

  assign_cfg = AssignConfig(k=int(k), weighted=weights is not None, chunk_size=chunk,
                            dual_passes=dual_passes, candidates=candidates, max_rounds=max_rounds)
  cfg = _Config(assign=assign_cfg, num_steps=num_steps, batch_size=batch_size,
                init_sample=min(init_sample, max(m, k)), temperature=temperature,
                sinkhorn_iters=sinkhorn_iters, refine_iters=refine_iters)
  base = jax.random.PRNGKey(seed)
  group_keys = jax.vmap(lambda g: jax.random.fold_in(base, g))(jnp.asarray(present, jnp.int32))
  keys = jax.vmap(lambda key: jax.vmap(lambda r: jax.random.fold_in(key, r))(
      jnp.arange(restarts)))(group_keys)  # [groups, restarts, 2]
  assign, centroids, caps, cost_sum, total, rounds = jax.device_get(
      _fit_groups(keys, jnp.asarray(x), jnp.asarray(w), jnp.asarray(valid), cfg=cfg))

  assignment = np.empty(n, np.int32)
  assignment[index[valid]] = assign[valid]
  all_centroids = np.zeros((num_groups, k, d), np.float32)
  all_centroids[present] = centroids
  all_caps = np.zeros((num_groups, k), np.float32)
  all_caps[present] = caps
  return BalancedKMeansResult(
      assignment=assignment, centroids=all_centroids, capacity=all_caps,
      cost=float(cost_sum.sum() / max(total.sum(), 1e-30)), rounds=int(rounds.max()))
