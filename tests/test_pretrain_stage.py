"""The `pretrain` stage: corpus, tokenizer, training, export; the llm stage starting from it."""

import dataclasses
import json
import math
import shutil

import numpy as np
import pytest

from explore import artifacts
from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages
from explore import train
from explore.data import catalog_corpus
from explore.data.schema import ItemCatalog
from explore.llm import checkpoint_export
from explore.llm import checkpoint_import
from explore.llm import pretrain_stage
from explore.llm import stage as llm_stage
from explore.llm import tokenizer as tokenizer_lib
from explore.llm.decoder import build_decoder
from explore.llm.decoder_config import DecoderConfig

stages.load_builtin_stages()
pytestmark = pytest.mark.usefixtures("clean_gin")

TINY = [
    "SyntheticConfig.num_users = 300", "SyntheticConfig.num_items = 2000",
    "SyntheticConfig.branching = (4, 4, 4)", "NUM_CLUSTERS = 64",
    "build_cluster_tree.levels = (4, 16, 64)", "co_engagement_embeddings.dim = 16",
    "TrainerConfig.train_steps = 10", "TrainerConfig.batch_size = 16",
    "TrainerConfig.checkpoint_every = 10", "TrainerConfig.log_every = 5",
    "novel_interest_arrays.max_length = 64", "LlmStageOptions.max_eval_examples = 30",
    "make_optimizer.warmup_steps = 2", "CorpusConfig.num_words = 3000",
    "PretrainOptions.train_steps = 12", "PretrainOptions.batch_size = 16",
    "PretrainOptions.max_length = 64", "PretrainOptions.warmup_steps = 2",
    "LlmStageOptions.train_epochs = 0.5",
]


def _parse(tmp_path, *bindings):
  gin_config.parse_gin(["quickstart.gin", "llm/quickstart.gin"],
                       [f"RUN_DIR = '{tmp_path}'", *TINY, *bindings])
  return rundir.RunDir(tmp_path)


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
  """A tiny run with the pretrain stage on, through the llm stage."""
  import gin  # pylint: disable=g-import-not-at-top
  path = tmp_path_factory.mktemp("pretrained")
  gin.clear_config()
  run_dir = _parse(path, "PretrainOptions.enabled = True")
  stages.run_stages(["llm"], run_dir, seed=0)
  gin.clear_config()
  return path


def test_pretrain_writes_corpus_tokenizer_checkpoints_and_export(pretrained_run):
  path = rundir.RunDir(pretrained_run).complete_path("pretrain")
  metrics = json.loads((path / pretrain_stage.METRICS).read_text())
  assert metrics["enabled"] and metrics["train_steps"] == 12
  assert metrics["train_loss_last"] < metrics["train_loss_first"]
  corpus = (path / pretrain_stage.CORPUS).read_text().splitlines()
  assert len(corpus) == metrics["documents"] and metrics["words"] >= 3000
  assert any(p.name.startswith("checkpoint_") for p in (path / "model").iterdir())
  assert (path / "model" / "train").exists()  # TensorBoard scalars
  export = path / pretrain_stage.EXPORT
  assert {p.name for p in export.iterdir()} == {"config.json", "model.safetensors",
                                                "tokenizer.model"}
  assert json.loads((export / "config.json").read_text())["vocab_size"] == metrics["vocab_size"]


def test_llm_stage_fine_tunes_from_the_pretrain_export(pretrained_run):
  run_dir = rundir.RunDir(pretrained_run)
  metrics = llm_stage.load_metrics(run_dir.complete_path("llm"))
  export = run_dir.complete_path("pretrain") / pretrain_stage.EXPORT
  assert metrics["pretrained"]["checkpoint"] == str(export)
  assert metrics["bos_id"] == 0
  assert metrics["train_steps"] == math.ceil(0.5 * metrics["train_rows"] / 16)  # train_epochs
  # The llm stage uses the pretrain tokenizer (copied) and starts from its weights.
  tokenizer = llm_stage.load_tokenizer(run_dir.complete_path("llm"))
  assert tokenizer.vocab_size == metrics["vocab_size"]
  assert (run_dir.complete_path("llm") / llm_stage.PRETRAINED / "checkpoint_0").exists()


def test_a_pretrain_export_of_another_shape_is_named(pretrained_run, tmp_path):
  run_copy = tmp_path / "run"
  shutil.copytree(pretrained_run, run_copy)
  config_path = rundir.RunDir(run_copy).complete_path("pretrain") / "hf" / "config.json"
  hf = json.loads(config_path.read_text())
  config_path.write_text(json.dumps({**hf, "hidden_size": 32, "head_dim": 8}))
  # An export of another shape that its manifest agrees with (as one made by other code would
  # be): the shape check, not the file check, is what must catch it.
  run = rundir.RunDir(run_copy)
  manifest = run.manifest("pretrain")
  manifest.files = artifacts.describe_files(run.complete_path("pretrain"))
  manifest.write(run.complete_path("pretrain") / rundir.MANIFEST)
  run_dir = _parse(run_copy, "PretrainOptions.enabled = True")
  with pytest.raises(pretrain_stage.PretrainError,
                     match=r"hf/config.json: the pretrained model's shape differs"):
    stages.run_stages(["llm"], run_dir, seed=0, force=True)


def test_pretrain_and_an_imported_checkpoint_together_are_refused(pretrained_run, tmp_path):
  run_copy = tmp_path / "run"
  shutil.copytree(pretrained_run, run_copy)
  run_dir = _parse(run_copy, "PretrainOptions.enabled = True",
                   f"LlmStageOptions.pretrained_checkpoint = '{tmp_path}'")
  with pytest.raises(pretrain_stage.PretrainError, match="both set"):
    stages.run_stages(["llm"], run_dir, seed=0, force=True)


def test_disabled_pretrain_is_a_no_op_and_the_llm_trains_from_scratch(tmp_path):
  run_dir = _parse(tmp_path, "LlmStageOptions.train_epochs = 0.1")
  stages.run_stages(["llm"], run_dir, seed=0)
  assert json.loads((run_dir.complete_path("pretrain") / pretrain_stage.METRICS).read_text()) \
      == {"enabled": False}
  assert llm_stage.load_metrics(run_dir.complete_path("llm"))["pretrained"] is None


def test_steps_follow_epochs_and_rows():
  options = pretrain_stage.PretrainOptions(epochs=2.0, batch_size=16)
  assert pretrain_stage.steps_for(options, 40) == 5
  assert pretrain_stage.steps_for(options, 400) == 50
  fixed = pretrain_stage.PretrainOptions(train_steps=7)
  assert pretrain_stage.steps_for(fixed, 400) == 7
  with pytest.raises(pretrain_stage.PretrainError, match="PretrainOptions.epochs"):
    pretrain_stage.PretrainOptions(epochs=0.0)
  assert train.steps_for_epochs(1.5, 100, 16) == 10
  with pytest.raises(train.TrainerConfigError, match="epochs=0"):
    train.steps_for_epochs(0, 100, 16)
  with pytest.raises(llm_stage.LlmStageError, match="LlmStageOptions.train_epochs"):
    llm_stage.LlmStageOptions(train_epochs=-1.0)


def test_a_tokenizer_that_does_not_cover_the_descriptions_is_named(tmp_path):
  tokenizer = tokenizer_lib.train_sentencepiece(["abc def abc"] * 20, tmp_path / "spm.model",
                                                vocab_size=16)
  with pytest.raises(pretrain_stage.PretrainError, match=r"spm.model: the tokenizer does not "
                     r"cover the description of cluster 1"):
    pretrain_stage.check_covers(tokenizer, ["abc", "xyz"], "the description of cluster")


def test_document_rows_pack_documents_and_split_long_ones(tmp_path):
  tokenizer = tokenizer_lib.train_sentencepiece(["abc def ghi"] * 20, tmp_path / "spm.model",
                                                vocab_size=16)
  arrays = pretrain_stage.document_rows(tokenizer, ["abc def " * 20, "ghi"], max_length=16)
  weights = arrays["decoder_loss_weights"]
  n_long = len(tokenizer.encode("abc def " * 20, add_eos=True))
  n_short = len(tokenizer.encode("ghi", add_eos=True))
  assert weights.sum() == n_long + n_short  # every token is a target
  assert arrays["decoder_target_tokens"].shape[1] == 16


def test_document_rows_lay_task_statements_out_as_fine_tuning_pairs(tmp_path):
  from explore.data import synthetic_corpus  # pylint: disable=g-import-not-at-top
  from explore.llm import features  # pylint: disable=g-import-not-at-top
  tokenizer = tokenizer_lib.train_sentencepiece(["history: abc | def ghi abc"] * 20,
                                                tmp_path / "spm.model", vocab_size=20)
  statement = synthetic_corpus.task_statement(["abc", "def"], "ghi")
  assert synthetic_corpus.split_task_statement(statement) == ("history: abc | def", "ghi")
  arrays = pretrain_stage.document_rows(tokenizer, [statement], max_length=32)
  expected = features.prefix_lm_examples([tokenizer.encode("history: abc | def", add_eos=True)],
                                         [tokenizer.encode("ghi", add_eos=True)], 32)
  for name, value in expected.items():  # exactly a fine-tuning pair: loss on the target only
    np.testing.assert_array_equal(arrays[name], value, err_msg=name)
  mixed = pretrain_stage.document_rows(tokenizer, [statement, "abc def"], max_length=32)
  assert mixed["decoder_loss_weights"].sum() == (len(tokenizer.encode("ghi", add_eos=True)) +
                                                 len(tokenizer.encode("abc def", add_eos=True)))
  assert pretrain_stage.tokenizer_text([statement]) == ["history: abc | def ghi"]
  with pytest.raises(pretrain_stage.PretrainError, match="max_length=4"):
    pretrain_stage.document_rows(tokenizer, [statement], max_length=4)


def _rows(n, width, value, dtype):
  return {"decoder_target_tokens": np.full((n, width), value, np.int32),
          "decoder_loss_weights": np.ones((n, width), dtype)}


def test_mix_corpus_rows_adds_the_fraction_of_corpus_rows():
  rows, corpus = _rows(8, 4, 1, np.float32), _rows(5, 4, 2, np.int32)
  mixed = pretrain_stage.mix_corpus_rows(rows, corpus, 0.5, seed=0)
  targets = mixed["decoder_target_tokens"]
  assert len(targets) == 12 and (targets[:, 0] == 2).sum() == 4 and (targets[:, 0] == 1).sum() == 8
  assert mixed["decoder_loss_weights"].dtype == np.float32
  assert pretrain_stage.mix_corpus_rows(rows, corpus, 0.0) is rows
  # More than the corpus holds: drawn with replacement.
  assert len(pretrain_stage.mix_corpus_rows(rows, corpus, 1.0)["decoder_target_tokens"]) == 16
  with pytest.raises(pretrain_stage.PretrainError, match="PretrainOptions.max_length"):
    pretrain_stage.mix_corpus_rows(rows, _rows(5, 6, 2, np.int32), 0.5)
  with pytest.raises(pretrain_stage.PretrainError, match="corpus_mix=-1"):
    pretrain_stage.mix_corpus_rows(rows, corpus, -1)
  with pytest.raises(llm_stage.LlmStageError, match="corpus_mix"):
    llm_stage.LlmStageOptions(corpus_mix=-0.5)


def test_corpus_mix_adds_corpus_rows_to_fine_tuning(pretrained_run, tmp_path):
  run_copy = tmp_path / "run"
  shutil.copytree(pretrained_run, run_copy)
  before = llm_stage.load_metrics(rundir.RunDir(run_copy).complete_path("llm"))["train_rows"]
  run_dir = _parse(run_copy, "PretrainOptions.enabled = True", "LlmStageOptions.corpus_mix = 0.5",
                   "LlmStageOptions.max_eval_examples = 5")
  stages.run_stages(["llm"], run_dir, seed=0, force=True)
  assert llm_stage.load_metrics(run_dir.complete_path("llm"))["train_rows"] == \
      before + round(0.5 * before)


def _interpolated_run(pretrained_run, tmp_path, *bindings):
  """(run dir, llm stage folder, its metrics) of the fixture rerun with `bindings`."""
  import gin  # pylint: disable=g-import-not-at-top
  run_copy = tmp_path / "run"
  if not run_copy.exists():
    shutil.copytree(pretrained_run, run_copy)
  gin.clear_config()
  run_dir = _parse(run_copy, "PretrainOptions.enabled = True",
                   "LlmStageOptions.validation_fraction = 0.2",
                   "LlmStageOptions.max_eval_examples = 12", *bindings)
  stages.run_stages(["llm"], run_dir, seed=0, force=True)
  path = run_dir.complete_path("llm")
  return run_dir, path, llm_stage.load_metrics(path)


def test_interpolation_writes_the_chosen_weights_and_the_planner_reopens_them(
    pretrained_run, tmp_path, monkeypatch):
  from explore import partitioning as partitioning_lib  # pylint: disable=g-import-not-at-top
  from explore.llm import interpolation  # pylint: disable=g-import-not-at-top
  from explore.llm import planner as planner_lib  # pylint: disable=g-import-not-at-top
  from explore.train import train_step  # pylint: disable=g-import-not-at-top
  from explore.transitions import stage as transitions_stage  # pylint: disable=g-import-not-at-top
  real_choose = interpolation.choose
  asked = {}

  def choose_smallest(alphas, validate, metric, bucket):  # whatever validation prefers here
    best, candidates = real_choose(alphas, validate, metric, bucket)
    asked.update(alphas=alphas, best=best["alpha"])
    return candidates[-1], candidates

  monkeypatch.setattr(interpolation, "choose", choose_smallest)
  run_dir, path, metrics = _interpolated_run(pretrained_run, tmp_path,
                                             "LlmStageOptions.interpolate = (0.5, 0.9)")
  record = metrics["interpolation"]
  assert asked["alphas"] == (0.9, 0.5) and record["alphas"] == [0.9, 0.5]
  assert [c["alpha"] for c in record["candidates"]] == [1.0, 0.9, 0.5]
  assert record["chosen_alpha"] == 0.5
  # The validation report is the chosen weights'.
  assert metrics["validation"]["planners"]["llm"]["all"] == record["candidates"][-1][
      "validation"]["all"]
  spec = json.loads((path / planner_lib.PLANNER_FILE).read_text())
  step = metrics["train_steps"]
  assert spec["model_dir"] == "merged" and spec["step"] == step
  mesh = partitioning_lib.create_mesh(partitioning_lib.MeshConfig())
  config = llm_stage.load_planner(path).config
  params = [train_step.split_model(planner_lib.restore_decoder(config, path / folder, mesh,
                                                               at)[0])[1]
            for folder, at in (("pretrained", 0), ("model", step), ("merged", step))]
  start, tuned, merged = (np.concatenate([np.ravel(x) for x in jax_leaves(p)]) for p in params)
  np.testing.assert_allclose(merged, 0.5 * start + 0.5 * tuned, rtol=1e-5, atol=1e-6)
  assert not np.allclose(merged, tuned, atol=1e-4)
  # Test was scored with the merged planner, and reopening it gives the same scores.
  examples, _ = llm_stage.load_eval_examples(path)
  history = transitions_stage.load_transitions(
      run_dir.complete_path("transitions")).history[examples[:6]]
  np.testing.assert_allclose(llm_stage.load_planner(path).scores(history),
                             llm_stage.load_eval_scores(path)[:6], rtol=1e-5, atol=1e-5)
  # A rerun whose choice is the fine-tuned planner drops the merged weights: model/ again.
  monkeypatch.setattr(interpolation, "choose", lambda alphas, validate, metric, bucket: (
      {"alpha": 1.0, "validation": validate(1.0)}, []))
  _, path, metrics = _interpolated_run(pretrained_run, tmp_path,
                                       "LlmStageOptions.interpolate = (0.5,)")
  assert metrics["interpolation"]["chosen_alpha"] == 1.0
  assert not (path / interpolation.MERGED_DIR).exists()
  assert "model_dir" not in json.loads((path / planner_lib.PLANNER_FILE).read_text())


def jax_leaves(tree):
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_lora_fine_tuning_reuses_the_complete_pretrain_stage(pretrained_run, tmp_path):
  """The adapters are the llm stage's: LoRA bindings leave the pretrain stage as it is."""
  run_copy = tmp_path / "run"
  shutil.copytree(pretrained_run, run_copy)
  before = (run_copy / "pretrain" / rundir.MANIFEST).read_text()
  run_dir = _parse(run_copy, "PretrainOptions.enabled = True", "DecoderConfig.lora_rank = 4",
                   "LlmStageOptions.max_eval_examples = 5")
  stages.run_stages(["llm"], run_dir, seed=0, force=True)
  assert (run_copy / "pretrain" / rundir.MANIFEST).read_text() == before
  metrics = llm_stage.load_metrics(run_dir.complete_path("llm"))
  assert metrics["lora_rank"] == 4 and metrics["num_trainable_params"] < metrics["num_params"]
  # Interpolating with the start would only rescale the adapters: refused before training.
  with pytest.raises(llm_stage.LlmStageError, match="lora_rank=4"):
    _interpolated_run(pretrained_run, tmp_path, "LlmStageOptions.interpolate = (0.5,)",
                      "DecoderConfig.lora_rank = 4")


def test_corpus_mix_without_a_corpus_is_named(tmp_path):
  with pytest.raises(pretrain_stage.PretrainError, match="corpus_mix needs the pretrain stage"):
    pretrain_stage.load_corpus_rows(tmp_path, None, 64)


def test_catalog_corpus_writes_one_line_per_item_with_text():
  catalog = ItemCatalog(item_ids=np.arange(3), title=np.array(["Heat (1995)", "", "Up (2009)"]),
                        text={"genres": np.array(["Action|Crime", "", "Animation"]),
                              "tags": np.array(["heist\tla", "", ""])})
  documents = catalog_corpus.catalog_corpus(catalog, seed=0)
  assert sorted(documents) == ["Heat (1995). genres: Action|Crime. tags: heist la.",
                               "Up (2009). genres: Animation."]
  empty = ItemCatalog(item_ids=np.arange(2), title=np.array(["", ""]), text={})
  with pytest.raises(catalog_corpus.CatalogCorpusError, match="no item has a title or text"):
    catalog_corpus.catalog_corpus(empty)


def test_export_imports_back_to_the_same_weights(tmp_path):
  tokenizer = tokenizer_lib.train_sentencepiece(["abc def ghi"] * 20, tmp_path / "spm.model",
                                                vocab_size=16)
  config = DecoderConfig(vocab_size=tokenizer.vocab_size, d_model=16, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=8, mlp_dim=32)
  model = build_decoder(config, seed=3)
  folder = checkpoint_export.export_hf_checkpoint(model, config, tmp_path / "spm.model",
                                                  tmp_path / "hf")
  imported = checkpoint_import.import_hf_checkpoint(folder)
  tokens = np.array([[0, 3, 4, 5]], np.int32)
  np.testing.assert_allclose(np.asarray(imported.model(tokens)), np.asarray(model(tokens)),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("run_file", ["quickstart.gin", "llm/pretrain_taskform.gin",
                                      "llm/pretrain_taskform_control.gin"])
def test_sparse_world_binds_after_a_run_file(run_file, tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  from explore.data.synthetic_config import SyntheticConfig  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_config.parse_gin([run_file, "sparse_world.gin"], [f"RUN_DIR = '{tmp_path}'"])
    world = SyntheticConfig()
    assert (world.num_users, world.num_items, world.explore_rate, world.discovery_rate,
            world.hidden_from_affinity) == (1000, 5000, 0.02, 0.06, 1.0)
    assert gin.query_parameter("%NUM_CLUSTERS") == 256  # the run file's settings stay
    if "control" in run_file:
      assert gin.query_parameter("CorpusConfig.control") is True
  finally:
    gin.clear_config()


def test_real_logs_pretrain_on_the_catalog_documents(tmp_path):
  catalog = ItemCatalog(item_ids=np.arange(3), title=np.array(["Heat (1995)", "", "Up (2009)"]),
                        text={"genres": np.array(["Action Crime", "Drama", ""])})
  catalog.save(tmp_path / "catalog")  # a data stage without a synthetic world
  documents = pretrain_stage.corpus_documents(tmp_path, pretrain_stage.PretrainOptions())
  assert sorted(documents) == sorted(catalog_corpus.catalog_corpus(catalog))
  assert len(documents) == 3
  capped = pretrain_stage.corpus_documents(
      tmp_path, pretrain_stage.PretrainOptions(max_catalog_documents=2))
  assert len(capped) == 2 and set(capped) <= set(documents)


@pytest.mark.parametrize("run_file", ["llm/pretrain_movielens.gin",
                                      "llm/pretrain_movielens_control.gin"])
def test_pretrain_movielens_run_file_pretrains_on_the_catalog_with_keywords(run_file, tmp_path):
  import gin  # pylint: disable=g-import-not-at-top
  from explore.data.synthetic_corpus import CorpusConfig  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  try:
    gin_config.parse_gin([run_file],
                         [f"RUN_DIR = '{tmp_path}'", "MOVIELENS_DIR = '/data/ml'"])
    assert pretrain_stage.PretrainOptions().enabled
    assert gin.query_parameter("data_source.kind") == "movielens"
    assert gin.query_parameter("cluster_vocabulary.vocabulary") == "keywords"
    # fine-tuning is the from-scratch MovieLens recipe's, so the two runs compare
    assert train.TrainerConfig().train_steps == 60
    assert CorpusConfig().control == ("control" in run_file)
  finally:
    gin.clear_config()


@pytest.mark.parametrize("run_file", ["quickstart.gin", "llm/pretrain_quickstart.gin",
                                      "llm/pretrain_control.gin"])
@pytest.mark.parametrize("size, shape", [("small", (96, 3, 384)), ("medium", (128, 4, 512)),
                                         ("large", (192, 6, 768))])
def test_size_files_bind_after_a_run_file_with_their_stated_size(run_file, size, shape,
                                                                 tmp_path):
  import re  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  from explore.llm.decoder_task import DecoderTask  # pylint: disable=g-import-not-at-top
  size_file = gin_config.CONFIGS_DIR / "llm" / f"size_{size}.gin"
  stated = int(re.search(r"# ([\d,]+) parameters at vocabulary 1024",
                         size_file.read_text()).group(1).replace(",", ""))
  gin.clear_config()
  try:
    gin_config.parse_gin([run_file], [f"RUN_DIR = '{tmp_path}'"])
    run_file_steps = train.TrainerConfig().train_steps
    gin.clear_config()
    gin_config.parse_gin([run_file, f"llm/size_{size}.gin"], [f"RUN_DIR = '{tmp_path}'"])
    config = DecoderTask().config
    assert (config.d_model, config.num_layers, config.mlp_dim) == shape
    assert dataclasses.replace(config, vocab_size=1024).num_params() == stated
    assert train.TrainerConfig().train_steps == run_file_steps  # the run file's settings stay
    # the pretraining run files keep the fine-tuning length their results were measured at
    assert run_file_steps == (150 if "pretrain" in run_file else 300)
    assert gin.query_parameter("LlmStageOptions.max_eval_examples") == (
        500 if "pretrain" in run_file else None)
    if "pretrain" in run_file:
      assert gin.query_parameter("cluster_vocabulary.vocabulary") == "keywords"
  finally:
    gin.clear_config()


def test_the_catalog_control_keeps_the_words_and_breaks_the_associations(tmp_path):
  count = 200
  titles = np.array([f"Movie{i} (2000)" for i in range(count)])
  catalog = ItemCatalog(item_ids=np.arange(count), title=titles,
                        text={"genres": np.array([f"genre{i}" for i in range(count)])})
  catalog.save(tmp_path / "catalog")
  import gin  # pylint: disable=g-import-not-at-top
  gin.bind_parameter("CorpusConfig.control", True)
  control = pretrain_stage.corpus_documents(tmp_path, pretrain_stage.PretrainOptions())
  real = catalog_corpus.catalog_corpus(catalog)
  assert sorted(" ".join(control).split()) == sorted(" ".join(real).split())
  kept = sum(f"Movie{i} (2000). genres: genre{i}." in control for i in range(count))
  assert kept < count // 10  # a permutation keeps few items' own fields
  assert kept == sum(d in real for d in control)
