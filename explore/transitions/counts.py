"""Counts of (history tuple -> next novel cluster) pairs, and their curation for fine-tuning.

The LLM is fine-tuned on unique (history tuple, next cluster) pairs rather than
on raw examples: a handful of popular pairs would otherwise fill the data. Each
pair carries its `count` (examples seen) and a `weight` (how much the trainer
should use it); `curate` turns counts into weights that favour the long tail.
"""

from __future__ import annotations

import dataclasses

import gin
import numpy as np


class CurationError(ValueError):
  """A curation option with an unusable value."""


@dataclasses.dataclass(frozen=True)
class TupleCounts:
  """Unique (history, next cluster) pairs, sorted by history then next cluster."""

  history: np.ndarray  # [m, K] int32, oldest cluster first
  next_cluster: np.ndarray  # [m] int32
  count: np.ndarray  # [m] int64, examples of the pair
  weight: np.ndarray  # [m] float64, training weight (the count until curated)

  def __len__(self) -> int:
    return len(self.next_cluster)

  @property
  def k(self) -> int:
    return self.history.shape[1]

  def num_tuples(self) -> int:
    """Distinct history tuples."""
    return int(self.tuple_index()[-1]) + 1 if len(self) else 0

  def next_popularity(self, num_clusters: int) -> np.ndarray:
    """[num_clusters] int64: examples whose next cluster is each cluster."""
    return np.bincount(self.next_cluster, weights=self.count, minlength=num_clusters
                       ).astype(np.int64)

  def tuple_index(self) -> np.ndarray:
    """[m] int64: index of each row's history tuple among the distinct tuples (rows are sorted)."""
    if not len(self):
      return np.zeros(0, np.int64)
    new_tuple = np.any(self.history[1:] != self.history[:-1], axis=1)  # [m - 1]
    return np.concatenate([[0], np.cumsum(new_tuple)]).astype(np.int64)


def lexicographic_ids(rows: np.ndarray) -> tuple[np.ndarray, int]:
  """Dense ids of the rows of a non-negative int array, numbered in lexicographic row order.

  Returns ([n] int64 ids, number of distinct rows). Columns are packed into one
  int64 key (re-densified before it could overflow), so this is one sort.
  """
  rows = np.asarray(rows)  # [n, d]
  key = np.zeros(len(rows), np.int64)  # [n]
  span = 1
  for j in range(rows.shape[1]):
    column = rows[:, j].astype(np.int64)  # [n]
    base = int(column.max()) + 1 if len(rows) else 1
    if span * base >= 2**62:
      _, key = np.unique(key, return_inverse=True)
      key = key.reshape(-1).astype(np.int64)
      span = int(key.max()) + 1
    key = key * base + column
    span *= base
  unique, ids = np.unique(key, return_inverse=True)
  return ids.reshape(-1).astype(np.int64), len(unique)


def count_tuples(history: np.ndarray, next_cluster: np.ndarray) -> TupleCounts:
  """Counts identical (history, next) rows of a set of examples."""
  ones = np.ones(len(next_cluster), np.int64)  # [n]
  return sum_pairs(history, next_cluster, ones, ones.astype(np.float64))


def sum_pairs(history: np.ndarray, next_cluster: np.ndarray, count: np.ndarray,
              weight: np.ndarray) -> TupleCounts:
  """Adds up the `count` and `weight` of identical (history, next) rows into sorted pairs."""
  history = np.asarray(history, np.int32)  # [n, K]
  next_cluster = np.asarray(next_cluster, np.int32)  # [n]
  rows = np.concatenate([history, next_cluster[:, None]], axis=1)  # [n, K + 1]
  ids, num_pairs = lexicographic_ids(rows)  # [n]
  representative = np.zeros(num_pairs, np.int64)
  representative[ids] = np.arange(len(ids))  # any row of each pair
  unique = rows[representative]  # [m, K + 1], sorted lexicographically
  total = np.bincount(ids, weights=count, minlength=num_pairs)  # [m], exact below 2**53
  return TupleCounts(history=unique[:, :-1].copy(), next_cluster=unique[:, -1].copy(),
                     count=total.astype(np.int64),
                     weight=np.bincount(ids, weights=weight, minlength=num_pairs))


@gin.configurable
def curate(
    counts: TupleCounts,
    min_count: int = 1,
    cap_per_pair: float | None = None,
    cap_per_tuple: float | None = None,
    popular_next_downweight: float = 0.0,
) -> TupleCounts:
  """Selects and weights the pairs the LLM is fine-tuned on, in this order.

  1. Pairs seen fewer than `min_count` times are dropped (noise).
  2. `cap_per_pair`: a pair weighs at most this much (one very frequent
     transition cannot dominate).
  3. `popular_next_downweight` = alpha: weights are divided by
     popularity(next)^alpha, where popularity is the number of examples (in
     `counts`, before step 1) that lead to that next cluster, then rescaled to
     keep their total; alpha = 0 changes nothing, alpha = 1 gives every next
     cluster about the same total weight (toward the long tail).
  4. `cap_per_tuple`: the weights of one history tuple's pairs add up to at
     most this much (scaled down together, so their ratios are kept).
  """
  if not isinstance(min_count, (int, np.integer)) or min_count < 1:
    raise CurationError(f"curate: min_count must be an integer >= 1, got {min_count!r}")
  for name, cap in (("cap_per_pair", cap_per_pair), ("cap_per_tuple", cap_per_tuple)):
    if cap is not None and not cap > 0:
      raise CurationError(f"curate: {name} must be > 0 or None, got {cap!r}")
  if not popular_next_downweight >= 0:
    raise CurationError(
        f"curate: popular_next_downweight must be >= 0, got {popular_next_downweight!r}")
  popularity = np.bincount(counts.next_cluster, weights=counts.count)  # [max id + 1]
  keep = counts.count >= min_count  # [m]
  history, next_cluster = counts.history[keep], counts.next_cluster[keep]
  count, weight = counts.count[keep], counts.weight[keep].astype(np.float64)
  if cap_per_pair is not None:
    weight = np.minimum(weight, float(cap_per_pair))
  if popular_next_downweight > 0 and len(weight):
    total = weight.sum()
    weight = weight / popularity[next_cluster] ** popular_next_downweight
    weight *= total / weight.sum()
  curated = TupleCounts(history=history, next_cluster=next_cluster, count=count, weight=weight)
  if cap_per_tuple is not None and len(weight):
    group = curated.tuple_index()  # [m']
    tuple_total = np.bincount(group, weights=weight)  # [tuples]
    scale = np.minimum(1.0, float(cap_per_tuple) / tuple_total)  # [tuples]
    curated = dataclasses.replace(curated, weight=weight * scale[group])
  return curated
