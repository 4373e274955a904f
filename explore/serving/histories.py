"""Serving histories: original ids -> dense items -> the last K unique clusters.

A batch of histories is kept as CSR rows of dense item ids, oldest first, with
a flag per item for whether it counts as an engagement. The planner's input is
defined as in `explore.transitions.examples`: the clusters of the engaged items,
and of those the K whose most recent engagement is latest, oldest first. An
explicit history (a list of item ids) counts every item as engaged; a user from
the run's log counts only the positive ones, while every logged item is seen
and is never recommended again.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np


class ServingError(ValueError):
  """A request the serving path cannot answer: bad ids, an empty history, bad sizes."""


class UnknownIdError(ServingError):
  """A user or item id that the run's log or catalog does not have."""


class IdIndex:
  """Original ids (ints or strings, as in the source log) <-> dense indices, vectorized."""

  def __init__(self, ids: np.ndarray, what: str):
    self.ids = np.asarray(ids)
    self.what = what
    self._order = np.argsort(self.ids, kind="stable")
    self._sorted = self.ids[self._order]

  def __len__(self) -> int:
    return len(self.ids)

  def coerce(self, values: Sequence) -> np.ndarray:
    """`values` (e.g. strings from a command line or JSON) as this index's id type."""
    array = np.asarray(list(values), dtype=object)
    if np.issubdtype(self.ids.dtype, np.integer):
      out = np.empty(len(array), np.int64)
      for position, value in enumerate(array):
        try:
          if isinstance(value, (bool, float)) or value is None:
            raise ValueError
          out[position] = int(value)
        except (TypeError, ValueError):
          raise UnknownIdError(f"{self.what} id {value!r} is not an integer id") from None
      return out
    return np.asarray([str(v) for v in array], dtype=self.ids.dtype if len(array) else str)

  def dense(self, values: Sequence) -> np.ndarray:
    """[n] int64 dense indices of original ids; UnknownIdError names the first unknown one."""
    values = self.coerce(values)
    if not len(values):
      return np.zeros(0, np.int64)
    slot = np.minimum(np.searchsorted(self._sorted, values), len(self._sorted) - 1)
    found = self._sorted[slot] == values
    if not np.all(found):
      bad = values[np.flatnonzero(~found)[0]]
      raise UnknownIdError(f"unknown {self.what} id {bad.item()!r}: not in the run's "
                           f"{self.what}s ({len(self.ids)} known)")
    return self._order[slot].astype(np.int64)

  def original(self, dense: np.ndarray) -> list:
    """Original ids of dense indices as JSON-ready Python values."""
    return [self.ids[i].item() for i in np.asarray(dense, np.int64)]


@dataclasses.dataclass(frozen=True)
class Histories:
  """A batch of histories as CSR rows of dense item ids, oldest first."""

  offsets: np.ndarray  # [B + 1] int64: row b is items[offsets[b]:offsets[b + 1]]
  items: np.ndarray  # [T] int32 dense item ids
  engaged: np.ndarray  # [T] bool: counts toward the row's clusters

  @property
  def num_rows(self) -> int:
    return len(self.offsets) - 1

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)  # [B]

  @property
  def row_of_item(self) -> np.ndarray:
    return np.repeat(np.arange(self.num_rows), self.lengths)  # [T]

  @classmethod
  def from_lists(cls, histories: Sequence[np.ndarray]) -> "Histories":
    """Explicit histories of dense item ids; every item counts as engaged."""
    lengths = np.asarray([len(h) for h in histories], np.int64)
    empty = np.flatnonzero(lengths == 0)
    if len(empty):
      raise ServingError(f"history {int(empty[0])} is empty; a recommendation needs at least "
                         "one item the user engaged with")
    items = (np.concatenate([np.asarray(h, np.int32) for h in histories]) if len(histories)
             else np.zeros(0, np.int32))
    return cls(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64), items,
               np.ones(len(items), bool))

  def seen_matrix(self, min_width: int = 16) -> np.ndarray:
    """[B, S] int32 each row's items, -1 padded; S a power of two (few distinct shapes)."""
    width = max(min_width, int(self.lengths.max(initial=0)))
    width = 1 << (width - 1).bit_length()
    seen = np.full((self.num_rows, width), -1, np.int32)
    column = np.arange(len(self.items)) - np.repeat(self.offsets[:-1], self.lengths)  # [T]
    seen[self.row_of_item, column] = self.items
    return seen


@dataclasses.dataclass(frozen=True)
class ClusterHistory:
  """Each row's recent clusters (the planner's input) and every cluster it engaged with."""

  recent: np.ndarray  # [B, K] int32 last K unique clusters, oldest first; -1 pads on the left
  num_recent: np.ndarray  # [B] int32 how many of the K are real (fewer clusters than K)
  engaged_keys: np.ndarray  # [E] int64 sorted row * M + cluster of every engaged cluster
  num_clusters: int

  def is_engaged(self, clusters: np.ndarray) -> np.ndarray:
    """[B, n] bool: clusters [B, n] (-1 allowed) that the row already engaged with."""
    rows = np.arange(len(clusters))[:, None]
    keys = rows * self.num_clusters + np.asarray(clusters, np.int64)  # [B, n]
    return np.isin(keys, self.engaged_keys) & (np.asarray(clusters) >= 0)

  def engaged(self, row: int) -> np.ndarray:
    """The clusters row `row` engaged with, ascending."""
    m = self.num_clusters
    lo, hi = np.searchsorted(self.engaged_keys, [row * m, (row + 1) * m])
    return (self.engaged_keys[lo:hi] - row * m).astype(np.int32)


def cluster_history(histories: Histories, item_to_cluster: np.ndarray, num_clusters: int,
                    k: int) -> ClusterHistory:
  """The last K unique engaged clusters of every row (see the module docstring)."""
  position = np.flatnonzero(histories.engaged)  # [T'] engaged positions, ascending
  rows = histories.row_of_item[position]
  keys = rows.astype(np.int64) * num_clusters + item_to_cluster[histories.items[position]]
  # Each (row, cluster) key's latest position: the first hit when scanning backwards.
  unique_keys, first_from_end = np.unique(keys[::-1], return_index=True)
  latest = position[len(position) - 1 - first_from_end]  # [E]
  key_rows = unique_keys // num_clusters
  order = np.lexsort((-latest, key_rows))  # by row, newest first
  ordered_rows = key_rows[order]
  row_start = np.searchsorted(ordered_rows, ordered_rows)  # first entry of the same row
  rank = np.arange(len(order)) - row_start  # 0 = newest cluster of the row
  keep = rank < k
  recent = np.full((histories.num_rows, k), -1, np.int32)
  recent[ordered_rows[keep], k - 1 - rank[keep]] = (unique_keys[order][keep] % num_clusters)
  num_recent = np.minimum(np.bincount(key_rows, minlength=histories.num_rows), k)
  return ClusterHistory(recent, num_recent.astype(np.int32), unique_keys, num_clusters)
