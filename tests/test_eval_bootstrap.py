"""Paired bootstrap intervals of hit-rate differences, and the LLM-vs-counts comparison."""

import numpy as np
import pytest

from explore.eval import bootstrap
from explore.transitions.examples import TEST
from tests.test_eval_planners import hand_made_transitions


def test_identical_and_opposite_hits_give_degenerate_intervals():
  hits = np.array([1, 0, 1, 1, 0], bool)
  same = bootstrap.paired_difference_ci(hits, hits, samples=200)
  assert (same["difference"], same["low"], same["high"]) == (0.0, 0.0, 0.0)
  opposite = bootstrap.paired_difference_ci(np.ones(7), np.zeros(7), samples=200)
  assert (opposite["difference"], opposite["low"], opposite["high"]) == (1.0, 1.0, 1.0)
  assert opposite["examples"] == 7


def test_interval_covers_the_mean_with_the_normal_width():
  rng = np.random.default_rng(0)
  a = rng.random(2000) < 0.4
  b = np.where(rng.random(2000) < 0.8, a, rng.random(2000) < 0.3)  # paired with a
  ci = bootstrap.paired_difference_ci(a, b, samples=2000, seed=1)
  diff = a.astype(float) - b.astype(float)
  half = 1.96 * diff.std() / np.sqrt(len(diff))
  assert ci["low"] < ci["difference"] < ci["high"]
  assert ci["high"] - ci["low"] == pytest.approx(2 * half, rel=0.15)
  assert bootstrap.paired_difference_ci(a, b, samples=2000, seed=1) == ci  # seeded


def test_bad_inputs_are_named():
  with pytest.raises(bootstrap.BootstrapError, match="one length"):
    bootstrap.paired_difference_ci(np.ones(3), np.ones(4))
  with pytest.raises(bootstrap.BootstrapError, match="level"):
    bootstrap.paired_difference_ci(np.ones(3), np.ones(3), level=1.0)
  empty = bootstrap.paired_difference_ci(np.ones(0), np.ones(0))
  assert empty["difference"] is None


def test_llm_minus_best_count_picks_the_better_count_planner():
  transitions = hand_made_transitions()
  test = transitions.indices(TEST)
  hit_all = np.array([[0, 0, 0, 1.0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])  # truth 3, 0, 0
  miss_all = np.array([[0, 0, 1.0, 0], [0, 0, 0, 1.0], [0, 0, 0, 1.0]])
  scores = {"llm": hit_all, "last_cluster": miss_all, "transition": hit_all}
  out = bootstrap.llm_minus_best_count(transitions, scores, test, k=1, samples=100)
  assert out["best_count_planner"] == "transition"
  assert out["all"]["difference"] == 0.0 and out["unseen"]["examples"] == 1
  scores["transition"] = miss_all
  out = bootstrap.llm_minus_best_count(transitions, scores, test, k=1, samples=100)
  assert out["all"]["difference"] == 1.0 and out["unseen"]["low"] == 1.0
  with pytest.raises(bootstrap.BootstrapError, match="no scores for planners"):
    bootstrap.llm_minus_best_count(transitions, {"llm": hit_all}, test)


def test_paired_buckets_compares_two_planners_in_every_bucket():
  transitions = hand_made_transitions()
  test = transitions.indices(TEST)
  hit_all = np.array([[0, 0, 0, 1.0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])  # truth 3, 0, 0
  miss_all = np.array([[0, 0, 1.0, 0], [0, 0, 0, 1.0], [0, 0, 0, 1.0]])
  out = bootstrap.paired_buckets(transitions, hit_all, miss_all, test, k=1, samples=100)
  assert (out["all"]["a"], out["all"]["b"], out["all"]["difference"]) == (1.0, 0.0, 1.0)
  sizes = [out[b]["examples"] for b in ("unseen", "rare", "frequent")]
  assert sum(sizes) == len(test) and out["unseen"]["examples"] == 1
  same = bootstrap.paired_buckets(transitions, hit_all, hit_all, test, k=1, samples=100)
  assert same["all"]["difference"] == 0.0 and same["all"]["low"] == 0.0
  with pytest.raises(bootstrap.BootstrapError, match=r"must be \[n=3, M\]"):
    bootstrap.paired_buckets(transitions, hit_all, miss_all[:2], test)


def test_pooled_buckets_averages_each_sides_runs():
  transitions = hand_made_transitions()
  test = transitions.indices(TEST)
  hit_all = np.array([[0, 0, 0, 1.0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])  # truth 3, 0, 0
  miss_all = np.array([[0, 0, 1.0, 0], [0, 0, 0, 1.0], [0, 0, 0, 1.0]])
  hit_first = np.array([[0, 0, 0, 1.0], [0, 0, 0, 1.0], [0, 0, 0, 1.0]])  # hits example 0 only
  out = bootstrap.pooled_buckets(transitions, [hit_all, miss_all, hit_first], [miss_all], test,
                                 k=1, samples=200)
  assert out["runs_a"] == 3 and out["runs_b"] == 1
  assert out["all"]["runs_a"] == pytest.approx([1.0, 0.0, 1 / 3])
  # Per example the a side hits 2/3, 1/3, 1/3 of its runs: the mean of the runs' hit@1.
  assert out["all"]["a"] == pytest.approx(4 / 9) and out["all"]["b"] == 0.0
  assert out["all"]["difference"] == pytest.approx(4 / 9)
  assert 1 / 3 - 1e-9 <= out["all"]["low"] <= out["all"]["high"] <= 2 / 3 + 1e-9
  # One run per side is the paired comparison.
  single = bootstrap.pooled_buckets(transitions, [hit_all], [miss_all], test, k=1, samples=100)
  paired = bootstrap.paired_buckets(transitions, hit_all, miss_all, test, k=1, samples=100)
  assert single == paired
  with pytest.raises(bootstrap.BootstrapError, match="at least one run"):
    bootstrap.pooled_buckets(transitions, [], [miss_all], test)
  with pytest.raises(bootstrap.BootstrapError, match="same shape"):
    bootstrap.pooled_buckets(transitions, [hit_all, hit_all[:, :3]], [miss_all], test)


def test_strata_resample_each_group_within_itself():
  # Group 0 always differs by +1, group 1 by -1: within-group resamples keep the pooled mean at
  # exactly (3 - 2) / 5, so the stratified interval is a point; unstratified it is not.
  a = np.array([1, 1, 1, 0, 0], float)
  b = np.array([0, 0, 0, 1, 1], float)
  strata = np.array([0, 0, 0, 1, 1])
  ci = bootstrap.paired_difference_ci(a, b, samples=500, strata=strata)
  assert ci["difference"] == pytest.approx(0.2)
  assert ci["low"] == pytest.approx(0.2) and ci["high"] == pytest.approx(0.2)
  plain = bootstrap.paired_difference_ci(a, b, samples=500)
  assert plain["high"] - plain["low"] > 0.5
  one_group = bootstrap.paired_difference_ci(a, b, samples=500, strata=np.zeros(5, int))
  assert one_group["low"] == pytest.approx(plain["low"])
  assert one_group["high"] == pytest.approx(plain["high"])
  with pytest.raises(bootstrap.BootstrapError, match="strata has shape"):
    bootstrap.paired_difference_ci(a, b, strata=np.zeros(4, int))


def test_across_worlds_pools_each_worlds_own_examples():
  transitions = hand_made_transitions()
  test = transitions.indices(TEST)
  # Scores that hit@1 (truth 3, 0, 0; clusters engaged before are excluded) and scores that miss.
  hit = np.array([[0, 0, 0, 1.0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])
  miss = np.array([[1.0, 0.9, 0.8, -1], [-1, 1.0, 0.9, 0.8], [-1, 0.9, 0.8, 1.0]])
  out = bootstrap.across_worlds([(transitions, hit, miss, test, 4),
                                 (transitions, miss[:2], miss[:2], test[:2], 4)], k=1,
                                samples=200)
  # world 0: a hits 3 of 3, b 0 of 3 (frequent, rare, unseen); world 1: both miss 2 of 2
  assert out["worlds"] == 2
  assert out["all"]["examples"] == 5
  assert out["all"]["a"] == pytest.approx(3 / 5) and out["all"]["b"] == 0.0
  assert out["all"]["runs_a"] == [1.0, 0.0] and out["all"]["runs_b"] == [0.0, 0.0]
  # per-world differences are constant (1 and 0), so the stratified interval is a point
  assert out["all"]["low"] == pytest.approx(0.6) and out["all"]["high"] == pytest.approx(0.6)
  assert out["unseen"]["examples"] == 1 and out["unseen"]["runs_a"] == [1.0, None]
  with pytest.raises(bootstrap.BootstrapError, match="world 1 has scores"):
    bootstrap.across_worlds([(transitions, hit, miss, test, 4),
                             (transitions, hit, miss[:2], test, 4)], k=1)
  with pytest.raises(bootstrap.BootstrapError, match="no worlds"):
    bootstrap.across_worlds([], k=1)
