"""Cluster-restricted top-k with one fused Pallas (Triton) kernel per tile.

The "pallas" path (`pallas_topk`) scores every tile into a [tiles, T, W] array
in HBM, then a second kernel reads it back to select each pair's top k. Here
one program per tile does both, so the scores never leave the chip:

  group_pairs (XLA)          -> tiles of T pairs of one cluster
  fused_tile_top_k (Pallas)  -> per program (tile):
      gather its T user vectors (or take them pre-gathered),
      score its cluster slab block by block ([T, block] dots), masking past
      the cluster's end and each slot's seen items, keeping the [T, W] scores
      in registers as int32 order keys,
      select each row's top k by bisection (`pallas_select.select_winners`),
      write only the k winners' scores and item ids (`order` looked up here)
  merge (XLA sort)           -> each user's top k of its c lists

What it saves against "pallas": the [pairs, W] score round trip (about 75 MB
at 4096 users x 2 clusters x 1152 columns, written and read back), one kernel
launch, the user-vector gather and the candidate-id gather. With a bfloat16
table (`laid_table`) the slab read, the dominant cost, halves as well.

Register budget: a program holds T x W int32 keys (16 x 1152 = 74 KB at the
GPU shape), so it runs 8 warps by default (72 registers per thread for them).
Programs of unused tiles exit at once (`skip_empty`).

Result semantics are those of `restricted.py` (and exactly the same ids and
scores as "contiguous" and "pallas" wherever the dot products are exact).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from explore.retrieval import contiguous_retrieval
from explore.retrieval import pallas_score
from explore.retrieval import pallas_select
from explore.retrieval import topk_ops

_SQUEEZED = getattr(pl, "squeezed", None)  # a squeezed block dimension
DOT_PRECISIONS = pallas_score.DOT_PRECISIONS


def score_of_key(keys: jax.Array) -> jax.Array:
  """float32 scores of `pallas_select.order_key` images (the map is its own inverse)."""
  bits = jnp.where(keys < 0, keys ^ jnp.int32(0x7FFFFFFF), keys)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _fused_kernel(start_ref, size_ref, slot_user_ref, users_ref, seen_ref, items_ref, order_ref,
                  out_scores_ref, out_ids_ref, *, k: int, dim: int, block_items: int,
                  num_blocks: int, num_seen: int, num_rows: int, precision, search: str,
                  users_in_kernel: bool, skip_empty: bool):
  tile = pl.program_id(0)
  slot_user = slot_user_ref[...]  # [T] user of each slot, -1 for an empty slot
  per_tile = slot_user.shape[0]
  width = num_blocks * block_items

  def tile_top_k():
    start, size = start_ref[tile], size_ref[tile]
    used = slot_user >= 0  # [T]
    user = jnp.maximum(slot_user, 0)
    if users_in_kernel:  # gather the slots' rows of the flat [B * d] user table
      lane = jax.lax.broadcasted_iota(jnp.int32, (per_tile, dim), 1)
      users = plgpu.load(users_ref.at[user[:, None] * dim + lane])  # [T, d]
    else:
      users = users_ref[...]  # [T, d], gathered by XLA
    # Each slot's seen items as columns of this slab (negative when padding).
    seen_columns = [plgpu.load(seen_ref.at[user * num_seen + s], mask=used, other=-1) - start
                    for s in range(num_seen)]  # num_seen x [T]
    keys = []
    for j in range(num_blocks):  # the [T, W] scores as num_blocks register chunks
      column = j * block_items + jax.lax.broadcasted_iota(jnp.int32, (block_items,), 0)
      inside = column < size  # [block]
      slab = plgpu.load(items_ref.at[pl.ds(start + j * block_items, block_items), :],
                        mask=inside[:, None], other=0.0).astype(jnp.float32)  # [block, d]
      scores = jax.lax.dot_general(users, slab, (((1,), (1,)), ((), ())), precision=precision,
                                   preferred_element_type=jnp.float32)  # [T, block]
      valid = used[:, None] & inside[None, :]  # [T, block]
      for seen_column in seen_columns:
        valid = valid & (column[None, :] != seen_column[:, None])
      keys.append(pallas_select.order_key(
          jnp.where(valid, topk_ops.canonical_scores(scores), -jnp.inf)))

    shape = (per_tile, block_items)
    row = jax.lax.broadcasted_iota(jnp.int32, shape, 0)  # [T, block]
    out_row = tile * per_tile + row
    winners = pallas_select.select_winners(keys, k, search=search)
    for j, (chosen, slot) in enumerate(winners):  # traced chunk by chunk
      column = j * block_items + jax.lax.broadcasted_iota(jnp.int32, shape, 1)
      scores = score_of_key(keys[j])  # [T, block]
      ids = plgpu.load(order_ref.at[pl.ds(start + j * block_items, block_items)])  # [block]
      ids = jnp.where(scores == -jnp.inf, topk_ops.NO_ITEM, ids[None, :])
      # Losers go to distinct scratch slots past the results (see pallas_select).
      spare = num_rows * k + row * width + column
      target = jnp.where(chosen, out_row * k + slot, spare)
      plgpu.store(out_scores_ref.at[target], scores, mask=chosen)
      plgpu.store(out_ids_ref.at[target], ids, mask=chosen)

  if skip_empty:  # slots fill from 0, so an unused tile has no user at all
    pl.when(jnp.max(slot_user) >= 0)(tile_top_k)
  else:
    tile_top_k()


def fused_tile_top_k(tile_start: jax.Array, tile_size: jax.Array, tile_user: jax.Array,
                     users: jax.Array, seen_positions: jax.Array, laid_items: jax.Array,
                     order: jax.Array, *, k: int, width: int, block_items: int = 128,
                     precision=jax.lax.Precision.HIGHEST, search: str = "interval",
                     num_warps: int = 8, users_in_kernel: bool = True, skip_empty: bool = True,
                     interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """Per tile slot, the top k of its cluster slab, scored and selected in one kernel.

  Args:
    tile_start: [tiles] int32 first layout position of each tile's slab.
    tile_size: [tiles] int32 items in it (0 for unused tiles).
    tile_user: [tiles, T] int32 user in each slot, -1 for empty (T a power of two >= 16).
    users: [B, d] float32 user vectors (d a power of two), or with
      `users_in_kernel=False` the [tiles, T, d] vectors of the slots.
    seen_positions: [B, S] int32 layout positions of each user's seen items
      (-1 padding); S may be 0.
    laid_items: [N + width, d] float32 or bfloat16 items in layout order, then zeros.
    order: [N + width] int32 layout position -> item id.
    k: results per slot, <= width.
    width: slab width, a multiple of `block_items`.

  Returns:
    ([tiles * T, k] float32 scores, [tiles * T, k] int32 item ids): row
    tile * T + slot holds that slot's k best by (score desc, id asc) in
    ascending item order (unsorted by score), (-inf, -1) where the cluster has
    fewer than k candidates. Rows of empty slots are left unwritten.
  """
  tiles, per_tile = tile_user.shape
  dim = users.shape[-1]
  if width % block_items:
    raise ValueError(f"width: {width} is not a multiple of block_items={block_items}")
  if not 1 <= k <= width:
    raise ValueError(f"k: {k} must be in [1, {width}] (the slab width)")
  if search not in ("interval", "bits"):
    raise ValueError(f"search: {search!r} is not 'interval' or 'bits'")
  num_rows = tiles * per_tile
  out_size = num_rows * k + per_tile * width  # results, then scratch
  if out_size >= 2**31 or users.size >= 2**31 or seen_positions.size >= 2**31:
    raise ValueError(f"fused_tile_top_k: {num_rows} rows x {k} (or the inputs) overflow "
                     "int32 indexing")
  num_seen = seen_positions.shape[1]
  kernel = functools.partial(
      _fused_kernel, k=k, dim=dim, block_items=block_items, num_blocks=width // block_items,
      num_seen=num_seen, num_rows=num_rows, precision=precision, search=search,
      users_in_kernel=users_in_kernel, skip_empty=skip_empty)
  if users_in_kernel:
    users_arg, users_spec = users.reshape(-1), pl.no_block_spec
  else:
    users_arg = users
    users_spec = pl.BlockSpec((_SQUEEZED, per_tile, dim), lambda t: (t, 0, 0))
  seen_arg = seen_positions.reshape(-1) if num_seen else jnp.full((1,), -1, jnp.int32)
  out_scores, out_ids = pl.pallas_call(
      kernel,
      grid=(tiles,),
      in_specs=[pl.no_block_spec, pl.no_block_spec,
                pl.BlockSpec((_SQUEEZED, per_tile), lambda t: (t, 0)), users_spec,
                pl.no_block_spec, pl.no_block_spec, pl.no_block_spec],
      out_specs=[pl.no_block_spec, pl.no_block_spec],
      out_shape=[jax.ShapeDtypeStruct((out_size,), jnp.float32),
                 jax.ShapeDtypeStruct((out_size,), jnp.int32)],
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
      interpret=interpret,
      name="restricted_fused_tile_top_k",
  )(tile_start, tile_size, tile_user, users_arg, seen_arg, laid_items, order)
  return (out_scores[:num_rows * k].reshape(num_rows, k),
          out_ids[:num_rows * k].reshape(num_rows, k))


def fused_top_k(user_vectors: jax.Array, laid_items: jax.Array, order: jax.Array,
                positions: jax.Array, offsets: jax.Array, chosen_clusters: jax.Array,
                seen_items: jax.Array, *, k: int, slab_width: int, users_per_tile: int = 16,
                block_items: int = 128, num_warps: int = 8, search: str = "interval",
                users_in_kernel: bool = True, skip_empty: bool = True, merge: str = "sort",
                precision=jax.lax.Precision.HIGHEST, dot_precision: str | None = None,
                interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """Restricted top-k: XLA grouping, one fused score-and-select kernel, XLA merge.

  Same arguments and result as `contiguous_retrieval.contiguous_top_k`;
  `laid_items` (float32 or bfloat16) and `user_vectors` have a power-of-two
  dimension and `slab_width` is a multiple of `block_items`. `merge` is "sort"
  (XLA two-key sort) or "pallas" (`pallas_select.merge_rows`); `dot_precision`
  (a key of DOT_PRECISIONS) overrides `precision` in the kernel.
  """
  precision = pallas_score.resolve_precision(precision, dot_precision, merge)
  num_items = positions.shape[0]
  groups, tile_start, tile_size = contiguous_retrieval.plan_tiles(
      chosen_clusters, offsets, num_items, users_per_tile)
  users = (user_vectors if users_in_kernel
           else user_vectors[jnp.maximum(groups.tile_user, 0)])  # [B, d] or [tiles, T, d]
  seen_positions = jnp.where(seen_items >= 0, positions[jnp.maximum(seen_items, 0)], -1)
  kk = min(k, slab_width)
  values, ids = fused_tile_top_k(
      tile_start, tile_size, groups.tile_user, users, seen_positions.astype(jnp.int32),
      laid_items, order, k=kk, width=slab_width, block_items=block_items, precision=precision,
      search=search, num_warps=num_warps, users_in_kernel=users_in_kernel,
      skip_empty=skip_empty, interpret=interpret)  # [tiles * T, kk]
  return merge_slot_rows(values, ids, groups.pair_row, k, num_items=num_items, merge=merge,
                         interpret=interpret)


def merge_slot_rows(values: jax.Array, ids: jax.Array, pair_row: jax.Array, k: int, *,
                    num_items: int, merge: str = "sort", interpret: bool = False
                    ) -> tuple[jax.Array, jax.Array]:
  """Each user's top k from the slot rows of its pairs, sorted by (score desc, id asc).

  Args:
    values: [tiles * T, kk] scores of each slot's winners (-inf invalid).
    ids: [tiles * T, kk] their item ids.
    pair_row: [B, c] slot row of each (user, cluster) pair, -1 for none.
  """
  num_users, per_user = pair_row.shape
  kk = values.shape[1]
  row = jnp.maximum(pair_row, 0)  # [B, c]
  has_pair = (pair_row >= 0)[:, :, None]  # [B, c, 1]
  cand_scores = jnp.where(has_pair, values[row], -jnp.inf).reshape(num_users, per_user * kk)
  cand_ids = jnp.where(has_pair, ids[row], topk_ops.NO_ITEM).reshape(num_users, per_user * kk)
  if merge == "pallas" and pallas_select.merge_fits(num_users, per_user * kk, k, num_items):
    return pallas_select.merge_rows(cand_scores, cand_ids, k, num_items=num_items,
                                    interpret=interpret)
  return topk_ops.merge_candidates(cand_scores, cand_ids, k)
