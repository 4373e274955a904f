"""The knowledge ceiling: cluster topics, the known relations and the validation-tuned oracle."""

import numpy as np
import pytest

from explore.data import synthetic_corpus
from explore.data.synthetic_config import SyntheticConfig
from explore.data.synthetic_world import build_world
from explore.eval import knowledge_ceiling as ceiling_lib
from explore.eval.planners import PairCounts
from explore.transitions.examples import TEST
from tests.test_eval_blend import one_example_users


def test_cluster_topics_is_the_majority_topic_and_its_share():
  topic, purity = ceiling_lib.cluster_topics(np.array([0, 0, 0, 1, 1]), np.array([2, 2, 1, 0, 0]),
                                             num_clusters=2)
  assert topic.tolist() == [2, 0]
  np.testing.assert_allclose(purity, [2 / 3, 1.0])
  with pytest.raises(ceiling_lib.KnowledgeCeilingError, match="cluster 2 has no items"):
    ceiling_lib.cluster_topics(np.array([0, 1]), np.array([0, 1]), num_clusters=3)
  with pytest.raises(ceiling_lib.KnowledgeCeilingError, match="other data"):
    ceiling_lib.cluster_topics(np.array([0, 1]), np.array([0, 1, 1]), num_clusters=2)


def test_known_relations_are_the_corpus_true_stated_edges():
  world = build_world(SyntheticConfig(num_users=50, num_items=400, branching=(4, 4, 4)))
  config = synthetic_corpus.CorpusConfig(coverage=0.5, noise=0.2)
  known = ceiling_lib.known_relations(world, config)
  relations = synthetic_corpus.stated_relations(world, 0.5, 0.2, np.random.default_rng([0, 7]))
  assert known.sum() == relations.true.sum()
  assert known[relations.source[relations.true], relations.target[relations.true]].all()
  assert not known[relations.source[~relations.true], relations.target[~relations.true]].any()
  rows, cols = np.nonzero(known)
  assert all(c in world.affinity[r] for r, c in zip(rows.tolist(), cols.tolist()))
  full = ceiling_lib.known_relations(world, synthetic_corpus.CorpusConfig(coverage=1.0, noise=0.0))
  assert full.sum() == world.affinity.size


def test_oracle_adds_weighted_known_relations_to_log_counts():
  counts = PairCounts.fit(np.array([[1], [1], [1]]), np.array([2, 2, 3]), 4)
  known = np.zeros((4, 4), bool)
  known[1, 0] = known[0, 3] = True
  scores = ceiling_lib.oracle_scores(counts, np.zeros(4), known, np.array([[0, 1]]), a=2.0, b=0.5)
  np.testing.assert_allclose(scores[0], [2.0, 0.0, np.log(3), np.log(2) + 0.5])


def _transitions():
  """Seven one-example users (M = 4); the last train example is the validation one."""
  return one_example_users([[0, 1]] * 3 + [[2, 1], [0, 1], [3, 2], [0, 2]],
                           [2, 2, 2, 3, 2, 1, 1], num_train=6)


def test_tuning_uses_validation_and_the_oracle_beats_counts_where_they_are_blind():
  transitions = _transitions()
  known = np.zeros((4, 4), bool)
  known[2, 1] = True  # (..., 2) -> 1: the fit counts never saw a history ending in 2
  tuned = ceiling_lib.tune(transitions, known, weights=(0.0, 1.0), k=1)
  assert tuned["validation_hit@1"] == 1.0 and tuned["validation_hit@1_counts_only"] == 0.0
  assert (tuned["a"], tuned["b"]) == (1.0, 0.0)
  result = ceiling_lib.ceiling(transitions, known, transitions.indices(TEST), ks=(1,),
                               weights=(0.0, 1.0), tune_k=1)
  assert result["planners"]["oracle"]["all"]["hit@1"] >= \
      result["planners"]["last_cluster"]["all"]["hit@1"]
