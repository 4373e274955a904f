"""Cluster-contiguous restricted top-k: users grouped by cluster, slab-wise scoring.

Each user contributes one (user, cluster) pair per distinct chosen cluster.
Pairs are sorted by cluster and packed into *tiles* of `users_per_tile` pairs
that share one cluster, so one tile's matmul reads its cluster's slab (a
static-width slice of the cluster-contiguous item table) once for up to T
users. The number of tiles is bounded statically, so every shape is static:

  tiles <= floor((P + (T - 1) * min(C, P)) / T),  P = B * c pairs.

Per tile: scores [T, W]. Then per (user, cluster) pair, its row of those
scores -> mask positions past the cluster's end and seen items -> top-k along
the slab (ties: lower position = lower item id, since items keep ascending
order inside a cluster). Selecting on the P pair rows rather than on every
tile slot skips the empty slots that the static tile bound leaves. Each user
then merges the top-k lists of its c clusters by (score desc, id asc).

This is the plain-JAX path (CPU, and the correctness reference for the Pallas
GPU kernels in `pallas_topk.py`, which reuse `group_pairs`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from explore.retrieval import topk_ops


class TileGroups(NamedTuple):
  """(user, cluster) pairs packed into single-cluster tiles."""

  tile_cluster: jax.Array  # [tiles] int32 cluster of each tile; C for an unused tile
  tile_user: jax.Array  # [tiles, T] int32 user in each slot; -1 for an empty slot
  pair_row: jax.Array  # [B, c] int32 row (tile * T + slot) of each pair; -1 if none


def num_tiles(num_pairs: int, num_clusters: int, users_per_tile: int) -> int:
  """Static upper bound on the tiles that `num_pairs` pairs can need."""
  busy_clusters = min(num_clusters, num_pairs)
  return max(1, (num_pairs + (users_per_tile - 1) * busy_clusters) // users_per_tile)


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
  """Exclusive prefix sum; short vectors use one fused compare-and-reduce (a single GPU
  kernel) instead of the many small kernels of a scan."""
  n = x.shape[0]
  if n > 4096:
    return jnp.cumsum(x) - x
  earlier = jnp.arange(n)[None, :] < jnp.arange(n)[:, None]  # [n, n]
  return jnp.sum(jnp.where(earlier, x[None, :], 0), axis=1, dtype=x.dtype)


def _rank_among_equal(keys: jax.Array) -> jax.Array:
  """[P] number of earlier entries with the same key (stable rank within each key)."""
  num = keys.shape[0]
  if num > 16384:  # O(P^2) compares stop paying off: rank through a stable sort
    order = jnp.argsort(keys, stable=True)
    sorted_keys = keys[order]
    run_start = jnp.searchsorted(sorted_keys, sorted_keys, side="left")
    return jnp.zeros(num, jnp.int32).at[order].set(
        (jnp.arange(num) - run_start).astype(jnp.int32))
  earlier = jnp.arange(num)[None, :] < jnp.arange(num)[:, None]  # [P, P]
  same = (keys[None, :] == keys[:, None]) & earlier
  return jnp.sum(same, axis=1, dtype=jnp.int32)


def group_pairs(chosen_clusters: jax.Array, num_clusters: int, users_per_tile: int
                ) -> TileGroups:
  """Packs (user, cluster) pairs into single-cluster tiles, in pair order within a cluster.

  A cluster chosen twice by one user counts once (its later copies become "none");
  -1 means "no cluster". No sort: a pair's slot comes from its rank among the
  earlier pairs of its cluster, a cluster's first tile from a prefix sum of the
  tiles of the clusters before it.
  """
  num_users, per_user = chosen_clusters.shape
  num_pairs = num_users * per_user
  tiles = num_tiles(num_pairs, num_clusters, users_per_tile)
  earlier = jnp.arange(per_user)[None, :] < jnp.arange(per_user)[:, None]  # [c, c]
  repeat = jnp.any((chosen_clusters[:, None, :] == chosen_clusters[:, :, None]) & earlier,
                   axis=2)  # [B, c]
  cluster = jnp.where(repeat | (chosen_clusters < 0), num_clusters,
                      chosen_clusters).reshape(num_pairs)  # [P], C = none
  rank = _rank_among_equal(cluster)  # [P]
  counts = jnp.zeros(num_clusters + 1, jnp.int32).at[cluster].add(1)[:num_clusters]  # [C]
  first_tile = _exclusive_cumsum((counts + users_per_tile - 1) // users_per_tile)  # [C]
  real = cluster < num_clusters
  tile = jnp.where(real, first_tile[jnp.minimum(cluster, num_clusters - 1)]
                   + rank // users_per_tile, tiles)  # [P]; `tiles` = dropped
  slot = rank % users_per_tile
  user = jnp.arange(num_pairs, dtype=jnp.int32) // per_user
  tile_user = jnp.full((tiles, users_per_tile), -1, jnp.int32).at[tile, slot].set(
      user, mode="drop")
  tile_cluster = jnp.full((tiles,), num_clusters, jnp.int32).at[tile].set(
      cluster.astype(jnp.int32), mode="drop")
  pair_row = jnp.where(real, tile * users_per_tile + slot, -1).astype(jnp.int32)
  return TileGroups(tile_cluster, tile_user, pair_row.reshape(num_users, per_user))


def tile_bounds(offsets: jax.Array, tile_cluster: jax.Array, num_items: int
                ) -> tuple[jax.Array, jax.Array]:
  """([tiles] first layout position, [tiles] size) of each tile's cluster slab.

  Unused tiles (cluster C) start at `num_items`, in the zero padding, with size 0.
  """
  num_clusters = offsets.shape[0] - 1
  starts = jnp.concatenate([offsets[:num_clusters], jnp.array([num_items], offsets.dtype)])
  sizes = jnp.concatenate([offsets[1:] - offsets[:-1], jnp.zeros(1, offsets.dtype)])
  return starts[tile_cluster], sizes[tile_cluster]



def plan_tiles(chosen_clusters: jax.Array, offsets: jax.Array, num_items: int,
               users_per_tile: int):
  """(`group_pairs` groups, tile start [tiles], tile size [tiles]) of a batch of plans."""
  groups = group_pairs(chosen_clusters, offsets.shape[0] - 1, users_per_tile)
  tile_start, tile_size = tile_bounds(offsets, groups.tile_cluster, num_items)
  return groups, tile_start, tile_size

def mask_seen_in_tiles(scores: jax.Array, tile_user: jax.Array, tile_start: jax.Array,
                       tile_size: jax.Array, seen_positions: jax.Array) -> jax.Array:
  """Sets each slot's seen items (layout positions, -1 padding) to -inf in [tiles, T, W]."""
  tiles, per_tile, width = scores.shape
  seen = seen_positions[jnp.maximum(tile_user, 0)]  # [tiles, T, S]
  column = seen - tile_start[:, None, None]
  inside = ((seen >= 0) & (column >= 0) & (column < tile_size[:, None, None])
            & (tile_user >= 0)[:, :, None])
  column = jnp.where(inside, column, width)  # out of range -> dropped
  tile_index = jnp.broadcast_to(jnp.arange(tiles)[:, None, None], column.shape)
  slot_index = jnp.broadcast_to(jnp.arange(per_tile)[None, :, None], column.shape)
  return scores.at[tile_index, slot_index, column].set(-jnp.inf, mode="drop")


def contiguous_top_k(user_vectors: jax.Array, laid_items: jax.Array, order: jax.Array,
                     positions: jax.Array, offsets: jax.Array, chosen_clusters: jax.Array,
                     seen_items: jax.Array, *, k: int, slab_width: int, users_per_tile: int,
                     precision: jax.lax.Precision) -> tuple[jax.Array, jax.Array]:
  """Restricted top-k over a cluster-contiguous item table.

  Args:
    user_vectors: [B, d] float32.
    laid_items: [N + W, d] item rows in layout order, then W zero rows.
    order: [N + W] layout position -> item id, NO_ITEM in the padding.
    positions: [N] item id -> layout position.
    offsets: [C + 1] cluster slice bounds in the layout.
    chosen_clusters: [B, c] int32, -1 for none.
    seen_items: [B, S] int32 item ids, -1 for padding.
    slab_width: W >= the largest cluster.
  """
  num_items = positions.shape[0]
  groups, tile_start, tile_size = plan_tiles(chosen_clusters, offsets, num_items,
                                             users_per_tile)
  users = user_vectors[jnp.maximum(groups.tile_user, 0)]  # [tiles, T, d]
  slab_rows = tile_start[:, None] + jnp.arange(slab_width)  # [tiles, W]
  slabs = laid_items[slab_rows]  # [tiles, W, d]
  scores = jnp.einsum("tud,twd->tuw", users, slabs, precision=precision)  # [tiles, T, W]
  # Select on the P = B * c pair rows only: the tile bound leaves many slots empty.
  num_users, per_user = groups.pair_row.shape
  pair = groups.pair_row.reshape(-1)  # [P] slot row of each pair, -1 for none
  row = jnp.maximum(pair, 0)
  tile = row // users_per_tile
  start, size = tile_start[tile][:, None], tile_size[tile][:, None]  # [P, 1]
  pair_scores = scores.reshape(-1, slab_width)[row]  # [P, W]
  valid = (jnp.arange(slab_width)[None, :] < size) & (pair >= 0)[:, None]
  pair_scores = jnp.where(valid, topk_ops.canonical_scores(pair_scores), -jnp.inf)
  seen_positions = jnp.where(seen_items >= 0, positions[jnp.maximum(seen_items, 0)], -1)
  seen_positions = jnp.repeat(seen_positions, per_user, axis=0)  # [P, S]
  # Seen items of other clusters fall outside [0, size) and are skipped or hit -inf scores.
  pair_scores = topk_ops.mask_seen(
      pair_scores, jnp.where(seen_positions >= 0, seen_positions - start, -1))
  values, columns = jax.lax.top_k(pair_scores, min(k, slab_width))  # [P, kk]
  ids = topk_ops.mark_invalid(values, order[start + columns])
  kk = values.shape[1]
  return topk_ops.merge_candidates(values.reshape(num_users, per_user * kk),
                                   ids.reshape(num_users, per_user * kk), k)
