"""Top-k item retrieval restricted to each user's chosen interest clusters.

The planner picks a few novel clusters per user; the sequence recommender then
retrieves that user's best items *inside those clusters only*. Semantics,
shared exactly by every implementation:

* score(b, i) = <user_vectors[b], item_table[i]> in float32; -0.0 counts as 0.0.
* Item i is a candidate for user b iff its cluster is among chosen_clusters[b]
  (a cluster listed twice counts once; -1 means "no cluster") and i is not in
  seen_items[b] (-1 entries are padding).
* The result is the k best candidates by (score descending, item id
  ascending): ties go to the lower item id. With fewer than k candidates the
  tail is padded with score -inf and id -1 (invalid).
* Inputs must be finite (an item scoring -inf would read as padding).

Implementations (`implementation=`):
* "dense": score all N items, mask, `jax.lax.top_k` (reference and baseline).
* "contiguous": items laid out cluster by cluster (`ClusterLayout`); pairs of
  (user, cluster) grouped by cluster into tiles; each tile reads its cluster's
  slab once; per-user merge of the c lists (`contiguous_retrieval`).
* "sharded": item axis split over a mesh axis; local dense top-k, all-gather
  merge (`dense_retrieval.sharded_top_k`).
* "pallas": "contiguous" with GPU kernels for scoring and selection
  (`pallas_topk`); `interpret=True` runs them in the Pallas interpreter.
* "pallas_fused": one Pallas kernel per tile scores its slab and selects each
  pair's top k without writing the scores out (`pallas_fused`).

`table_dtype="bfloat16"` rounds the item table to bfloat16 first (scores are
those of the rounded table, accumulated in float32); the Pallas paths then
store it in 2 bytes per value (`laid_table`).

All implementations return the same ids and scores whenever the float32 dot
products do not depend on the summation order (e.g. integer-valued vectors
whose partial sums stay below 2**24, as in the tests). For general float data
different matmul shapes may round the last bit differently, so scores agree to
a few ulp and ids agree except between candidates whose scores are that close.
"""

from __future__ import annotations

import functools
from typing import Any

import gin
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

from explore.retrieval import contiguous_retrieval
from explore.retrieval import dense_retrieval
from explore.retrieval import laid_table
from explore.retrieval import topk_ops
from explore.retrieval.cluster_layout import ClusterLayout, RetrievalInputError

IMPLEMENTATIONS = ("dense", "contiguous", "sharded", "pallas", "pallas_fused")
PALLAS_IMPLEMENTATIONS = ("pallas", "pallas_fused")


def _is_traced(x) -> bool:
  return isinstance(x, jax.core.Tracer)


def _check_matrix(name: str, value, integer: bool) -> None:
  shape = np.shape(value)
  if len(shape) != 2:
    raise RetrievalInputError(f"{name}: expected a 2-D array, got shape {shape}")
  dtype = np.dtype(getattr(value, "dtype", np.asarray(value).dtype))
  if integer and not np.issubdtype(dtype, np.integer):
    raise RetrievalInputError(f"{name}: expected integer ids, got dtype {dtype}")
  if not integer and not (np.issubdtype(dtype, np.floating) or np.issubdtype(dtype, np.integer)):
    raise RetrievalInputError(f"{name}: expected real numbers, got dtype {dtype}")


def _check_ids_in_range(name: str, value, upper: int, what: str) -> None:
  """Every entry in [-1, upper) (-1 = padding); skipped for traced values."""
  if _is_traced(value) or np.size(value) == 0:
    return
  ids = np.asarray(value)
  bad = np.argwhere((ids < -1) | (ids >= upper))
  if bad.size:
    row, col = bad[0]
    raise RetrievalInputError(
        f"{name}: entry [{row}, {col}] = {ids[row, col]} is not a {what} id in [0, {upper}) "
        f"or -1 (padding); {len(bad)} entries out of range")


def _padded(array: jax.Array, rows: int, value) -> jax.Array:
  """Appends `rows` rows filled with `value` along axis 0."""
  pad = [(0, rows)] + [(0, 0)] * (array.ndim - 1)
  return jnp.pad(array, pad, constant_values=value)


def _search_batch(user_vectors, arrays, chosen_clusters, seen_items, *, search, dim: int,
                  k: int):
  """One batch, conversions included, so that a call is a single jitted dispatch."""
  users = jnp.asarray(user_vectors, jnp.float32)  # [B, d]
  if users.shape[1] < dim:  # the Pallas paths pad d to a power of two
    users = jnp.pad(users, ((0, 0), (0, dim - users.shape[1])))
  chosen = jnp.asarray(chosen_clusters).astype(jnp.int32)  # [B, c]
  if seen_items is None:
    seen = jnp.full((users.shape[0], 0), -1, jnp.int32)
  else:
    seen = jnp.asarray(seen_items).astype(jnp.int32)  # [B, S]
  return search(users, *arrays, chosen, seen, k=k)


@gin.configurable
class RestrictedRetriever:
  """An item table prepared once (layout, permutation, sharding) for restricted top-k.

  Preparing is the offline part: building the cluster layout and permuting the
  table cost a pass over the catalog, so a serving loop builds one retriever
  and calls `top_k` per batch.
  """

  def __init__(self, item_table, clusters, *, implementation: str = "contiguous",
               num_clusters: int | None = None, users_per_tile: int = 16,
               precision: str = "highest", mesh: Mesh | None = None, item_axis: str = "model",
               pallas_options: dict[str, Any] | None = None, interpret: bool = False,
               table_dtype: str = "float32"):
    """Prepares `item_table` for one implementation.

    Args:
      item_table: [N, d] item vectors (N >= 1).
      clusters: a `ClusterLayout`, or [N] cluster id of every item.
      implementation: one of IMPLEMENTATIONS.
      num_clusters: C when `clusters` is an id array (default max id + 1).
      users_per_tile: pairs per tile in "contiguous"/"pallas" (>= 16 for "pallas").
      precision: matmul precision, "highest" (float32) by default.
      mesh: "sharded" only; defaults to all devices on one axis named `item_axis`.
      item_axis: the mesh axis that splits the items.
      pallas_options: "pallas"/"pallas_fused" only; keyword arguments of
        `pallas_topk.pallas_top_k` / `pallas_fused.fused_top_k` (kernel
        schedule, block sizes, warps).
      interpret: Pallas paths only; run the kernels in the Pallas interpreter (CPU).
      table_dtype: "float32", or "bfloat16" to round the item table (see the
        module docstring); the Pallas paths then store 2 bytes per value.
    """
    if implementation not in IMPLEMENTATIONS:
      raise RetrievalInputError(
          f"implementation: {implementation!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if precision not in topk_ops.PRECISIONS:
      raise RetrievalInputError(
          f"precision: {precision!r} is not one of {', '.join(topk_ops.PRECISIONS)}")
    if users_per_tile < 1:
      raise RetrievalInputError(f"users_per_tile: must be >= 1, got {users_per_tile}")
    laid_table.check_table_dtype(table_dtype)
    _check_matrix("item_table", item_table, integer=False)
    num_items, dim = np.shape(item_table)
    if num_items == 0 or dim == 0:
      raise RetrievalInputError(f"item_table: the item table is empty (shape {num_items} x {dim})")
    if isinstance(clusters, ClusterLayout):
      layout = clusters
      if layout.num_items != num_items:
        raise RetrievalInputError(
            f"clusters: the layout covers {layout.num_items} items, item_table has {num_items}")
    else:
      if np.ndim(clusters) != 1 or len(clusters) != num_items:
        raise RetrievalInputError(
            f"item_to_cluster: expected one cluster id per item ({num_items}), "
            f"got shape {np.shape(clusters)}")
      layout = ClusterLayout.build(clusters, num_clusters)
    self.layout = layout
    self.implementation = implementation
    self.dim = dim
    self._precision = topk_ops.PRECISIONS[precision]
    items = laid_table.rounded_table(item_table, table_dtype)  # [N, d]
    static = {"precision": self._precision}

    if implementation == "dense":
      self._arrays = (items, jnp.asarray(layout.item_to_cluster))
      fn = dense_retrieval.dense_top_k
    elif implementation == "sharded":
      mesh = mesh or Mesh(np.array(jax.devices()), (item_axis,))
      if item_axis not in mesh.shape:
        raise RetrievalInputError(f"item_axis: {item_axis!r} is not an axis of the mesh "
                                  f"{dict(mesh.shape)}")
      shards = mesh.shape[item_axis]
      extra = -num_items % shards
      item_spec = NamedSharding(mesh, PartitionSpec(item_axis, None))
      cluster_spec = NamedSharding(mesh, PartitionSpec(item_axis))
      self._arrays = (
          jax.device_put(_padded(items, extra, 0.0), item_spec),
          jax.device_put(_padded(jnp.asarray(layout.item_to_cluster), extra,
                                 layout.num_clusters), cluster_spec))
      fn = dense_retrieval.sharded_top_k
      static.update(mesh=mesh, item_axis=item_axis)
    else:
      options = dict(pallas_options or {})
      pallas = implementation in PALLAS_IMPLEMENTATIONS
      if pallas:
        self._check_pallas(users_per_tile, interpret)
        width_multiple = options.setdefault("block_items", 128)
        # TF32x3 is near-float32 and exact on small integers; the interpreter lacks it.
        options.setdefault("dot_precision", "highest" if interpret else "tf32x3")
      elif options or interpret:
        raise RetrievalInputError(
            "pallas_options/interpret: only for implementation='pallas' or 'pallas_fused'")
      else:
        width_multiple = 8
      laid, width = laid_table.lay_out_table(
          items, layout, width_multiple=width_multiple, pad_dimension=pallas,
          table_dtype=table_dtype, store_rounded=pallas)
      self._arrays = tuple(laid)  # items [N + W, d'], order [N + W], positions, offsets
      static.update(slab_width=width, users_per_tile=users_per_tile)
      if implementation == "pallas":
        from explore.retrieval import pallas_topk  # pylint: disable=g-import-not-at-top
        fn = pallas_topk.pallas_top_k
        static.update(interpret=interpret, **options)
      elif implementation == "pallas_fused":
        from explore.retrieval import pallas_fused  # pylint: disable=g-import-not-at-top
        fn = pallas_fused.fused_top_k
        static.update(interpret=interpret, **options)
      else:
        fn = contiguous_retrieval.contiguous_top_k
    self._search = jax.jit(
        functools.partial(_search_batch, search=functools.partial(fn, **static),
                          dim=self._arrays[0].shape[1]),
        static_argnames=("k",))

  @staticmethod
  def _check_pallas(users_per_tile: int, interpret: bool) -> None:
    if users_per_tile < 16 or users_per_tile & (users_per_tile - 1):
      raise RetrievalInputError(
          f"users_per_tile: the Pallas implementations need a power of two >= 16, "
          f"got {users_per_tile}")
    if not interpret and jax.default_backend() != "gpu":
      raise RetrievalInputError(
          f"implementation: the Pallas paths run Triton kernels on a GPU, but the JAX backend is "
          f"{jax.default_backend()!r}; use 'contiguous', or interpret=True for a slow check")

  def top_k(self, user_vectors, chosen_clusters, k: int, seen_items=None, *,
            validate: bool = True) -> tuple[jax.Array, jax.Array]:
    """The k best items of each user inside its chosen clusters.

    Args:
      user_vectors: [B, d] user vectors.
      chosen_clusters: [B, c] cluster ids in [0, C), -1 for none; repeats count once.
      k: results per user (>= 1).
      seen_items: optional [B, S] item ids to exclude, -1 for padding.
      validate: check shapes and id ranges on the host first (the ranges need
        the values, so this reads them back from the device).

    Returns:
      ([B, k] float32 scores, [B, k] int32 item ids), best first; padding has
      score -inf and id -1.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
      raise RetrievalInputError(f"k: must be an integer >= 1, got {k!r}")
    if validate:
      self._validate(user_vectors, chosen_clusters, seen_items)
    # One jitted dispatch per call: conversions and padding happen inside it.
    return self._search(user_vectors, self._arrays, chosen_clusters, seen_items, k=int(k))

  def _validate(self, user_vectors, chosen_clusters, seen_items) -> None:
    _check_matrix("user_vectors", user_vectors, integer=False)
    num_users, dim = np.shape(user_vectors)
    if dim != self.dim:
      raise RetrievalInputError(
          f"user_vectors: dimension {dim} does not match the item_table dimension {self.dim}")
    _check_matrix("chosen_clusters", chosen_clusters, integer=True)
    if np.shape(chosen_clusters)[0] != num_users:
      raise RetrievalInputError(
          f"chosen_clusters: {np.shape(chosen_clusters)[0]} rows for {num_users} users")
    if np.shape(chosen_clusters)[1] < 1:
      raise RetrievalInputError("chosen_clusters: needs at least one column (use -1 for none)")
    _check_ids_in_range("chosen_clusters", chosen_clusters, self.layout.num_clusters, "cluster")
    if seen_items is not None:
      _check_matrix("seen_items", seen_items, integer=True)
      if np.shape(seen_items)[0] != num_users:
        raise RetrievalInputError(
            f"seen_items: {np.shape(seen_items)[0]} rows for {num_users} users")
      _check_ids_in_range("seen_items", seen_items, self.layout.num_items, "item")


@gin.configurable
def restricted_top_k(user_vectors, item_table, chosen_clusters, clusters, k: int, *,
                     seen_items=None, implementation: str = "contiguous",
                     **retriever_options) -> tuple[jax.Array, jax.Array]:
  """One-shot restricted top-k (prepares the table, then searches once).

  Args:
    user_vectors: [B, d] user vectors.
    item_table: [N, d] item vectors.
    chosen_clusters: [B, c] cluster ids per user, -1 for none; repeats count once.
    clusters: [N] cluster id of every item, or a prebuilt `ClusterLayout`.
    k: results per user.
    seen_items: optional [B, S] item ids to exclude, -1 padding.
    implementation: one of IMPLEMENTATIONS.
    **retriever_options: passed to `RestrictedRetriever`.

  Returns:
    ([B, k] scores, [B, k] item ids) by (score desc, id asc); (-inf, -1) padding.
  """
  retriever = RestrictedRetriever(item_table, clusters, implementation=implementation,
                                  **retriever_options)
  return retriever.top_k(user_vectors, chosen_clusters, k, seen_items)
