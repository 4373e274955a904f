"""Baseline planners and novel-cluster hit@k on hand-made cases with known answers."""

import numpy as np
import pytest

from explore.eval import hit_rate
from explore.eval import planners
from explore.transitions.examples import NovelTransitions, TEST, TRAIN

# Train pairs over M = 5 clusters, K = 2.
HISTORY = np.array([[0, 1], [0, 1], [0, 1], [2, 1], [2, 1], [3, 4]])
NEXT = np.array([2, 2, 3, 3, 4, 0])


def test_popular_novel_counts_next_clusters():
  scores = planners.PopularNovel(HISTORY, NEXT, 5).scores(np.array([[4, 4], [0, 1]]))
  np.testing.assert_array_equal(scores, [[1, 0, 2, 2, 1]] * 2)


def test_transition_counts_use_the_tuple_first():
  scores = planners.TransitionCounts(HISTORY, NEXT, 5).scores(np.array([[0, 1]]))[0]
  # tuple (0, 1) -> 2 twice, -> 3 once; the rest only through back-off
  assert np.argsort(-scores, kind="stable")[:2].tolist() == [2, 3]
  assert scores[2] >= 2 and 1 <= scores[3] < 2 and scores[4] < 1


def test_transition_counts_back_off_to_last_cluster_then_popularity():
  model = planners.TransitionCounts(HISTORY, NEXT, 5)
  # unseen tuple (3, 1): no tuple count, so the order is that of the last-cluster planner
  scores = model.scores(np.array([[3, 1]]))[0]
  last = planners.LastClusterCounts(HISTORY, NEXT, 5).scores(np.array([[3, 1]]))[0]
  assert scores.max() < 1
  np.testing.assert_array_equal(np.argsort(-scores, kind="stable"),
                                np.argsort(-last, kind="stable"))
  # last cluster 1 -> 2 twice, -> 3 twice, -> 4 once; popularity breaks the 2/3 tie (equal: 2)
  assert scores[2] > scores[4] > scores[0] and scores[3] > scores[4]
  # unseen last cluster 0: popularity alone (3 and 2 most popular, then 0 and 4)
  pop = model.scores(np.array([[4, 0]]))[0]
  assert pop[2] == pop[3] > pop[0] == pop[4] > pop[1]
  assert pop.max() < 1


def test_back_off_levels_are_lexicographic():
  # A tuple count of 1 beats a huge last-cluster count.
  history = np.array([[0, 1]] + [[2, 1]] * 50)
  nxt = np.array([3] + [4] * 50)
  scores = planners.TransitionCounts(history, nxt, 5).scores(np.array([[0, 1]]))[0]
  assert scores[3] > scores[4]


def test_random_novel_is_seeded():
  a = planners.RandomNovel(5, 2, seed=3).scores(HISTORY)
  np.testing.assert_array_equal(a, planners.RandomNovel(5, 2, seed=3).scores(HISTORY))
  assert not np.array_equal(a, planners.RandomNovel(5, 2, seed=4).scores(HISTORY))


def test_planner_rejects_bad_history():
  model = planners.PopularNovel(HISTORY, NEXT, 5)
  with pytest.raises(planners.PlannerError, match=r"history must be \[b, 2\]"):
    model.scores(np.zeros((3, 3), int))
  with pytest.raises(planners.PlannerError, match="outside"):
    model.scores(np.array([[0, 7]]))
  with pytest.raises(planners.PlannerError, match="next_cluster must be"):
    planners.PopularNovel(HISTORY, NEXT[:-1], 5)


def test_hit_at_k_excludes_seen_clusters():
  scores = np.array([[5.0, 4.0, 3.0, 2.0]])
  exclude = np.array([[True, True, False, False]])
  assert hit_rate.novel_hit_at_k(scores, np.array([2]), exclude, 1)[0]
  assert not hit_rate.novel_hit_at_k(scores, np.array([2]), np.zeros_like(exclude), 1)[0]


def test_hit_at_k_breaks_ties_by_lower_cluster_id():
  scores = np.zeros((2, 4))
  exclude = np.zeros((2, 4), bool)
  np.testing.assert_array_equal(hit_rate.novel_ranks(scores, np.array([0, 3]), exclude), [0, 3])
  np.testing.assert_array_equal(hit_rate.novel_hit_at_k(scores, np.array([1, 2]), exclude, 2),
                                [True, False])


def test_hit_at_k_rejects_bad_inputs():
  scores, nxt, exclude = np.zeros((2, 4)), np.array([0, 1]), np.zeros((2, 4), bool)
  with pytest.raises(hit_rate.HitRateError, match=r"k=5 must be an integer in \[1, 4\]"):
    hit_rate.novel_hit_at_k(scores, nxt, exclude, 5)
  with pytest.raises(hit_rate.HitRateError, match="next_cluster must be"):
    hit_rate.novel_hit_at_k(scores, nxt[:1], exclude, 1)
  with pytest.raises(hit_rate.HitRateError, match="exclude_mask must be"):
    hit_rate.novel_hit_at_k(scores, nxt, exclude[:, :3], 1)
  with pytest.raises(hit_rate.HitRateError, match="is excluded"):
    hit_rate.novel_hit_at_k(scores, nxt, np.eye(2, 4, dtype=bool), 1)


def hand_made_transitions():
  """Two users over M = 4 clusters; train tuples (0,1) x5 and (1,2) x1; tests seen 0/1/5 times."""
  history = np.array([[0, 1]] * 5 + [[1, 2]] + [[0, 1], [1, 2], [2, 3]])
  nxt = np.array([2] * 5 + [3] + [3, 0, 0])
  n = len(nxt)
  split = np.array([TRAIN] * 6 + [TEST] * 3, np.int8)
  user = np.zeros(n, np.int32)
  # one user who engaged with clusters 0, 1, 2 before every example (a hand-made log)
  return NovelTransitions(
      user=user, history=history.astype(np.int32), next_cluster=nxt.astype(np.int32),
      timestamp=np.arange(n, dtype=np.int64), split=split,
      num_engaged_before=np.array([2] * 6 + [2, 1, 0], np.int32),
      engaged_clusters=np.array([1, 2, 3, 0], np.int32), engaged_offsets=np.array([0, 4]),
      num_clusters=4, cut_timestamp=6)


def test_evaluate_planners_breaks_down_by_train_tuple_count():
  transitions = hand_made_transitions()
  test = transitions.indices(TEST)
  np.testing.assert_array_equal(hit_rate.tuple_train_counts(transitions, test), [5, 1, 0])
  scores = np.array([[0, 0, 0, 1.0], [1.0, 0, 0, 0], [0, 0, 0, 1.0]])  # hits, hits, misses@1
  out = hit_rate.evaluate_planners(transitions, {"p": scores}, ks=(1, 2))
  assert out["examples"] == {"all": 3, "unseen": 1, "rare": 1, "frequent": 1}
  p = out["planners"]["p"]
  assert p["frequent"]["hit@1"] == 1.0 and p["rare"]["hit@1"] == 1.0
  # unseen example: nothing engaged before, so nothing excluded; cluster 3 outranks 0
  assert p["unseen"]["hit@1"] == 0.0 and p["unseen"]["hit@2"] == 1.0
  assert p["all"]["hit@1"] == pytest.approx(2 / 3)


def test_evaluate_planners_rejects_wrong_score_shape():
  with pytest.raises(hit_rate.HitRateError, match=r"planner 'p': scores must be \[3, 4\]"):
    hit_rate.evaluate_planners(hand_made_transitions(), {"p": np.zeros((2, 4))}, ks=(1,))
