"""The texts the LLM planner reads and writes for clusters: keywords or semantic IDs.

`cluster_vocabulary.vocabulary` picks the text of every cluster of the
exploration level:

- 'keywords' (the default): the keyword description
  (`explore.clusters.descriptions`), e.g. "hiking, trails, camping".
- 'semantic_ids': the cluster's path in the cluster tree, one level token per
  level from the coarsest down to the exploration level, e.g. "<a3> <b28> <c115>"
  for a finest cluster of a (8, 64, 256) tree. Level l has the letter
  'a' + l. With `indexing='global'` (the default) the number is the cluster's
  id at that level (so the last token alone names the cluster, and siblings
  share their prefix tokens); with `indexing='parent'` it is the index among
  its parent's children (id % branching), so level tokens are shared across
  parents and a level has only `branching` tokens. `num_keywords > 0` appends
  the first keywords of the keyword description: "<a3> <b28> <c115> hiking, trails".

Semantic-ID texts are unique and prefix-free by construction (two paths differ
in a whole token, and tokens are delimited by '<' and '>'). The tokenizer
trained by the `llm` stage makes every level token one piece
(`explore.llm.tokenizer.train_sentencepiece` finds them with `TOKEN_PATTERN`),
so a semantic-ID text is exactly `levels` tokens and the decoding trie is
levels + 1 deep (the last step emits EOS) instead of ~20 for keywords.

The clusters stage writes the texts into `texts/` (`ClusterTexts`); every later
stage reads them as `ExplorationClusters.texts`.
"""

from __future__ import annotations

import dataclasses
import os
import re
import string
from typing import Any, Mapping, Sequence

import gin
import numpy as np

from explore import artifacts

TEXTS_KIND = "cluster_texts"
TEXTS_VERSION = 1
KEYWORDS = "keywords"
SEMANTIC_IDS = "semantic_ids"
VOCABULARIES = (KEYWORDS, SEMANTIC_IDS)
GLOBAL = "global"
PARENT = "parent"
INDEXINGS = (GLOBAL, PARENT)
LEVEL_LETTERS = string.ascii_lowercase
# One level token: '<', the level's letter, the index, '>'.
TOKEN_PATTERN = re.compile(r"<[a-z][0-9]+>")


class VocabularyError(ValueError):
  """A bad `cluster_vocabulary` setting, or texts that cannot identify the clusters."""


@dataclasses.dataclass(frozen=True)
class VocabularyOptions:
  """How clusters are written for the planner (see the module docstring).

  Attributes:
    vocabulary: 'keywords' or 'semantic_ids'.
    indexing: semantic IDs only: 'global' (a level token is the cluster's id
      at that level) or 'parent' (its index among its parent's children).
    num_keywords: semantic IDs only: keywords of the description appended
      after the path (0: the path alone).
  """

  vocabulary: str = KEYWORDS
  indexing: str = GLOBAL
  num_keywords: int = 0

  def __post_init__(self):
    if self.vocabulary not in VOCABULARIES:
      raise VocabularyError(f"cluster_vocabulary.vocabulary={self.vocabulary!r}, expected one "
                            f"of {VOCABULARIES}")
    if self.indexing not in INDEXINGS:
      raise VocabularyError(f"cluster_vocabulary.indexing={self.indexing!r}, expected one of "
                            f"{INDEXINGS}")
    if (isinstance(self.num_keywords, bool) or not isinstance(self.num_keywords, int)
        or self.num_keywords < 0):
      raise VocabularyError(
          f"cluster_vocabulary.num_keywords={self.num_keywords!r} must be an int >= 0")


@gin.configurable
def cluster_vocabulary(vocabulary: str = KEYWORDS, indexing: str = GLOBAL,
                       num_keywords: int = 0) -> VocabularyOptions:
  """The planner's cluster vocabulary, bound in gin (`cluster_vocabulary.vocabulary = ...`)."""
  return VocabularyOptions(vocabulary=vocabulary, indexing=indexing, num_keywords=num_keywords)


def level_token(level: int, index: int) -> str:
  """The token of index `index` at tree level `level` (0 coarsest): '<a3>', '<b12>', ..."""
  if not 0 <= level < len(LEVEL_LETTERS):
    raise VocabularyError(f"semantic IDs support at most {len(LEVEL_LETTERS)} tree levels, "
                          f"got level {level}")
  if index < 0:
    raise VocabularyError(f"level token index must be >= 0, got {index}")
  return f"<{LEVEL_LETTERS[level]}{int(index)}>"


def cluster_paths(parents: Sequence[np.ndarray], level: int) -> np.ndarray:
  """[clusters of `level`, level + 1] int64: each cluster's ancestor id at levels 0..level.

  `parents[l][c]` is the level l - 1 parent of cluster c of level l (a
  `ClusterTree`'s parents).
  """
  if not 0 <= level < len(parents):
    raise VocabularyError(f"cluster_paths: level {level} outside the tree's levels "
                          f"[0, {len(parents)})")
  num = len(parents[level])
  paths = np.zeros((num, level + 1), np.int64)
  paths[:, level] = np.arange(num)
  for l in range(level, 0, -1):
    paths[:, l - 1] = np.asarray(parents[l], np.int64)[paths[:, l]]
  return paths


def semantic_id_texts(levels: Sequence[int], parents: Sequence[np.ndarray], level: int,
                      indexing: str = GLOBAL, keywords: Sequence[Sequence[str]] | None = None,
                      num_keywords: int = 0, keyword_separator: str = ", ") -> list[str]:
  """Each cluster of `level`'s semantic-ID text: its level tokens, then optional keywords.

  Args:
    levels: clusters per tree level, coarsest first.
    parents: the tree's parent arrays (`ClusterTree.parents`).
    level: the tree level whose clusters get texts.
    indexing: 'global' (token = the ancestor's id at its level) or 'parent'
      (its index among its parent's children: id % (levels[l] // levels[l-1])).
    keywords: each cluster's keywords (needed when num_keywords > 0).
    num_keywords: keywords appended after the path.
  """
  if indexing not in INDEXINGS:
    raise VocabularyError(f"semantic_id_texts: indexing={indexing!r}, expected one of "
                          f"{INDEXINGS}")
  paths = cluster_paths(parents, level)
  if indexing == PARENT:
    branching = np.asarray([levels[0]] + [levels[l] // levels[l - 1]
                                          for l in range(1, level + 1)], np.int64)
    paths = paths % branching[None, :]
  if num_keywords and (keywords is None or len(keywords) != len(paths)):
    raise VocabularyError(
        f"semantic_id_texts: num_keywords={num_keywords} needs keywords for each of the "
        f"{len(paths)} clusters, got {None if keywords is None else len(keywords)}")
  texts = []
  for c, path in enumerate(paths.tolist()):
    text = " ".join(level_token(l, i) for l, i in enumerate(path))
    words = list(keywords[c][:num_keywords]) if num_keywords else []
    texts.append(f"{text} {keyword_separator.join(words)}" if words else text)
  return texts


def level_tokens(texts: Sequence[str]) -> list[str]:
  """The distinct level tokens in `texts`, sorted by level then index (for a tokenizer)."""
  found = {t for text in texts for t in TOKEN_PATTERN.findall(str(text))}
  return sorted(found, key=lambda t: (t[1], int(t[2:-1])))


def check_texts(texts: Sequence[str], num_clusters: int) -> None:
  """Raises VocabularyError unless there is one non-empty, one-line, distinct text per cluster."""
  if len(texts) != num_clusters:
    raise VocabularyError(f"cluster texts: {len(texts)} texts for {num_clusters} clusters")
  seen: dict[str, int] = {}
  for c, text in enumerate(texts):
    if not text or any(ch in text for ch in "\t\n\r"):
      raise VocabularyError(f"cluster text {c} ({text!r}) is empty or has a tab or line break")
    other = seen.setdefault(text, c)
    if other != c:
      raise VocabularyError(f"clusters {other} and {c} have the same text {text!r}")


@dataclasses.dataclass(frozen=True)
class ClusterTexts:
  """The planner's text of every cluster of the exploration level, and how it was made."""

  texts: tuple[str, ...]
  vocabulary: str
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    object.__setattr__(self, "texts", tuple(str(t) for t in self.texts))
    if self.vocabulary not in VOCABULARIES:
      raise VocabularyError(f"ClusterTexts: vocabulary {self.vocabulary!r}, expected one of "
                            f"{VOCABULARIES}")
    check_texts(self.texts, len(self.texts))

  def save(self, directory: str | os.PathLike) -> None:
    artifacts.save_artifact(directory, TEXTS_KIND, TEXTS_VERSION,
                            {"texts": np.asarray(self.texts, dtype=str)},
                            {**dict(self.meta), "vocabulary": self.vocabulary})

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ClusterTexts":
    arrays, meta, _ = artifacts.load_artifact(directory, TEXTS_KIND, TEXTS_VERSION)
    meta = dict(meta)
    vocabulary = meta.pop("vocabulary")
    return cls(texts=tuple(str(t) for t in arrays["texts"]), vocabulary=vocabulary, meta=meta)


def cluster_texts(options: VocabularyOptions, levels: Sequence[int],
                  parents: Sequence[np.ndarray], level: int, descriptions) -> ClusterTexts:
  """The texts `options` asks for, of the clusters of `level` (descriptions: keyword texts)."""
  if options.vocabulary == KEYWORDS:
    texts = [str(t) for t in descriptions.texts]
    meta = {}
  else:
    texts = semantic_id_texts(levels, parents, level, options.indexing, descriptions.keywords,
                              options.num_keywords)
    meta = {"indexing": options.indexing, "num_keywords": options.num_keywords,
            "levels": [int(k) for k in levels[:level + 1]]}
  return ClusterTexts(texts=tuple(texts), vocabulary=options.vocabulary, meta=meta)
