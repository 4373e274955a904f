"""The precomputed planner table: every ordered K-tuple of clusters -> its top-n novel clusters.

The planner's input space is finite: a history is the last K unique clusters,
so there are M^K tuples (M(M-1) of distinct clusters at K = 2). The
`precompute` stage runs the planner over every one of them offline; serving
is then a lookup in this table.

Layout (an artifact folder, see `explore.artifacts`):
  clusters.npy   [M^K, n] int32: row `tuple_index(t)` holds tuple t's top-n
                 clusters, best first; -1 past the last allowed cluster and on
                 every row whose tuple repeats a cluster (never a history)
  scores.npy     [M^K, n] float32: the planner's score of each, -inf where -1
  meta.json      kind, version, M, K, n, and the fingerprints of what the
                 table was built from (cluster set, checkpoint, ...)

The row of tuple (c_1, ..., c_K), oldest first, is sum_i c_i M^(K-i): one
multiply-add per position, O(1) per lookup. The arrays are plain `.npy` files
opened with `mmap_mode="r"`, so loading a table of a million tuples reads only
its header; rows are paged in as they are looked up.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from explore import artifacts

KIND = "tuple_table"
VERSION = 1
CLUSTERS_FILE = "clusters.npy"
SCORES_FILE = "scores.npy"
NO_CLUSTER = -1


class TableError(ValueError):
  """A table that is malformed, truncated, built from other inputs, or asked a bad tuple."""


def text_fingerprint(texts: Sequence[str]) -> str:
  """A short content hash of an ordered list of texts (e.g. the cluster descriptions)."""
  digest = hashlib.sha256()
  for text in texts:
    data = str(text).encode()
    digest.update(len(data).to_bytes(8, "little"))
    digest.update(data)
  return digest.hexdigest()[:16]


def num_rows(num_clusters: int, k: int) -> int:
  """Rows of a table over M clusters and K-tuples: M^K (repeating tuples included, unused)."""
  return int(num_clusters) ** int(k)


def tuple_index(history: np.ndarray, num_clusters: int) -> np.ndarray:
  """[b] row of each history tuple [b, K] (oldest first): sum_i c_i M^(K-i)."""
  history = np.asarray(history, np.int64)
  index = np.zeros(history.shape[0], np.int64)
  for position in range(history.shape[1]):
    index = index * num_clusters + history[:, position]
  return index


def distinct_tuples(num_clusters: int, k: int, rows: np.ndarray | None = None) -> np.ndarray:
  """[r, K] int32 the tuples of `rows` (default all M^K) whose clusters are all distinct.

  In row order, so the precompute's shards of consecutive rows are contiguous
  slices of the table.
  """
  rows = np.arange(num_rows(num_clusters, k), dtype=np.int64) if rows is None else np.asarray(
      rows, np.int64)
  digits = np.zeros((len(rows), k), np.int64)  # [r, K]
  rest = rows.copy()
  for position in range(k - 1, -1, -1):
    digits[:, position] = rest % num_clusters
    rest //= num_clusters
  ordered = np.sort(digits, axis=1)
  distinct = np.all(ordered[:, 1:] != ordered[:, :-1], axis=1) if k > 1 else np.ones(
      len(rows), bool)
  return digits[distinct].astype(np.int32)


def _check_history(history: np.ndarray, num_clusters: int, k: int) -> np.ndarray:
  history = np.asarray(history)
  if history.ndim != 2 or history.shape[1] != k:
    raise TableError(f"history must be [b, {k}] cluster ids (the last {k} unique clusters, "
                     f"oldest first), got shape {history.shape}")
  if not np.issubdtype(history.dtype, np.integer):
    raise TableError(f"history must hold integer cluster ids, got dtype {history.dtype}")
  if history.size and (history.min() < 0 or history.max() >= num_clusters):
    bad = history[(history < 0) | (history >= num_clusters)][0]
    raise TableError(f"history holds cluster id {int(bad)} outside [0, {num_clusters})")
  if k > 1 and len(history):
    ordered = np.sort(history, axis=1)
    repeats = np.flatnonzero(np.any(ordered[:, 1:] == ordered[:, :-1], axis=1))
    if len(repeats):
      raise TableError(f"history row {int(repeats[0])} {history[repeats[0]].tolist()} repeats a "
                       "cluster; a history is the last K *unique* clusters")
  return history.astype(np.int64)


class TupleTable:
  """The lookup table of a planner over every K-tuple; see the module docstring."""

  def __init__(self, clusters: np.ndarray, scores: np.ndarray, num_clusters: int, k: int,
               fingerprints: Mapping[str, str] | None = None,
               meta: Mapping[str, object] | None = None):
    self.num_clusters, self.k = int(num_clusters), int(k)
    rows = num_rows(self.num_clusters, self.k)
    if self.num_clusters < 2 or self.k < 1:
      raise TableError(f"a table needs num_clusters >= 2 and k >= 1, got {num_clusters}, {k}")
    if clusters.ndim != 2 or clusters.shape[0] != rows or scores.shape != clusters.shape:
      raise TableError(f"clusters and scores must both be [{rows}, n] (M^K rows for M="
                       f"{num_clusters}, K={k}), got {clusters.shape} and {scores.shape}")
    self.clusters = clusters  # [M^K, n] int32
    self.scores = scores  # [M^K, n] float32
    self.top_n = int(clusters.shape[1])
    self.fingerprints = dict(fingerprints or {})
    self.meta = dict(meta or {})

  @classmethod
  def empty(cls, num_clusters: int, k: int, top_n: int, **kwargs) -> "TupleTable":
    """A table with no planned rows (every entry -1 / -inf), to be filled by `set_rows`."""
    shape = (num_rows(num_clusters, k), int(top_n))
    return cls(np.full(shape, NO_CLUSTER, np.int32), np.full(shape, -np.inf, np.float32),
               num_clusters, k, **kwargs)

  def set_rows(self, history: np.ndarray, clusters: np.ndarray, scores: np.ndarray) -> None:
    """Writes the planner's top-n ([b, n] ids, [b, n] scores) for tuples `history` [b, K]."""
    history = _check_history(history, self.num_clusters, self.k)
    clusters = np.asarray(clusters)
    if clusters.shape != (len(history), self.top_n) or np.shape(scores) != clusters.shape:
      raise TableError(f"set_rows: clusters and scores must be [{len(history)}, {self.top_n}], "
                       f"got {clusters.shape} and {np.shape(scores)}")
    if clusters.size and (clusters.min() < NO_CLUSTER or clusters.max() >= self.num_clusters):
      raise TableError(f"set_rows: cluster ids must be in [0, {self.num_clusters}) or -1")
    index = tuple_index(history, self.num_clusters)
    self.clusters[index] = clusters
    self.scores[index] = np.where(clusters == NO_CLUSTER, -np.inf, scores)

  def lookup(self, history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """([b, n] int32 clusters, [b, n] float32 scores) for history tuples [b, K], best first."""
    index = tuple_index(_check_history(history, self.num_clusters, self.k), self.num_clusters)
    return np.asarray(self.clusters[index]), np.asarray(self.scores[index])

  def planner_scores(self, history: np.ndarray) -> np.ndarray:
    """[b, M] scores in the planners' face: the table's n clusters ranked first, best first.

    Clusters outside a tuple's top-n score -inf, so `explore.eval.hit_rate`
    ranks them after every planned cluster (by cluster id).
    """
    clusters, _ = self.lookup(history)  # [b, n]
    out = np.full((len(clusters), self.num_clusters), -np.inf, np.float64)  # [b, M]
    rank_scores = np.arange(self.top_n, 0, -1, dtype=np.float64)  # [n] n .. 1
    rows, slots = np.nonzero(clusters != NO_CLUSTER)
    out[rows, clusters[rows, slots]] = rank_scores[slots]
    return out

  def check_fingerprints(self, expected: Mapping[str, str], where: str | os.PathLike = "") -> None:
    """Raises naming each input whose fingerprint differs from the one the table was built from."""
    changed = [f"{name} (table {self.fingerprints.get(name)!r}, now {value!r})"
               for name, value in expected.items() if self.fingerprints.get(name) != value]
    if changed:
      raise TableError(f"{where or 'table'}: built from other inputs: {', '.join(changed)}; "
                       "rebuild it with `explore precompute --force`")

  # Storage -------------------------------------------------------------------

  def save(self, directory: str | os.PathLike) -> Path:
    """Writes the table folder atomically (a complete old table stays until the new one is in)."""
    directory = Path(directory)
    meta = {"num_clusters": self.num_clusters, "k": self.k, "top_n": self.top_n,
            "fingerprints": self.fingerprints, **self.meta}
    return artifacts.save_folder(directory, KIND, VERSION, meta, {
        CLUSTERS_FILE: lambda f: np.save(f, np.ascontiguousarray(self.clusters, np.int32)),
        SCORES_FILE: lambda f: np.save(f, np.ascontiguousarray(self.scores, np.float32))})

  @classmethod
  def load(cls, directory: str | os.PathLike, mmap: bool = True) -> "TupleTable":
    """Opens a saved table; with `mmap` the rows stay on disk until looked up."""
    directory = Path(directory)
    meta = artifacts.load_folder_meta(directory, KIND, VERSION)
    try:
      m, k, n = int(meta["num_clusters"]), int(meta["k"]), int(meta["top_n"])
    except (KeyError, TypeError, ValueError):
      raise TableError(f"{directory}: meta.json lacks num_clusters / k / top_n") from None
    arrays = [_open_array(directory / name, (num_rows(m, k), n), dtype, mmap)
              for name, dtype in ((CLUSTERS_FILE, np.int32), (SCORES_FILE, np.float32))]
    extra = {key: value for key, value in meta.items()
             if key not in ("num_clusters", "k", "top_n", "fingerprints")}
    return cls(arrays[0], arrays[1], m, k, meta.get("fingerprints") or {}, extra)


def _open_array(path: Path, shape: tuple[int, int], dtype, mmap: bool) -> np.ndarray:
  """A table array, checked against the shape and dtype its meta.json promises."""
  fix = "rebuild the table with `explore precompute --force`"
  if not path.is_file():
    raise TableError(f"{path}: missing; {fix}")
  try:
    array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
  except (ValueError, OSError, EOFError) as e:
    raise TableError(f"{path}: unreadable or truncated ({e}); {fix}") from None
  if array.shape != shape or array.dtype != dtype:
    raise TableError(f"{path}: holds {array.dtype}{list(array.shape)}, expected "
                     f"{np.dtype(dtype)}{list(shape)}; {fix}")
  return array
