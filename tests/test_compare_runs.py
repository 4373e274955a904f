"""tools/compare_runs.py: the best count planner side and the command line's checks."""

import dataclasses
import json
from pathlib import Path
import sys

import numpy as np
import pytest

import compare_runs
from explore import artifacts
from explore.eval import bootstrap
from explore.eval import planners as planners_lib
from explore.llm import stage as llm_stage
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


def test_run_scores_blends_the_kept_llm_scores_with_last_cluster_counts(tmp_path):
  transitions = hand_made_transitions()
  test = transitions.indices(TEST)
  llm = np.array([[0, 0, 0, 1.0], [0, 0, 1.0, 0], [0, 1.0, 0, 0]], np.float32)
  stage_path = tmp_path / "llm"
  artifacts.save_artifact(stage_path / llm_stage.EVAL_EXAMPLES, llm_stage.EVAL_EXAMPLES, 1,
                          {"examples": test, "llm_scores": llm}, {"rare_max": 4})
  (stage_path / llm_stage.METRICS).write_text(json.dumps({"blend": {"weight": 2.0}}))
  np.testing.assert_array_equal(compare_runs.run_scores(tmp_path, transitions, test, "llm"), llm)
  blended = compare_runs.run_scores(tmp_path, transitions, test, "blend")
  # Train pairs by last cluster: 1 -> 2 five times, 2 -> 3 once; the tests end in 1, 2, 3.
  counts = np.array([[0, 0, 5, 0], [0, 0, 0, 1], [0, 0, 0, 0]], np.float64)
  np.testing.assert_allclose(blended, llm + 2.0 * np.log1p(counts), rtol=1e-6)


def _fake_runs(monkeypatch, worlds):
  """compare_runs reads {run dir: (transitions, examples, rare_max, llm scores)}."""
  monkeypatch.setattr(compare_runs, "load_run", lambda run: worlds[str(run)][:3])
  monkeypatch.setattr(compare_runs, "run_scores",
                      lambda run, transitions, examples, planner: worlds[str(run)][3])


def test_across_worlds_pairs_each_run_with_its_own_world(monkeypatch):
  one = hand_made_transitions()
  other = dataclasses.replace(one, next_cluster=np.array([2] * 5 + [3] + [3, 2, 2], np.int32))
  test = one.indices(TEST)
  hit_one = np.array([[0, 0, 0, 1.0], [1.0, 0, 0, 0], [1.0, 0, 0, 0]])  # truth 3, 0, 0
  hit_other = np.array([[0, 0, 0, 1.0], [0, 0, 1.0, 0], [0, 0, 1.0, 0]])  # truth 3, 2, 2
  _fake_runs(monkeypatch, {"w0": (one, test, 4, hit_one), "w1": (other, test, 4, hit_other),
                           "c0": (one, test, 4, hit_other), "c1": (other, test, 4, hit_one),
                           "w0_seed1": (one, test, 4, hit_one)})
  result, label = compare_runs.compare_worlds([Path("w0"), Path("w1")],
                                              [Path("c0"), Path("c1")], "llm", 1, 50)
  assert label == "c0, c1"
  assert result["all"]["runs_a"] == [1.0, 1.0]
  assert result["all"]["a"] == 1.0 and result["all"]["b"] < 1.0
  counts, label = compare_runs.compare_worlds([Path("w0"), Path("w1")], None, "llm", 1, 50)
  assert label.endswith("counts (each world's own)") and counts["worlds"] == 2
  with pytest.raises(SystemExit, match="w0 and w0_seed1 are the same world"):
    compare_runs.compare_worlds([Path("w0"), Path("w0_seed1")], None, "llm", 1, 50)
  with pytest.raises(SystemExit, match="2 --run_a but 1 --run_b"):
    compare_runs.compare_worlds([Path("w0"), Path("w1")], [Path("c0")], "llm", 1, 50)
  with pytest.raises(SystemExit, match="w1 and c0 did not evaluate the same test examples"):
    compare_runs.compare_worlds([Path("w0"), Path("w1")], [Path("c0"), Path("c0")], "llm", 1, 50)
