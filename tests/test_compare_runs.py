"""tools/compare_runs.py: the best count planner side and the command line's checks."""

import sys

import numpy as np
import pytest

import compare_runs
from explore.eval import bootstrap
from explore.eval import planners as planners_lib
from explore.transitions.examples import TEST, TRAIN
from tests.test_eval_planners import hand_made_transitions


@pytest.mark.parametrize("k", [1, 2])
def test_count_scores_is_the_better_count_planner(k):
  transitions = hand_made_transitions()
  test = transitions.indices(TEST)
  name, scores = compare_runs.count_scores(transitions, test, k)
  fit = transitions.indices(TRAIN)
  baselines = planners_lib.fit_baselines(transitions.history[fit], transitions.next_cluster[fit],
                                         transitions.num_clusters)
  history = transitions.history[test]
  every = {n: baselines[n].scores(history) for n in bootstrap.COUNT_PLANNERS}
  expected = bootstrap.llm_minus_best_count(transitions, {"llm": scores, **every}, test, k=k,
                                            samples=10)
  assert name == expected["best_count_planner"]
  np.testing.assert_array_equal(scores, every[name])


def test_counts_must_be_the_only_run_b(monkeypatch, tmp_path):
  monkeypatch.setattr(sys, "argv", ["compare_runs", f"--run_a={tmp_path}", "--run_b=counts",
                                    f"--run_b={tmp_path}"])
  with pytest.raises(SystemExit, match="stands alone"):
    compare_runs.main()


def test_a_run_without_its_stages_is_named(monkeypatch, tmp_path):
  monkeypatch.setattr(sys, "argv", ["compare_runs", f"--run_a={tmp_path}", "--run_b=counts"])
  with pytest.raises(SystemExit, match=f"{tmp_path}/transitions: no complete transitions stage"):
    compare_runs.main()
