"""Fine-tuning targets distilled from the last-cluster count planner.

Fine-tuned on the curated (history tuple -> next cluster) pairs alone, the
LLM ranks unseen tuples no better than the counts of (last cluster -> next),
while a blend of the two at inference is clearly better: the pairs do not
teach it the back-off to the last cluster that the logs support.
`add_count_targets` adds that back-off to the pairs as soft targets. For each
history tuple h of the pairs, with W(h) its total curated weight,

  P(c | h) = count(last(h) -> c) / sum of count(last(h) -> c') over the kept c'

over the kept clusters: the `top` clusters not in h with a count, in the
order of `planners.LastClusterCounts` (count, then popularity, then the lower
id). The pair (h -> c) gains weight `weight * W(h) * P(c | h)`, added to an
existing pair's weight (its count unchanged) or as a new pair of count 0 (no
example of it was seen). Each tuple's distilled weight is thus `weight` times
its curated weight, so tuples keep their shares of the total.
"""

from __future__ import annotations

import numpy as np

from explore.eval import planners
from explore.transitions import counts as counts_lib
from explore.transitions.counts import CurationError, TupleCounts

# Distinct tuples scored per dense [CHUNK, M] block of counts.
CHUNK = 4096


def last_cluster_planner(fit: TupleCounts, num_clusters: int) -> planners.LastClusterCounts:
  """The last-cluster count planner fitted on the examples `fit` counts (`count` each)."""
  return planners.LastClusterCounts(np.repeat(fit.history, fit.count, axis=0),
                                    np.repeat(fit.next_cluster, fit.count), num_clusters)


def count_distribution(planner: planners.LastClusterCounts, history: np.ndarray, top: int
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(row, cluster, P(cluster | row)) of the `planner`'s kept targets of [T, K] `history`.

  Rows whose last cluster has no count outside the row (an unseen last
  cluster) get no targets.
  """
  rows, clusters, probs = [], [], []
  for start in range(0, len(history), CHUNK):
    h = np.asarray(history[start:start + CHUNK], np.int64)  # [b, K]
    counts = planner.last.scores(h[:, -1:])  # [b, M] count(last -> c)
    counts[np.arange(len(h))[:, None], h] = 0.0  # a cluster of the history is not novel
    rank = np.where(counts > 0, planner.scores(h), -np.inf)  # [b, M] the planner's order
    order = np.argsort(-rank, axis=1, kind="stable")[:, :top]  # [b, top], ties: lower id
    kept = np.take_along_axis(counts, order, axis=1)  # [b, top]
    row, col = np.nonzero(kept)  # [t] each
    rows.append(start + row)
    clusters.append(order[row, col])
    probs.append(kept[row, col] / kept.sum(axis=1)[row])
  if not rows:
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float64)
  return np.concatenate(rows), np.concatenate(clusters), np.concatenate(probs)


def _check(pairs: TupleCounts, fit: TupleCounts, weight: float, top: int) -> None:
  if not (np.isfinite(weight) and weight >= 0):
    raise CurationError(f"add_count_targets: weight must be finite and >= 0, got {weight!r}")
  if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1:
    raise CurationError(f"add_count_targets: top must be an integer >= 1, got {top!r}")
  if pairs.k != fit.k:
    raise CurationError(f"add_count_targets: pairs have K={pairs.k} clusters per history but "
                        f"fit has K={fit.k}; count both from the same transitions")


def add_count_targets(pairs: TupleCounts, fit: TupleCounts, num_clusters: int, weight: float,
                      top: int = 10) -> TupleCounts:
  """`pairs` with the last-cluster counts of `fit` added as soft targets (module docstring).

  Args:
    pairs: the curated fine-tuning pairs.
    fit: the uncurated counts of the examples the counts come from (every
      example `count` times); only examples fine-tuned on, never held-out ones.
    num_clusters: M, the number of clusters.
    weight: the distilled weight per unit of curated weight (0: `pairs` itself).
    top: keep each tuple's `top` most likely clusters, renormalised.
  Returns:
    The pairs and the distilled ones, sorted by (history, next) like `TupleCounts`.
  """
  _check(pairs, fit, weight, top)
  if weight == 0 or not len(pairs):
    return pairs
  group = pairs.tuple_index()  # [m]
  tuples = pairs.history[np.flatnonzero(np.diff(group, prepend=-1))]  # [T, K]
  tuple_weight = np.bincount(group, weights=pairs.weight)  # [T] W(h)
  row, cluster, prob = count_distribution(last_cluster_planner(fit, num_clusters), tuples, top)
  return counts_lib.sum_pairs(
      np.concatenate([pairs.history, tuples[row]]),
      np.concatenate([pairs.next_cluster, cluster]),
      np.concatenate([pairs.count, np.zeros(len(row), np.int64)]),
      np.concatenate([pairs.weight, float(weight) * tuple_weight[row] * prob]))
