"""Top-n generators: history tuples [b, K] -> each tuple's n best novel clusters with scores.

The precompute stage is written against this one signature,
`(history [b, K]) -> ([b, n] int32 clusters, [b, n] float32 scores)`, best
first, never a cluster of the tuple itself, -1 / -inf past the last allowed
cluster. Two generators wear it:

  exact  any planner's `scores` over all M clusters, history removed, top n
         (ties by cluster id, as `explore.eval.hit_rate` ranks); with the LLM
         planner this is the exact reference, O(M) candidates per tuple
  beam   the LLM's trie-constrained beam search (`explore.llm.decoding`),
         O(beams x depth) steps per tuple, the history excluded inside the
         search (`beam.py`)
"""

from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

NO_CLUSTER = -1

TopN = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


class GeneratorError(ValueError):
  """A generator asked for an impossible top-n, or one that returned malformed rows."""


class ScoringPlanner(Protocol):
  num_clusters: int

  def scores(self, history: np.ndarray) -> np.ndarray: ...


def top_n_novel(scores: np.ndarray, history: np.ndarray, top_n: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """([b, n] int32, [b, n] float32) the n best clusters of `scores` [b, M] outside each history.

  Order: score descending, ties by the lower cluster id; -1 / -inf where
  fewer than n clusters are left (M - K < n).
  """
  scores = np.array(scores, np.float64)  # [b, M] copy
  b, m = scores.shape
  rows = np.repeat(np.arange(b), history.shape[1])  # [b * K]
  scores[rows, history.reshape(-1)] = -np.inf
  order = np.lexsort((np.broadcast_to(np.arange(m), (b, m)), -scores), axis=1)[:, :top_n]
  best = np.take_along_axis(scores, order, axis=1)  # [b, n]
  clusters = np.where(np.isneginf(best), NO_CLUSTER, order).astype(np.int32)
  if clusters.shape[1] < top_n:  # fewer clusters than n
    pad = top_n - clusters.shape[1]
    clusters = np.pad(clusters, ((0, 0), (0, pad)), constant_values=NO_CLUSTER)
    best = np.pad(best, ((0, 0), (0, pad)), constant_values=-np.inf)
  return clusters, np.where(clusters == NO_CLUSTER, -np.inf, best).astype(np.float32)


def exact_top_n(planner: ScoringPlanner, top_n: int) -> TopN:
  """The exact generator: `planner.scores` over every cluster, history removed, top n."""
  if top_n < 1:
    raise GeneratorError(f"top_n={top_n} must be >= 1")

  def generate(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    history = np.asarray(history, np.int64)
    return top_n_novel(planner.scores(history), history, top_n)

  return generate


def check_rows(history: np.ndarray, clusters: np.ndarray, scores: np.ndarray, top_n: int,
               num_clusters: int) -> None:
  """Raises GeneratorError unless the generator's rows have the promised shapes and ids."""
  want = (len(history), top_n)
  if np.shape(clusters) != want or np.shape(scores) != want:
    raise GeneratorError(f"the generator returned clusters {np.shape(clusters)} and scores "
                         f"{np.shape(scores)} for {len(history)} tuples, expected {want}")
  if clusters.size and (clusters.min() < NO_CLUSTER or clusters.max() >= num_clusters):
    raise GeneratorError(f"the generator returned cluster ids outside [-1, {num_clusters})")
