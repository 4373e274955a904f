"""Novel-cluster hit@k: is the true next cluster among a planner's top k new clusters?

For each example, the clusters the user had already engaged with are removed
(they are not novel), the rest are ranked by score, ties broken by the lower
cluster id (deterministic, and no planner gains from ties), and it is a hit
when the true next cluster is among the first k. Test examples are bucketed
by how often their history tuple occurred in training: unseen (0), rare
(1..rare_max) and frequent (> rare_max); the LLM's case is the first two.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from explore.eval.planners import PairCounts
from explore.transitions.examples import NovelTransitions, TEST, TRAIN

BUCKETS = ("all", "unseen", "rare", "frequent")


class HitRateError(ValueError):
  """Scores, labels or masks with inconsistent shapes, or k out of range."""


def novel_ranks(scores: np.ndarray, next_cluster: np.ndarray, exclude_mask: np.ndarray
                ) -> np.ndarray:
  """[n] 0-based rank of the true next cluster among the clusters not excluded.

  The rank counts the allowed clusters scoring higher, plus those scoring the
  same with a lower id. The true cluster must not be excluded (it is novel).
  """
  scores = np.asarray(scores)
  next_cluster = np.asarray(next_cluster, np.int64)
  exclude_mask = np.asarray(exclude_mask, bool)
  if scores.ndim != 2:
    raise HitRateError(f"scores must be [n, M], got shape {scores.shape}")
  n, m = scores.shape
  if next_cluster.shape != (n,):
    raise HitRateError(f"next_cluster must be [{n}] (one per scores row), got {next_cluster.shape}")
  if exclude_mask.shape != (n, m):
    raise HitRateError(f"exclude_mask must be [{n}, {m}] like scores, got {exclude_mask.shape}")
  if n and (next_cluster.min() < 0 or next_cluster.max() >= m):
    raise HitRateError(f"next_cluster holds ids outside [0, {m}) (scores have {m} clusters)")
  rows = np.arange(n)
  if np.any(exclude_mask[rows, next_cluster]):
    i = int(np.flatnonzero(exclude_mask[rows, next_cluster])[0])
    raise HitRateError(f"example {i}: next cluster {next_cluster[i]} is excluded as already "
                       "engaged; a novel-cluster example cannot have that")
  if np.any(np.isnan(scores)):
    raise HitRateError(f"scores hold NaN in row {int(np.flatnonzero(np.isnan(scores).any(1))[0])}")
  true_score = scores[rows, next_cluster][:, None]  # [n, 1]
  lower_id = np.arange(m)[None, :] < next_cluster[:, None]  # [n, M]
  ahead = (scores > true_score) | ((scores == true_score) & lower_id)  # [n, M]
  return np.sum(ahead & ~exclude_mask, axis=1)


def _check_k(k: int, m: int) -> None:
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= m:
    raise HitRateError(f"k={k!r} must be an integer in [1, {m}] (the number of clusters)")


def novel_hit_at_k(scores: np.ndarray, next_cluster: np.ndarray, exclude_mask: np.ndarray,
                   k: int) -> np.ndarray:
  """[n] bool: the true next cluster is in the top k after removing excluded clusters."""
  _check_k(k, np.shape(scores)[-1])
  return novel_ranks(scores, next_cluster, exclude_mask) < k


def tuple_train_counts(transitions: NovelTransitions, examples: np.ndarray) -> np.ndarray:
  """[len(examples)] how many train examples had the same history tuple."""
  train = transitions.indices(TRAIN)
  counts = PairCounts.fit(transitions.history[train].astype(np.int64),
                          transitions.next_cluster[train].astype(np.int64),
                          transitions.num_clusters)
  return counts.context_totals(transitions.history[examples].astype(np.int64)).astype(np.int64)


def bucket_of(train_counts: np.ndarray, rare_max: int = 4) -> np.ndarray:
  """[n] str: 'unseen' (0), 'rare' (1..rare_max) or 'frequent' (> rare_max)."""
  if rare_max < 1:
    raise HitRateError(f"rare_max={rare_max} must be >= 1")
  return np.where(train_counts == 0, "unseen",
                  np.where(train_counts <= rare_max, "rare", "frequent"))


def evaluate_planners(transitions: NovelTransitions, planners_scores: Mapping[str, np.ndarray],
                      ks: Sequence[int] = (1, 5, 10), examples: np.ndarray | None = None,
                      rare_max: int = 4) -> dict[str, dict]:
  """hit@k of every planner, overall and by how often the test tuple was seen in training.

  Args:
    transitions: the examples (train ones define the buckets).
    planners_scores: name -> [n, M] scores, row i for example `examples[i]`.
    ks: the cutoffs.
    examples: the evaluated example indices (default: the whole test split).
    rare_max: tuples seen 1..rare_max times in train are 'rare', more 'frequent'.

  Returns:
    {"examples": {bucket: n}, "planners": {name: {bucket: {"hit@k": rate}}}}; a
    bucket without examples has rates None.
  """
  examples = transitions.indices(TEST) if examples is None else np.asarray(examples, np.int64)
  m = transitions.num_clusters
  for k in ks:
    _check_k(k, m)
  mask = transitions.previously_engaged_mask(examples)  # [n, M]
  truth = transitions.next_cluster[examples]  # [n]
  buckets = bucket_of(tuple_train_counts(transitions, examples), rare_max)  # [n]
  selections = {b: (np.ones(len(examples), bool) if b == "all" else buckets == b)
                for b in BUCKETS}
  out: dict[str, dict] = {"examples": {b: int(s.sum()) for b, s in selections.items()},
                          "rare_max": rare_max, "planners": {}}
  for name, scores in planners_scores.items():
    scores = np.asarray(scores)
    if scores.shape != (len(examples), m):
      raise HitRateError(f"planner {name!r}: scores must be [{len(examples)}, {m}] "
                         f"(evaluated examples x clusters), got {scores.shape}")
    ranks = novel_ranks(scores, truth, mask)  # [n]
    out["planners"][name] = {
        b: {f"hit@{k}": (float(np.mean(ranks[s] < k)) if s.any() else None) for k in ks}
        for b, s in selections.items()}
  return out
