"""The synthetic world's topic tree, its made-up vocabulary and the hidden affinity graph.

Topics form a tree (roots -> ... -> leaves) with a fixed branching per level. Every
node owns a few made-up but pronounceable words; an item of a leaf topic is described
with words of the leaf and of its ancestors, so topics under one parent share words.
Leaves are also linked by a directed affinity graph ("people who like hiking come to
like camping"), mostly across roots. Each affinity edge owns "bridge" words that the
items of both of its ends use, so affine topics share vocabulary even where the tree
does not relate them: a model that reads topic descriptions can see the affinity, a
model that only counts co-occurrences must wait for enough users to show it.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "z", "br", "ch", "cl", "dr", "fl", "gr", "kr", "pl", "sh", "sk", "st", "th", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "i", "o", "ai", "ou")
_CODAS = ("", "", "", "", "n", "r", "s", "l", "m", "k", "nd")


def make_words(rng: np.random.Generator, count: int) -> np.ndarray:
  """`count` distinct pronounceable words of 2-3 syllables (e.g. "brovel", "tashimo")."""
  words: dict[str, None] = {}
  while len(words) < count:
    n = 2 * (count - len(words)) + 16
    syllables = 2 + (rng.random(n) < 0.25)  # [n]
    onsets = rng.integers(len(_ONSETS), size=(n, 3))
    vowels = rng.integers(len(_VOWELS), size=(n, 3))
    codas = rng.integers(len(_CODAS), size=n)
    for i in range(n):
      word = "".join(_ONSETS[onsets[i, j]] + _VOWELS[vowels[i, j]] for j in range(syllables[i]))
      words.setdefault(word + _CODAS[codas[i]], None)
      if len(words) == count:
        break
  return np.array(list(words), dtype=str)


@dataclasses.dataclass(frozen=True)
class TopicTree:
  """Ground-truth topic tree; level 0 holds the roots, the last level the leaf topics.

  Every node of a level has the same number of children. Nodes of a level are numbered
  0..n-1 and the children of a node are contiguous, so the leaves under one root (or
  one parent) form a contiguous range.
  """

  parents: tuple[np.ndarray, ...]  # per level: [nodes_at_level] int32 parent index (-1 at roots)

  @classmethod
  def from_branching(cls, branching: Sequence[int]) -> TopicTree:
    sizes = np.cumprod(branching)
    parents = [np.full(branching[0], -1, np.int32)]
    for level in range(1, len(branching)):
      parents.append((np.arange(sizes[level]) // branching[level]).astype(np.int32))
    return cls(parents=tuple(parents))

  @property
  def num_levels(self) -> int:
    return len(self.parents)

  @property
  def level_sizes(self) -> tuple[int, ...]:
    return tuple(len(p) for p in self.parents)

  @property
  def num_leaves(self) -> int:
    return len(self.parents[-1])

  def ancestors(self, level: int) -> np.ndarray:
    """[num_leaves] int32: the node at `level` above each leaf (the leaf itself at the last)."""
    if not 0 <= level < self.num_levels:
      raise ValueError(f"TopicTree.ancestors: level {level} outside [0, {self.num_levels})")
    nodes = np.arange(self.num_leaves, dtype=np.int32)
    for l in range(self.num_levels - 1, level, -1):
      nodes = self.parents[l][nodes]
    return nodes

  def leaf_range(self, level: int, leaf: int) -> tuple[int, int]:
    """[start, stop) of the leaves that share `leaf`'s ancestor at `level`."""
    span = self.num_leaves // self.level_sizes[level]
    start = (leaf // span) * span
    return start, start + span


def _uniform_outside(rng: np.random.Generator, lo: int, hi: int, hole: tuple[int, int]) -> int:
  """A uniform integer in [lo, hi) minus [hole[0], hole[1]) (which lies inside it)."""
  x = lo + int(rng.integers(hi - lo - (hole[1] - hole[0])))
  return x if x < hole[0] else x + (hole[1] - hole[0])


def build_affinity(tree: TopicTree, degree: int, cross_branch: float,
                   rng: np.random.Generator) -> np.ndarray:
  """[num_leaves, degree] int32: each leaf's affine leaves, distinct and never itself.

  A target lies under another root with probability `cross_branch`, else under the
  same root but another parent (a cousin). Targets are drawn uniformly, not by
  popularity, so rare topics have affine topics too.
  """
  num_leaves = tree.num_leaves
  if not 1 <= degree < num_leaves:
    raise ValueError(f"affinity degree {degree} must be in [1, num_leaves={num_leaves})")
  affinity = np.empty((num_leaves, degree), np.int32)
  for leaf in range(num_leaves):
    root = tree.leaf_range(0, leaf)
    parent = tree.leaf_range(tree.num_levels - 2, leaf)
    chosen: list[int] = []
    tries = 0
    while len(chosen) < degree:
      tries += 1
      if tries > 20 * degree:  # the preferred pools are too small: any other leaf
        target = _uniform_outside(rng, 0, num_leaves, (leaf, leaf + 1))
      elif rng.random() < cross_branch and root[1] - root[0] < num_leaves:
        target = _uniform_outside(rng, 0, num_leaves, root)
      elif parent[1] - parent[0] < root[1] - root[0]:
        target = _uniform_outside(rng, root[0], root[1], parent)
      else:
        continue
      if target not in chosen:
        chosen.append(target)
    affinity[leaf] = chosen
  return affinity


@dataclasses.dataclass(frozen=True)
class TopicVocabulary:
  """The words of every topic node and of every affinity edge, as ids into `words`."""

  words: np.ndarray  # [vocab] str, distinct
  node_words: tuple[np.ndarray, ...]  # per level: [nodes_at_level, words_per_topic] int32
  bridge_words: np.ndarray  # [num_leaves, degree, bridge_words] int32, one set per affinity edge

  @classmethod
  def build(cls, tree: TopicTree, affinity: np.ndarray, words_per_topic: int,
            bridge_words: int, rng: np.random.Generator) -> TopicVocabulary:
    counts = [n * words_per_topic for n in tree.level_sizes] + [affinity.size * bridge_words]
    words = make_words(rng, sum(counts))
    ids = np.arange(len(words), dtype=np.int32)
    starts = np.concatenate([[0], np.cumsum(counts)])
    node_words = tuple(ids[starts[l]:starts[l + 1]].reshape(n, words_per_topic)
                       for l, n in enumerate(tree.level_sizes))
    bridges = ids[starts[-2]:].reshape(*affinity.shape, bridge_words)
    return cls(words=words, node_words=node_words, bridge_words=bridges)

  def leaf_bridge_pool(self, affinity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CSR (offsets [num_leaves + 1], word ids) of the bridge words on edges into or out of each leaf."""
    num_leaves, degree, per_edge = self.bridge_words.shape
    source = np.repeat(np.arange(num_leaves), degree * per_edge)  # [edges * per_edge]
    target = np.repeat(affinity.reshape(-1), per_edge)  # [edges * per_edge]
    flat = self.bridge_words.reshape(-1)
    leaf = np.concatenate([source, target])
    order = np.argsort(leaf, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(np.bincount(leaf, minlength=num_leaves))])
    return offsets.astype(np.int64), np.concatenate([flat, flat])[order]

  def leaf_word_ids(self, tree: TopicTree, affinity: np.ndarray, leaf: int) -> np.ndarray:
    """Sorted ids of every word an item of `leaf` can use (own, ancestors', bridges)."""
    parts = [self.node_words[l][tree.ancestors(l)[leaf]] for l in range(tree.num_levels)]
    offsets, pool = self.leaf_bridge_pool(affinity)
    parts.append(pool[offsets[leaf]:offsets[leaf + 1]])
    return np.unique(np.concatenate(parts))

  def describe(self, tree: TopicTree, leaf: int) -> str:
    """A readable ground-truth name: the leaf's words, then the first word of each ancestor."""
    own = list(self.words[self.node_words[-1][leaf]])
    above = [str(self.words[self.node_words[l][tree.ancestors(l)[leaf], 0]])
             for l in range(tree.num_levels - 2, -1, -1)]
    return " ".join(own) + " (" + " / ".join(above) + ")"
