"""The trie of cluster-description tokens that constrains generation to real clusters.

Built once per cluster set, offline, into plain arrays (the STATIC layout):
nodes are numbered level by level (the root is node 0 at level 0; a node at
level d is reached by d tokens), so the nodes of level d are the id range
`level_start[d] .. level_start[d + 1]`. Every cluster's token path ends with
EOS, and the node reached by that EOS is the cluster's leaf; a description
whose tokens are a prefix of another's is still a leaf of its own, reached by
its EOS from the shared node.

  dense_next [n_dense, V]  child node of (node, token) for the nodes of the
                           first `dense_levels` levels, -1 where no child
  row_start [N + 1], child_token [N - 1], child_node [N - 1]
                           CSR rows: node n's children sorted by token
  max_branch [D]           the most children of any node of each level
  leaf_cluster [N]         the cluster a leaf ends, -1 on inner nodes
  leaf_count [N]           leaves below each node
  cluster_path [M, D + 1]  the nodes from the root to each cluster's leaf

The online step (`TrieArrays.candidates`) is a pure function of
(log-probs, trie state) -> (candidate tokens, their masked log-probs, next
states), with a static candidate width per level: V on the dense levels,
`max_branch` below. A request's excluded clusters (e.g. the user's history)
forbid their leaves and prune every subtree left with no allowed leaf:
`TrieArrays.exclusion` subtracts each excluded leaf from the counts of the
nodes on its path, and a child is a candidate only while its count is
positive, so generation never enters a branch that cannot end in an allowed
cluster. On the dense levels only the children on excluded paths can be
pruned, so just those E per request are checked, not a count per token.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Sequence

from absl import logging
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from explore import artifacts

ARTIFACT_KIND = "cluster_trie"
ARTIFACT_VERSION = 1
# The dense tables of the first levels stay below this many entries (int32);
# levels that would exceed it use CSR rows instead.
MAX_DENSE_ENTRIES = 1 << 26


class TrieError(ValueError):
  """Token paths that cannot form a cluster trie, or a trie from other inputs."""


@struct.dataclass
class Candidates:
  """The next tokens of every row, F per row (F static per level)."""

  tokens: jax.Array  # [b, k, F] int32 token ids
  log_probs: jax.Array  # [b, k, F] float32, -inf where not allowed
  nodes: jax.Array  # [b, k, F] int32 node reached by each token (>= 0)


@struct.dataclass
class TrieArrays:
  """The trie as a pytree of device arrays, passed to jitted decoding functions."""

  dense_next: jax.Array  # [n_dense, V] int32
  row_start: jax.Array  # [N + 1] int32
  child_token: jax.Array  # [max(N - 1, 1)] int32
  child_node: jax.Array  # [max(N - 1, 1)] int32
  leaf_cluster: jax.Array  # [N] int32
  leaf_count: jax.Array  # [N] int32
  cluster_path: jax.Array  # [M, D + 1] int32, -1 past the leaf
  cluster_tokens: jax.Array  # [M, D] int32 token path, 0 past EOS
  dense_levels: int = struct.field(pytree_node=False)
  max_branch: tuple[int, ...] = struct.field(pytree_node=False)  # [D] per level

  @property
  def depth(self) -> int:
    """Tokens on the longest path (incl. EOS): the most decoding steps."""
    return len(self.max_branch)

  def width(self, level: int) -> int:
    """Candidates per row at `level` (static): V on dense levels, else the max branching."""
    if level < self.dense_levels:
      return self.dense_next.shape[1]
    return max(self.max_branch[level:] or (1,))

  def exclusion(self, exclude: jax.Array) -> "Exclusion":
    """The allowed-leaf counts and excluded paths of requests `exclude` ([b, E], -1 padding).

    Repeated ids in a row count once; ids outside [0, M) are ignored.
    """
    b, e = exclude.shape
    m = self.cluster_path.shape[0]
    ids = jnp.sort(exclude, axis=1)  # [b, E]
    first = jnp.concatenate([jnp.ones((b, 1), bool), ids[:, 1:] != ids[:, :-1]], 1)
    use = first & (ids >= 0) & (ids < m)  # [b, E]
    safe = jnp.clip(ids, 0, m - 1)
    paths = jnp.where(use[:, :, None], self.cluster_path[safe], -1)  # [b, E, D + 1]
    rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], paths.shape)
    removed = jnp.zeros((b, self.leaf_count.shape[0]), jnp.int32)
    removed = removed.at[rows, jnp.maximum(paths, 0)].add((paths >= 0).astype(jnp.int32))
    return Exclusion(counts=self.leaf_count[None, :] - removed, nodes=paths,
                     tokens=self.cluster_tokens[safe])

  def candidates(self, level: int, log_probs: jax.Array, nodes: jax.Array,
                 exclusion: "Exclusion") -> Candidates:
    """The allowed next tokens of rows at trie `level` (static).

    Args:
      level: the level of `nodes` (tokens already generated); rows whose node is
        a leaf or pruned get no allowed candidate.
      log_probs: [b, k, V] next-token log-probabilities of k rows per request.
      nodes: [b, k] int32 trie state of each row.
      exclusion: from `exclusion` (one row per request).
    Returns:
      Candidates of width `self.width(level)`: a token is allowed when it leads
      to a child with an allowed leaf below it.
    """
    b, k, v = log_probs.shape
    if level < self.dense_levels:
      return self._dense_candidates(level, log_probs, nodes, exclusion)
    f = self.width(level)
    slots = self.row_start[nodes][..., None] + jnp.arange(f)  # [b, k, F]
    real = slots < self.row_start[nodes + 1][..., None]  # [b, k, F]
    slots = jnp.minimum(slots, self.child_token.shape[0] - 1)
    tokens = self.child_token[slots]  # [b, k, F]
    next_nodes = jnp.where(real, self.child_node[slots], 0)  # [b, k, F]
    counts = jnp.take_along_axis(exclusion.counts, next_nodes.reshape(b, -1), axis=1)
    ok = real & (counts.reshape(next_nodes.shape) > 0)  # [b, k, F]
    token_logp = jnp.take_along_axis(log_probs, tokens, axis=-1)  # [b, k, F]
    return Candidates(tokens=tokens, log_probs=jnp.where(ok, token_logp, -jnp.inf),
                      nodes=next_nodes)

  def _dense_candidates(self, level: int, log_probs: jax.Array, nodes: jax.Array,
                        exclusion: "Exclusion") -> Candidates:
    """Every token a candidate; the dense table gives the child, exclusion the pruned ones.

    A child is pruned when all its leaves are excluded, so it lies on an
    excluded path: only those E children per request are looked up, instead
    of a count per (row, token).
    """
    b, k, v = log_probs.shape
    next_nodes = self.dense_next[nodes]  # [b, k, V]
    masked = jnp.where(next_nodes >= 0, log_probs, -jnp.inf)  # [b, k, V]
    if level < self.depth:
      parent = exclusion.nodes[:, :, level]  # [b, E]
      child = exclusion.nodes[:, :, level + 1]  # [b, E]
      child_count = jnp.take_along_axis(exclusion.counts, jnp.maximum(child, 0), axis=1)
      emptied = (child >= 0) & (child_count == 0)  # [b, E]
      hit = emptied[:, None, :] & (parent[:, None, :] == nodes[:, :, None])  # [b, k, E]
      token = jnp.broadcast_to(exclusion.tokens[:, None, :, level], hit.shape)  # [b, k, E]
      rows = jnp.broadcast_to(jnp.arange(b)[:, None, None], hit.shape)
      beams = jnp.broadcast_to(jnp.arange(k)[None, :, None], hit.shape)
      masked = masked.at[rows, beams, token].min(jnp.where(hit, -jnp.inf, jnp.inf))
    tokens = jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (b, k, v))
    return Candidates(tokens=tokens, log_probs=masked, nodes=jnp.maximum(next_nodes, 0))


@struct.dataclass
class Exclusion:
  """What a batch of requests excludes, for `TrieArrays.candidates`."""

  counts: jax.Array  # [b, N] int32 allowed leaves below each node
  nodes: jax.Array  # [b, E, D + 1] int32 each excluded cluster's path, -1 past it / unused
  tokens: jax.Array  # [b, E, D] int32 the tokens of those paths


def _check_paths(token_paths: Sequence[Sequence[int]], eos_id: int, vocab_size: int
                 ) -> list[tuple[int, ...]]:
  if not len(token_paths):
    raise TrieError("ClusterTrie: no cluster token paths given")
  if not 0 <= eos_id < vocab_size:
    raise TrieError(f"ClusterTrie: eos_id {eos_id} is outside the vocabulary [0, {vocab_size})")
  paths = []
  for c, path in enumerate(token_paths):
    path = tuple(int(t) for t in path)
    if not path or path[-1] != eos_id:
      raise TrieError(f"ClusterTrie: cluster {c}'s token path {list(path)} does not end with "
                      f"EOS ({eos_id})")
    if eos_id in path[:-1]:
      raise TrieError(f"ClusterTrie: cluster {c}'s token path {list(path)} has EOS before its end")
    bad = [t for t in path if not 0 <= t < vocab_size]
    if bad:
      raise TrieError(f"ClusterTrie: cluster {c}'s token path has ids {bad} outside the "
                      f"vocabulary [0, {vocab_size})")
    paths.append(path)
  seen: dict[tuple[int, ...], int] = {}
  for c, path in enumerate(paths):
    if path in seen:
      raise TrieError(f"ClusterTrie: clusters {seen[path]} and {c} have the same token path "
                      f"{list(path)}; descriptions must tokenize to distinct paths")
    seen[path] = c
  return paths


def fingerprint(token_paths: Sequence[Sequence[int]], eos_id: int, vocab_size: int,
                extra: str = "") -> str:
  """sha256 of the token paths, EOS, vocabulary size and `extra` (e.g. the tokenizer's hash)."""
  digest = hashlib.sha256()
  digest.update(json.dumps({"eos": int(eos_id), "vocab": int(vocab_size), "extra": extra},
                           sort_keys=True).encode())
  for path in token_paths:
    digest.update(np.asarray(path, np.int64).tobytes() + b"|")
  return digest.hexdigest()


def _number_nodes(paths: list[tuple[int, ...]]) -> tuple[list[dict[int, int]], list[int],
                                                          np.ndarray]:
  """Children (token -> node) per node in level order, level starts, and cluster paths."""
  depth = max(len(p) for p in paths)
  # Prefix -> node id, assigned level by level with children in token order.
  level_prefixes = [sorted({p[:d] for p in paths if len(p) >= d}) for d in range(depth + 1)]
  node_of: dict[tuple[int, ...], int] = {}
  level_start = [0]
  for prefixes in level_prefixes:
    for prefix in prefixes:
      node_of[prefix] = len(node_of)
    level_start.append(len(node_of))
  children: list[dict[int, int]] = [{} for _ in range(len(node_of))]
  for prefix, node in node_of.items():
    if prefix:
      children[node_of[prefix[:-1]]][prefix[-1]] = node
  cluster_path = np.full((len(paths), depth + 1), -1, np.int32)
  for c, path in enumerate(paths):
    cluster_path[c, :len(path) + 1] = [node_of[path[:d]] for d in range(len(path) + 1)]
  return children, level_start, cluster_path


class ClusterTrie:
  """The trie of M clusters' token paths (each ending with EOS) as numpy arrays.

  Use `build` to make one, `save`/`load` to keep it as an artifact, and
  `arrays()` for the device pytree that decoding functions take.
  """

  def __init__(self, arrays: dict[str, np.ndarray], eos_id: int, vocab_size: int,
               dense_levels: int, fingerprint_extra: str = ""):
    self.numpy = arrays
    self.eos_id = int(eos_id)
    self.vocab_size = int(vocab_size)
    self.dense_levels = int(dense_levels)
    self.fingerprint_extra = fingerprint_extra
    self.fingerprint = fingerprint(self.token_paths(), eos_id, vocab_size, fingerprint_extra)
    self._device: TrieArrays | None = None

  @property
  def num_clusters(self) -> int:
    return int(self.numpy["cluster_path"].shape[0])

  @property
  def num_nodes(self) -> int:
    return int(self.numpy["leaf_count"].shape[0])

  @property
  def depth(self) -> int:
    return int(self.numpy["max_branch"].shape[0])

  def token_paths(self) -> list[list[int]]:
    """Each cluster's token ids, EOS included (as given to `build`)."""
    flat, offsets = self.numpy["path_tokens"], self.numpy["path_offsets"]
    return [flat[offsets[c]:offsets[c + 1]].tolist() for c in range(self.num_clusters)]

  @classmethod
  def build(cls, token_paths: Sequence[Sequence[int]], eos_id: int, vocab_size: int,
            dense_levels: int = 2, fingerprint_extra: str = "") -> "ClusterTrie":
    """The trie of `token_paths[c]` (cluster c's ids incl. the final EOS).

    `dense_levels` levels get dense [nodes, V] next-node tables, fewer where the
    tables would pass MAX_DENSE_ENTRIES entries (the level count used is logged
    and kept in `dense_levels`).
    """
    if dense_levels < 0:
      raise TrieError(f"ClusterTrie: dense_levels={dense_levels} must be >= 0")
    paths = _check_paths(token_paths, eos_id, vocab_size)
    children, level_start, cluster_path = _number_nodes(paths)
    num_nodes, depth = len(children), len(level_start) - 2
    used = min(dense_levels, depth)
    while used and level_start[used] * vocab_size > MAX_DENSE_ENTRIES:
      used -= 1
    if used < min(dense_levels, depth):
      logging.info("ClusterTrie: %d dense levels (of %d asked) fit in %d entries", used,
                   dense_levels, MAX_DENSE_ENTRIES)
    dense_next = np.full((max(level_start[used], 1), vocab_size), -1, np.int32)
    row_start = np.zeros(num_nodes + 1, np.int32)
    child_token = np.zeros(max(num_nodes - 1, 1), np.int32)
    child_node = np.zeros(max(num_nodes - 1, 1), np.int32)
    for node, kids in enumerate(children):
      tokens = sorted(kids)
      start = row_start[node]
      row_start[node + 1] = start + len(tokens)
      child_token[start:start + len(tokens)] = tokens
      child_node[start:start + len(tokens)] = [kids[t] for t in tokens]
      if node < level_start[used]:
        dense_next[node, tokens] = [kids[t] for t in tokens]
    leaf_cluster = np.full(num_nodes, -1, np.int32)
    lengths = np.asarray([len(p) for p in paths])
    cluster_tokens = np.zeros((len(paths), depth), np.int32)
    for c, path in enumerate(paths):
      cluster_tokens[c, :len(path)] = path
    leaf_cluster[cluster_path[np.arange(len(paths)), lengths]] = np.arange(len(paths))
    leaf_count = np.zeros(num_nodes, np.int32)
    np.add.at(leaf_count, cluster_path[cluster_path >= 0], 1)
    branching = np.diff(row_start)
    max_branch = np.asarray([branching[level_start[d]:level_start[d + 1]].max()
                             for d in range(depth)], np.int32)
    arrays = dict(dense_next=dense_next, row_start=row_start, child_token=child_token,
                  child_node=child_node, leaf_cluster=leaf_cluster, leaf_count=leaf_count,
                  cluster_path=cluster_path, cluster_tokens=cluster_tokens, max_branch=max_branch,
                  level_start=np.asarray(level_start, np.int32),
                  path_tokens=np.concatenate([np.asarray(p, np.int32) for p in paths]),
                  path_offsets=np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))
    return cls(arrays, eos_id, vocab_size, used, fingerprint_extra)

  def arrays(self) -> TrieArrays:
    """The device pytree used by decoding (made once, then cached)."""
    if self._device is None:
      n = self.numpy
      self._device = TrieArrays(
          **{k: jnp.asarray(n[k]) for k in ("dense_next", "row_start", "child_token",
                                            "child_node", "leaf_cluster", "leaf_count",
                                            "cluster_path", "cluster_tokens")},
          dense_levels=self.dense_levels, max_branch=tuple(int(x) for x in n["max_branch"]))
    return self._device

  def cluster_of_tokens(self, tokens: Sequence[int]) -> int:
    """The cluster whose token path is exactly `tokens` (up to and incl. EOS), else -1."""
    node = 0
    for token in tokens:
      start, end = self.numpy["row_start"][node], self.numpy["row_start"][node + 1]
      row = self.numpy["child_token"][start:end]
      i = int(np.searchsorted(row, token))
      if i == len(row) or row[i] != token:
        return -1
      node = int(self.numpy["child_node"][start + i])
      if token == self.eos_id:
        return int(self.numpy["leaf_cluster"][node])
    return -1

  def check_fingerprint(self, expected: str, what: str = "the consumer") -> None:
    """Raises TrieError unless this trie was built from the inputs `expected` names."""
    if expected != self.fingerprint:
      raise TrieError(f"ClusterTrie fingerprint {self.fingerprint[:12]} differs from "
                      f"{what}'s {expected[:12]}: built from other descriptions or tokenizer")

  def save(self, directory: str | os.PathLike) -> None:
    meta = dict(eos_id=self.eos_id, vocab_size=self.vocab_size, dense_levels=self.dense_levels,
                fingerprint=self.fingerprint, fingerprint_extra=self.fingerprint_extra,
                num_clusters=self.num_clusters,
                num_nodes=self.num_nodes, depth=self.depth)
    artifacts.save_artifact(directory, ARTIFACT_KIND, ARTIFACT_VERSION, self.numpy, meta)

  @classmethod
  def load(cls, directory: str | os.PathLike, expected_fingerprint: str | None = None
           ) -> "ClusterTrie":
    """Reads a saved trie; checks its arrays against its paths and `expected_fingerprint`."""
    arrays, meta, _ = artifacts.load_artifact(directory, ARTIFACT_KIND, ARTIFACT_VERSION)
    missing = {"path_tokens", "path_offsets", "cluster_path", "leaf_count"} - set(arrays)
    if missing:
      raise TrieError(f"{directory}: cluster trie lacks arrays {sorted(missing)}")
    if len(arrays["cluster_path"]) != len(arrays["path_offsets"]) - 1:
      raise TrieError(f"{directory}: cluster trie's paths and arrays disagree on M")
    trie = cls(arrays, meta["eos_id"], meta["vocab_size"], meta["dense_levels"],
               meta.get("fingerprint_extra", ""))
    if trie.fingerprint != meta.get("fingerprint"):
      raise TrieError(f"{directory}: cluster trie's token paths do not match its recorded "
                      "fingerprint (the artifact is damaged)")
    if expected_fingerprint is not None:
      trie.check_fingerprint(expected_fingerprint, f"{directory}'s expected")
    return trie
