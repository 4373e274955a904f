"""Pallas (Triton) kernels that select the top k without sorting the scores.

`select_rows`: exact top-k (unsorted) of score rows. A program holds
`rows_per_block` rows in registers as chunks of `chunk` columns. The k-th
largest score is found by bisection over the order-preserving int32 image of
the float32 scores (count passes, no sort); ties at that value are taken in
column order (= item-id order inside a cluster); the k winners are compacted
with prefix sums and scattered to the output in column order.

`merge_rows`: the sorted top k of each row of candidates by (score desc, id
asc), by counting for every candidate how many others rank before it (a
rank sort: O(M^2) compares per row, for short rows such as c * k merged
candidates) and scattering it to that rank.

Masked stores send losers to distinct slots of a scratch tail: a masked store
must never alias a winner's slot (the Pallas interpreter writes masked lanes
back with their old value).
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plgpu

_INT_MIN = -(2**31)


def next_power_of_2(n: int) -> int:
  return 1 << max(0, (int(n) - 1).bit_length())


def order_key(scores: jax.Array) -> jax.Array:
  """int32 keys with the order of the float32 scores (after -0.0 -> +0.0)."""
  bits = jax.lax.bitcast_convert_type(scores, jnp.int32)
  return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def _threshold_by_bits(count_at_least, num_rows: int, k: int) -> jax.Array:
  """[R] largest t with count(key >= t) >= k: the sign, then bits 30..0 (32 passes)."""
  zero = jnp.zeros((num_rows,), jnp.int32)
  threshold = jnp.where(count_at_least(zero) >= k, zero, jnp.full_like(zero, _INT_MIN))
  for bit in range(30, -1, -1):
    candidate = threshold | jnp.int32(1 << bit)
    threshold = jnp.where(count_at_least(candidate) >= k, candidate, threshold)
  return threshold


def _threshold_by_interval(count_at_least, lo, hi, width: int, k: int) -> jax.Array:
  """[R] a t with count(key >= t) >= k >= count(key > t), by interval halving.

  Keeps count(key >= lo) >= k > count(key >= hi) and stops a row as soon as
  exactly k keys are >= lo (typical for distinct scores: about half of the 32
  passes of `_threshold_by_bits`) or the interval holds one value (ties).
  """
  at_lo = jnp.full_like(lo, width)  # lo = the row minimum: every key counts

  def unfinished(lo, hi, at_lo):
    return (at_lo != k) & (hi > lo + 1)

  def cond(state):
    return jnp.max(unfinished(*state).astype(jnp.int32)) > 0

  def body(state):
    lo, hi, at_lo = state
    active = unfinished(lo, hi, at_lo)
    mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
    count = count_at_least(mid)
    up = active & (count >= k)
    return (jnp.where(up, mid, lo), jnp.where(active & (count < k), mid, hi),
            jnp.where(up, count, at_lo))

  lo, _, _ = jax.lax.while_loop(cond, body, (lo, hi, at_lo))
  return lo


def _select_kernel(rows_ref, scores_ref, out_scores_ref, out_columns_ref, *, k: int,
                   num_columns: int, chunk: int, num_chunks: int, rows_per_block: int,
                   num_out_rows: int, search: str):
  block = pl.program_id(0)
  rows = rows_ref[...]  # [R] source row of each output row, -1 for none
  shape = (rows_per_block, chunk)
  lane = jax.lax.broadcasted_iota(jnp.int32, shape, 1)  # [R, chunk]
  columns, scores, keys = [], [], []
  for c in range(num_chunks):  # the row as `num_chunks` register chunks
    column = c * chunk + lane
    present = (rows >= 0)[:, None] & (column < num_columns)
    flat = jnp.maximum(rows, 0)[:, None] * num_columns + column
    value = plgpu.load(scores_ref.at[flat], mask=present, other=-jnp.inf)  # [R, chunk]
    columns.append(column)
    scores.append(value)
    keys.append(order_key(value))

  winners = select_winners(keys, k, search=search)
  out_row = block * rows_per_block + jax.lax.broadcasted_iota(jnp.int32, shape, 0)
  for c, (chosen, slot) in enumerate(winners):  # traced chunk by chunk
    spare = (num_out_rows * k + (out_row - block * rows_per_block) * (num_chunks * chunk)
             + columns[c])
    target = jnp.where(chosen, out_row * k + slot, spare)
    plgpu.store(out_scores_ref.at[target], scores[c], mask=chosen)
    plgpu.store(out_columns_ref.at[target], columns[c], mask=chosen)


def select_winners(keys: list[jax.Array], k: int, search: str = "interval"
                   ) -> Iterator[tuple[jax.Array, jax.Array]]:
  """Inside a kernel: the exact top k of rows held as register chunks of order keys.

  Args:
    keys: per chunk an [R, chunk] int32 `order_key` image of the scores; a row
      is the concatenation of its chunks (every column counts, -inf included).
    k: winners per row, at most the row width.
    search: "interval" (early exit) or "bits" (always 32 passes).

  Yields:
    per chunk, in order, (chosen [R, chunk] bool, slot [R, chunk] int32):
    whether the column is among the row's k best by (score desc, column asc),
    and its rank among the row's winners in column order (0..k-1). A generator,
    so the caller's stores for a chunk are traced before the next chunk's work
    (as few values live at once as in a hand-written loop).
  """
  num_rows = keys[0].shape[0]
  width = sum(key.shape[1] for key in keys)

  def count_at_least(threshold):  # [R] -> [R]
    wanted = threshold[:, None]
    total = (keys[0] >= wanted).astype(jnp.int32)
    for key in keys[1:]:
      total += (key >= wanted).astype(jnp.int32)
    return jnp.sum(total, axis=1)

  if search == "bits":
    threshold = _threshold_by_bits(count_at_least, num_rows, k)
  else:
    lowest, highest = keys[0], keys[0]
    for key in keys[1:]:
      lowest, highest = jnp.minimum(lowest, key), jnp.maximum(highest, key)
    # Scores are finite, so max + 1 does not overflow.
    threshold = _threshold_by_interval(count_at_least, jnp.min(lowest, axis=1),
                                       jnp.max(highest, axis=1) + 1, width, k)

  wanted = threshold[:, None]
  above = [(key > wanted).astype(jnp.int32) for key in keys]
  room = k - sum(jnp.sum(a, axis=1) for a in above)  # [R] ties that still fit
  ties_before = jnp.zeros((num_rows,), jnp.int32)
  chosen_before = jnp.zeros((num_rows,), jnp.int32)
  for c, key in enumerate(keys):
    ties = (key == wanted).astype(jnp.int32)
    tie_rank = jnp.cumsum(ties, axis=1) + ties_before[:, None]  # 1-based, column order
    chosen = (above[c] > 0) | ((ties > 0) & (tie_rank <= room[:, None]))
    slot = jnp.cumsum(chosen.astype(jnp.int32), axis=1) - 1 + chosen_before[:, None]
    yield chosen, slot
    ties_before += jnp.sum(ties, axis=1)
    chosen_before += jnp.sum(chosen.astype(jnp.int32), axis=1)


def select_rows(scores: jax.Array, rows: jax.Array, *, k: int, rows_per_block: int = 4,
                num_warps: int = 4, search: str = "interval", chunk: int | None = 128,
                interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """Exact top-k (unsorted) of chosen rows of a score matrix.

  Args:
    scores: [M, W] float32 rows, -inf where invalid.
    rows: [P] int32 row of `scores` for each output row, -1 for an all-invalid row.
    k: results per row, <= W.
    rows_per_block: rows per program (a power of two).
    search: how the k-th largest score is found, "interval" (early exit) or
      "bits" (always 32 passes).
    chunk: register chunk width (a power of two); None holds the row as one
      power-of-two chunk (padding W up to it).

  Returns:
    ([P, k] scores, [P, k] int32 columns): per row the k best by (score desc,
    column asc), in ascending column order (not sorted by score).
  """
  num_rows, num_columns = scores.shape
  if search not in ("interval", "bits"):
    raise ValueError(f"search: {search!r} is not 'interval' or 'bits'")
  if not 1 <= k <= num_columns:
    raise ValueError(f"k: {k} must be in [1, {num_columns}] (the row width)")
  chunk = next_power_of_2(num_columns) if chunk is None else min(chunk,
                                                                 next_power_of_2(num_columns))
  num_chunks = -(-num_columns // chunk)
  num_out = rows.shape[0]
  padded = -(-num_out // rows_per_block) * rows_per_block
  out_size = padded * k + rows_per_block * num_chunks * chunk  # results, then scratch
  if num_rows * num_columns >= 2**31 or out_size >= 2**31:
    raise ValueError(f"scores: {num_rows} x {num_columns} (or the output) is too large for "
                     "int32 indexing")
  rows = jnp.pad(rows, (0, padded - num_out), constant_values=-1)
  kernel = functools.partial(_select_kernel, k=k, num_columns=num_columns, chunk=chunk,
                             num_chunks=num_chunks, rows_per_block=rows_per_block,
                             num_out_rows=padded, search=search)
  out_scores, out_columns = pl.pallas_call(
      kernel,
      grid=(padded // rows_per_block,),
      in_specs=[pl.BlockSpec((rows_per_block,), lambda i: (i,)), pl.no_block_spec],
      out_specs=[pl.no_block_spec, pl.no_block_spec],
      out_shape=[jax.ShapeDtypeStruct((out_size,), jnp.float32),
                 jax.ShapeDtypeStruct((out_size,), jnp.int32)],
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
      interpret=interpret,
      name="restricted_select_rows",
  )(rows, scores.reshape(-1))
  out_scores = out_scores[:padded * k].reshape(padded, k)[:num_out]
  out_columns = out_columns[:padded * k].reshape(padded, k)[:num_out]
  return out_scores, out_columns


def merge_fits(num_rows: int, num_candidates: int, k: int, num_items: int,
               chunk: int = 32) -> bool:
  """Whether `merge_rows` can index these sizes with int32 (else merge with a sort)."""
  width = next_power_of_2(max(num_candidates, k, chunk))
  return (num_rows * k + width < 2**31 and num_rows * width < 2**31
          and (num_items + 1) * width < 2**31)


def _merge_kernel(scores_ref, ids_ref, out_scores_ref, out_ids_ref, *, k: int, width: int,
                  chunk: int, num_rows: int):
  row = pl.program_id(0)
  scores = plgpu.load(scores_ref.at[row, pl.ds(0, width)])  # [M]
  ids = plgpu.load(ids_ref.at[row, pl.ds(0, width)])
  position = jax.lax.broadcasted_iota(jnp.int32, (width,), 0)
  key = order_key(scores)[:, None]  # [M, 1]
  tiebreak = (ids * width + position)[:, None]  # unique within the row
  rank = jnp.zeros((width,), jnp.int32)
  for c in range(width // chunk):
    other_scores = plgpu.load(scores_ref.at[row, pl.ds(c * chunk, chunk)])  # [chunk]
    other_ids = plgpu.load(ids_ref.at[row, pl.ds(c * chunk, chunk)])
    other_key = order_key(other_scores)[None, :]  # [1, chunk]
    other_tiebreak = (other_ids * width + c * chunk
                      + jax.lax.broadcasted_iota(jnp.int32, (chunk,), 0))[None, :]
    before = (other_key > key) | ((other_key == key) & (other_tiebreak < tiebreak))
    rank += jnp.sum(before.astype(jnp.int32), axis=1)  # [M]
  kept = rank < k
  target = jnp.where(kept, row * k + rank, num_rows * k + position)
  plgpu.store(out_scores_ref.at[target], scores, mask=kept)
  plgpu.store(out_ids_ref.at[target], jnp.where(scores == -jnp.inf, -1, ids), mask=kept)


def merge_rows(scores: jax.Array, ids: jax.Array, k: int, *, num_items: int, chunk: int = 32,
               num_warps: int = 4, interpret: bool = False) -> tuple[jax.Array, jax.Array]:
  """Sorted top k of each row by (score desc, id asc); (-inf, -1) past the valid ones.

  Args:
    scores: [B, M] float32 candidates, -inf where invalid, no -0.0.
    ids: [B, M] int32 item ids in [-1, num_items).
  """
  num_rows, num_candidates = scores.shape
  width = next_power_of_2(max(num_candidates, k, chunk))
  if not merge_fits(num_rows, num_candidates, k, num_items, chunk):
    raise ValueError(f"merge_rows: {num_rows} x {width} candidates of {num_items} items "
                     "overflow int32 indexing")
  pad = ((0, 0), (0, width - num_candidates))
  scores = jnp.pad(scores, pad, constant_values=-jnp.inf)
  ids = jnp.pad(ids, pad, constant_values=-1)
  out_size = num_rows * k + width
  kernel = functools.partial(_merge_kernel, k=k, width=width, chunk=min(chunk, width),
                             num_rows=num_rows)
  out_scores, out_ids = pl.pallas_call(
      kernel,
      grid=(num_rows,),
      in_specs=[pl.no_block_spec, pl.no_block_spec],
      out_specs=[pl.no_block_spec, pl.no_block_spec],
      out_shape=[jax.ShapeDtypeStruct((out_size,), jnp.float32),
                 jax.ShapeDtypeStruct((out_size,), jnp.int32)],
      compiler_params=plgpu.CompilerParams(num_warps=num_warps, num_stages=1),
      interpret=interpret,
      name="restricted_merge_rows",
  )(scores, ids)
  return (out_scores[:num_rows * k].reshape(num_rows, k),
          out_ids[:num_rows * k].reshape(num_rows, k))
