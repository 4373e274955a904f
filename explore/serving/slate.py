"""Slates: exploration items from the planned clusters, the regular top-k, and their mix.

Exploration: each planned cluster gets its own restricted top-k (so every
planned cluster can show its items), then the exploration slate takes the
clusters' items round-robin in plan order: the best item of each cluster, then
the second of each, ... Regular: the recommender's unrestricted top-k over the
whole catalog by the model's own score u . v (the popularity prior is tuned for
retrieval inside a cluster, not over the catalog). The mixed slate puts the
exploration items at evenly spaced slots (`exploration_slots`) and fills the
rest with regular items that the exploration part does not already hold.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from explore.retrieval import topk_ops

EXPLORE, REGULAR = 0, 1
KINDS = ("explore", "regular")


@functools.partial(jax.jit, static_argnames=("k",))
def regular_top_k(users: jax.Array, items: jax.Array, seen: jax.Array, k: int
                  ) -> tuple[jax.Array, jax.Array]:
  """([B, k] scores, [B, k] ids) of users [B, D] over items [N, D]; seen [B, S] (-1 pads)."""
  scores = jnp.einsum("bd,nd->bn", users, items, precision=jax.lax.Precision.HIGHEST)  # [B, N]
  scores = topk_ops.mask_seen(scores, seen)
  top, ids = jax.lax.top_k(scores, k)  # [B, k]
  return top, jnp.where(jnp.isfinite(top), ids, -1)


def round_robin(ids: np.ndarray, scores: np.ndarray, clusters: np.ndarray, width: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """[B, width] (ids, scores, clusters) taking per-cluster lists [B, c, k] rank by rank."""
  b, c, k = ids.shape
  flat_ids = ids.transpose(0, 2, 1).reshape(b, k * c)  # rank-major: rank 0 of every cluster first
  flat_scores = scores.transpose(0, 2, 1).reshape(b, k * c)
  flat_clusters = np.broadcast_to(clusters[:, None, :], (b, k, c)).reshape(b, k * c)
  order = np.argsort(flat_ids < 0, axis=1, kind="stable")[:, :width]  # real items first
  out_ids = np.take_along_axis(flat_ids, order, 1)
  real = out_ids >= 0
  return (out_ids, np.where(real, np.take_along_axis(flat_scores, order, 1), -np.inf),
          np.where(real, np.take_along_axis(flat_clusters, order, 1), -1))


def exploration_slots(n_explore: int, total: int) -> np.ndarray:
  """The slots of `n_explore` exploration items in a slate of `total`, evenly spaced."""
  if n_explore <= 0:
    return np.zeros(0, np.int64)
  return np.floor((np.arange(n_explore) + 0.5) * total / n_explore).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class Mixed:
  items: np.ndarray  # [B, total] int32 dense item ids; -1 where nothing is left
  kind: np.ndarray  # [B, total] int8 EXPLORE or REGULAR
  regular: np.ndarray  # [B, n_regular] int32 the regular items kept (not in the exploration)
  regular_scores: np.ndarray  # [B, n_regular] float32


def mix(explore_ids: np.ndarray, regular_ids: np.ndarray, regular_scores: np.ndarray,
        n_regular: int) -> Mixed:
  """Exploration items [B, e] at `exploration_slots`, regular candidates [B, r] elsewhere."""
  b, n_explore = explore_ids.shape
  duplicate = (regular_ids[:, :, None] == explore_ids[:, None, :]).any(-1) | (regular_ids < 0)
  order = np.argsort(duplicate, axis=1, kind="stable")[:, :n_regular]  # kept candidates first
  regular = np.where(np.take_along_axis(duplicate, order, 1), -1,
                     np.take_along_axis(regular_ids, order, 1)).astype(np.int32)
  kept_scores = np.where(regular >= 0, np.take_along_axis(regular_scores, order, 1), -np.inf)
  total = n_explore + n_regular
  slots = exploration_slots(n_explore, total)
  others = np.setdiff1d(np.arange(total), slots)
  items = np.full((b, total), -1, np.int32)
  kind = np.full((b, total), REGULAR, np.int8)
  items[:, slots], kind[:, slots] = explore_ids, EXPLORE
  items[:, others] = regular
  return Mixed(items, kind, regular, kept_scores.astype(np.float32))
