"""The synthetic world's knowledge corpus: what it states, its knobs and the control corpus."""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest

from explore.data import synthetic_corpus as corpus_lib
from explore.data.synthetic_config import SyntheticConfig
from explore.data.synthetic_corpus import CorpusConfig, CorpusError
from explore.data.synthetic_world import build_world

WORLD = build_world(SyntheticConfig(num_users=50, num_items=400, branching=(4, 4, 4)))


def _words(documents):
  return collections.Counter(re.findall(r"[a-z]+", " ".join(documents)))


def _leaf_name(leaf: int, n: int = 3) -> str:
  vocabulary = WORLD.vocabulary
  return ", ".join(str(w) for w in vocabulary.words[vocabulary.node_words[-1][leaf]][:n])


def test_stated_relations_follow_coverage_and_noise():
  rng = np.random.default_rng(0)
  relations = corpus_lib.stated_relations(WORLD, coverage=0.5, noise=0.25, rng=rng)
  edges = WORLD.affinity.size
  assert len(relations.source) == round(0.5 * edges)
  assert (~relations.true).sum() == round(0.25 * len(relations.source))
  is_edge = (WORLD.affinity[relations.source] == relations.target[:, None]).any(axis=1)
  np.testing.assert_array_equal(is_edge, relations.true)
  assert np.all(relations.source != relations.target)
  # Stated true edges are distinct edges of the graph.
  pairs = set(zip(relations.source[relations.true].tolist(),
                  relations.target[relations.true].tolist()))
  assert len(pairs) == relations.true.sum()


def test_zero_coverage_states_no_relation_and_full_coverage_every_edge():
  rng = np.random.default_rng(0)
  assert len(corpus_lib.stated_relations(WORLD, 0.0, 0.1, rng).source) == 0
  full = corpus_lib.stated_relations(WORLD, 1.0, 0.0, rng)
  assert set(zip(full.source.tolist(), full.target.tolist())) == {
      (s, int(t)) for s in range(WORLD.num_topics) for t in WORLD.affinity[s]}


def test_corpus_describes_every_topic_with_its_words_and_tree_place():
  documents = corpus_lib.generate_corpus(WORLD, CorpusConfig(num_words=1000, coverage=0.0))
  text = "\n".join(documents)
  assert all("\t" not in d and "\n" not in d for d in documents)
  vocabulary = WORLD.vocabulary
  for leaf in range(WORLD.num_topics):
    for word in vocabulary.words[vocabulary.node_words[-1][leaf]]:
      assert str(word) in text
  parents = WORLD.topic_tree.ancestors(1)
  root_words = {str(vocabulary.words[vocabulary.node_words[0][r, 0]]) for r in range(4)}
  assert root_words <= set(_words(documents))
  assert len(set(parents.tolist())) == 16
  # Without coverage no relation template is used.
  assert not any(re.search(r"leads to|try |discover|come to enjoy|turn to|next interest", d)
                 for d in documents)


def test_corpus_states_relations_and_reaches_its_size():
  config = CorpusConfig(num_words=5000, coverage=1.0, noise=0.0)
  documents = corpus_lib.generate_corpus(WORLD, config)
  assert sum(len(d.split()) for d in documents) >= 5000
  text = "\n".join(documents)
  # Every affinity edge's target is named in some document that names its source.
  for source in range(3):
    for target in WORLD.affinity[source].tolist():
      src, tgt = _leaf_name(source, 2), _leaf_name(target, 2)
      assert any(src in d and tgt in d for d in documents), (source, target)
  assert corpus_lib.generate_corpus(WORLD, config) == documents  # deterministic
  assert len(text) > 0


def test_control_corpus_has_the_same_words_and_shuffled_targets():
  config = CorpusConfig(num_words=3000, coverage=1.0, noise=0.0)
  documents = corpus_lib.generate_corpus(WORLD, config)
  control = corpus_lib.generate_corpus(WORLD, CorpusConfig(num_words=3000, coverage=1.0,
                                                           noise=0.0, control=True))
  assert _words(documents) == _words(control)
  assert documents != control

  def true_pairs(docs):
    hits = 0
    for source in range(WORLD.num_topics):
      src = _leaf_name(source, 2)
      for target in WORLD.affinity[source].tolist():
        tgt = _leaf_name(target, 2)
        hits += sum(d.startswith(("fans of " + src, "if you like " + src)) and tgt in d
                    for d in docs)
    return hits

  assert true_pairs(control) < 0.2 * true_pairs(documents)


def _task_pairs(documents):
  """(history leaf names [2], target name) of every task-form statement."""
  pairs = []
  for d in documents:
    split = corpus_lib.split_task_statement(d)
    if split is not None:
      prompt, target = split
      assert prompt.startswith("history: ")
      pairs.append((prompt[len("history: "):].split(" | "), target))
  return pairs


def test_task_form_states_relations_as_fine_tuning_pairs():
  config = CorpusConfig(num_words=4000, coverage=1.0, noise=0.0, task_form=True)
  documents = corpus_lib.generate_corpus(WORLD, config)
  pairs = _task_pairs(documents)
  assert pairs and sum(len(d.split()) for d in documents) >= 4000
  # The prompt is the llm stage's own (format_history_prompt) over cluster-description-like
  # names; the target is an affine leaf of the history's last topic, never in the history.
  name_to_leaf = {_leaf_name(leaf): leaf for leaf in range(WORLD.num_topics)}
  for history, target in pairs:
    assert corpus_lib.task_statement(history, target) in documents
    older, last = (name_to_leaf[h] for h in history)
    assert name_to_leaf[target] in WORLD.affinity[last].tolist()
    assert name_to_leaf[target] not in (older, last)
  # Every edge is stated in task form; topic documents stay sentences without a tab.
  stated = {(name_to_leaf[h[1]], name_to_leaf[t]) for h, t in pairs}
  assert stated == {(s, int(t)) for s in range(WORLD.num_topics) for t in WORLD.affinity[s]}
  assert any(corpus_lib.split_task_statement(d) is None and " is " in d for d in documents)
  assert corpus_lib.generate_corpus(WORLD, config) == documents


def test_task_form_control_names_the_same_targets_shuffled():
  config = CorpusConfig(num_words=4000, coverage=1.0, noise=0.0, task_form=True)
  documents = corpus_lib.generate_corpus(WORLD, config)
  control = corpus_lib.generate_corpus(WORLD, CorpusConfig(num_words=4000, coverage=1.0,
                                                           noise=0.0, task_form=True,
                                                           control=True))
  name_to_leaf = {_leaf_name(leaf): leaf for leaf in range(WORLD.num_topics)}

  def true_fraction(docs):
    pairs = _task_pairs(docs)
    return np.mean([name_to_leaf[t] in WORLD.affinity[name_to_leaf[h[1]]].tolist()
                    for h, t in pairs])

  assert collections.Counter(t for _, t in _task_pairs(control)) == collections.Counter(
      t for _, t in _task_pairs(documents))
  assert true_fraction(documents) == 1.0
  assert true_fraction(control) < 0.2


@pytest.mark.parametrize("field,value", [("coverage", 1.5), ("noise", 1.0), ("num_words", 0),
                                         ("name_words", 0), ("relations_per_document", 0)])
def test_bad_settings_are_named(field, value):
  with pytest.raises(CorpusError, match=f"CorpusConfig.{field}"):
    CorpusConfig(**{field: value})
