"""The interest-cluster tree: hierarchical balanced k-means over item embeddings.

Level 0 is the coarsest. Every level refines the one above it: each parent has
exactly levels[i] / levels[i-1] children, and cluster c of level i has parent
c // (levels[i] / levels[i-1]) at level i - 1, so the children of a parent are
contiguous ids. Two ways to build it (`strategy`):

- bottom_up: balanced k-means of the items into the finest level's clusters,
  then each coarser level groups the centroids of the level below into equal
  numbers of children; the finest level is exactly balanced and does not
  inherit cuts made at coarse levels.
- top_down: level 0 splits the items, each next level splits every parent
  into its balanced children; every level is exactly balanced.

The designer picks the level (the granularity) the planner works at.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping, Sequence

import gin
import numpy as np

from explore import artifacts
from explore import progress

TREE_KIND = "cluster_tree"
TREE_VERSION = 1


class ClusterTreeError(ValueError):
  """Bad levels, an unknown level, or an inconsistent tree."""


@dataclasses.dataclass(frozen=True)
class ClusterTree:
  """Item -> cluster at every level of a tree; level 0 is the coarsest."""

  levels: tuple[int, ...]  # clusters per level, e.g. (8, 64, 256)
  assignments: np.ndarray  # [num_levels, num_items] int32 cluster per item per level
  parents: tuple[np.ndarray, ...]  # parents[l]: [levels[l]] int32 cluster at level l - 1 (-1 at 0)
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "levels", tuple(int(k) for k in self.levels))
    _check_levels(self.levels, self.assignments.shape[1] if self.assignments.ndim == 2 else None)
    if self.assignments.shape[0] != len(self.levels):
      raise ClusterTreeError(f"ClusterTree: assignments has {self.assignments.shape[0]} levels, "
                             f"levels={self.levels} has {len(self.levels)}")
    if len(self.parents) != len(self.levels):
      raise ClusterTreeError(f"ClusterTree: {len(self.parents)} parent arrays for "
                             f"{len(self.levels)} levels")
    for level, k in enumerate(self.levels):
      row = self.assignments[level]
      if row.size and (row.min() < 0 or row.max() >= k):
        raise ClusterTreeError(f"ClusterTree: level {level} assigns a cluster outside [0, {k})")
      if self.parents[level].shape != (k,):
        raise ClusterTreeError(f"ClusterTree: parents of level {level} has shape "
                               f"{self.parents[level].shape}, expected ({k},)")
      if level and not np.array_equal(self.parents[level][row], self.assignments[level - 1]):
        raise ClusterTreeError(f"ClusterTree: some item's level-{level} cluster is not a child "
                               f"of its level-{level - 1} cluster")

  @property
  def num_levels(self) -> int:
    return len(self.levels)

  @property
  def num_items(self) -> int:
    return self.assignments.shape[1]

  def _check_level(self, level: int) -> int:
    if not isinstance(level, (int, np.integer)) or not 0 <= level < self.num_levels:
      available = ", ".join(f"{i} ({k} clusters)" for i, k in enumerate(self.levels))
      raise ClusterTreeError(f"ClusterTree: level {level!r} does not exist; available levels: "
                             f"{available}")
    return int(level)

  def item_to_cluster(self, level: int) -> np.ndarray:
    """[num_items] int32 cluster of every item at `level` (0 = coarsest)."""
    return self.assignments[self._check_level(level)].copy()

  def level_with(self, num_clusters: int) -> int:
    """The level that has `num_clusters` clusters (how configs name a granularity)."""
    if num_clusters not in self.levels:
      raise ClusterTreeError(f"ClusterTree: no level has {num_clusters} clusters; levels have "
                             f"{list(self.levels)}")
    return self.levels.index(num_clusters)

  def sizes(self, level: int, weights: np.ndarray | None = None) -> np.ndarray:
    """[levels[level]] items (or total weight) per cluster."""
    level = self._check_level(level)
    return np.bincount(self.assignments[level], weights=weights, minlength=self.levels[level])

  def balance(self, level: int, weights: np.ndarray | None = None) -> float:
    """Largest over smallest cluster size at `level` (inf when a cluster is empty)."""
    sizes = self.sizes(level, weights)
    return float(sizes.max() / sizes.min()) if sizes.min() > 0 else float("inf")

  def children(self, level: int, cluster: int) -> np.ndarray:
    """Clusters at level + 1 whose parent is `cluster` at `level`."""
    self._check_level(level + 1)
    return np.flatnonzero(self.parents[level + 1] == cluster).astype(np.int32)

  def save(self, directory: str | os.PathLike) -> None:
    arrays = {"levels": np.asarray(self.levels, np.int64), "assignments": self.assignments}
    arrays.update({f"parents_{i}": p for i, p in enumerate(self.parents)})
    artifacts.save_artifact(directory, TREE_KIND, TREE_VERSION, arrays, dict(self.meta))

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ClusterTree":
    arrays, meta, _ = artifacts.load_artifact(directory, TREE_KIND, TREE_VERSION)
    levels = tuple(int(k) for k in arrays["levels"])
    parents = tuple(arrays[f"parents_{i}"] for i in range(len(levels)))
    try:
      return cls(levels=levels, assignments=arrays["assignments"], parents=parents, meta=meta)
    except ClusterTreeError as e:
      raise ClusterTreeError(f"{directory}: {e}") from None


def _check_levels(levels: Sequence[int], num_items: int | None) -> None:
  if not levels or any(not isinstance(k, (int, np.integer)) or k < 1 for k in levels):
    raise ClusterTreeError(f"cluster tree levels must be a non-empty list of positive integers, "
                           f"got {list(levels)}")
  for i in range(1, len(levels)):
    if levels[i] <= levels[i - 1] or levels[i] % levels[i - 1]:
      raise ClusterTreeError(
          f"cluster tree levels {list(levels)}: level {i} ({levels[i]} clusters) must be a "
          f"multiple of level {i - 1} ({levels[i - 1]} clusters) and larger, so that every "
          "parent splits into the same number of children")
  if num_items is not None and levels[-1] > num_items:
    raise ClusterTreeError(f"cluster tree levels {list(levels)}: the finest level has more "
                           f"clusters ({levels[-1]}) than there are items ({num_items})")


def _top_down(vectors, levels, weights, seed, kmeans, coarse_restarts):
  """Each level splits every parent cluster into its balanced children."""
  assignments, costs = [], []
  group = None  # [num_items] parent cluster of every item
  for level, k in enumerate(levels):
    branching = k if level == 0 else k // levels[level - 1]
    result = kmeans(vectors, branching, weights=weights, groups=group, seed=seed,
                    restarts=coarse_restarts if level == 0 else 1)
    local = result.assignment.astype(np.int64)
    group = local if group is None else group * branching + local
    assignments.append(group)
    costs.append(result.cost)
  return assignments, costs


def _bottom_up(vectors, levels, weights, seed, kmeans, coarse_restarts):
  """Flat finest level, then coarser levels by grouping centroids.

  Ids are renumbered at the end so that the children of parent p are
  p * branching + [0, branching).
  """
  finest = kmeans(vectors, levels[-1], weights=weights, seed=seed)
  child_parent = []  # per level >= 1: [levels[l]] parent (old ids)
  costs = [finest.cost]
  centroids = finest.centroids[0]  # [levels[-1], d]
  for level in range(len(levels) - 2, -1, -1):
    grouped = kmeans(centroids, levels[level], seed=seed, restarts=coarse_restarts)
    child_parent.insert(0, grouped.assignment.astype(np.int64))
    centroids = grouped.centroids[0]
    costs.insert(0, grouped.cost)
  # Renumber top-down: new id of a child = rank of (new parent id, old id).
  new_of_old = [np.arange(levels[0])]
  for level in range(1, len(levels)):
    parent_new = new_of_old[level - 1][child_parent[level - 1]]  # [levels[level]]
    order = np.lexsort((np.arange(levels[level]), parent_new))
    renumber = np.empty(levels[level], np.int64)
    renumber[order] = np.arange(levels[level])
    new_of_old.append(renumber)
  item_cluster = finest.assignment.astype(np.int64)  # old ids at the finest level
  assignments = [None] * len(levels)
  for level in range(len(levels) - 1, -1, -1):
    assignments[level] = new_of_old[level][item_cluster]
    if level:
      item_cluster = child_parent[level - 1][item_cluster]
  return assignments, costs


@gin.configurable(denylist=["embeddings", "weights"])
def build_cluster_tree(
    embeddings,
    levels: Sequence[int] = (8, 64, 256),
    weights: np.ndarray | None = None,
    seed: int = 0,
    strategy: str = "bottom_up",
    coarse_restarts: int = 8,
) -> ClusterTree:
  """Hierarchical balanced k-means over item embeddings.

  Args:
    embeddings: `ItemEmbeddings` or a [num_items, dim] array.
    levels: clusters per level, coarsest first; each divides the next.
    weights: optional [num_items] item traffic; balance is then in total weight.
    seed: PRNG seed (the same seed gives the same tree).
    strategy: "top_down" splits each parent into its children, level by level
      (a pass costs items x branching); "bottom_up" clusters the finest level
      flat and groups centroids upwards (a pass costs items x levels[-1]; the
      finest level then does not inherit the cuts of the coarse ones).
    coarse_restarts: k-means restarts (best of) for the coarse cuts that every
      finer level inherits: grouping centroids (bottom_up; cheap) or level 0
      (top_down; costs coarse_restarts x that level).

  The k-means settings (steps, batch and chunk sizes, ...) are those bound to
  `balanced_kmeans` in gin.
  """
  from explore.clusters.balanced_kmeans import balanced_kmeans  # imports JAX

  vectors = np.asarray(getattr(embeddings, "embeddings", embeddings), np.float32)
  if vectors.ndim != 2:
    raise ClusterTreeError(f"build_cluster_tree: embeddings must be [num_items, dim], "
                           f"got shape {vectors.shape}")
  levels = tuple(levels)
  _check_levels(levels, vectors.shape[0])
  builders = {"top_down": _top_down, "bottom_up": _bottom_up}
  if strategy not in builders:
    raise ClusterTreeError(f"build_cluster_tree: strategy {strategy!r} is not one of "
                           f"{sorted(builders)}")
  with progress.Progress("clusters: balanced k-means", total=len(levels), unit="cuts",
                         every_seconds=0) as cuts:

    def kmeans(*args, **kwargs):
      result = balanced_kmeans(*args, **kwargs)
      cuts.update()
      return result

    assignments, costs = builders[strategy](vectors, levels, weights, seed, kmeans,
                                            coarse_restarts)
  parents = [np.full(levels[0], -1, np.int32)] + [
      (np.arange(k) // (k // levels[i])).astype(np.int32) for i, k in enumerate(levels[1:])]
  meta = {"seed": seed, "strategy": strategy, "weighted": weights is not None,
          "kmeans_cost": [float(c) for c in costs]}
  return ClusterTree(levels=levels, assignments=np.stack(assignments).astype(np.int32),
                     parents=tuple(parents), meta=meta)
