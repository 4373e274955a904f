"""Dense restricted top-k (the reference) and its item-sharded variant.

Dense: score every item, set items outside the user's chosen clusters (and
seen items) to -inf, `jax.lax.top_k`. It reads the whole item table per batch
and sorts B x N scores, so it is the baseline that the cluster-contiguous path
must beat, and the definition the other implementations are tested against.

Sharded: the item axis is split over one mesh axis; each device runs the dense
step on its shard (local top-k, ids offset to global ids), then the B x k x
shards candidates are all-gathered and merged by (score desc, id asc).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec

from explore.retrieval import topk_ops


def _masked_scores(user_vectors, item_table, item_cluster, chosen_clusters, seen_columns,
                   precision):
  """[B, n] scores with items outside the chosen clusters and seen items at -inf."""
  scores = jnp.einsum("bd,nd->bn", user_vectors, item_table, precision=precision)  # [B, n]
  allowed = jnp.any(item_cluster[None, :, None] == chosen_clusters[:, None, :], axis=-1)  # [B, n]
  scores = jnp.where(allowed, topk_ops.canonical_scores(scores), -jnp.inf)
  return topk_ops.mask_seen(scores, seen_columns)


def _top_k_padded(scores, k):
  """lax.top_k (ties: lower column first) of at most the row length, padded to k."""
  values, columns = jax.lax.top_k(scores, min(k, scores.shape[1]))  # [B, kk]
  return topk_ops.pad_candidates(values, topk_ops.mark_invalid(values, columns), k)


def dense_top_k(user_vectors: jax.Array, item_table: jax.Array, item_cluster: jax.Array,
                chosen_clusters: jax.Array, seen_items: jax.Array, *, k: int,
                precision: jax.lax.Precision) -> tuple[jax.Array, jax.Array]:
  """Dense masked top-k; see `retrieval.restricted_top_k` for the argument contract.

  Args:
    user_vectors: [B, d] float32.
    item_table: [N, d] float32.
    item_cluster: [N] int32 cluster of each item.
    chosen_clusters: [B, c] int32 cluster ids, -1 for none.
    seen_items: [B, S] int32 item ids to exclude, -1 for padding.
  """
  scores = _masked_scores(user_vectors, item_table, item_cluster, chosen_clusters, seen_items,
                          precision)
  return _top_k_padded(scores, k)


def sharded_top_k(user_vectors: jax.Array, item_table: jax.Array, item_cluster: jax.Array,
                  chosen_clusters: jax.Array, seen_items: jax.Array, *, k: int,
                  precision: jax.lax.Precision, mesh: Mesh, item_axis: str
                  ) -> tuple[jax.Array, jax.Array]:
  """Dense top-k per item shard, then an all-gather merge of the shard candidates.

  `item_table` and `item_cluster` have a length divisible by the size of
  `item_axis` (padding items carry a cluster id no user can choose) and are
  split into contiguous shards in item order, so shard s holds ids
  [s * n, (s + 1) * n).
  """
  num_shards = mesh.shape[item_axis]
  shard_len = item_table.shape[0] // num_shards
  local_k = min(k, shard_len)

  def local(users, items, clusters, chosen, seen):
    first_id = jax.lax.axis_index(item_axis) * shard_len
    scores = _masked_scores(users, items, clusters, chosen, seen - first_id, precision)
    values, columns = jax.lax.top_k(scores, local_k)  # [B, local_k]
    ids = topk_ops.mark_invalid(values, columns + first_id)
    values = jax.lax.all_gather(values, item_axis, axis=1, tiled=True)  # [B, shards * local_k]
    ids = jax.lax.all_gather(ids, item_axis, axis=1, tiled=True)
    return topk_ops.merge_candidates(values, ids, k)

  replicated = PartitionSpec()
  items_spec = PartitionSpec(item_axis, None)
  return jax.shard_map(
      local, mesh=mesh,
      in_specs=(replicated, items_spec, PartitionSpec(item_axis), replicated, replicated),
      out_specs=(replicated, replicated), check_vma=False,
  )(user_vectors, item_table, item_cluster, chosen_clusters, seen_items)
