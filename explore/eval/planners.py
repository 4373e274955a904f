"""Baseline planners: scores over all M clusters for a batch of history tuples.

Every planner maps history tuples [b, K] (oldest first) to scores [b, M]; a
higher score ranks a cluster earlier. `explore.eval.hit_rate` removes the
clusters the user already engaged with and breaks ties by cluster id, so the
planners need not know about either. They are fitted on the *train* split of
`NovelTransitions` (every train example, not the curated task source):

  random_novel     a fixed random permutation per row (seeded)
  popular_novel    how often each cluster was the next novel cluster in train
  transition       counts of (K-tuple -> next), backing off to (last cluster
                   -> next) counts, then to popularity; the levels are scaled
                   so the order is lexicographic (tuple count first)
  last_cluster     counts of (last cluster -> next), ties by popularity
"""

from __future__ import annotations

import dataclasses

import numpy as np

from explore.transitions.counts import lexicographic_ids


class PlannerError(ValueError):
  """Planner inputs with wrong shapes or cluster ids out of range."""


def _check_history(name: str, history: np.ndarray, k: int | None, num_clusters: int
                   ) -> np.ndarray:
  history = np.asarray(history)
  if history.ndim != 2 or (k is not None and history.shape[1] != k):
    want = f"[b, {k}]" if k is not None else "[b, K]"
    raise PlannerError(f"{name}: history must be {want}, got shape {history.shape}")
  if history.size and (history.min() < 0 or history.max() >= num_clusters):
    raise PlannerError(f"{name}: history holds cluster ids outside [0, {num_clusters})")
  return history.astype(np.int64)


def _check_pairs(history: np.ndarray, next_cluster: np.ndarray, num_clusters: int
                 ) -> tuple[np.ndarray, np.ndarray]:
  history = _check_history("fit", history, None, num_clusters)
  next_cluster = np.asarray(next_cluster, np.int64)
  if next_cluster.shape != (history.shape[0],):
    raise PlannerError(f"fit: next_cluster must be [{history.shape[0]}] (one per history row), "
                       f"got shape {next_cluster.shape}")
  if next_cluster.size and (next_cluster.min() < 0 or next_cluster.max() >= num_clusters):
    raise PlannerError(f"fit: next_cluster holds cluster ids outside [0, {num_clusters})")
  return history, next_cluster


@dataclasses.dataclass(frozen=True)
class PairCounts:
  """Sparse counts of (context row -> next cluster), looked up for a batch of contexts."""

  contexts: np.ndarray  # [C, W] int64 distinct context rows, lexicographically sorted
  starts: np.ndarray  # [C + 1] int64: context c's pairs are [starts[c], starts[c+1])
  next_cluster: np.ndarray  # [P] int64
  count: np.ndarray  # [P] float64
  num_clusters: int

  @classmethod
  def fit(cls, context: np.ndarray, next_cluster: np.ndarray, num_clusters: int) -> "PairCounts":
    pairs = np.concatenate([context, next_cluster[:, None]], axis=1)  # [n, W + 1]
    unique, count = np.unique(pairs, axis=0, return_counts=True)  # sorted lexicographically
    contexts, first = np.unique(unique[:, :-1], axis=0, return_index=True)
    starts = np.append(first, len(unique)).astype(np.int64)
    return cls(contexts=contexts, starts=starts, next_cluster=unique[:, -1],
               count=count.astype(np.float64), num_clusters=num_clusters)

  def context_index(self, rows: np.ndarray) -> np.ndarray:
    """[b] index of each row among the fitted contexts, -1 when unseen."""
    if not len(self.contexts):
      return np.full(len(rows), -1, np.int64)
    ids, _ = lexicographic_ids(np.concatenate([self.contexts, rows]))
    known, query = ids[:len(self.contexts)], ids[len(self.contexts):]  # known is sorted
    pos = np.minimum(np.searchsorted(known, query), len(known) - 1)  # [b]
    return np.where(known[pos] == query, pos, -1)

  def scores(self, rows: np.ndarray) -> np.ndarray:
    """[b, M] float64 counts of each next cluster after each context row."""
    index = self.context_index(rows)  # [b]
    out = np.zeros((len(rows), self.num_clusters), np.float64)
    seen = np.flatnonzero(index >= 0)
    lo, hi = self.starts[index[seen]], self.starts[index[seen] + 1]  # [s]
    lengths = hi - lo
    row = np.repeat(seen, lengths)  # [pairs]
    pair = np.repeat(lo, lengths) + np.arange(lengths.sum()) - np.repeat(
        np.cumsum(lengths) - lengths, lengths)  # [pairs]
    out[row, self.next_cluster[pair]] = self.count[pair]
    return out

  def context_totals(self, rows: np.ndarray) -> np.ndarray:
    """[b] how many fitted examples had each context row (0 when unseen)."""
    index = self.context_index(rows)  # [b]
    cumulative = np.concatenate([[0.0], np.cumsum(self.count)])  # [P + 1]
    totals = cumulative[self.starts[1:]] - cumulative[self.starts[:-1]]  # [C]
    return np.where(index >= 0, totals[np.maximum(index, 0)] if len(totals) else 0.0, 0.0)


def _lexicographic(primary: np.ndarray, secondary: np.ndarray) -> np.ndarray:
  """Scores ordering by `primary`, ties by `secondary` (both >= 0, per row)."""
  scale = secondary.max(axis=1, keepdims=True) + 1.0  # [b, 1]
  return primary + secondary / scale


class Planner:
  """Base: fitted on train (history, next) pairs, scores [b, M] for history [b, K]."""

  name = "planner"

  def __init__(self, num_clusters: int, k: int):
    if num_clusters < 1 or k < 1:
      raise PlannerError(f"{self.name}: num_clusters={num_clusters} and k={k} must be >= 1")
    self.num_clusters = int(num_clusters)
    self.k = int(k)

  def scores(self, history: np.ndarray) -> np.ndarray:
    history = _check_history(self.name, history, self.k, self.num_clusters)
    return self._scores(history)

  def _scores(self, history: np.ndarray) -> np.ndarray:
    raise NotImplementedError


class RandomNovel(Planner):
  """Uniformly random ranking (fixed by `seed`); the floor every planner must beat."""

  name = "random_novel"

  def __init__(self, num_clusters: int, k: int, seed: int = 0):
    super().__init__(num_clusters, k)
    self.seed = seed

  def _scores(self, history):
    rng = np.random.default_rng(self.seed)
    return rng.random((len(history), self.num_clusters))  # [b, M]


class PopularNovel(Planner):
  """The clusters most often discovered (next novel cluster) in train, whatever the history."""

  name = "popular_novel"

  def __init__(self, history: np.ndarray, next_cluster: np.ndarray, num_clusters: int):
    history, next_cluster = _check_pairs(history, next_cluster, num_clusters)
    super().__init__(num_clusters, history.shape[1])
    self.popularity = np.bincount(next_cluster, minlength=num_clusters).astype(np.float64)

  def _scores(self, history):
    return np.broadcast_to(self.popularity, (len(history), self.num_clusters)).copy()


class LastClusterCounts(Planner):
  """Counts of (last cluster -> next) in train; popularity breaks ties and fills unseen rows."""

  name = "last_cluster"

  def __init__(self, history: np.ndarray, next_cluster: np.ndarray, num_clusters: int):
    history, next_cluster = _check_pairs(history, next_cluster, num_clusters)
    super().__init__(num_clusters, history.shape[1])
    self.last = PairCounts.fit(history[:, -1:], next_cluster, num_clusters)
    self.popularity = np.bincount(next_cluster, minlength=num_clusters).astype(np.float64)

  def _scores(self, history):
    popularity = np.broadcast_to(self.popularity, (len(history), self.num_clusters))
    return _lexicographic(self.last.scores(history[:, -1:]), popularity)


class TransitionCounts(Planner):
  """Counts of (K-tuple -> next), backing off to last-cluster counts, then to popularity.

  Scores are tuple_count + (last_count + popularity / (max popularity + 1)) /
  (max last_count + 1) per row: any tuple count outranks any back-off score.
  """

  name = "transition"

  def __init__(self, history: np.ndarray, next_cluster: np.ndarray, num_clusters: int):
    history, next_cluster = _check_pairs(history, next_cluster, num_clusters)
    super().__init__(num_clusters, history.shape[1])
    self.tuples = PairCounts.fit(history, next_cluster, num_clusters)
    self.last = LastClusterCounts(history, next_cluster, num_clusters)

  def _scores(self, history):
    return _lexicographic(self.tuples.scores(history), self.last._scores(history))


def fit_baselines(history: np.ndarray, next_cluster: np.ndarray, num_clusters: int,
                  seed: int = 0) -> dict[str, Planner]:
  """Every baseline planner fitted on train pairs, by name."""
  history, next_cluster = _check_pairs(history, next_cluster, num_clusters)
  planners = [RandomNovel(num_clusters, history.shape[1], seed),
              PopularNovel(history, next_cluster, num_clusters),
              TransitionCounts(history, next_cluster, num_clusters),
              LastClusterCounts(history, next_cluster, num_clusters)]
  return {p.name: p for p in planners}
