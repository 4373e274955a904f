"""Candidate scoring by the decoder and the `llm` stage end to end on a tiny synthetic run."""

import json

import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages
from explore.llm import scoring
from explore.llm import stage as llm_stage
from explore.llm.decoder import build_decoder
from explore.llm.decoder_config import DecoderConfig

stages.load_builtin_stages()


pytestmark = pytest.mark.usefixtures("clean_gin")


PROMPTS = [[5, 6, 7, 1], [8, 1], [9, 9, 9, 9, 9, 1]]
CANDIDATES = [[3, 4, 1], [5, 1], [10, 11, 12, 13, 1]]


def direct_log_likelihoods(model, prompts, candidates, bos_id=0):
  """[n, M] log P(candidate | prompt) from full teacher-forced passes, one row per pair."""
  pairs = [(p, c) for p in prompts for c in candidates]
  length = max(len(p) + len(c) for p, c in pairs)
  inputs = np.zeros((len(pairs), length), np.int32)  # right padding: causal rows unaffected
  for row, (p, c) in enumerate(pairs):
    inputs[row, :len(p) + len(c)] = [bos_id] + (p + c)[:-1]
  logp = np.asarray(jax.nn.log_softmax(model(jnp.asarray(inputs))))  # [pairs, L, V]
  out = [sum(logp[row, len(p) + j, t] for j, t in enumerate(c))
         for row, (p, c) in enumerate(pairs)]
  return np.asarray(out).reshape(len(prompts), len(candidates))


def test_scores_equal_per_candidate_log_likelihood():
  model = build_decoder(DecoderConfig(vocab_size=20), seed=0)
  scores = scoring.score_prompts(model, PROMPTS, CANDIDATES, prompts_per_chunk=2)
  expected = direct_log_likelihoods(model, PROMPTS, CANDIDATES)
  np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)


def test_scores_start_from_the_given_bos_id():
  model = build_decoder(DecoderConfig(vocab_size=20), seed=0)
  scores = scoring.score_prompts(model, PROMPTS, CANDIDATES, bos_id=7)
  np.testing.assert_allclose(scores, direct_log_likelihoods(model, PROMPTS, CANDIDATES, 7),
                             rtol=1e-5, atol=1e-4)
  assert not np.allclose(scores, scoring.score_prompts(model, PROMPTS, CANDIDATES), atol=1e-3)


def test_length_normalized_scores_are_per_token_means():
  model = build_decoder(DecoderConfig(vocab_size=20), seed=1)
  total = scoring.score_prompts(model, PROMPTS, CANDIDATES)
  mean = scoring.score_prompts(model, PROMPTS, CANDIDATES, length_normalize=True)
  np.testing.assert_allclose(mean, total / np.array([3, 2, 5]), rtol=1e-5)


def test_planted_answer_ranks_first():
  """A model trained on prompt i -> candidate planted[i] ranks that candidate first."""
  import optax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from explore.llm import decoder_task, features  # pylint: disable=g-import-not-at-top
  planted = [2, 0, 1]
  batch = {k: jnp.asarray(v) for k, v in features.prefix_lm_examples(
      PROMPTS, [CANDIDATES[c] for c in planted], 16, pack=False).items()}
  task = decoder_task.DecoderTask(config=DecoderConfig(vocab_size=20), packed=False)
  model = build_decoder(task.config, seed=0)
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer):
    grads = nnx.grad(lambda m: task.loss(m, batch, True)[0])(model)
    optimizer.update(model, grads)

  for _ in range(40):
    step(model, optimizer)
  scores = scoring.score_prompts(model, PROMPTS, CANDIDATES)
  np.testing.assert_array_equal(np.argmax(scores, axis=1), planted)


def test_bad_candidates_are_named():
  model = build_decoder(DecoderConfig(vocab_size=20), seed=0)
  with pytest.raises(scoring.ScoringError, match="candidates: entry 1 has no tokens"):
    scoring.score_prompts(model, PROMPTS, [[3, 1], []])
  with pytest.raises(scoring.ScoringError, match="candidates must be"):
    scoring.CandidateScorer(model, np.zeros((3, 4), np.int32), np.ones(2, np.int32))


TINY = [
    "SyntheticConfig.num_users = 300", "SyntheticConfig.num_items = 2000",
    "SyntheticConfig.branching = (4, 4, 4)", "NUM_CLUSTERS = 64",
    "build_cluster_tree.levels = (4, 16, 64)", "co_engagement_embeddings.dim = 16",
    "TrainerConfig.train_steps = 30", "TrainerConfig.batch_size = 16",
    "TrainerConfig.checkpoint_every = 30", "TrainerConfig.log_every = 10",
    "novel_interest_arrays.max_length = 64", "LlmStageOptions.max_eval_examples = 60",
    "make_optimizer.warmup_steps = 5",
]


def _run_tiny_llm(tmp_path, *bindings):
  """(run dir, llm stage folder, its metrics) of the tiny quickstart run with `bindings`."""
  gin_config.parse_gin(["quickstart.gin", "llm/quickstart.gin"],
                       [f"RUN_DIR = '{tmp_path}'", *TINY, *bindings])
  run_dir = rundir.RunDir(tmp_path)
  stages.run_stages(["llm"], run_dir, seed=0)
  path = run_dir.complete_path("llm")
  return run_dir, path, json.loads((path / llm_stage.METRICS).read_text())


def test_stage_writes_metrics_for_every_planner(tmp_path):
  _, path, metrics = _run_tiny_llm(tmp_path)
  assert set(metrics["planners"]) == {"llm", "random_novel", "popular_novel", "transition",
                                      "last_cluster", "blend"}
  assert str(metrics["blend"]["weight"]) in metrics["blend"]["validation_hit@5"]  # JSON keys
  comparison = metrics["llm_minus_best_count"]
  assert comparison["best_count_planner"] in ("transition", "last_cluster")
  assert comparison["all"]["low"] <= comparison["all"]["difference"] <= comparison["all"]["high"]
  assert comparison["all"]["examples"] == 60
  assert metrics["evaluated_examples"] == 60 == metrics["examples"]["all"]
  assert sum(metrics["examples"][b] for b in ("unseen", "rare", "frequent")) == 60
  for name, by_bucket in metrics["planners"].items():
    hits = [by_bucket["all"][f"hit@{k}"] for k in (1, 5, 10)]
    assert 0 <= hits[0] <= hits[1] <= hits[2] <= 1, name
  assert metrics["train_loss_last"] < metrics["train_loss_first"]
  assert metrics["train_steps"] == 30
  assert (path / "tokenizer" / "spm.model").exists()
  assert any(p.name.startswith("checkpoint_") for p in (path / "model").iterdir())
  assert metrics["vocab_size"] == llm_stage.load_tokenizer(path).vocab_size


def test_stage_holds_a_validation_split_out_of_fine_tuning(tmp_path):
  from explore.eval import blend  # pylint: disable=g-import-not-at-top
  from explore.llm import features  # pylint: disable=g-import-not-at-top
  from explore.transitions import stage as transitions_stage  # pylint: disable=g-import-not-at-top
  from explore.transitions.examples import TRAIN  # pylint: disable=g-import-not-at-top
  from explore.transitions.task_source import read_task_source  # pylint: disable=g-import-not-at-top
  run_dir, path, metrics = _run_tiny_llm(tmp_path, "LlmStageOptions.validation_fraction = 0.2",
                                         "novel_interest_arrays.suffix_copies = 0.5")
  transitions = transitions_stage.load_transitions(run_dir.complete_path("transitions"))
  fit, _ = blend.validation_split(transitions, 0.2)
  held_out = len(transitions.indices(TRAIN)) - len(fit)
  source = path / llm_stage.FIT_TASK_SOURCE
  # Fine-tuned on the pairs before the cut only: their counts add up to the fit examples.
  assert read_task_source(source / "train.tsv")["count"].sum() == len(fit) == \
      metrics["blend"]["fit_examples"]
  assert read_task_source(source / "test.tsv")["count"].sum() == held_out > 0
  # The stage gives the prompts' descriptions to the bound suffix copies, which add rows.
  descriptions = llm_stage.load_planner(path).descriptions
  tokenizer = llm_stage.load_tokenizer(path)
  rows = features.novel_interest_arrays(source / "train.tsv", tokenizer, descriptions=descriptions)
  assert metrics["train_rows"] == len(rows["decoder_target_tokens"])
  without = features.novel_interest_arrays(source / "train.tsv", tokenizer, suffix_copies=0.0)
  assert len(without["decoder_target_tokens"]) < metrics["train_rows"]
  validation = metrics["validation"]
  assert validation["examples"]["all"] == min(held_out, 60) == metrics["blend"]["validation_examples"]
  assert set(validation["planners"]) == set(metrics["planners"])
  comparison = validation["llm_minus_best_count"]
  assert comparison["all"]["examples"] == validation["examples"]["all"]
  # The validation tuples are bucketed by their counts before the cut: some are unseen there.
  assert validation["examples"]["unseen"] > 0


def test_validation_fraction_must_be_below_one():
  with pytest.raises(llm_stage.LlmStageError, match="validation_fraction=1.0"):
    llm_stage.LlmStageOptions(validation_fraction=1.0)


def test_stage_chooses_the_round_on_validation_and_pins_its_checkpoint(tmp_path):
  from explore.llm import planner as planner_lib  # pylint: disable=g-import-not-at-top
  from explore.llm import selection  # pylint: disable=g-import-not-at-top
  from explore.transitions import stage as transitions_stage  # pylint: disable=g-import-not-at-top
  run_dir, path, metrics = _run_tiny_llm(tmp_path, "LlmStageOptions.validation_fraction = 0.2",
                                         "LlmStageOptions.select_every = 10",
                                         "TrainerConfig.keep_checkpoints = 1")
  rounds = metrics["selection"]["rounds"]
  assert [r["step"] for r in rounds] == [10, 20, 30]
  assert len((path / selection.SELECTION_LOG).read_text().splitlines()) == 3
  hits = [r["validation"]["all"]["hit@5"] for r in rounds]
  chosen = metrics["selection"]["chosen_step"]
  assert chosen == rounds[hits.index(max(hits))]["step"]
  # Every round's checkpoint is kept (keep_checkpoints raised from 1 to the rounds' 3).
  assert {p.name for p in (path / "model").glob("checkpoint_*")} == {
      "checkpoint_10", "checkpoint_20", "checkpoint_30"}
  # The validation report and the test scores come from the chosen round's model ...
  assert metrics["validation"]["planners"]["llm"]["all"] == rounds[hits.index(max(hits))][
      "validation"]["all"]
  spec = json.loads((path / planner_lib.PLANNER_FILE).read_text())
  assert spec["step"] == chosen
  # ... and the reopened planner is that checkpoint, whichever step is pinned.
  examples, _ = llm_stage.load_eval_examples(path)
  history = transitions_stage.load_transitions(
      run_dir.complete_path("transitions")).history[examples[:8]]
  np.testing.assert_allclose(llm_stage.load_planner(path).scores(history),
                             llm_stage.load_eval_scores(path)[:8], rtol=1e-5, atol=1e-5)
  fingerprints = set()
  for step in (10, 30):
    spec["step"] = step
    (path / planner_lib.PLANNER_FILE).write_text(json.dumps(spec))
    fingerprints.add(llm_stage.load_planner(path).checkpoint_fingerprint)
  assert len(fingerprints) == 2
  spec["step"] = 99
  (path / planner_lib.PLANNER_FILE).write_text(json.dumps(spec))
  with pytest.raises(planner_lib.LlmPlannerError, match="checkpoint_99 is missing"):
    llm_stage.load_planner(path)


@pytest.mark.parametrize("bindings, message", [
    ({"select_every": 10}, "set LlmStageOptions.validation_fraction > 0"),
    ({"select_every": 0, "validation_fraction": 0.1}, "select_every=0 must be an integer"),
    ({"select_every": 10, "validation_fraction": 0.1, "select_metric": "mrr"},
     "select_metric='mrr' is not one of"),
    ({"select_every": 10, "validation_fraction": 0.1, "select_bucket": "new"},
     "select_bucket='new' is not one of"),
])
def test_bad_selection_options_are_named(bindings, message):
  with pytest.raises(llm_stage.LlmStageError, match=message):
    llm_stage.LlmStageOptions(**bindings)
