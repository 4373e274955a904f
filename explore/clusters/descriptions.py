"""Short keyword descriptions of interest clusters, distinct and prefix-free.

Each cluster is described by a few keywords drawn from its items' text (title
and every text field of the `ItemCatalog`), scored TF-IDF style:

  tf(c, w)  = sum of item weights of the items of c whose text has w (summed
              over the fields that have it, times the field's weight),
              divided by the total item weight of c
  idf(w)    = idf_offset + log((1 + clusters with items) / (1 + clusters whose items have w))
  score     = tf * idf

so a keyword is a word that many (popular) items of the cluster share and few
other clusters use. The description text joins the keywords with ", ", e.g.
"hiking, trails, camping".

The LLM planner generates descriptions under a trie constraint, so each
description must identify exactly one cluster even when read token by token:
no text may equal, or be a prefix of, another one. The guarantee here is on
characters, which is stronger than on keyword sequences (if "drama" and
"drama, war" were both descriptions, the first is a prefix of the second in
both senses; "war" and "warfare" differ as words but not as characters, and a
subword tokenizer may split "warfare" into "war" + "fare"). A text that is a
prefix of another is extended with its next best keyword, up to
`max_extra_keywords`; after that it gets the disambiguating keyword
"cluster 017" (its zero-padded id), which ends every collision.

Clusters without items are described as "empty cluster 017", and clusters
whose items have no usable word as "unlabelled cluster 017", so that every
cluster id the tree defines remains a valid, unique generation target; their
numbers are recorded in the artifact's meta.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Iterable, Mapping, Sequence

import gin
import numpy as np

from explore import artifacts
from explore.clusters.assignment import check_item_to_cluster
from explore.data.schema import ItemCatalog

DESCRIPTIONS_KIND = "cluster_descriptions"
DESCRIPTIONS_VERSION = 1
KEYWORD_SEPARATOR = ", "
TITLE_FIELD = "title"

# English function words, plus the articles of the languages common in film and
# product titles; none of them says what a cluster is about.
STOP_WORDS = frozenset("""
a about above after again against all almost also although always am among an and another any
anyone anything are aren around as at away back be became because become been before being
below between both but by can cannot could couldn did didn do does doesn doing don done down
during each either else enough even ever every few for from further get gets getting go goes
going got had hadn has hasn have haven having he her here hers herself him himself his how however
i if in into is isn it its itself just least less let like made make many may me might mine more
most much must my myself near neither never no nor not nothing now of off often on once one only
onto or other others otherwise our ours ourselves out over own part per perhaps put quite rather
really same several shall she should shouldn since so some something still such than that the
their theirs them themselves then there these they thing things this those though through thus
till to together too toward towards two under until up upon us very via was wasn we well were
weren what whatever when where whether which while who whom whose why will with within without
won would wouldn yet you your yours yourself yourselves
le la les un une des du de del della der die das den dem ein eine el los las lo il di da et und
""".split())

_WORD = re.compile(r"[^\W\d_]+(?:[-'][^\W\d_]+)*")  # letters, with inner hyphens/apostrophes


class DescriptionError(ValueError):
  """Bad inputs to `describe_clusters`, or descriptions that are not distinct."""


def tokenize(text: str, stop_words: Iterable[str] = STOP_WORDS, min_length: int = 3
             ) -> list[str]:
  """Lowercase words of `text` without stop words, numbers, years or short tokens.

  Words are runs of letters (any script) with inner hyphens or apostrophes kept
  ("sci-fi", "film-noir"); a possessive "'s" is dropped and other apostrophes
  removed ("children's" -> "children", "don't" -> "dont"). Digits never belong
  to a word, so "(1995)" or "2001" yield nothing.
  """
  words = []
  for word in _WORD.findall(text.lower().replace("\u2019", "'")):
    if word.endswith("'s"):
      word = word[:-2]
    word = word.replace("'", "")
    if len(word) >= min_length and word not in stop_words:
      words.append(word)
  return words


def _prefix_offenders(texts: Sequence[str]) -> list[tuple[int, int]]:
  """Pairs (i, j), i != j, where texts[i] equals or is a prefix of texts[j].

  In lexicographic order a string's extensions directly follow it, so checking
  neighbours finds every string that has an extension (or a duplicate).
  """
  order = sorted(range(len(texts)), key=lambda i: (texts[i], i))
  pairs = []
  for a, b in zip(order[:-1], order[1:]):
    if texts[b].startswith(texts[a]):
      pairs.append((a, b))
      if texts[a] == texts[b]:
        pairs.append((b, a))
  return pairs


@dataclasses.dataclass(frozen=True)
class ClusterDescriptions:
  """Keywords and description text of every cluster of one tree level."""

  texts: np.ndarray  # [num_clusters] str, the keywords joined by KEYWORD_SEPARATOR
  keywords: tuple[tuple[str, ...], ...]  # [num_clusters][num_keywords_c]
  cluster_sizes: np.ndarray  # [num_clusters] int64, items per cluster

  def __post_init__(self):
    if not (len(self.texts) == len(self.keywords) == len(self.cluster_sizes)):
      raise DescriptionError(
          f"ClusterDescriptions: texts ({len(self.texts)}), keywords ({len(self.keywords)}) and "
          f"cluster_sizes ({len(self.cluster_sizes)}) must have one entry per cluster")
    for c, (text, words) in enumerate(zip(self.texts, self.keywords)):
      if str(text) != KEYWORD_SEPARATOR.join(words):
        raise DescriptionError(
            f"ClusterDescriptions: cluster {c}: text {str(text)!r} is not its keywords {words!r} "
            f"joined by {KEYWORD_SEPARATOR!r}")

  @property
  def num_clusters(self) -> int:
    return len(self.texts)

  def check_prefix_free(self) -> None:
    """Raises DescriptionError unless every text is non-empty, one line, and no prefix of another.

    Character-level prefix-freeness implies it on keyword sequences and on the
    tokens of any tokenizer whose pieces concatenate back to the text.
    """
    texts = [str(t) for t in self.texts]
    for c, text in enumerate(texts):
      if not text or any(ch in text for ch in "\t\n\r"):
        raise DescriptionError(
            f"cluster description {c} ({text!r}) is empty or contains a tab or line break")
    for a, b in _prefix_offenders(texts):
      relation = "equals" if texts[a] == texts[b] else "is a prefix of"
      raise DescriptionError(
          f"description of cluster {a} ({texts[a]!r}) {relation} the description of "
          f"cluster {b} ({texts[b]!r})")

  def save(self, directory: str | os.PathLike, meta: Mapping | None = None) -> None:
    flat = [w for words in self.keywords for w in words]
    offsets = np.cumsum([0] + [len(words) for words in self.keywords]).astype(np.int64)
    arrays = {
        "texts": np.asarray([str(t) for t in self.texts], dtype=str),
        "keywords": np.asarray(flat, dtype=str),
        "keyword_offsets": offsets,
        "cluster_sizes": np.asarray(self.cluster_sizes, np.int64),
    }
    artifacts.save_artifact(directory, DESCRIPTIONS_KIND, DESCRIPTIONS_VERSION, arrays,
                            dict(meta or {}))

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ClusterDescriptions":
    arrays, _, _ = artifacts.load_artifact(directory, DESCRIPTIONS_KIND, DESCRIPTIONS_VERSION)
    flat, offsets = arrays["keywords"], arrays["keyword_offsets"]
    keywords = tuple(tuple(str(w) for w in flat[offsets[c]:offsets[c + 1]])
                     for c in range(len(offsets) - 1))
    return cls(texts=arrays["texts"], keywords=keywords, cluster_sizes=arrays["cluster_sizes"])


def _check_inputs(catalog: ItemCatalog, item_to_cluster: np.ndarray, num_clusters: int,
                  num_keywords: int, weights: np.ndarray | None) -> None:
  if not isinstance(num_clusters, (int, np.integer)) or num_clusters < 1:
    raise DescriptionError(f"describe_clusters: num_clusters must be >= 1, got {num_clusters!r}")
  if not isinstance(num_keywords, (int, np.integer)) or num_keywords < 1:
    raise DescriptionError(f"describe_clusters: num_keywords must be >= 1, got {num_keywords!r}")
  check_item_to_cluster("describe_clusters", item_to_cluster, catalog.num_items, num_clusters,
                        DescriptionError)
  if weights is not None:
    if weights.shape != (catalog.num_items,):
      raise DescriptionError(
          f"describe_clusters: weights has shape {weights.shape}, expected ({catalog.num_items},)")
    if not np.all(np.isfinite(weights)) or np.any(weights < 0):
      raise DescriptionError("describe_clusters: weights must be finite and non-negative")


def _item_words(catalog: ItemCatalog, field_weights: Mapping[str, float] | None,
                stop_words: frozenset[str], min_token_length: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
  """Sparse item x word matrix: (item [P], word [P], value [P], vocabulary sorted)."""
  fields = {TITLE_FIELD: catalog.title, **catalog.text}
  field_weights = dict(field_weights or {})
  unknown = sorted(set(field_weights) - set(fields))
  if unknown:
    raise DescriptionError(
        f"describe_clusters: field_weights names {unknown}, "
        f"the catalog has fields {sorted(fields)}")
  weighted = [(col, float(field_weights.get(name, 1.0))) for name, col in fields.items()]
  weighted = [(col, w) for col, w in weighted if w != 0.0]
  vocab: dict[str, int] = {}
  items, words, values = [], [], []
  for i in range(catalog.num_items):
    item_values: dict[str, float] = {}
    for col, w in weighted:
      for word in set(tokenize(str(col[i]), stop_words, min_token_length)):
        item_values[word] = item_values.get(word, 0.0) + w
    for word, value in item_values.items():
      items.append(i)
      words.append(vocab.setdefault(word, len(vocab)))
      values.append(value)
  names = list(vocab)
  order = np.argsort(np.asarray(names, dtype=str), kind="stable")
  rank = np.empty(len(names), np.int64)
  rank[order] = np.arange(len(names))  # word ids in alphabetical order, for deterministic ties
  return (np.asarray(items, np.int64), rank[np.asarray(words, np.int64)],
          np.asarray(values, np.float64), [names[j] for j in order])


def _ranked_keywords(item_to_cluster: np.ndarray, num_clusters: int, item_weight: np.ndarray,
                     items: np.ndarray, words: np.ndarray, values: np.ndarray, vocab: list[str],
                     limit: int, idf_offset: float) -> list[list[str]]:
  """The `limit` best-scoring words of every cluster (ties: alphabetical)."""
  sizes = np.bincount(item_to_cluster, minlength=num_clusters)  # [clusters]
  cluster_weight = np.bincount(item_to_cluster, weights=item_weight, minlength=num_clusters)
  pair_cluster = item_to_cluster[items]  # [P]
  key = pair_cluster * len(vocab) + words  # [P] (cluster, word)
  unique_key, inverse = np.unique(key, return_inverse=True)  # [U]
  mass = np.bincount(inverse, weights=item_weight[items] * values, minlength=len(unique_key))
  cluster, word = unique_key // len(vocab), unique_key % len(vocab)  # [U]
  clusters_with_word = np.bincount(word, minlength=len(vocab))  # [V]
  idf = idf_offset + np.log((1.0 + np.count_nonzero(sizes)) / (1.0 + clusters_with_word))  # [V]
  score = mass / cluster_weight[cluster] * idf[word]  # [U]
  order = np.lexsort((word, -score, cluster))
  cluster, word = cluster[order], word[order]
  starts = np.searchsorted(cluster, np.arange(num_clusters + 1))
  return [[vocab[w] for w in word[starts[c]:min(starts[c] + limit, starts[c + 1])]]
          for c in range(num_clusters)]


@gin.configurable
def describe_clusters(
    catalog: ItemCatalog,
    item_to_cluster: np.ndarray,
    num_clusters: int,
    num_keywords: int = 3,
    weights: np.ndarray | None = None,
    field_weights: Mapping[str, float] | None = None,
    extra_stop_words: Sequence[str] = (),
    min_token_length: int = 3,
    max_extra_keywords: int = 3,
    idf_offset: float = 1.0,
) -> ClusterDescriptions:
  """Describes each cluster by its `num_keywords` best TF-IDF words, distinct and prefix-free.

  Args:
    catalog: the items' text.
    item_to_cluster: [num_items] cluster id of every catalog item.
    num_clusters: number of clusters (ids in [0, num_clusters)).
    num_keywords: keywords per description before collisions are resolved.
    weights: optional [num_items] non-negative item popularity (e.g. the number
      of positive engagements, or its log1p); words of popular items count more.
      A cluster whose items all weigh 0 falls back to equal weights.
    field_weights: weight per text field ("title" or a `catalog.text` key;
      default 1 each, 0 leaves the field out).
    extra_stop_words: more words to ignore (e.g. a catalog's boilerplate).
    min_token_length: shorter words are ignored.
    max_extra_keywords: keywords a description may add to resolve a collision
      before it falls back to its disambiguating id.
    idf_offset: added to log-IDF. 1 (the usual smoothing) lets words common to
      the whole catalog (MovieLens's main genres) lead; 0 makes a word used by
      every cluster score zero, favouring words specific to the cluster.
  """
  item_to_cluster = np.asarray(item_to_cluster)
  if weights is not None:
    weights = np.asarray(weights, np.float64)
  _check_inputs(catalog, item_to_cluster, num_clusters, num_keywords, weights)
  if idf_offset < 0:
    raise DescriptionError(f"describe_clusters: idf_offset must be >= 0, got {idf_offset}")
  if max_extra_keywords < 0 or min_token_length < 1:
    raise DescriptionError(
        f"describe_clusters: max_extra_keywords ({max_extra_keywords}) must be >= 0 and "
        f"min_token_length ({min_token_length}) >= 1")
  item_to_cluster = item_to_cluster.astype(np.int64)
  stop_words = STOP_WORDS | {w.lower() for w in extra_stop_words}
  item_weight = np.ones(catalog.num_items) if weights is None else weights.copy()  # [items]
  cluster_weight = np.bincount(item_to_cluster, weights=item_weight, minlength=num_clusters)
  item_weight[cluster_weight[item_to_cluster] == 0] = 1.0
  items, words, values, vocab = _item_words(catalog, field_weights, stop_words, min_token_length)
  limit = num_keywords + max_extra_keywords
  ranked = _ranked_keywords(item_to_cluster, num_clusters, item_weight, items, words, values,
                            vocab, limit, idf_offset)
  sizes = np.bincount(item_to_cluster, minlength=num_clusters).astype(np.int64)
  keywords = _distinct_keywords(ranked, sizes, num_keywords)
  descriptions = ClusterDescriptions(
      texts=np.asarray([KEYWORD_SEPARATOR.join(k) for k in keywords], dtype=str),
      keywords=tuple(tuple(k) for k in keywords), cluster_sizes=sizes)
  descriptions.check_prefix_free()
  return descriptions


def _distinct_keywords(ranked: list[list[str]], sizes: np.ndarray, num_keywords: int
                       ) -> list[list[str]]:
  """Top keywords per cluster, extended until no text equals or prefixes another."""
  width = len(str(max(len(ranked) - 1, 0)))
  keywords, used, final = [], [], []
  for c, candidates in enumerate(ranked):
    if not candidates:
      label = "empty cluster" if sizes[c] == 0 else "unlabelled cluster"
      keywords.append([f"{label} {c:0{width}d}"])
      final.append(True)
    else:
      keywords.append(list(candidates[:num_keywords]))
      final.append(False)
    used.append(len(keywords[-1]))
  while True:
    texts = [KEYWORD_SEPARATOR.join(k) for k in keywords]
    offenders = sorted({a for a, _ in _prefix_offenders(texts)})
    if not offenders:
      return keywords
    for c in offenders:
      if final[c]:  # a text ending in a unique id keyword never prefixes another
        raise AssertionError(f"cluster {c}: disambiguated description {texts[c]!r} still collides")
      if used[c] < len(ranked[c]):
        keywords[c].append(ranked[c][used[c]])
        used[c] += 1
      else:
        keywords[c].append(f"cluster {c:0{width}d}")
        final[c] = True
