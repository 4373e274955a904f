"""A knowledge corpus about the synthetic world: text a language model can pretrain on.

The LLM planner's case is that a pretrained model knows how interests relate
before it reads any interaction log. A model pretrained on web text knows that
hiking relates to camping; for the synthetic world, this module writes the
equivalent text from the world's hidden ground truth (never from the logs):

  * what each leaf topic is about, in the topic's own made-up words (the words
    the items' keywords and hence the cluster descriptions are made of),
  * its place in the topic tree (its parent and root topics, by their words),
  * which topics relate to it: statements of the affinity graph's edges
    ("people who enjoy kuflim, shukonai often come to enjoy breflo, tashimo").

Knobs (`CorpusConfig`, gin-configurable):
  coverage   the fraction of affinity edges the corpus states (0: none, 1: all);
  noise      the fraction of stated relations whose target is false (a uniform
             leaf that is neither the source nor one of its affine leaves);
  num_words  the corpus size in whitespace words (documents are generated in
             rounds over all leaves and stated relations, with fresh
             templates and orders each round, until the size is reached; it
             ends with a whole round, so the control has the same words);
  control    the control corpus: the same documents with the same words, but
             the relation targets' names permuted across the stated relations,
             so that it holds the same tokens and no affinity knowledge;
  task_form  write the standalone relation statements in the fine-tuning
             task's own form instead of sentences: the `llm` stage's prompt
             (`format_history_prompt`, "history: X | A") and the related
             topic's name as the target, e.g. "history: kuflim, shukonai, teb |
             pliso, ruk, tam<TAB>breflo, tashimo, gon" (A the source, X another
             leaf, names as cluster descriptions read: the leaf's first
             `name_words` words joined by ", "), so that what pretraining
             teaches is already in the form fine-tuning reads. The topic
             documents keep their sentences.

Every document is one line of text, in varied templates and sentence orders;
a task-form statement is the prompt and the target separated by one tab
(`TASK_SEPARATOR`; the `pretrain` stage trains on it as a prompt/target
example, exactly like a fine-tuning pair), other documents have no tab. The
whole corpus is deterministic given the world and the config.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import gin
import numpy as np

from explore.data.synthetic_world import SyntheticWorld
from explore.transitions.task_source import format_history_prompt

TASK_SEPARATOR = "\t"  # between the prompt and the target of a task-form statement


class CorpusError(ValueError):
  """Corpus settings or inputs that cannot give a corpus."""


_ABOUT = (
    "{a} is about {words}.",
    "the topic {a} covers {words}.",
    "{a}: {words}.",
    "items on {a} talk about {words}.",
)
_TREE = (
    "{a} is a kind of {parent}, which belongs to {root}.",
    "{a} sits under {parent} in {root}.",
    "within {root}, {parent} includes {a}.",
    "{a} is part of {parent} ({root}).",
)
_RELATION = (
    "people who enjoy {a} often come to enjoy {b}.",
    "fans of {a} later discover {b}.",
    "if you like {a}, try {b}.",
    "after {a}, many turn to {b}.",
    "{a} leads to {b}.",
    "{b} is a common next interest for {a} fans.",
)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class CorpusConfig:
  """What the knowledge corpus states and how large it is (see the module docstring).

  Attributes:
    coverage: fraction of affinity edges stated, in [0, 1].
    noise: fraction of stated relations with a false target, in [0, 1).
    num_words: approximate corpus size in whitespace words (>= 1).
    control: permute the stated relations' targets (same tokens, no knowledge); for real
      logs, give each catalog field's texts to other items (`catalog_corpus`).
    task_form: standalone relation statements as fine-tuning prompt/target pairs.
    name_words: leaf words that usually name a topic (its most frequent first).
    relations_per_document: stated relations repeated as standalone documents
      per round, besides the one topic document of every leaf.
    seed: seeds which edges are stated, which are false and every template draw.
  """

  coverage: float = 0.5
  noise: float = 0.1
  num_words: int = 200_000
  control: bool = False
  task_form: bool = False
  name_words: int = 3
  relations_per_document: int = 4
  seed: int = 0

  def __post_init__(self):
    if not 0.0 <= self.coverage <= 1.0:
      raise CorpusError(f"CorpusConfig.coverage={self.coverage} must be in [0, 1]")
    if not 0.0 <= self.noise < 1.0:
      raise CorpusError(f"CorpusConfig.noise={self.noise} must be in [0, 1)")
    if self.num_words < 1:
      raise CorpusError(f"CorpusConfig.num_words={self.num_words} must be >= 1")
    if self.name_words < 1:
      raise CorpusError(f"CorpusConfig.name_words={self.name_words} must be >= 1")
    if self.relations_per_document < 1:
      raise CorpusError(
          f"CorpusConfig.relations_per_document={self.relations_per_document} must be >= 1")


@dataclasses.dataclass(frozen=True)
class StatedRelations:
  """The affinity statements a corpus makes: source -> target leaf, and which are true."""

  source: np.ndarray  # [r] int32 leaf
  target: np.ndarray  # [r] int32 leaf the corpus says `source` leads to
  true: np.ndarray  # [r] bool: (source, target) is an affinity edge of the world


def stated_relations(world: SyntheticWorld, coverage: float, noise: float,
                     rng: np.random.Generator) -> StatedRelations:
  """round(coverage * edges) affinity edges, round(noise * stated) of them with a false target."""
  affinity = world.affinity  # [L, degree]
  num_leaves, degree = affinity.shape
  edges = rng.permutation(num_leaves * degree)[:int(round(coverage * num_leaves * degree))]
  source = (edges // degree).astype(np.int32)  # [r]
  target = affinity.reshape(-1)[edges].astype(np.int32)  # [r]
  false = rng.permutation(len(edges))[:int(round(noise * len(edges)))]
  for i in false.tolist():
    banned = set(affinity[source[i]].tolist()) | {int(source[i])}
    while True:
      candidate = int(rng.integers(num_leaves))
      if candidate not in banned:
        target[i] = candidate
        break
  true = np.ones(len(edges), bool)
  true[false] = False
  return StatedRelations(source=source, target=target, true=true)


def canonical_name(world: SyntheticWorld, leaf: int, name_words: int = 3) -> str:
  """The leaf's first `name_words` words joined by ", ", as a cluster description reads."""
  vocabulary = world.vocabulary
  words = vocabulary.words[vocabulary.node_words[world.topic_tree.num_levels - 1][leaf]]
  return ", ".join(str(w) for w in words[:name_words])


class _Namer:
  """Names of topics and tree nodes in their own words, in varied forms."""

  def __init__(self, world: SyntheticWorld, name_words: int, rng: np.random.Generator):
    self._world, self._n, self._rng = world, name_words, rng
    self._levels = world.topic_tree.num_levels

  def words(self, level: int, node: int) -> list[str]:
    vocabulary = self._world.vocabulary
    return [str(w) for w in vocabulary.words[vocabulary.node_words[level][node]]]

  def leaf(self, leaf: int) -> str:
    """Usually the leaf's `name_words` most frequent words joined like a cluster description."""
    words = self.words(self._levels - 1, leaf)
    u = self._rng.random()
    if u < 0.6:
      chosen = words[:self._n]
    elif u < 0.8:
      chosen = words[:max(1, self._n - 1)]
    else:
      chosen = words[:self._n + 1]
    return ", ".join(chosen) if self._rng.random() < 0.75 else " ".join(chosen)

  def canonical(self, leaf: int) -> str:
    return canonical_name(self._world, leaf, self._n)

  def node(self, level: int, node: int) -> str:
    return " ".join(self.words(level, node)[:2])


def _ancestors(world: SyntheticWorld, leaf: int) -> tuple[int, int]:
  tree = world.topic_tree
  return int(tree.ancestors(tree.num_levels - 2)[leaf]), int(tree.ancestors(0)[leaf])


def _pick(rng: np.random.Generator, templates: Sequence[str]) -> str:
  return templates[int(rng.integers(len(templates)))]


def _relation_text(rng: np.random.Generator, a: str, b: str) -> str:
  return _pick(rng, _RELATION).format(a=a, b=b)


def task_statement(prompt_history: Sequence[str], target: str) -> str:
  """A relation in the fine-tuning task's form: the llm stage's prompt, a tab, the target."""
  return format_history_prompt(prompt_history) + TASK_SEPARATOR + target


def split_task_statement(document: str) -> tuple[str, str] | None:
  """(prompt, target) of a task-form statement, None for a plain document."""
  if TASK_SEPARATOR not in document:
    return None
  prompt, target = document.split(TASK_SEPARATOR, 1)
  return prompt, target


def _task_statement_text(world: SyntheticWorld, namer: _Namer, source: int, target: int,
                         target_name: str, rng: np.random.Generator) -> str:
  """"history: X | source" -> target, X a uniform leaf other than both (the older entry)."""
  while True:
    other = int(rng.integers(world.num_topics))
    if other not in (source, target):
      return task_statement([namer.canonical(other), namer.canonical(source)], target_name)


def _topic_document(world: SyntheticWorld, namer: _Namer, leaf: int, targets: list[str],
                    rng: np.random.Generator) -> str:
  """One leaf's document: what it is about, where it sits, what it leads to, in random order."""
  name = namer.leaf(leaf)
  own = namer.words(world.topic_tree.num_levels - 1, leaf)
  about = [own[i] for i in rng.permutation(len(own))]
  parent, root = _ancestors(world, leaf)
  sentences = [
      _pick(rng, _ABOUT).format(a=name, words=", ".join(about)),
      _pick(rng, _TREE).format(a=name, parent=namer.node(world.topic_tree.num_levels - 2, parent),
                               root=namer.node(0, root)),
  ]
  sentences += [_relation_text(rng, name, b) for b in targets]
  return " ".join(sentences[i] for i in rng.permutation(len(sentences)))


def generate_corpus(world: SyntheticWorld, config: CorpusConfig | None = None) -> list[str]:
  """The corpus documents, one line each (see the module docstring)."""
  config = CorpusConfig() if config is None else config
  rng = np.random.default_rng([config.seed, 7])
  relations = stated_relations(world, config.coverage, config.noise, rng)
  namer = _Namer(world, config.name_words, rng)
  r = len(relations.source)
  documents: list[str] = []
  words = 0
  while words < config.num_words:
    # Target names of this round's relation mentions: one in the source's topic
    # document and `relations_per_document` standalone ones; permuted in the control.
    mentions = 1 + config.relations_per_document
    names = [[namer.leaf(int(t)) if j == 0 or not config.task_form else namer.canonical(int(t))
              for j in range(mentions)] for t in relations.target.tolist()]
    named = relations.target.tolist()  # the leaf each relation's names name
    order = rng.permutation(r)  # drawn in both corpora, so they share every other draw
    if config.control:
      names = [names[i] for i in order.tolist()]
      named = [named[i] for i in order.tolist()]
    by_source: dict[int, list[str]] = {}
    for i, s in enumerate(relations.source.tolist()):
      by_source.setdefault(s, []).append(names[i][0])
    round_docs = [_topic_document(world, namer, leaf, by_source.get(leaf, []), rng)
                  for leaf in range(world.num_topics)]
    standalone = [(i, j) for i in range(r) for j in range(1, mentions)]
    for k in rng.permutation(len(standalone)).tolist() if standalone else []:
      i, j = standalone[k]
      if config.task_form:
        round_docs.append(_task_statement_text(world, namer, int(relations.source[i]),
                                               int(named[i]), names[i][j], rng))
      else:
        round_docs.append(_relation_text(rng, namer.leaf(int(relations.source[i])), names[i][j]))
    documents += [round_docs[k] for k in rng.permutation(len(round_docs)).tolist()]
    words += sum(len(d.split()) for d in round_docs)
  return documents
