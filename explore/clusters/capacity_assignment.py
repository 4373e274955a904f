"""Hard assignment of points to fixed centroids under a capacity per cluster, in JAX.

Two steps, both with static shapes and fixed-size chunks (memory chunk x k):

1. Cluster *prices* g [k] by Sinkhorn over all points (one pass per
   iteration): soft assignment with logits -distance / eps + g then gives every
   cluster the same mass, so most points' first choice already fits.
2. Greedy rounding in rounds (`lax.while_loop`): every unplaced point applies
   to its best cluster (by -distance / eps + g) among those that still have
   room for it; each cluster accepts its applicants in order of score while
   they fit (one sort of the points per round). A round either places every
   applicant or fills a cluster, so unweighted rounding ends after at most
   k + 1 rounds. Each point keeps its `candidates` best clusters, recomputed
   (one full pass) only when an unplaced point has run out of open ones.

Capacity. Unweighted, n points get exactly floor(n / k) or ceil(n / k) per
cluster (the n mod k clusters with the most first-choice demand get the extra
point). Weighted, capacity is in total weight: W / k + max weight, the smallest
bound at which the greedy can always place every point (if no cluster had room
for w_i, the room left, k * cap - (W - w_i), would be below k * w_i).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

# Log of a zero mass: finite, so that Sinkhorn sums never produce inf - inf.
LOG_ZERO = -1e9


@dataclasses.dataclass(frozen=True)
class AssignConfig:
  k: int
  weighted: bool
  chunk_size: int  # must divide the number of (padded) points
  dual_passes: int
  candidates: int
  max_rounds: int


def sq_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """[b, d] x [k, d] -> [b, k] squared Euclidean distances."""
  cross = jnp.einsum("bd,kd->bk", x, centroids)
  d2 = (x * x).sum(-1)[:, None] - 2.0 * cross + (centroids * centroids).sum(-1)[None, :]
  return jnp.maximum(d2, 0.0)


def _chunked(a: jax.Array, chunk: int) -> jax.Array:
  """[m, ...] -> [m // chunk, chunk, ...]."""
  return a.reshape((a.shape[0] // chunk, chunk) + a.shape[1:])


def capacity_assign(x, w, valid, centroids, prices, eps, cfg: AssignConfig):
  """Assigns points x [m, d] (weights w [m], padding where ~valid) to centroids [k, d].

  Args:
    prices: [k] starting cluster prices (zeros, or the last call's to warm-start).
    eps: entropy of the Sinkhorn step, in squared-distance units.

  Returns:
    (assign [m] int32 in [0, k), k for padding; prices [k]; capacities [k]; rounds).
  """
  k, m, chunk = cfg.k, x.shape[0], cfg.chunk_size
  w = jnp.where(valid, w, 0.0)
  total = w.sum()
  xc, wc, vc = _chunked(x, chunk), _chunked(w, chunk), _chunked(valid, chunk)
  lwc = _chunked(jnp.where(w > 0, jnp.log(jnp.where(w > 0, w, 1.0)), LOG_ZERO), chunk)
  log_target = jnp.log(jnp.maximum(total, 1e-30) / k)

  def dual_pass(_, carry):
    """One Sinkhorn column update over all points; also first-choice demand."""
    prices, _ = carry

    def body(acc, batch):
      col_lse, demand = acc
      xb, lwb, vb = batch
      logits = -sq_distances(xb, centroids) / eps + prices[None, :]  # [c, k]
      log_mass = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True) + lwb[:, None]
      col_lse = jnp.logaddexp(col_lse, jax.nn.logsumexp(log_mass, axis=0))
      first = jax.nn.one_hot(jnp.argmax(logits, axis=1), k, dtype=jnp.float32)  # [c, k]
      return (col_lse, demand + (first * vb[:, None]).sum(0)), None

    init = (jnp.full((k,), LOG_ZERO, jnp.float32), jnp.zeros(k, jnp.float32))
    (col_lse, demand), _ = jax.lax.scan(body, init, (xc, lwc, vc))
    return prices + jnp.clip(log_target - col_lse, -50.0, 50.0), demand

  prices, demand = jax.lax.fori_loop(0, cfg.dual_passes, dual_pass,
                                     (prices, jnp.zeros(k, jnp.float32)))
  if cfg.weighted:
    caps = jnp.full((k,), total / k + w.max(), jnp.float32)
  else:
    n = valid.sum()
    rank = jnp.zeros(k, jnp.int32).at[jnp.argsort(-demand, stable=True)].set(
        jnp.arange(k, dtype=jnp.int32))
    caps = (n // k + (rank < n % k)).astype(jnp.float32)

  num_candidates = min(cfg.candidates, k)

  def open_candidates(remaining):
    """Per point: its best clusters that have room for it [m, C], and their scores."""

    def body(batch):
      xb, wb = batch
      logits = -sq_distances(xb, centroids) / eps + prices[None, :]  # [c, k]
      logits = jnp.where(remaining[None, :] >= wb[:, None], logits, -jnp.inf)
      score, cand = jax.lax.top_k(logits, num_candidates)  # [c, C]
      return cand.astype(jnp.int32), score

    cand, score = jax.lax.map(body, (xc, wc))
    return cand.reshape(m, num_candidates), score.reshape(m, num_candidates)

  def first_open(cand, score, remaining):
    """Per point: first candidate with room, its score, and whether there is one."""
    open_ = (remaining[cand] >= w[:, None]) & jnp.isfinite(score)  # [m, C]
    slot = jnp.argmax(open_, axis=1)[:, None]  # [m, 1]
    return (jnp.take_along_axis(cand, slot, 1)[:, 0], jnp.take_along_axis(score, slot, 1)[:, 0],
            jnp.take_along_axis(open_, slot, 1)[:, 0])

  positions = jnp.arange(m, dtype=jnp.int32)

  def cond(state):
    assign, _, _, _, progress, rounds = state
    return jnp.any(assign < 0) & progress & (rounds < cfg.max_rounds)

  def body(state):
    assign, remaining, cand, score, _, rounds = state
    _, _, has = first_open(cand, score, remaining)
    cand, score = jax.lax.cond(jnp.any((assign < 0) & ~has),
                               lambda: open_candidates(remaining), lambda: (cand, score))
    best, best_score, has = first_open(cand, score, remaining)
    applies = (assign < 0) & has
    cluster = jnp.where(applies, best, k)  # k: not applying
    order = jnp.lexsort((-jnp.where(applies, best_score, 0.0), cluster))
    sorted_cluster, sorted_w = cluster[order], w[order]
    start = jnp.searchsorted(sorted_cluster, sorted_cluster, side="left")
    if cfg.weighted:
      cum = jnp.cumsum(sorted_w)
      taken = cum - cum[start] + sorted_w[start]  # weight up to here within the cluster
    else:
      taken = (positions - start + 1).astype(jnp.float32)
    room = jnp.concatenate([remaining, jnp.zeros(1, jnp.float32)])[sorted_cluster]
    accept = jnp.zeros(m, bool).at[order].set((sorted_cluster < k) & (taken <= room))
    assign = jnp.where(accept, cluster, assign)
    used = jax.ops.segment_sum(jnp.where(accept, w, 0.0), cluster, num_segments=k + 1)[:k]
    return assign, remaining - used, cand, score, jnp.any(accept), rounds + 1

  start_assign = jnp.where(valid, -1, k).astype(jnp.int32)  # k: padding
  cand, score = open_candidates(caps)
  state = (start_assign, caps, cand, score, jnp.array(True), jnp.array(0, jnp.int32))
  assign, remaining, _, _, _, rounds = jax.lax.while_loop(cond, body, state)
  # Only reachable past max_rounds: place leftovers where most room is left.
  assign = jnp.where(assign < 0, jnp.argmax(remaining).astype(jnp.int32), assign)
  return assign, prices, caps, rounds
