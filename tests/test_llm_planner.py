"""The `llm` stage's trained planner reopened from its folder, without retraining."""

import json
import shutil

import gin
import numpy as np
import pytest

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages
from explore.eval import planners as planners_lib
from explore.llm import planner as planner_lib
from explore.llm import stage as llm_stage
from explore.transitions import stage as transitions_stage

stages.load_builtin_stages()

TINY = [
    "SyntheticConfig.num_users = 300", "SyntheticConfig.num_items = 2000",
    "SyntheticConfig.branching = (4, 4, 2)", "NUM_CLUSTERS = 32",
    "build_cluster_tree.levels = (4, 32)", "co_engagement_embeddings.dim = 16",
    "TrainerConfig.train_steps = 20", "TrainerConfig.batch_size = 16",
    "TrainerConfig.checkpoint_every = 20", "TrainerConfig.log_every = 10",
    "novel_interest_arrays.max_length = 64", "LlmStageOptions.max_eval_examples = 40",
    "make_optimizer.warmup_steps = 5",
]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """(llm stage folder, {history bytes: in-stage scores}) of a tiny trained run."""
  run_dir = tmp_path_factory.mktemp("run")
  gin.clear_config()
  gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{run_dir}'", *TINY])
  seen = {}
  original = planner_lib.LlmPlanner.scores

  def recording(self, history):
    out = original(self, history)
    seen[np.asarray(history).tobytes()] = (np.array(history), out)
    return out

  planner_lib.LlmPlanner.scores = recording
  try:
    stages.run_stages(["llm"], rundir.RunDir(run_dir), seed=0)
  finally:
    planner_lib.LlmPlanner.scores = original
    gin.clear_config()
  return rundir.RunDir(run_dir).complete_path("llm"), list(seen.values())


def test_reopened_planner_scores_equal_the_in_stage_scores(trained):
  path, recorded = trained
  assert recorded  # the stage scores its validation (blend tuning) and test examples
  planner = llm_stage.load_planner(path)
  for history, in_stage in recorded:
    np.testing.assert_allclose(planner.scores(history), in_stage, rtol=1e-6, atol=1e-6)
  assert planner.num_clusters == in_stage.shape[1] == 32
  assert planner.k == 2 and planner.name == "llm"
  assert len(planner.checkpoint_fingerprint) == 16


def test_planner_wears_the_baselines_face(trained):
  """scores(history [b, K]) -> [b, M]; the same rows score the same, in any batch."""
  planner = llm_stage.load_planner(trained[0])
  history = np.array([[0, 1], [3, 2], [0, 1]])
  scores = planner.scores(history)
  assert scores.shape == (3, 32) and np.isfinite(scores).all()
  np.testing.assert_allclose(scores[0], scores[2])
  np.testing.assert_allclose(planner.scores(history[1:2])[0], scores[1], rtol=1e-5, atol=1e-5)
  assert hasattr(planners_lib.Planner, "scores")


def test_planner_exposes_what_decoding_needs(trained):
  planner = llm_stage.load_planner(trained[0])
  prompts, lengths = planner.prompt_ids(np.array([[0, 1], [5, 4]]))
  assert prompts.shape[0] == 2 and lengths.max() == prompts.shape[1]
  eos = planner.tokenizer.eos_id
  assert all(prompts[i, lengths[i] - 1] == eos for i in range(2))
  paths = planner.description_ids()
  assert len(paths) == 32 and all(p[-1] == eos for p in paths)
  assert planner.bos_id == 0


def test_bad_history_is_named(trained):
  planner = llm_stage.load_planner(trained[0])
  with pytest.raises(planner_lib.LlmPlannerError, match=r"history must be \[b, 2\]"):
    planner.scores(np.array([1, 2]))
  with pytest.raises(planner_lib.LlmPlannerError, match=r"outside \[0, 32\)"):
    planner.scores(np.array([[1, 32]]))


def _copy(path, tmp_path):
  copy = tmp_path / "llm"
  shutil.copytree(path, copy)
  return copy


def test_missing_checkpoint_is_a_clear_error(trained, tmp_path):
  copy = _copy(trained[0], tmp_path)
  for checkpoint in (copy / "model").glob("checkpoint_*"):
    shutil.rmtree(checkpoint)
  with pytest.raises(planner_lib.LlmPlannerError, match="no checkpoint_<step> folder"):
    llm_stage.load_planner(copy)


def test_corrupt_checkpoint_is_a_clear_error(trained, tmp_path):
  copy = _copy(trained[0], tmp_path)
  checkpoint = sorted((copy / "model").glob("checkpoint_*"))[-1]
  for f in (checkpoint / "params").rglob("*"):
    if f.is_file():
      f.write_bytes(b"not a checkpoint")
  with pytest.raises(planner_lib.LlmPlannerError, match="cannot restore the trained decoder"):
    llm_stage.load_planner(copy)


def test_missing_or_foreign_spec_is_a_clear_error(trained, tmp_path):
  copy = _copy(trained[0], tmp_path)
  spec = json.loads((copy / "planner.json").read_text())
  (copy / "planner.json").write_text(json.dumps({**spec, "format_version": 99}))
  with pytest.raises(planner_lib.LlmPlannerError, match="format_version 99"):
    llm_stage.load_planner(copy)
  (copy / "planner.json").unlink()
  with pytest.raises(planner_lib.LlmPlannerError, match="planner.json: file not found"):
    llm_stage.load_planner(copy)


def test_eval_examples_are_saved_for_later_stages(trained):
  examples, rare_max = llm_stage.load_eval_examples(trained[0])
  metrics = llm_stage.load_metrics(trained[0])
  assert len(examples) == metrics["evaluated_examples"] == 40 and rare_max == 4
  # The LLM's exact scores of those examples are kept, equal to the reopened planner's.
  kept = llm_stage.load_eval_scores(trained[0])
  planner = llm_stage.load_planner(trained[0])
  transitions = transitions_stage.load_transitions(trained[0].parent / "transitions")
  assert kept.shape == (40, planner.num_clusters)
  np.testing.assert_allclose(kept, planner.scores(transitions.history[examples]), atol=1e-4)
