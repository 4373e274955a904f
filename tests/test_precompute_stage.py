"""The `precompute` stage on a tiny trained run: a complete table, resume after a kill."""

import shutil

import gin
import numpy as np
import pytest

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages
from explore.llm import stage as llm_stage
from explore.precompute import stage as precompute_stage
from explore.precompute.table import distinct_tuples, tuple_index

stages.load_builtin_stages()

TINY = [
    "SyntheticConfig.num_users = 300", "SyntheticConfig.num_items = 2000",
    "SyntheticConfig.branching = (4, 4, 2)", "NUM_CLUSTERS = 32",
    "build_cluster_tree.levels = (4, 32)", "co_engagement_embeddings.dim = 16",
    "TrainerConfig.train_steps = 20", "TrainerConfig.batch_size = 16",
    "TrainerConfig.checkpoint_every = 20", "TrainerConfig.log_every = 10",
    "novel_interest_arrays.max_length = 64", "LlmStageOptions.max_eval_examples = 40",
    "make_optimizer.warmup_steps = 5",
    "PrecomputeOptions.tuples_per_shard = 100", "PrecomputeOptions.top_n = 30",
    "PrecomputeOptions.agreement_sample = 50",
]


def _parse(run_dir, *bindings):
  gin.clear_config()
  gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{run_dir}'", *TINY, *bindings])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A run directory whose llm stage (and everything before it) is complete."""
  run_dir = tmp_path_factory.mktemp("trained")
  _parse(run_dir)
  stages.run_stages(["llm"], rundir.RunDir(run_dir), seed=0)
  gin.clear_config()
  return run_dir


def _run(trained, tmp_path, name, *bindings):
  run_dir = tmp_path / name
  shutil.copytree(trained, run_dir)
  _parse(run_dir, *bindings)
  try:
    stages.run_stages(["precompute"], rundir.RunDir(run_dir), seed=0)
  finally:
    gin.clear_config()
  return rundir.RunDir(run_dir)


EXACT = "PrecomputeOptions.generator = 'exact'"


def test_table_covers_every_tuple_with_novel_clusters(trained, tmp_path):
  run = _run(trained, tmp_path, "run", EXACT)
  path = run.complete_path("precompute")
  table = precompute_stage.load_table(path)
  tuples = distinct_tuples(32, 2)
  assert table.num_clusters == 32 and table.k == 2 and table.top_n == 30
  clusters, scores = table.lookup(tuples)
  assert (clusters >= 0).all() and np.isfinite(scores).all()
  assert not np.any(clusters[:, :, None] == tuples[:, None, :])
  assert (np.diff(scores, axis=1) <= 0).all()
  repeats = np.array([[3, 3]])
  assert (table.clusters[tuple_index(repeats, 32)] == -1).all()
  planner = llm_stage.load_planner(run.complete_path("llm"))
  assert table.fingerprints["checkpoint"] == planner.checkpoint_fingerprint
  assert set(table.fingerprints) == {"checkpoint", "cluster_assignment", "cluster_descriptions"}
  assert not (path / "shards").exists()

  metrics = precompute_stage.load_metrics(path)
  assert metrics["validity"]["fraction_valid"] == 1.0
  assert metrics["validity"]["fraction_history"] == 0.0
  assert metrics["validity"]["tuples"] == 992 == metrics["tuples"]
  assert metrics["agreement"]["top1_agreement"] == 1.0  # the exact generator is the reference
  assert metrics["evaluated_examples"] == 40
  assert set(metrics["planners"]) == {"table", "exact"}
  # n = M - K: each row holds the exact ranking whole, so every hit rate is the exact one's.
  assert metrics["planners"]["table"] == metrics["planners"]["exact"]
  assert metrics["hit@5_table_minus_exact"] == 0.0
  assert metrics["shards"] == 10 and metrics["shards_planned"] == 10
  # The evaluated test tuples' exact scores come from the llm stage; only the sample is scored.
  examples, _ = llm_stage.load_eval_examples(run.complete_path("llm"))
  history = np.unique(np.asarray(_test_history(run, examples)), axis=0)
  assert metrics["exact_tuples_scored"] == metrics["agreement"]["tuples"] - len(history)


def _test_history(run, examples):
  from explore.transitions import stage as transitions_stage  # pylint: disable=g-import-not-at-top
  return transitions_stage.load_transitions(run.complete_path("transitions")).history[examples]


class _CountingPlanner:
  num_clusters = 4

  def __init__(self):
    self.rows = 0

  def scores(self, history):
    self.rows += len(history)
    return np.asarray(history, np.float32).sum(1, keepdims=True) + np.arange(4, dtype=np.float32)


def test_exact_scores_reads_the_llm_stages_scores_and_scores_only_the_rest():
  history = np.array([[0, 1], [2, 3], [0, 1]])
  kept = np.array([[9, 9, 9, 9], [8, 8, 8, 8], [9, 9, 9, 9]], np.float32)
  union = np.array([[0, 1], [1, 2], [2, 3], [3, 0]])
  planner = _CountingPlanner()
  exact, scored = precompute_stage.exact_scores(planner, union, history, kept)
  assert scored == planner.rows == 2
  np.testing.assert_array_equal(exact[[0, 2]], kept[[0, 1]])
  np.testing.assert_array_equal(exact[[1, 3]], _CountingPlanner().scores(union[[1, 3]]))
  exact, scored = precompute_stage.exact_scores(planner, union, history, None)
  assert scored == 4 and planner.rows == 6
  np.testing.assert_array_equal(exact, _CountingPlanner().scores(union))


class _Killed(Exception):
  pass


def test_interrupted_run_resumes_to_the_same_table(trained, tmp_path, monkeypatch):
  whole = precompute_stage.load_table(
      _run(trained, tmp_path, "whole", EXACT).complete_path("precompute"), mmap=False)
  real = precompute_stage.make_generator

  def dying(planner, options):
    generate, calls = real(planner, options), []

    def counted(history):
      calls.append(len(history))
      if len(calls) == 4:
        raise _Killed("killed mid-way")
      return generate(history)

    return counted

  monkeypatch.setattr(precompute_stage, "make_generator", dying)
  with pytest.raises(_Killed):
    _run(trained, tmp_path, "resumed", EXACT)
  run = rundir.RunDir(tmp_path / "resumed")
  assert run.state("precompute") == "partial"
  partial = run.partial_path("precompute")
  assert len(list((partial / "shards").glob("shard_*.npz"))) == 3

  monkeypatch.setattr(precompute_stage, "make_generator", real)
  _parse(run.root, EXACT)
  stages.run_stages(["precompute"], run, seed=0)
  gin.clear_config()
  path = run.complete_path("precompute")
  metrics = precompute_stage.load_metrics(path)
  assert metrics["shards_found_on_start"] == 3 and metrics["shards_planned"] == 7
  table = precompute_stage.load_table(path, mmap=False)
  np.testing.assert_array_equal(table.clusters, whole.clusters)
  np.testing.assert_array_equal(table.scores, whole.scores)
  assert table.fingerprints == whole.fingerprints


def test_bad_options_are_named():
  with pytest.raises(precompute_stage.PrecomputeError, match="num_beams=4 must be >= top_n=10"):
    precompute_stage.PrecomputeOptions(num_beams=4)
  with pytest.raises(precompute_stage.PrecomputeError, match="generator='greedy'"):
    precompute_stage.PrecomputeOptions(generator="greedy")


def test_beam_table_holds_real_novel_clusters_scored_as_the_exact_scorer(trained, tmp_path):
  run = _run(trained, tmp_path, "beam", "PrecomputeOptions.generator = 'beam'",
             "PrecomputeOptions.top_n = 5", "PrecomputeOptions.num_beams = 8")
  path = run.complete_path("precompute")
  metrics = precompute_stage.load_metrics(path)
  assert metrics["generator"] == "beam"
  assert metrics["validity"]["fraction_valid"] == 1.0
  assert metrics["validity"]["fraction_history"] == 0.0
  assert metrics["validity"]["tuples_with_repeated_cluster"] == 0
  assert metrics["agreement"]["top1_agreement"] >= 0.95
  table = precompute_stage.load_table(path)
  tuples = distinct_tuples(32, 2)[::97]  # [11, 2]
  clusters, scores = table.lookup(tuples)
  exact = llm_stage.load_planner(run.complete_path("llm")).scores(tuples)  # [11, 32]
  np.testing.assert_allclose(scores, np.take_along_axis(exact, clusters, axis=1), atol=2e-4)
