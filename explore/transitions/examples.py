"""Novel-interest transitions: (last K unique clusters) -> the next cluster new to the user.

Definitions (docs/transitions.md has worked examples):
- A user's *sequence* is their positive engagements in time order (ties keep the
  log order), each mapped to its item's cluster, with consecutive repeats of a
  cluster removed. Negative (non-positive) engagements are ignored entirely:
  they neither count as engaging with a cluster nor break a run of repeats, so a
  cluster seen only negatively before can still be a novel next cluster.
- Position j of the sequence is *novel* when its cluster does not occur at any
  earlier position of the user's sequence (a first positive engagement).
- The *history* at j is the K clusters with the most recent occurrences before
  j (the last K unique clusters), ordered oldest first, so history[:, -1] is
  the cluster engaged with just before the novel one. A novel position with
  fewer than K distinct clusters before it gives no example; a user with d
  distinct clusters gives max(0, d - K) examples.
- Each example's *timestamp* is that of the novel engagement. A global time
  cut puts the latest `test_fraction` of examples in test: test examples are
  those at or after the cut, so every test timestamp is >= every train one
  (ties at the cut all go to test).
- For evaluation, each example records how many distinct clusters the user
  had engaged with before it: they are the first `num_engaged_before` entries
  of the user's clusters in order of first positive engagement (CSR arrays
  `engaged_clusters` / `engaged_offsets`), and the example's next cluster is
  the entry right after them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from typing import Any, Sequence

import gin
import numpy as np

from explore import artifacts
from explore.clusters.assignment import check_item_to_cluster
from explore.data.schema import Interactions
from explore.transitions.counts import TupleCounts, count_tuples, lexicographic_ids

TRANSITIONS_KIND = "novel_transitions"
TRANSITIONS_VERSION = 1
TRAIN, TEST = 0, 1
SPLIT_NAMES = {TRAIN: "train", TEST: "test"}


class TransitionsError(ValueError):
  """Bad inputs to `novel_transitions` or an inconsistent transitions artifact."""


def clusters_fingerprint(item_to_cluster: np.ndarray) -> str:
  """Short hash of an item->cluster map, stored to detect artifacts made from other clusters."""
  return hashlib.sha1(np.ascontiguousarray(item_to_cluster, np.int64).tobytes()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class NovelTransitions:
  """All novel-transition examples of a log, sorted by user then time, with their split."""

  user: np.ndarray  # [n] int32, dense user index of `Interactions`
  history: np.ndarray  # [n, K] int32, last K unique clusters, oldest first
  next_cluster: np.ndarray  # [n] int32, the novel cluster
  timestamp: np.ndarray  # [n] int64, time of the novel engagement
  split: np.ndarray  # [n] int8, TRAIN (0) or TEST (1)
  num_engaged_before: np.ndarray  # [n] int32, distinct clusters the user engaged with before
  engaged_clusters: np.ndarray  # [E] int32, per user, clusters in order of first engagement
  engaged_offsets: np.ndarray  # [num_users + 1] int64, user u's are [offsets[u], offsets[u+1])
  num_clusters: int
  cut_timestamp: int  # earliest test timestamp; no example is test when it exceeds them all

  def __post_init__(self):
    n = len(self.next_cluster)
    columns = {"user": self.user, "history": self.history, "timestamp": self.timestamp,
               "split": self.split, "num_engaged_before": self.num_engaged_before}
    if self.history.ndim != 2 or any(len(v) != n for v in columns.values()):
      shapes = {k: v.shape for k, v in columns.items()}
      raise TransitionsError(
          f"NovelTransitions: per-example arrays must have {n} rows (history [n, K]), got {shapes}")
    if self.engaged_offsets[-1] != len(self.engaged_clusters):
      raise TransitionsError(
          f"NovelTransitions: engaged_offsets ends at {self.engaged_offsets[-1]}, "
          f"engaged_clusters has {len(self.engaged_clusters)} entries")

  def __len__(self) -> int:
    return len(self.next_cluster)

  @property
  def k(self) -> int:
    return self.history.shape[1]

  @property
  def num_users(self) -> int:
    return len(self.engaged_offsets) - 1

  def indices(self, split: int) -> np.ndarray:
    """[n_split] int64: indices of the examples of one split (TRAIN or TEST)."""
    if split not in SPLIT_NAMES:
      raise TransitionsError(f"split must be TRAIN (0) or TEST (1), got {split!r}")
    return np.flatnonzero(self.split == split)

  def previously_engaged(self, example: int) -> np.ndarray:
    """[num_engaged_before] int32: the clusters the user engaged with before the example."""
    start = self.engaged_offsets[self.user[example]]
    return self.engaged_clusters[start:start + self.num_engaged_before[example]]

  def previously_engaged_mask(self, examples: np.ndarray) -> np.ndarray:
    """[len(examples), num_clusters] bool: True where the user had engaged before (to exclude)."""
    examples = np.asarray(examples, np.int64)
    counts = self.num_engaged_before[examples].astype(np.int64)  # [b]
    rows = np.repeat(np.arange(len(examples)), counts)  # [total]
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)  # [total]
    flat = np.repeat(self.engaged_offsets[self.user[examples]], counts) + within  # [total]
    mask = np.zeros((len(examples), self.num_clusters), bool)
    mask[rows, self.engaged_clusters[flat]] = True
    return mask

  def with_train(self, fit: np.ndarray) -> "NovelTransitions":
    """A view whose train split is `fit` (train example indices) and every other example test.

    Used to evaluate on held-out train examples (a validation split) exactly as on
    test ones: planners fitted on `fit`, tuples bucketed by their counts in `fit`.
    """
    fit = np.asarray(fit, np.int64)
    if fit.ndim != 1 or (len(fit) and (fit.min() < 0 or fit.max() >= len(self))):
      raise TransitionsError(f"with_train: fit must be a 1-D array of example indices in "
                             f"[0, {len(self)}), got shape {fit.shape}")
    if np.any(self.split[fit] != TRAIN):
      raise TransitionsError("with_train: fit holds test examples; only train examples can fit")
    split = np.full(len(self), TEST, np.int8)
    split[fit] = TRAIN
    return dataclasses.replace(self, split=split)

  def tuple_counts(self, split: int) -> TupleCounts:
    """Unique (history, next) pairs of one split with their counts."""
    idx = self.indices(split)
    return count_tuples(self.history[idx], self.next_cluster[idx])

  def summary(self, top_n: int = 10, descriptions: Sequence[str] | None = None
              ) -> dict[str, Any]:
    """JSON-ready numbers for the CLI: examples, tuples, users left out, top next clusters."""
    distinct = np.diff(self.engaged_offsets)  # [users] distinct clusters per user
    out: dict[str, Any] = {
        "k": self.k, "num_clusters": self.num_clusters, "num_users": self.num_users,
        "cut_timestamp": int(self.cut_timestamp),
        "users_without_positives": int(np.sum(distinct == 0)),
        "users_with_fewer_than_k_clusters": int(np.sum(distinct < self.k)),
        "users_without_novel_transitions": int(np.sum(distinct <= self.k)),
    }
    counts = {s: self.tuple_counts(s) for s in SPLIT_NAMES}
    for s, name in SPLIT_NAMES.items():
      out[f"num_examples_{name}"] = int(np.sum(self.split == s))
      out[f"num_pairs_{name}"] = len(counts[s])
      out[f"num_tuples_{name}"] = counts[s].num_tuples()
    test_history = self.history[self.indices(TEST)]  # [n_test, K]
    ids, _ = lexicographic_ids(np.concatenate([counts[TRAIN].history, test_history]))
    num_train = len(counts[TRAIN])
    unseen = ~np.isin(ids[num_train:], ids[:num_train])  # [n_test]
    out["test_examples_with_tuple_unseen_in_train"] = int(unseen.sum())
    popularity = counts[TRAIN].next_popularity(self.num_clusters)  # [clusters]
    top = np.argsort(-popularity, kind="stable")[:top_n]
    out["top_next_clusters_train"] = [
        {"cluster": int(c), "count": int(popularity[c]),
         **({"description": str(descriptions[c])} if descriptions is not None else {})}
        for c in top if popularity[c] > 0]
    return out

  def save(self, directory: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
    arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if f.name not in ("num_clusters", "cut_timestamp")}
    full_meta = {"num_clusters": int(self.num_clusters), "cut_timestamp": int(self.cut_timestamp),
                 "k": self.k, **(meta or {})}
    artifacts.save_artifact(directory, TRANSITIONS_KIND, TRANSITIONS_VERSION, arrays, full_meta)

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "NovelTransitions":
    arrays, meta, _ = artifacts.load_artifact(directory, TRANSITIONS_KIND, TRANSITIONS_VERSION)
    return cls(**arrays, num_clusters=int(meta["num_clusters"]),
               cut_timestamp=int(meta["cut_timestamp"]))


def _check_inputs(interactions: Interactions, item_to_cluster: np.ndarray, num_clusters: int,
                  k: int, test_fraction: float, max_events_per_chunk: int) -> None:
  if not isinstance(k, (int, np.integer)) or k < 1:
    raise TransitionsError(
        f"novel_transitions: k (history length) must be an integer >= 1, got {k!r}")
  if not isinstance(num_clusters, (int, np.integer)) or num_clusters < 1:
    raise TransitionsError(f"novel_transitions: num_clusters must be >= 1, got {num_clusters!r}")
  if not 0.0 <= test_fraction < 1.0:
    raise TransitionsError(
        f"novel_transitions: test_fraction must be in [0, 1), got {test_fraction!r}")
  if max_events_per_chunk < 1:
    raise TransitionsError(
        f"novel_transitions: max_events_per_chunk must be >= 1, got {max_events_per_chunk!r}")
  check_item_to_cluster("novel_transitions", item_to_cluster, interactions.num_items,
                        num_clusters, TransitionsError, items_source="the interaction log")


def _chunk_transitions(user: np.ndarray, cluster: np.ndarray, timestamp: np.ndarray,
                       num_clusters: int, k: int) -> dict[str, np.ndarray]:
  """Examples and first engagements of the positive events of whole users (sorted by user, time)."""
  keep = np.ones(len(user), bool)  # drop consecutive repeats of a cluster within a user
  keep[1:] = (user[1:] != user[:-1]) | (cluster[1:] != cluster[:-1])
  user, cluster, timestamp = user[keep], cluster[keep], timestamp[keep]  # [s] the sequences
  n = len(user)
  first = np.zeros(n, bool)  # first occurrence of (user, cluster)
  _, first_idx = np.unique(user.astype(np.int64) * num_clusters + cluster, return_index=True)
  first[first_idx] = True
  user_start = np.ones(n, bool)
  user_start[1:] = user[1:] != user[:-1]
  start_pos = np.maximum.accumulate(np.where(user_start, np.arange(n), 0))  # [s]
  distinct_so_far = np.cumsum(first) - first  # [s] first occurrences before each position
  distinct_before = distinct_so_far - distinct_so_far[start_pos]  # [s] within the user
  pos = np.flatnonzero(first & (distinct_before >= k))  # [e] novel positions with a full history
  history = np.empty((len(pos), k), np.int32)  # most recent first while collecting
  cursor = pos - 1  # [e]
  for slot in range(k):
    todo = np.arange(len(pos))
    while len(todo):  # step back over clusters already collected
      taken = np.any(cluster[cursor[todo], None] == history[todo, :slot], axis=1)
      todo = todo[taken]
      cursor[todo] -= 1
    history[:, slot] = cluster[cursor]
    cursor -= 1
  if len(pos) and np.any(cursor + 1 < start_pos[pos]):
    raise AssertionError("history walked past the start of a user's sequence")
  return {
      "user": user[pos].astype(np.int32), "history": history[:, ::-1].copy(),
      "next_cluster": cluster[pos].astype(np.int32), "timestamp": timestamp[pos].astype(np.int64),
      "num_engaged_before": distinct_before[pos].astype(np.int32),
      "first_user": user[first].astype(np.int32), "first_cluster": cluster[first].astype(np.int32),
  }


def time_split(timestamp: np.ndarray, test_fraction: float) -> tuple[np.ndarray, int]:
  """Splits examples by a global time cut: ([n] int8 TRAIN/TEST, cut timestamp).

  The cut is the timestamp of the round(test_fraction * n)-th latest example (at
  least one test example when test_fraction > 0); every example at or after it
  is test.
  """
  n = len(timestamp)
  num_test = int(math.floor(test_fraction * n + 0.5))
  if test_fraction > 0 and n:
    num_test = max(num_test, 1)
  if num_test == 0:
    cut = int(timestamp.max()) + 1 if n else 0
  else:
    cut = int(np.partition(timestamp, n - num_test)[n - num_test])
  return np.where(timestamp >= cut, TEST, TRAIN).astype(np.int8), cut


@gin.configurable
def novel_transitions(
    interactions: Interactions,
    item_to_cluster: np.ndarray,
    num_clusters: int,
    k: int = 2,
    test_fraction: float = 0.1,
    max_events_per_chunk: int = 10_000_000,
) -> NovelTransitions:
  """Builds every novel-transition example of a log and splits them by time.

  Args:
    interactions: the log (sorted by user then time, as `Interactions` is).
    item_to_cluster: [num_items] cluster id of every item.
    num_clusters: number of clusters (ids in [0, num_clusters)).
    k: history length, the number of last unique clusters.
    test_fraction: the latest fraction of examples that is test.
    max_events_per_chunk: users are processed in chunks of about this many
      events (whole users), which bounds memory on very large logs.
  """
  item_to_cluster = np.asarray(item_to_cluster)
  _check_inputs(interactions, item_to_cluster, num_clusters, k, test_fraction,
                max_events_per_chunk)
  offsets = interactions.user_offsets()  # [users + 1]
  parts = []
  first_user = 0
  while first_user < interactions.num_users:
    limit = offsets[first_user] + max_events_per_chunk
    end_user = int(np.searchsorted(offsets, limit, "right")) - 1
    end_user = min(max(end_user, first_user + 1), interactions.num_users)
    rows = slice(offsets[first_user], offsets[end_user])
    positive = interactions.positive[rows]
    parts.append(_chunk_transitions(
        interactions.user[rows][positive], item_to_cluster[interactions.item[rows][positive]],
        interactions.timestamp[rows][positive], num_clusters, k))
    first_user = end_user
  if parts:
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}
  else:
    columns = _chunk_transitions(*(np.zeros(0, np.int64),) * 3, num_clusters, k)
  split, cut = time_split(columns["timestamp"], test_fraction)
  engaged_count = np.bincount(columns["first_user"], minlength=interactions.num_users)
  return NovelTransitions(
      user=columns["user"], history=columns["history"], next_cluster=columns["next_cluster"],
      timestamp=columns["timestamp"], split=split,
      num_engaged_before=columns["num_engaged_before"],
      engaged_clusters=columns["first_cluster"],
      engaged_offsets=np.concatenate([[0], np.cumsum(engaged_count)]).astype(np.int64),
      num_clusters=int(num_clusters), cut_timestamp=cut)
