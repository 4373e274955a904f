"""Training with validation-based selection (`fit`) and the `seqrec` stage."""

import dataclasses
import json
from pathlib import Path

import gin
import jax
import numpy as np
import pytest

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning
from explore import rundir
from explore import stages
from explore.data import stage as data_stage
from explore.data.schema import Interactions
from explore.seqrec import data as data_lib
from explore.seqrec import evaluation
from explore.seqrec import stage as seqrec_stage
from explore.seqrec import training as training_lib
from explore.seqrec.model import SeqRecConfig
from explore.seqrec.task import SoftmaxConfig

stages.load_builtin_stages()


@pytest.fixture(autouse=True)
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def cyclic_split(num_users=64, num_items=40, length=12, seed=0):
  """Users walk the catalog in steps of +1 from a random start: a learnable sequence rule."""
  rng = np.random.default_rng(seed)
  start = rng.integers(0, num_items, size=num_users)
  item = (start[:, None] + np.arange(length)[None, :]) % num_items  # [users, length]
  user = np.repeat(np.arange(num_users), length)
  log = Interactions.from_columns(user, item.reshape(-1), np.tile(np.arange(length), num_users),
                                  np.ones(user.size), np.ones(user.size, bool),
                                  user_ids=np.arange(num_users), item_ids=np.arange(num_items))
  return data_lib.leave_last_out(data_lib.user_sequences(log))


CONFIG = SeqRecConfig(num_items=40, max_len=8, embed_dim=16, num_blocks=1, dropout=0.0,
                      item_rows_multiple=8)
TRAINING = training_lib.SeqRecTraining(train_epochs=6, eval_every_epochs=3, batch_size=16,
                                       learning_rate=0.01, warmup_steps=0, log_every=5)


def one_device_mesh():
  return partitioning.create_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])


def test_fit_beats_most_popular_keeps_the_best_round_and_resumes(tmp_path):
  split = cyclic_split()

  def crash(record):
    raise KeyboardInterrupt("simulated crash after the first round")

  with pytest.raises(KeyboardInterrupt):
    training_lib.fit(split, CONFIG, tmp_path, one_device_mesh(), TRAINING, on_round=crash)
  assert len((tmp_path / "validation.jsonl").read_text().splitlines()) == 1
  result = training_lib.fit(split, CONFIG, tmp_path, one_device_mesh(), TRAINING)
  # The second run trained only the second round, from the first round's checkpoint.
  assert [r["epoch"] for r in result.rounds] == [3, 6]
  steps = [r["step"] for r in result.train_history]  # the whole run's, each step once
  assert steps == sorted(set(steps)) and steps[0] <= result.rounds[0]["step"] < steps[-1]
  assert result.best["val"]["hr@10"] > 0.8
  assert result.best["val"]["hr@10"] > result.baseline["val"]["hr@10"] + 0.3
  assert result.best["test"]["ndcg@10"] > result.baseline["test"]["ndcg@10"] + 0.3
  assert result.rounds[-1]["train_loss"] < result.rounds[0]["train_loss"]
  best_step = result.best["step"]
  assert (tmp_path / "best_checkpoint" / f"checkpoint_{best_step}").is_dir()
  assert result.vectors.item_vectors.shape == (40, 16)
  assert result.vectors.user_vectors.shape == (64, 16)
  assert result.vectors.meta["step"] == best_step
  assert result.seconds_per_epoch > 0
  assert_unmasked_metrics_rank_the_best_checkpoint(result, split, tmp_path)
  again = training_lib.fit(split, CONFIG, tmp_path, one_device_mesh(), TRAINING)
  assert again.train_history == [] and again.best == result.best


def assert_unmasked_metrics_rank_the_best_checkpoint(result, split, work_dir):
  """The "val_unmasked" / "test_unmasked" metrics rank the best checkpoint, history kept."""
  model = training_lib.restore_best_model(CONFIG, work_dir, result.best["step"])
  scorer = evaluation.model_scorer(model)
  for name in ("val", "test"):
    examples = data_lib.ranking_examples(split, name, CONFIG.max_len)
    assert result.best[f"{name}_unmasked"] == evaluation.evaluate(scorer, examples, 40,
                                                                  mask_history=False)
    for who in (result.best, result.baseline):  # masking only removes competitors
      assert who[f"{name}_unmasked"]["hr@10"] <= who[name]["hr@10"]
  # The most popular items are in most histories: left in, they push the targets down.
  assert result.baseline["val_unmasked"]["hr@10"] < result.baseline["val"]["hr@10"]


def test_mask_history_false_selects_and_reports_with_the_history_kept(tmp_path):
  # Untrained (lr 1e-9): the scores are random, so the ~10 history items of each user do
  # push some targets down, and a masked validation would differ.
  training = dataclasses.replace(TRAINING, train_epochs=2, eval_every_epochs=1,
                                 learning_rate=1e-9, mask_history=False)
  split = cyclic_split()
  result = training_lib.fit(split, CONFIG, tmp_path, one_device_mesh(), training)
  model = training_lib.restore_best_model(CONFIG, tmp_path, result.best["step"])
  val = data_lib.ranking_examples(split, "val", CONFIG.max_len)
  scorer = evaluation.model_scorer(model)
  unmasked = evaluation.evaluate(scorer, val, 40, mask_history=False)
  assert [r["val"] for r in result.rounds if r["step"] == result.best["step"]] == [unmasked]
  assert unmasked != evaluation.evaluate(scorer, val, 40)  # the rounds did not mask
  for who in (result.best, result.baseline):
    assert who["val_unmasked"] == who["val"] and who["test_unmasked"] == who["test"]


def test_fit_stops_early_when_validation_stalls(tmp_path):
  training = training_lib.SeqRecTraining(train_epochs=4, eval_every_epochs=1, patience=1,
                                         batch_size=16, learning_rate=1e-9, warmup_steps=0)
  result = training_lib.fit(cyclic_split(), CONFIG, tmp_path, one_device_mesh(), training)
  assert result.stopped_reason == "early_stopped" and len(result.rounds) == 2


def test_parameter_average_is_what_validation_chooses_and_test_ranks(tmp_path):
  training = dataclasses.replace(TRAINING, param_average_decay=0.9, window_stride=4)
  split = cyclic_split()
  result = training_lib.fit(split, CONFIG, tmp_path, one_device_mesh(), training)
  best = training_lib.restore_best_model(CONFIG, tmp_path, result.best["step"])
  val = data_lib.ranking_examples(split, "val", CONFIG.max_len)
  # The best checkpoint holds the average: it scores the logged validation numbers.
  assert evaluation.evaluate(evaluation.model_scorer(best), val, 40) == result.best["val"]
  assert result.best["test"]["hr@10"] > result.baseline["test"]["hr@10"] + 0.3
  plain = dataclasses.replace(training, param_average_decay=None)
  without = training_lib.fit(split, CONFIG, tmp_path / "plain", one_device_mesh(), plain)
  assert [r["train_loss"] for r in without.rounds] == [r["train_loss"] for r in result.rounds]
  weights = training_lib.restore_best_model(CONFIG, tmp_path / "plain", without.best["step"])
  assert not np.allclose(np.asarray(best.items.table[...]),
                         np.asarray(weights.items.table[...]))


@pytest.mark.parametrize("decay", [0.0, 1.0, -0.5, "0.9"])
def test_bad_parameter_average_decay_is_named(decay):
  with pytest.raises(training_lib.SeqRecTrainingError, match="param_average_decay"):
    training_lib.SeqRecTraining(param_average_decay=decay)


def test_catalog_size_mismatch_is_named(tmp_path):
  config = SeqRecConfig(num_items=41, max_len=8, embed_dim=16)
  with pytest.raises(training_lib.SeqRecTrainingError, match="num_items=41"):
    training_lib.fit(cyclic_split(), config, tmp_path, one_device_mesh(), TRAINING)


def test_bad_selection_metric_is_named():
  with pytest.raises(training_lib.SeqRecTrainingError, match="'map@10'"):
    training_lib.SeqRecTraining(selection_metric="map@10")


def with_test_items_replaced(split, seed=1):
  """The same split with every evaluated user's test item replaced by a random item."""
  seq = split.sequences
  tokens = seq.tokens.copy()
  last = seq.offsets[split.eval_users + 1] - 1  # [E] position of each test item
  rng = np.random.default_rng(seed)
  tokens[last] = rng.integers(1, seq.num_items + 1, size=len(last))
  sequences = data_lib.UserSequences(offsets=seq.offsets, tokens=tokens, num_items=seq.num_items)
  return data_lib.LeaveLastOutSplit(sequences=sequences, train_length=split.train_length,
                                    eval_users=split.eval_users)


def test_test_items_do_not_change_the_selected_epoch(tmp_path):
  training = training_lib.SeqRecTraining(train_epochs=4, eval_every_epochs=1, patience=4,
                                         batch_size=16, learning_rate=0.01, warmup_steps=0,
                                         selection_metric="mrr@10", window_stride=4)
  split = cyclic_split()
  changed = with_test_items_replaced(split)
  first = training_lib.fit(split, CONFIG, tmp_path / "a", one_device_mesh(), training)
  second = training_lib.fit(changed, CONFIG, tmp_path / "b", one_device_mesh(), training)
  assert [r["val"] for r in first.rounds] == [r["val"] for r in second.rounds]
  assert first.best["epoch"] == second.best["epoch"]
  # The test split was read (once, at the end): its numbers are what changed.
  assert first.best["test"] != second.best["test"]
  assert first.best["test"]["hr@10"] > 0.5 > second.best["test"]["hr@10"]
  assert all("test" not in r for r in first.rounds)
  assert first.best["val_unmasked"] == second.best["val_unmasked"]
  assert first.best["test_unmasked"] != second.best["test_unmasked"]


TINY_RUN = [
    "SyntheticConfig.num_users = 120", "SyntheticConfig.num_items = 300",
    "SyntheticConfig.branching = (2, 2, 2)", "SyntheticConfig.events_per_user = (20, 40)",
    "SeqRecConfig.max_len = 10", "SeqRecConfig.embed_dim = 16", "SeqRecConfig.num_blocks = 1",
    "SeqRecTraining.train_epochs = 2", "SeqRecTraining.eval_every_epochs = 1",
    "SeqRecTraining.batch_size = 16", "SoftmaxConfig.kind = 'sampled'",
    "SoftmaxConfig.negatives_per_example = 4", "build_cluster_tree.levels = (4, 16)",
]


def assert_grounding_consistent(metrics, prior=True):
  """Grounding read the best checkpoint: its full-catalog numbers are the model's test numbers."""
  grounding = metrics["grounding"]
  assert grounding["k"] == 10 and grounding["clusters"] == 16 and grounding["level"] == 1
  assert grounding["seconds"] > 0
  assert grounding["all"]["users"] == metrics["evaluated_users"]
  assert 0 < grounding["novel"]["users"] < grounding["all"]["users"]
  for name, value in metrics["model"]["test"].items():
    assert grounding["all"]["model_full_catalog"][name] == pytest.approx(value, abs=1e-6)
  rows = ("model_in_cluster", "most_popular_in_cluster") + (("model_prior_in_cluster",) * prior)
  for part in ("all", "novel"):
    assert set(grounding[part]) == {"users", "model_full_catalog", *rows}
    for who in rows:
      assert 0.0 <= grounding[part][who]["ndcg@10"] <= grounding[part][who]["hr@10"] <= 1.0
  if not prior:
    assert "prior" not in grounding
    return
  prior = grounding["prior"]
  assert prior["tuned_on"] == "val"
  tried = seqrec_stage.SeqRecStageOptions().prior_weights
  assert set(prior["ndcg@10"]) == {str(float(w)) for w in tried}
  assert prior["ndcg@10"][str(prior["weight"])] == max(prior["ndcg@10"].values())
  if prior["weight"] == 0.0:
    assert grounding["all"]["model_prior_in_cluster"] == grounding["all"]["model_in_cluster"]


def assert_vectors_hold_the_tuned_prior(run_dir, metrics):
  """The saved vectors carry log(1 + training count) and the weight tuned on validation."""
  vectors = seqrec_stage.load_vectors(run_dir.complete_path("seqrec"))
  assert vectors.meta["step"] == metrics["best_step"]
  assert vectors.prior_weight == metrics["grounding"]["prior"]["weight"]
  interactions = data_stage.load_interactions(run_dir.complete_path("data"))
  split = data_lib.leave_last_out(data_lib.user_sequences(interactions))
  np.testing.assert_allclose(vectors.item_prior, np.log1p(split.target_counts()[1:]), rtol=1e-6)


def test_stage_writes_metrics_vectors_and_checkpoints(tmp_path):
  gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{tmp_path}'", *TINY_RUN,
                                             "SeqRecStageOptions.cluster_embeddings = False"])
  run_dir = rundir.RunDir(tmp_path)
  done = stages.run_stages(["seqrec"], run_dir, seed=0)
  assert done[-1] == ("seqrec", "run")
  path = run_dir.complete_path("seqrec")
  metrics = json.loads((path / "metrics.json").read_text())
  assert metrics["history_masked"] is True
  for who in ("model", "most_popular"):
    assert set(metrics[who]) == {"val", "test", "val_unmasked", "test_unmasked"}
    for split in metrics[who]:
      assert set(metrics[who][split]) == {"hr@10", "ndcg@10", "mrr@10"}
    for split in ("val", "test"):
      assert metrics[who][f"{split}_unmasked"]["hr@10"] <= metrics[who][split]["hr@10"]
  assert metrics["softmax"] == "sampled" and metrics["seconds_per_epoch"] > 0
  assert 0 < metrics["seconds_to_best_epoch"] <= metrics["seconds_to_stop"]
  assert metrics["cluster_embeddings"] == 0
  assert_grounding_consistent(metrics)
  assert_vectors_hold_the_tuned_prior(run_dir, metrics)
  vectors = seqrec_stage.load_vectors(path)
  assert vectors.item_vectors.shape == (300, 16) and vectors.user_vectors.shape == (120, 16)
  assert (path / "model" / "model-info.txt").exists()
  assert stages.run_stages(["seqrec"], run_dir, seed=0)[-1] == ("seqrec", "skip")


def test_cluster_embeddings_need_the_item_clusters(tmp_path):
  config = SeqRecConfig(num_items=40, max_len=8, embed_dim=16, num_clusters=4)
  with pytest.raises(training_lib.SeqRecTrainingError, match="num_clusters = 4 needs"):
    training_lib.fit(cyclic_split(), config, tmp_path, one_device_mesh(), TRAINING)
  with pytest.raises(training_lib.SeqRecTrainingError, match="outside \\[0, "):
    training_lib.fit(cyclic_split(), config, tmp_path, one_device_mesh(), TRAINING,
                     item_clusters=np.arange(40) % 5)


def test_stage_feeds_the_clusters_stage_assignment_to_cluster_embeddings(tmp_path):
  gin_config.parse_gin(["quickstart.gin"], [
      f"RUN_DIR = '{tmp_path}'", *TINY_RUN, "SeqRecTraining.train_epochs = 1",
      "SeqRecStageOptions.cluster_embeddings = True", "SeqRecStageOptions.prior_weights = ()"])
  run_dir = rundir.RunDir(tmp_path)
  assert stages.run_stages(["seqrec"], run_dir, seed=0)[-1] == ("seqrec", "run")
  path = run_dir.complete_path("seqrec")
  metrics = json.loads((path / "metrics.json").read_text())
  assert metrics["cluster_embeddings"] == 16
  assert "clusters" in (path / "model" / "model-info.txt").read_text()
  assert_grounding_consistent(metrics, prior=False)  # prior_weights = () turns it off
  assert seqrec_stage.load_vectors(path).item_prior is None


def test_cluster_count_comes_from_the_clusters_stage():
  options = seqrec_stage.SeqRecStageOptions(cluster_embeddings=True)
  assert seqrec_stage.model_config(300, 16, options).num_clusters == 16
  assert seqrec_stage.model_config(300, 16, seqrec_stage.SeqRecStageOptions()).num_clusters == 0
  gin.parse_config("SeqRecConfig.num_clusters = 8")
  with pytest.raises(seqrec_stage.SeqRecStageError, match="num_clusters = 8 but the clusters "
                     "stage has 16"):
    seqrec_stage.model_config(300, 16, options)
  with pytest.raises(seqrec_stage.SeqRecStageError, match="cluster_embeddings = True"):
    seqrec_stage.model_config(300, 16, seqrec_stage.SeqRecStageOptions())


SEQREC_MODEL_FILES = sorted(
    p.name for p in (Path(gin_config.__file__).resolve().parents[1] / "configs" / "seqrec").glob(
        "*.gin"))


@pytest.mark.parametrize("name", SEQREC_MODEL_FILES)
def test_every_seqrec_model_file_parses_after_its_run_file(name):
  run_file = "movielens.gin" if name.startswith("movielens") else "quickstart.gin"
  gin_config.parse_gin([run_file, f"seqrec/{name}"],
                       ["RUN_DIR = '/tmp/explore_config_check'", "MOVIELENS_DIR = '/tmp/ml'"])
  options = seqrec_stage.SeqRecStageOptions()  # the bound values pass their own checks
  SoftmaxConfig()
  training_lib.SeqRecTraining()
  if name.endswith("no_clusters.gin"):
    assert not options.cluster_embeddings


def test_bad_grounding_options_are_named():
  with pytest.raises(seqrec_stage.SeqRecStageError, match="grounding_k=0"):
    seqrec_stage.SeqRecStageOptions(grounding_k=0)
  with pytest.raises(seqrec_stage.SeqRecStageError, match="'faiss'"):
    seqrec_stage.SeqRecStageOptions(grounding_implementation="faiss")
  for bad in ((1.0, float("inf")), ("1",), 2.0):
    with pytest.raises(seqrec_stage.SeqRecStageError, match="prior_weights=.* must be a tuple"):
      seqrec_stage.SeqRecStageOptions(prior_weights=bad)


SEQREC_PRESETS = sorted(
    p.name for p in (Path(gin_config.__file__).resolve().parents[1] / "configs" / "seqrec"
                     / "models").glob("*.gin"))


@pytest.mark.parametrize("name", SEQREC_PRESETS)
def test_every_model_preset_overrides_the_movielens_model(name):
  gin_config.parse_gin(["movielens.gin", "seqrec/movielens_sasrec.gin", f"seqrec/models/{name}"],
                       ["RUN_DIR = '/tmp/explore_config_check'", "MOVIELENS_DIR = '/tmp/ml'"])
  config = SeqRecConfig(num_items=100)
  assert config.embed_dim % config.num_heads == 0 and config.max_len == 50


def test_the_large_movielens_config_is_the_recipe_with_the_large_shape():
  shapes = {}
  for name in ("movielens_sasrec.gin", "movielens_sasrec_large.gin"):
    gin_config.parse_gin(["movielens.gin", f"seqrec/{name}"],
                         ["RUN_DIR = '/tmp/explore_config_check'", "MOVIELENS_DIR = '/tmp/ml'"])
    config, training = SeqRecConfig(num_items=100), training_lib.SeqRecTraining()
    shapes[name] = (config.embed_dim, config.num_heads, config.hidden_dim)
    recipe = (config.norm, config.init, config.num_blocks, config.dropout, config.max_len,
              training.window_stride, training.learning_rate, training.param_average_decay,
              training.train_epochs, training.patience)
    shapes[name, "recipe"] = recipe
  assert shapes["movielens_sasrec.gin"] == (64, 2, 256)
  assert shapes["movielens_sasrec_large.gin"] == (128, 4, 512)
  assert shapes["movielens_sasrec.gin", "recipe"] == shapes["movielens_sasrec_large.gin", "recipe"]


def test_the_published_sasrec_preset_has_its_shape():
  gin_config.parse_gin(["seqrec/models/sasrec.gin"], [])
  config = SeqRecConfig(num_items=100)
  assert (config.embed_dim, config.num_heads, config.hidden_dim, config.num_blocks,
          config.dropout) == (64, 2, 256, 2, 0.5)
  assert {"sasrec.gin", "sasrec_small.gin", "sasrec_large.gin"} <= set(SEQREC_PRESETS)
