"""Pallas (Triton) kernels that score tiles of users against their cluster's slab.

A tile is T (user, cluster) pairs of one cluster; its slab is the cluster's
slice of the cluster-contiguous item table. The kernels read the slab straight
from the laid-out table (no gathered copy of the slabs, which is what makes the
plain-JAX path move several times the table's bytes), multiply it with the T
user vectors and write [T, W] scores, -inf past the cluster's end. Rows of
empty slots are not written (no pair points at them).

Two schedules:
* "grid": one program per (tile, item block); simple, but each program has a
  single load, so a program's load latency and its matmul never overlap.
* "loop": one program per tile walking its item blocks in a loop that Triton
  software-pipelines (`num_stages`), so the next block's load is in flight
  while the current one is multiplied.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

from explore.retrieval import topk_ops

_SQUEEZED = getattr(pl, "squeezed", None)  # a squeezed block dimension
# Matmul algorithms of the score kernels. "tf32x3" (three TF32 tensor-core
# products) is near float32 accuracy and far faster than "highest" (float32
# FMAs); both are exact for small-integer data.
DOT_PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "tf32x3": jax.lax.DotAlgorithmPreset.TF32_TF32_F32_X3,
}


def resolve_precision(precision, dot_precision: str | None, merge: str):
  """The kernels' dot precision: `dot_precision` (a DOT_PRECISIONS key) over `precision`.

  Also checks the pipeline's `merge` option ("pallas" or "sort").
  """
  if merge not in ("pallas", "sort"):
    raise ValueError(f"merge: {merge!r} is not 'pallas' or 'sort'")
  if dot_precision is None:
    return precision
  if dot_precision not in DOT_PRECISIONS:
    raise ValueError(f"dot_precision: {dot_precision!r} is not one of {list(DOT_PRECISIONS)}")
  return DOT_PRECISIONS[dot_precision]


def _block_scores(users, slab, inside, precision, items_major: bool):
  """[T, block] canonical scores of users [T, d] x slab [block, d], -inf outside."""
  contract = (((1,), (1,)), ((), ()))
  if items_major:  # slab as the matmul's M side: [block, T], then transpose
    scores = jax.lax.dot_general(slab, users, contract, precision=precision,
                                 preferred_element_type=jnp.float32).T
  else:
    scores = jax.lax.dot_general(users, slab, contract, precision=precision,
                                 preferred_element_type=jnp.float32)
  return jnp.where(inside[None, :], topk_ops.canonical_scores(scores), -jnp.inf)


def _grid_kernel(start_ref, size_ref, users_ref, slot_ref, items_ref, scores_ref, *,
                 block_items: int, precision, items_major: bool):
  tile, block = pl.program_id(0), pl.program_id(1)
  start = start_ref[tile]
  column = block * block_items + jax.lax.broadcasted_iota(jnp.int32, (block_items,), 0)
  inside = column < size_ref[tile]  # [block]
  rows = items_ref.at[pl.ds(start + block * block_items, block_items), :]
  slab = plgpu.load(rows, mask=inside[:, None], other=0.0).astype(jnp.float32)  # [block, d]
  scores = _block_scores(users_ref[...], slab, inside, precision, items_major)  # [T, block]
  used = jnp.broadcast_to((slot_ref[...] > 0)[:, None], scores.shape)
  plgpu.store(scores_ref, scores, mask=used)


def _loop_kernel(start_ref, size_ref, users_ref, slot_ref, items_ref, scores_ref, *,
                 block_items: int, num_blocks: int, precision, items_major: bool):
  tile = pl.program_id(0)
  start = start_ref[tile]
  size = size_ref[tile]
  users = users_ref[...]  # [T, d]
  used = jnp.broadcast_to((slot_ref[...] > 0)[:, None], (users.shape[0], block_items))

  def body(block, carry):
    first = block * block_items
    inside = first + jax.lax.broadcasted_iota(jnp.int32, (block_items,), 0) < size
    slab = plgpu.load(items_ref.at[pl.ds(start + first, block_items), :],
                      mask=inside[:, None], other=0.0).astype(jnp.float32)  # [block, d]
    scores = _block_scores(users, slab, inside, precision, items_major)  # [T, block]
    plgpu.store(scores_ref.at[tile, :, pl.ds(first, block_items)], scores, mask=used)
    return carry

  jax.lax.fori_loop(0, num_blocks, body, 0)


def score_tiles(tile_start: jax.Array, tile_size: jax.Array, tile_users: jax.Array,
                slot_used: jax.Array, laid_items: jax.Array, *, width: int,
                block_items: int = 128, precision=jax.lax.Precision.HIGHEST,
                num_warps: int = 4, schedule: str = "grid", num_stages: int = 1,
                items_major: bool = False, interpret: bool = False) -> jax.Array:
  """[tiles, T, width] scores of each tile's users against its cluster slab.

  Args:
    tile_start: [tiles] int32 first layout position of each tile's slab.
    tile_size: [tiles] int32 number of items in it (0 for unused tiles).
    tile_users: [tiles, T, d] user vectors (T >= 16 and d powers of two).
    slot_used: [tiles, T] int32, 1 where the slot holds a user; other rows of
      the output are left unwritten.
    laid_items: [N + width, d] items in layout order, then zero rows; float32, or
      bfloat16 (a 2-byte table, widened to float32 in the kernel).
    width: slab width, a multiple of `block_items`.
    schedule: "grid" or "loop" (see the module docstring).
    num_stages: software-pipelining depth of the "loop" schedule.
    items_major: multiply as [block, d] x [d, T] (items on the M side).
  """
  tiles, per_tile, dim = tile_users.shape
  if width % block_items:
    raise ValueError(f"width: {width} is not a multiple of block_items={block_items}")
  if schedule not in ("grid", "loop"):
    raise ValueError(f"schedule: {schedule!r} is not 'grid' or 'loop'")
  common = dict(block_items=block_items, precision=precision, items_major=items_major)
  if schedule == "grid":
    kernel = functools.partial(_grid_kernel, **common)
    grid = (tiles, width // block_items)
    users_spec = pl.BlockSpec((_SQUEEZED, per_tile, dim), lambda t, j: (t, 0, 0))
    slot_spec = pl.BlockSpec((_SQUEEZED, per_tile), lambda t, j: (t, 0))
    out_spec = pl.BlockSpec((_SQUEEZED, per_tile, block_items), lambda t, j: (t, 0, j))
  else:
    kernel = functools.partial(_loop_kernel, num_blocks=width // block_items, **common)
    grid = (tiles,)
    users_spec = pl.BlockSpec((_SQUEEZED, per_tile, dim), lambda t: (t, 0, 0))
    slot_spec = pl.BlockSpec((_SQUEEZED, per_tile), lambda t: (t, 0))
    out_spec = pl.no_block_spec
  return pl.pallas_call(
      kernel,
      grid=grid,
      in_specs=[pl.no_block_spec, pl.no_block_spec, users_spec, slot_spec, pl.no_block_spec],
      out_specs=out_spec,
      out_shape=jax.ShapeDtypeStruct((tiles, per_tile, width), jnp.float32),
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=num_stages),
      interpret=interpret,
      name=f"restricted_score_tiles_{schedule}",
  )(tile_start, tile_size, tile_users, slot_used, laid_items)
