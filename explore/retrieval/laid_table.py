"""The item table as the cluster-contiguous retrieval paths read it.

Preparing the table is the offline part of restricted retrieval: round it to
the storage dtype, permute its rows into the cluster layout (`ClusterLayout`)
and append `W` zero rows, so every cluster is the static-width slice
`[offsets[c], offsets[c] + W)`. The kernels of the Pallas paths also want a
power-of-two dimension, so the table can be zero-padded along d.

Storage dtype ("table_dtype"):
* "float32": the table as given.
* "bfloat16": every item vector rounded to bfloat16 (round to nearest even).
  Scores are then the float32 dot products of the float32 user vectors with
  the *rounded* items, accumulated in float32. The Pallas paths store the table
  in 2 bytes per value (half the bytes to read, the dominant cost at scale);
  the plain-JAX paths store the rounded values in float32. Given the same
  rounded table, every implementation returns the same result.

No gin here: the GPU benchmark imports this module on a machine without it.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np

from explore.retrieval.cluster_layout import ClusterLayout, RetrievalInputError
from explore.retrieval.topk_ops import NO_ITEM
TABLE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


class LaidTable(NamedTuple):
  """Arrays of a laid-out item table (the device-side part of a retriever)."""

  items: jnp.ndarray  # [N + W, d'] rows in layout order, then W zero rows; d' >= d
  order: jnp.ndarray  # [N + W] int32 layout position -> item id, NO_ITEM in the padding
  positions: jnp.ndarray  # [N] int32 item id -> layout position
  offsets: jnp.ndarray  # [C + 1] int32 cluster slice bounds in the layout


def check_table_dtype(table_dtype: str) -> None:
  if table_dtype not in TABLE_DTYPES:
    raise RetrievalInputError(
        f"table_dtype: {table_dtype!r} is not one of {', '.join(TABLE_DTYPES)}")


def rounded_table(item_table, table_dtype: str = "float32") -> jnp.ndarray:
  """[N, d] float32 item vectors with the values the scores are computed from."""
  check_table_dtype(table_dtype)
  items = jnp.asarray(item_table, jnp.float32)
  return items.astype(TABLE_DTYPES[table_dtype]).astype(jnp.float32)


def padded_dimension(dim: int) -> int:
  """The smallest power of two >= max(dim, 16): what the Pallas kernels accept."""
  return max(16, 1 << (dim - 1).bit_length())


def lay_out_table(item_table, layout: ClusterLayout, *, width_multiple: int = 8,
                  pad_dimension: bool = False, table_dtype: str = "float32",
                  store_rounded: bool = False) -> tuple[LaidTable, int]:
  """Rounds, permutes and pads the item table; returns it with its slab width W.

  Args:
    item_table: [N, d] item vectors.
    layout: the cluster layout of the N items.
    width_multiple: W is the largest cluster rounded up to this.
    pad_dimension: zero-pad d to `padded_dimension(d)` (Pallas kernels).
    table_dtype: a key of TABLE_DTYPES (see the module docstring).
    store_rounded: keep the rows in `table_dtype` (2 bytes for bfloat16);
      otherwise the rounded values are stored in float32.
  """
  items = rounded_table(item_table, table_dtype)  # [N, d]
  if pad_dimension:
    items = jnp.pad(items, ((0, 0), (0, padded_dimension(items.shape[1]) - items.shape[1])))
  if store_rounded:
    items = items.astype(TABLE_DTYPES[table_dtype])
  width = layout.slab_width(width_multiple)
  order = jnp.asarray(layout.order)
  laid = LaidTable(
      items=jnp.pad(items[order], ((0, width), (0, 0))),  # [N + W, d']
      order=jnp.pad(order, (0, width), constant_values=NO_ITEM),  # [N + W]
      positions=jnp.asarray(layout.positions),
      offsets=jnp.asarray(layout.offsets))
  return laid, width


def table_bytes(num_items: int, dim: int, table_dtype: str) -> int:
  """Bytes of N item vectors in the storage dtype (what reading the table costs)."""
  check_table_dtype(table_dtype)
  return int(num_items) * int(dim) * np.dtype(TABLE_DTYPES[table_dtype]).itemsize
