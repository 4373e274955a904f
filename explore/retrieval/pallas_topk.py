"""Cluster-contiguous restricted top-k on a GPU, with Pallas (Triton) kernels.

Once users are grouped by cluster (`contiguous_retrieval.group_pairs`), the
matmul is cheap; XLA's top-k of k=100 over the pair rows, and the gathered copy
of the slabs that the plain-JAX path feeds its matmul, are the expensive steps.
The pipeline here:

  group_pairs (XLA)   -> tiles of T pairs of one cluster
  score_tiles         -> [tiles, T, W] scores, slabs read in place (pallas_score)
  select_rows         -> each pair's top k, unsorted, by bisection (pallas_select)
  merge               -> each user's top k of its c lists, sorted by (score, id):
                         an XLA sort, or `merge_rows` (pallas_select)

The defaults are the fastest kernels measured on an H200 (docs/benchmarks.md):
the "grid" score schedule, 128-column register chunks in the selection, and
the XLA sort for the merge (the rank-sort kernel and the software-pipelined
"loop" schedule were slower there and stay as options).

The plain-JAX `contiguous_top_k` is the CPU path and the reference: this must
return identical ids and scores (the bench checks it on the GPU, the tests run
the kernels in the Pallas interpreter on CPU).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from explore.retrieval import contiguous_retrieval
from explore.retrieval import pallas_score
from explore.retrieval import pallas_select
from explore.retrieval import topk_ops

DOT_PRECISIONS = pallas_score.DOT_PRECISIONS


def pallas_top_k(user_vectors: jax.Array, laid_items: jax.Array, order: jax.Array,
                 positions: jax.Array, offsets: jax.Array, chosen_clusters: jax.Array,
                 seen_items: jax.Array, *, k: int, slab_width: int, users_per_tile: int = 16,
                 block_items: int = 128, score_schedule: str = "grid", score_stages: int = 1,
                 score_warps: int = 4, items_major: bool = False, rows_per_block: int = 4,
                 select_warps: int = 4, search: str = "interval", chunk: int | None = 128,
                 merge: str = "sort", precision=jax.lax.Precision.HIGHEST,
                 dot_precision: str | None = None, interpret: bool = False
                 ) -> tuple[jax.Array, jax.Array]:
  """`contiguous_top_k` with scoring, selection and merging in Pallas kernels.

  Same arguments as `contiguous_retrieval.contiguous_top_k`; `laid_items` and
  `user_vectors` have a power-of-two dimension (zero-padded by the caller) and
  `slab_width` is a multiple of `block_items`. The kernel knobs are described in
  `pallas_score.score_tiles` and `pallas_select.select_rows`; `merge` is
  "pallas" (rank-sort kernel) or "sort" (XLA sort); `dot_precision` (a key of
  DOT_PRECISIONS) overrides `precision` for the score kernel.
  """
  precision = pallas_score.resolve_precision(precision, dot_precision, merge)
  num_items = positions.shape[0]
  groups, tile_start, tile_size = contiguous_retrieval.plan_tiles(
      chosen_clusters, offsets, num_items, users_per_tile)
  users = user_vectors[jnp.maximum(groups.tile_user, 0)]  # [tiles, T, d]
  scores = pallas_score.score_tiles(
      tile_start, tile_size, users, (groups.tile_user >= 0).astype(jnp.int32), laid_items,
      width=slab_width, block_items=block_items, precision=precision, num_warps=score_warps,
      schedule=score_schedule, num_stages=score_stages, items_major=items_major,
      interpret=interpret)  # [tiles, T, W]
  if seen_items.shape[1]:
    seen_positions = jnp.where(seen_items >= 0, positions[jnp.maximum(seen_items, 0)], -1)
    scores = contiguous_retrieval.mask_seen_in_tiles(
        scores, groups.tile_user, tile_start, tile_size, seen_positions)
  kk = min(k, slab_width)
  values, columns = pallas_select.select_rows(
      scores.reshape(-1, slab_width), groups.pair_row.reshape(-1), k=kk,
      rows_per_block=rows_per_block, num_warps=select_warps, search=search, chunk=chunk,
      interpret=interpret)  # [P, kk], row p = pair p
  num_users, per_user = groups.pair_row.shape
  has_pair = (groups.pair_row >= 0)[:, :, None]  # [B, c, 1]
  cand_scores = jnp.where(has_pair, values.reshape(num_users, per_user, kk), -jnp.inf)
  starts = tile_start[jnp.maximum(groups.pair_row, 0) // users_per_tile]  # [B, c]
  cand_ids = topk_ops.mark_invalid(
      cand_scores, order[starts[:, :, None] + columns.reshape(num_users, per_user, kk)])
  cand_scores = cand_scores.reshape(num_users, per_user * kk)  # [B, c * kk]
  cand_ids = cand_ids.reshape(num_users, per_user * kk)
  if merge == "pallas" and pallas_select.merge_fits(num_users, per_user * kk, k, num_items):
    return pallas_select.merge_rows(cand_scores, cand_ids, k, num_items=num_items,
                                    interpret=interpret)
  return topk_ops.merge_candidates(cand_scores, cand_ids, k)
