"""Fine-tuning targets distilled from the last-cluster counts (`LlmStageOptions.count_targets`)."""

import dataclasses
import json

import gin
import numpy as np
import pytest

from explore import gin_config
from explore import rundir
from explore import stages
from explore.eval import blend
from explore.eval import planners
from explore.llm import count_targets
from explore.llm import stage as llm_stage
from explore.transitions import stage as transitions_stage
from explore.transitions.counts import CurationError, TupleCounts, count_tuples, sum_pairs
from explore.transitions.examples import TRAIN
from explore.transitions.task_source import read_task_source
from tests.test_llm_stage import TINY

stages.load_builtin_stages()

M = 6
# The examples the counts come from, K = 2. Last cluster 1 -> {0: 2, 2: 2, 3: 1, 4: 1};
# last cluster 3 -> {4: 1}; popularity {0: 2, 2: 2, 3: 1, 4: 2}.
FIT_HISTORY = np.array([[0, 1], [0, 1], [2, 1], [2, 1], [2, 1], [3, 1], [0, 3]])
FIT_NEXT = np.array([2, 2, 0, 3, 4, 0, 4])
FIT = count_tuples(FIT_HISTORY, FIT_NEXT)


def pairs(rows, count=None, weight=None):
  """Sorted TupleCounts from (h0, h1, next) rows with counts 1 and the given weights."""
  rows = np.asarray(rows, np.int32)
  count = np.ones(len(rows), np.int64) if count is None else np.asarray(count, np.int64)
  weight = np.ones(len(rows)) if weight is None else np.asarray(weight, np.float64)
  return sum_pairs(rows[:, :-1], rows[:, -1], count, weight)


def rows_of(counts: TupleCounts):
  return np.concatenate([counts.history, counts.next_cluster[:, None]], axis=1).tolist()


def test_targets_follow_the_last_cluster_counts():
  # Tuple (5, 1), curated weight W = 2, distilled weight 1: 2 * count(1 -> c) / 6.
  out = count_targets.add_count_targets(pairs([[5, 1, 2]], weight=[2.0]), FIT, M, 1.0)
  assert rows_of(out) == [[5, 1, 0], [5, 1, 2], [5, 1, 3], [5, 1, 4]]
  np.testing.assert_allclose(out.weight, [2 / 3, 2 + 2 / 3, 1 / 3, 1 / 3])
  # The distribution is the last-cluster planner's counts, normalised.
  last = planners.LastClusterCounts(FIT_HISTORY, FIT_NEXT, M).last.scores(np.array([[1]]))[0]
  added = out.weight - np.array([0.0, 2.0, 0.0, 0.0])
  np.testing.assert_allclose(added / added.sum(), last[out.next_cluster] / last.sum())


def test_clusters_of_the_history_are_never_targets():
  # Tuple (0, 1) leaves out cluster 0: {2: 2, 3: 1, 4: 1} / 4, times 0.5 * W = 1.
  out = count_targets.add_count_targets(pairs([[0, 1, 2]], weight=[2.0]), FIT, M, 0.5)
  assert rows_of(out) == [[0, 1, 2], [0, 1, 3], [0, 1, 4]]
  np.testing.assert_allclose(out.weight, [2.5, 0.25, 0.25])


def test_top_keeps_the_planners_first_clusters_renormalised():
  # Order: 0 and 2 (count 2; tie by id), then 4 before 3 (count 1; 4 is more popular).
  out = count_targets.add_count_targets(pairs([[5, 1, 2]]), FIT, M, 1.0, top=3)
  assert out.next_cluster.tolist() == [0, 2, 4]
  np.testing.assert_allclose(out.weight, [0.4, 1.4, 0.2])
  out = count_targets.add_count_targets(pairs([[5, 1, 2]]), FIT, M, 1.0, top=1)
  assert out.next_cluster.tolist() == [0, 2]
  np.testing.assert_allclose(out.weight, [1.0, 1.0])


def test_weights_add_onto_existing_pairs_and_new_pairs_count_zero():
  # (2, 1): W = 1 + 3 = 4, so 0.25 * 4 * {0: 2, 3: 1, 4: 1} / 4; (0, 3): 0.25 * 2 * {4: 1}.
  curated = pairs([[2, 1, 0], [2, 1, 3], [0, 3, 4]], count=[1, 1, 1], weight=[1.0, 3.0, 2.0])
  out = count_targets.add_count_targets(curated, FIT, M, 0.25)
  assert rows_of(out) == [[0, 3, 4], [2, 1, 0], [2, 1, 3], [2, 1, 4]]  # sorted
  np.testing.assert_allclose(out.weight, [2.5, 1.5, 3.25, 0.25])
  assert out.count.tolist() == [1, 1, 1, 0]


def test_zero_weight_returns_the_pairs():
  curated = pairs([[5, 1, 2]])
  assert count_targets.add_count_targets(curated, FIT, M, 0.0) is curated


def test_tuples_whose_last_cluster_has_no_counts_get_no_targets():
  curated = pairs([[1, 5, 0]])
  out = count_targets.add_count_targets(curated, FIT, M, 1.0)
  assert rows_of(out) == rows_of(curated) and out.weight.tolist() == [1.0]
  empty = count_tuples(np.zeros((0, 2)), np.zeros(0))
  assert rows_of(count_targets.add_count_targets(pairs([[0, 1, 2]]), empty, M, 1.0)) == [[0, 1, 2]]


@pytest.mark.parametrize("kwargs, message", [
    ({"weight": -0.5}, "weight must be finite and >= 0, got -0.5"),
    ({"weight": float("nan")}, "weight must be finite"),
    ({"top": 0}, "top must be an integer >= 1, got 0"),
    ({"top": 2.5}, "top must be an integer >= 1, got 2.5"),
])
def test_bad_options_are_named(kwargs, message):
  with pytest.raises(CurationError, match=message):
    count_targets.add_count_targets(pairs([[5, 1, 2]]), FIT, M, **{"weight": 1.0, **kwargs})


def test_histories_of_other_lengths_are_refused():
  three = sum_pairs(np.array([[0, 5, 1]]), np.array([2]), np.array([1]), np.array([1.0]))
  with pytest.raises(CurationError, match="pairs have K=3 .* fit has K=2"):
    count_targets.add_count_targets(three, FIT, M, 1.0)


def test_sum_pairs_adds_identical_rows_in_sorted_order():
  out = sum_pairs(np.array([[1, 2], [0, 3], [1, 2]]), np.array([4, 5, 4]), np.array([2, 0, 1]),
                  np.array([0.5, 1.0, 0.25]))
  assert rows_of(out) == [[0, 3, 5], [1, 2, 4]]
  assert out.count.tolist() == [0, 3] and out.weight.tolist() == [1.0, 0.75]


@pytest.mark.parametrize("kwargs, message", [
    ({"count_targets": -1.0}, "count_targets=-1.0 must be finite and >= 0"),
    ({"count_targets_top": 0}, "count_targets_top=0 must be an integer >= 1"),
])
def test_stage_options_are_checked(kwargs, message):
  with pytest.raises(llm_stage.LlmStageError, match=message):
    llm_stage.LlmStageOptions(**kwargs)


def test_count_targets_are_part_of_the_llm_stage_config(clean_gin):
  gin.parse_config(["LlmStageOptions.count_targets = 0.5", "LlmStageOptions.count_targets_top = 3"])
  config = stages.stage_config(stages.registered_stages()["llm"], seed=0)
  assert config["LlmStageOptions.count_targets"] == 0.5
  assert config["LlmStageOptions.count_targets_top"] == 3


def _tiny_run(tmp_path, targets, *bindings):
  gin_config.parse_gin(["quickstart.gin", "llm/quickstart.gin"],
                       [f"RUN_DIR = '{tmp_path}'", *TINY, "curate.popular_next_downweight = 0.5",
                        *bindings])
  run_dir = rundir.RunDir(tmp_path)
  stages.run_stages(targets, run_dir, seed=0)
  return run_dir, transitions_stage.load_transitions(run_dir.complete_path("transitions"))


def test_held_out_examples_never_feed_the_count_targets(tmp_path, clean_gin):
  _, transitions = _tiny_run(tmp_path, ["transitions"])
  options = llm_stage.LlmStageOptions(validation_fraction=0.2, count_targets=0.5,
                                      count_targets_top=3)
  train, held_out, record = llm_stage.fine_tuning_pairs(transitions, options)
  fit, validation = blend.validation_split(transitions, 0.2)
  assert train.count.sum() == len(fit) and held_out.count.sum() == len(validation)
  assert record["pairs_added"] == int(np.sum(train.count == 0)) > 0
  assert record["weight_share"] == pytest.approx(0.5 / 1.5)  # every tuple's last cluster is seen
  # Other next clusters after the cut change the held-out pairs, never the fine-tuning ones.
  next_cluster = transitions.next_cluster.copy()
  next_cluster[validation] = (next_cluster[validation] + 1) % transitions.num_clusters
  changed = llm_stage.fine_tuning_pairs(
      dataclasses.replace(transitions, next_cluster=next_cluster), options)
  assert rows_of(changed[0]) == rows_of(train)
  np.testing.assert_array_equal(changed[0].weight, train.weight)
  assert rows_of(changed[1]) != rows_of(held_out)
  # Counts from every train example (the held-out ones too) would give other targets.
  curated, _, _ = llm_stage.fine_tuning_pairs(transitions,
                                              dataclasses.replace(options, count_targets=0.0))
  leaked = count_targets.add_count_targets(curated, transitions.tuple_counts(TRAIN),
                                           transitions.num_clusters, 0.5, 3)
  assert rows_of(leaked) != rows_of(train) or not np.allclose(leaked.weight, train.weight)


def test_stage_fine_tunes_on_the_count_targets(tmp_path, clean_gin):
  run_dir, transitions = _tiny_run(tmp_path, ["llm"], "LlmStageOptions.count_targets = 0.5",
                                   "LlmStageOptions.count_targets_top = 3")
  path = run_dir.complete_path("llm")
  metrics = json.loads((path / llm_stage.METRICS).read_text())
  train, _, record = llm_stage.fine_tuning_pairs(transitions, llm_stage.LlmStageOptions())
  assert metrics["count_targets"] == record and record["pairs_added"] > 0
  assert {"weight": 0.5, "top": 3}.items() <= record.items()
  # Without a held-out split the distilled pairs come from every train example ...
  source = path / llm_stage.FIT_TASK_SOURCE
  written = read_task_source(source / "train.tsv")
  np.testing.assert_array_equal(written["history_ids"], train.history)
  np.testing.assert_array_equal(written["next_id"], train.next_cluster)
  np.testing.assert_array_equal(written["count"], train.count)
  np.testing.assert_allclose(written["weight"], train.weight, rtol=1e-5)
  assert written["count"].sum() == len(transitions.indices(TRAIN))
  # ... and the test split beside them is the transitions stage's.
  stage_source = run_dir.complete_path("transitions") / transitions_stage.TASK_SOURCE
  assert (source / "test.tsv").read_text() == (stage_source / "test.tsv").read_text()
