"""Cluster-contiguous item layout for restricted retrieval, built once offline.

Restricted retrieval scores a user only against the items of a few chosen
clusters. With items stored cluster by cluster, each cluster is one contiguous
slice of the (permuted) item table, so scoring reads exactly the chosen
clusters' rows and nothing else. `ClusterLayout` holds that permutation and
the slice bounds as plain numpy arrays (no JAX here: it is built offline and
saved as a versioned artifact next to the cluster assignment).

Within a cluster, items keep ascending item order, so "lower layout position"
means "lower item id" inside one slice: that is what makes tie-breaking agree
between the layout-based and the dense implementations.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from explore import artifacts

LAYOUT_KIND = "cluster_layout"
LAYOUT_VERSION = 1


class RetrievalInputError(ValueError):
  """An argument of restricted retrieval has the wrong shape, dtype or values."""


def _as_int_vector(name: str, values) -> np.ndarray:
  array = np.asarray(values)
  if array.ndim != 1:
    raise RetrievalInputError(f"{name}: expected a 1-D array, got shape {array.shape}")
  if array.size and not np.issubdtype(array.dtype, np.integer):
    raise RetrievalInputError(f"{name}: expected integer ids, got dtype {array.dtype}")
  return array.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class ClusterLayout:
  """Items sorted by cluster: position p of the layout holds item `order[p]`.

  Cluster c occupies layout positions `offsets[c]:offsets[c + 1]` (empty
  clusters have an empty slice). `positions` is the inverse permutation.
  """

  item_to_cluster: np.ndarray  # [N] int32, in [0, C)
  order: np.ndarray  # [N] int32: layout position -> item index
  positions: np.ndarray  # [N] int32: item index -> layout position
  offsets: np.ndarray  # [C + 1] int32, offsets[0] == 0, offsets[C] == N

  def __post_init__(self):
    n, c = len(self.item_to_cluster), len(self.offsets) - 1
    if len(self.order) != n or len(self.positions) != n:
      raise RetrievalInputError(
          f"ClusterLayout: order ({len(self.order)}) and positions ({len(self.positions)}) "
          f"must both have one entry per item ({n})")
    if c < 1 or self.offsets[0] != 0 or self.offsets[-1] != n or np.any(np.diff(self.offsets) < 0):
      raise RetrievalInputError(
          f"ClusterLayout: offsets must rise from 0 to the number of items ({n}), "
          f"got {c + 1} offsets from {self.offsets[:1]} to {self.offsets[-1:]}")

  @classmethod
  def build(cls, item_to_cluster, num_clusters: int | None = None) -> "ClusterLayout":
    """Sorts items by cluster (stable, so ascending item order within a cluster).

    Args:
      item_to_cluster: [N] cluster id of every item, in [0, num_clusters).
      num_clusters: C; defaults to max(item_to_cluster) + 1. Clusters without
        items are allowed (their slice is empty).
    """
    assignment = _as_int_vector("item_to_cluster", item_to_cluster)
    if assignment.size == 0:
      raise RetrievalInputError("item_to_cluster: the item table is empty (0 items)")
    if assignment.size >= 2**31:
      raise RetrievalInputError(f"item_to_cluster: {assignment.size} items do not fit int32 ids")
    if num_clusters is None:
      num_clusters = int(assignment.max()) + 1
    if num_clusters < 1:
      raise RetrievalInputError(f"num_clusters: must be >= 1, got {num_clusters}")
    bad = np.flatnonzero((assignment < 0) | (assignment >= num_clusters))
    if bad.size:
      raise RetrievalInputError(
          f"item_to_cluster: item {bad[0]} has cluster {assignment[bad[0]]}, outside "
          f"[0, {num_clusters}) ({bad.size} items out of range)")
    order = np.argsort(assignment, kind="stable").astype(np.int32)
    positions = np.empty_like(order)
    positions[order] = np.arange(len(order), dtype=np.int32)
    counts = np.bincount(assignment, minlength=num_clusters)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return cls(item_to_cluster=assignment.astype(np.int32), order=order,
               positions=positions, offsets=offsets)

  @property
  def num_items(self) -> int:
    return len(self.order)

  @property
  def num_clusters(self) -> int:
    return len(self.offsets) - 1

  @property
  def cluster_sizes(self) -> np.ndarray:
    """[C] number of items in each cluster."""
    return np.diff(self.offsets)

  @property
  def max_cluster_size(self) -> int:
    return int(self.cluster_sizes.max())

  def slab_width(self, multiple: int = 8) -> int:
    """Static width of one cluster slice: the largest cluster, rounded up to `multiple`."""
    return -(-max(self.max_cluster_size, 1) // multiple) * multiple

  def cluster_items(self, cluster: int) -> np.ndarray:
    """Item indices of one cluster, ascending."""
    return self.order[self.offsets[cluster]:self.offsets[cluster + 1]]

  def save(self, directory: str | os.PathLike) -> None:
    artifacts.save_artifact(directory, LAYOUT_KIND, LAYOUT_VERSION,
                            {"item_to_cluster": self.item_to_cluster, "order": self.order,
                             "positions": self.positions, "offsets": self.offsets},
                            {"num_items": self.num_items, "num_clusters": self.num_clusters})

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ClusterLayout":
    arrays, _, _ = artifacts.load_artifact(directory, LAYOUT_KIND, LAYOUT_VERSION)
    return cls(**arrays)
