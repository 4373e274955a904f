"""The blended planner: LLM scores plus weighted log counts, the weight tuned on validation."""

import numpy as np
import pytest

from explore.eval import blend
from explore.transitions.examples import TRAIN
from tests.test_eval_planners import hand_made_transitions


def test_blend_adds_weighted_log_counts_of_the_last_cluster():
  history = np.array([[0, 1], [0, 1], [2, 1], [0, 2]])
  nxt = np.array([2, 2, 3, 3])
  llm = lambda h: np.zeros((len(h), 4))
  planner = blend.BlendedPlanner(llm, history, nxt, 4, weight=2.0)
  scores = planner.scores(np.array([[3, 1], [3, 0]]))
  np.testing.assert_allclose(scores[0], [0, 0, 2 * np.log(3), 2 * np.log(2)])
  np.testing.assert_allclose(scores[1], 0)
  zero = blend.BlendedPlanner(llm, history, nxt, 4, weight=0.0)
  np.testing.assert_allclose(zero.blend(np.ones((1, 4)), np.array([[0, 1]])), 1)
  with pytest.raises(blend.BlendError, match="weight"):
    blend.BlendedPlanner(llm, history, nxt, 4, weight=-1.0)


def test_validation_is_the_latest_train_examples():
  transitions = hand_made_transitions()
  fit, validation = blend.validation_split(transitions, fraction=0.34)
  train = transitions.indices(TRAIN)
  assert sorted(np.concatenate([fit, validation]).tolist()) == train.tolist()
  assert transitions.timestamp[fit].max() <= transitions.timestamp[validation].min()
  assert len(validation) == 2
  with pytest.raises(blend.BlendError, match="validation_fraction"):
    blend.validation_split(transitions, fraction=1.0)


def one_example_users(history, nxt, num_train):
  """One user per example, engaged with its history then its next cluster; M = 4."""
  from explore.transitions.examples import NovelTransitions, TEST  # pylint: disable=g-import-not-at-top
  history, nxt = np.asarray(history), np.asarray(nxt)
  n = len(nxt)
  engaged = np.concatenate([history, nxt[:, None]], axis=1).reshape(-1)
  return NovelTransitions(
      user=np.arange(n, dtype=np.int32), history=history.astype(np.int32),
      next_cluster=nxt.astype(np.int32), timestamp=np.arange(n, dtype=np.int64),
      split=np.array([TRAIN] * num_train + [TEST] * (n - num_train), np.int8),
      num_engaged_before=np.full(n, 2, np.int32), engaged_clusters=engaged.astype(np.int32),
      engaged_offsets=np.arange(0, 3 * n + 1, 3), num_clusters=4, cut_timestamp=num_train)


def _transitions():
  return one_example_users([[0, 1]] * 3 + [[2, 1], [0, 1], [3, 1], [0, 2]],
                           [2, 2, 2, 3, 2, 2, 1], num_train=6)


def test_tune_weight_picks_the_best_validation_weight():
  transitions = _transitions()
  # Validation: the last two train examples, both -> 2; counts from the first four say
  # 1 -> 2 (3 times) and 1 -> 3 (once); an LLM preferring cluster 3 misses both alone.
  llm = lambda h: np.tile([0.0, 0.0, 0.0, 1.0], (len(h), 1))
  tuned = blend.tune_weight(transitions, llm, weights=(0.0, 4.0), k=1, fraction=0.34)
  assert tuned["validation_hit@1"] == {0.0: 0.0, 4.0: 1.0}
  assert tuned["weight"] == 4.0 and tuned["validation_examples"] == 2
  assert tuned["fit_examples"] == 4


def test_tune_weight_on_given_scores_matches_tune_weight_and_checks_their_shape():
  transitions = _transitions()
  llm = lambda h: np.tile([0.0, 0.0, 0.0, 1.0], (len(h), 1))
  fit, validation = blend.validation_split(transitions, fraction=0.34)
  given = blend.tune_weight_on(transitions, llm(transitions.history[validation]), fit,
                               validation, weights=(0.0, 4.0), k=1)
  assert given == blend.tune_weight(transitions, llm, weights=(0.0, 4.0), k=1, fraction=0.34)
  with pytest.raises(blend.BlendError, match=r"llm scores must be \[2, 4\]"):
    blend.tune_weight_on(transitions, np.zeros((3, 4)), fit, validation)


def test_with_train_makes_a_held_out_view():
  from explore.transitions.examples import TEST, TransitionsError  # pylint: disable=g-import-not-at-top
  transitions = _transitions()
  fit, validation = blend.validation_split(transitions, fraction=0.34)
  view = transitions.with_train(fit)
  assert view.indices(TRAIN).tolist() == fit.tolist()
  assert set(validation.tolist()) | {6} == set(view.indices(TEST).tolist())
  assert transitions.indices(TRAIN).tolist() == list(range(6))  # the original is unchanged
  with pytest.raises(TransitionsError, match="holds test examples"):
    transitions.with_train(np.array([0, 6]))
  with pytest.raises(TransitionsError, match="fit must be"):
    transitions.with_train(np.array([7]))
