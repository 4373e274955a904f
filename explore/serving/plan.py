"""Novel clusters for each history: the precomputed table, with named fallbacks.

For a history with K unique clusters the plan is the table's row for them, less
any cluster the user already engaged with (the table excludes only the K in the
tuple). Fallbacks, each named per planned cluster in the output:

  "table"         the table's row for the last K unique clusters;
  "table_suffix"  a history with j < K unique clusters (c_1 .. c_j): every table
                  row whose last j clusters are (c_1 .. c_j) -- rows
                  suffix + t * M^j, t in [0, M^(K-j)) -- aggregated by Borda
                  count (a cluster at rank r of an n-long row gets n - r points),
                  averaged over the rows;
  "popular"       the most engaged-with clusters of the log that the user has
                  not engaged with, filling what the first two leave empty (or
                  everything, for a user with no engaged cluster).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from explore.precompute.table import NO_CLUSTER, TupleTable
from explore.serving.histories import ClusterHistory

SOURCES = ("table", "table_suffix", "popular")
TABLE, SUFFIX, POPULAR = range(3)
NO_SOURCE = -1


@dataclasses.dataclass(frozen=True)
class Plan:
  clusters: np.ndarray  # [B, c] int32 planned novel clusters, best first; -1 past the last
  scores: np.ndarray  # [B, c] float32 score under its source (table score, Borda, count)
  source: np.ndarray  # [B, c] int8 index into SOURCES; -1 with cluster -1


def _first_valid(clusters: np.ndarray, valid: np.ndarray, width: int) -> np.ndarray:
  """[B, width] column indices of each row's first `width` valid entries; -1 past them."""
  order = np.argsort(~valid, axis=1, kind="stable")[:, :width]  # valid columns first
  taken = np.take_along_axis(valid, order, axis=1)
  return np.where(taken, order, -1)


class ClusterPlanner:
  """Plans novel clusters from a `TupleTable`; see the module docstring."""

  def __init__(self, table: TupleTable, cluster_popularity: np.ndarray):
    self.table = table
    popularity = np.asarray(cluster_popularity, np.float64)
    if popularity.shape != (table.num_clusters,):
      raise ValueError(f"cluster_popularity has shape {popularity.shape}, expected "
                       f"({table.num_clusters},) for the table's clusters")
    self.popularity = popularity.astype(np.float32)
    self.popular_order = np.argsort(-popularity, kind="stable")  # [M] most engaged first
    self._suffix_cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

  def suffix_plan(self, suffix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([n] clusters, [n] Borda scores) over the table rows ending with `suffix` (j < K)."""
    key = tuple(int(c) for c in suffix)
    if key not in self._suffix_cache:
      m, n = self.table.num_clusters, self.table.top_n
      start = int(sum(c * m ** (len(key) - 1 - i) for i, c in enumerate(key)))
      rows = np.asarray(self.table.clusters[start::m ** len(key)])  # [M^(K-j), n]
      valid = rows != NO_CLUSTER
      points = np.broadcast_to(np.arange(n, 0, -1, dtype=np.float64), rows.shape)
      total = np.bincount(rows[valid], points[valid], minlength=m)  # [M]
      total /= max(1, int(valid.any(axis=1).sum()))
      total[list(key)] = 0.0
      order = np.lexsort((np.arange(m), -total))[:n]
      order = order[total[order] > 0]
      self._suffix_cache[key] = (order.astype(np.int32), total[order].astype(np.float32))
    return self._suffix_cache[key]

  def plan(self, history: ClusterHistory, width: int) -> Plan:
    """The first `width` novel clusters of every row (see the module docstring)."""
    b, k = history.recent.shape
    n = max(self.table.top_n, width)
    candidates = np.full((b, n), NO_CLUSTER, np.int32)  # [B, n]
    scores = np.zeros((b, n), np.float32)
    source = np.full((b, n), NO_SOURCE, np.int8)
    full = np.flatnonzero(history.num_recent == k)
    if len(full):
      top = self.table.top_n
      candidates[full, :top], scores[full, :top] = self.table.lookup(history.recent[full])
      source[full] = TABLE
    for row in np.flatnonzero((history.num_recent > 0) & (history.num_recent < k)):
      ids, points = self.suffix_plan(history.recent[row, k - history.num_recent[row]:])
      candidates[row, :len(ids)], scores[row, :len(ids)] = ids, points
      source[row, :len(ids)] = SUFFIX
    valid = (candidates != NO_CLUSTER) & ~history.is_engaged(candidates)
    columns = _first_valid(candidates, valid, width)  # [B, width]
    picked = columns >= 0
    safe = np.maximum(columns, 0)
    plan = Plan(np.where(picked, np.take_along_axis(candidates, safe, 1), NO_CLUSTER),
                np.where(picked, np.take_along_axis(scores, safe, 1), 0.0).astype(np.float32),
                np.where(picked, np.take_along_axis(source, safe, 1), NO_SOURCE).astype(np.int8))
    for row in np.flatnonzero(~picked.all(axis=1)):
      self._fill_popular(plan, row, history.engaged(row))
    return plan

  def _fill_popular(self, plan: Plan, row: int, engaged: np.ndarray) -> None:
    """Fills row `row`'s empty plan slots with the most popular clusters still novel to it."""
    slots = np.flatnonzero(plan.clusters[row] == NO_CLUSTER)
    taken = np.concatenate([engaged, plan.clusters[row][plan.clusters[row] >= 0]])
    fresh = self.popular_order[~np.isin(self.popular_order, taken)][:len(slots)]
    slots = slots[:len(fresh)]
    plan.clusters[row, slots] = fresh
    plan.scores[row, slots] = self.popularity[fresh]
    plan.source[row, slots] = POPULAR
