"""The `llm` stage fine-tuning an imported Hugging Face checkpoint with its own tokenizer.

A tiny random Llama-family folder (config.json, model.safetensors written with
numpy, a SentencePiece tokenizer.model with Llama's ids: unk 0, bos 1, eos 2,
no pad) is fine-tuned on a tiny synthetic run, fully and with LoRA adapters.
The data, clusters and transitions stages run once per module and are copied
into each test's run directory. No torch needed.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
from pathlib import Path
import shutil

import gin
import numpy as np
import orbax.checkpoint as ocp
import pytest
from safetensors.numpy import save_file
import sentencepiece as spm

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages
from explore.clusters import stage as clusters_stage
from explore.llm import checkpoint_import as ci
from explore.llm import checkpoint_tokenizer
from explore.llm import pretrained
from explore.llm import stage as llm_stage
from explore.llm import tokenizer as tokenizer_lib
from explore.llm.decoder_config import DecoderConfig
from explore.transitions.task_source import format_history_prompt

stages.load_builtin_stages()

pytestmark = pytest.mark.usefixtures("clean_gin")

RUN_FILE = "llm/import_quickstart.gin"
UPSTREAM = [
    "SyntheticConfig.num_users = 200", "SyntheticConfig.num_items = 600",
    "SyntheticConfig.branching = (2, 2, 4)", "NUM_CLUSTERS = 16",
    "build_cluster_tree.levels = (4, 16)", "co_engagement_embeddings.dim = 8",
]
FAST = [
    "DecoderConfig.dtype = 'float32'", "TrainerConfig.train_steps = 6",
    "TrainerConfig.batch_size = 16", "TrainerConfig.checkpoint_every = 6",
    "TrainerConfig.log_every = 3", "make_optimizer.warmup_steps = 1",
    "make_optimizer.learning_rate = 1e-2", "novel_interest_arrays.max_length = 96",
    "LlmStageOptions.max_eval_examples = 30",
]
# The checkpoint's shape: not the quickstart's tiny preset, so nothing can come from gin.
SHAPE = dict(d_model=32, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=64,
             norm_eps=1e-5, rope_theta=500_000.0)


def _parse(run_dir: Path, checkpoint: Path | str, *bindings: str) -> None:
  gin.clear_config()
  gin_config.parse_gin([RUN_FILE], [f"RUN_DIR = '{run_dir}'",
                                    f"PRETRAINED_CHECKPOINT = '{checkpoint}'",
                                    *UPSTREAM, *FAST, *bindings])


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
  """A run directory with the data, clusters and transitions stages complete."""
  run_dir = tmp_path_factory.mktemp("upstream")
  _parse(run_dir, "/not/needed")
  stages.run_stages(["transitions"], rundir.RunDir(run_dir), seed=0)
  gin.clear_config()
  return run_dir


def _descriptions(run_dir: Path) -> list[str]:
  clusters = clusters_stage.load_exploration_clusters(
      rundir.RunDir(run_dir).complete_path("clusters"))
  return [str(t) for t in clusters.descriptions.texts]


def _llama_sentencepiece(texts: list[str], path: Path) -> int:
  """A SentencePiece model with Llama 2's special ids; returns its number of pieces."""
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=writer, vocab_size=200, model_type="bpe",
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, character_coverage=1.0, hard_vocab_limit=False,
      byte_fallback=False, num_threads=1, minloglevel=2)
  path.write_bytes(writer.getvalue())
  return spm.SentencePieceProcessor(model_proto=writer.getvalue()).get_piece_size()


def _write_hf_folder(folder: Path, descriptions: list[str], vocab_extra: int = 0,
                     seed: int = 0) -> tuple[DecoderConfig, dict[str, np.ndarray]]:
  """A tiny random LlamaForCausalLM folder; returns its config and HF tensors."""
  folder.mkdir(parents=True, exist_ok=True)
  corpus = tokenizer_lib.sentencepiece_corpus(descriptions, k=2)
  pieces = _llama_sentencepiece(corpus, folder / "tokenizer.model")
  config = DecoderConfig(family="llama", vocab_size=pieces + vocab_extra, **SHAPE)
  rng = np.random.default_rng(seed)
  tensors = {}
  for mapping in ci.weight_mappings(config).values():
    scale = 0.1 if len(mapping.hf_shape) == 2 else 0.05
    base = 0.0 if len(mapping.hf_shape) == 2 else 1.0  # norms around 1
    tensors[mapping.hf_name] = (base + scale * rng.standard_normal(mapping.hf_shape)
                                ).astype(np.float32)
  save_file(tensors, str(folder / "model.safetensors"))
  hf_config = dict(
      architectures=["LlamaForCausalLM"], model_type="llama", vocab_size=config.vocab_size,
      hidden_size=config.d_model, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
      rms_norm_eps=config.norm_eps, rope_theta=config.rope_theta, hidden_act="silu",
      tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
  (folder / "config.json").write_text(json.dumps(hf_config))
  return config, tensors


@pytest.fixture
def run(upstream, tmp_path):
  """(run_dir, checkpoint folder, HF config, HF tensors) for one test."""
  run_dir = tmp_path / "run"
  shutil.copytree(upstream, run_dir)
  checkpoint = tmp_path / "tiny-llama"
  config, tensors = _write_hf_folder(checkpoint, _descriptions(run_dir))
  return run_dir, checkpoint, config, tensors


def _run_llm(run_dir: Path, checkpoint: Path, *bindings: str) -> Path:
  _parse(run_dir, checkpoint, *bindings)
  actions = dict(stages.run_stages(["llm"], rundir.RunDir(run_dir), seed=0))
  assert actions["transitions"] == "skip"
  return rundir.RunDir(run_dir).complete_path("llm")


def _flat_params(checkpoint_dir: Path) -> dict[tuple, np.ndarray]:
  """{parameter path: array} of an orbax `checkpoint_<step>/params` item."""
  tree = ocp.StandardCheckpointer().restore(checkpoint_dir / "params")
  out = {}

  def walk(node, path):
    if isinstance(node, dict):
      for key, value in node.items():
        walk(value, path + (int(key) if str(key).isdigit() else key,))
    else:
      out[path[:-1] if path[-1] == "value" else path] = np.asarray(node)

  walk(tree, ())
  return out


def _final_checkpoint(stage: Path) -> Path:
  steps = sorted(int(p.name.split("_")[1]) for p in (stage / "model").glob("checkpoint_*"))
  return stage / "model" / f"checkpoint_{steps[-1]}"


# ----------------------------------------------------------------------------
# Fine-tuning end to end


def test_full_fine_tune_starts_from_the_imported_weights_with_their_tokenizer(run, caplog):
  run_dir, checkpoint, config, tensors = run
  with caplog.at_level(logging.INFO):
    stage = _run_llm(run_dir, checkpoint, "DecoderConfig.lora_rank = 0")
  metrics = json.loads((stage / llm_stage.METRICS).read_text())
  # The checkpoint's tokenizer, copied into the stage folder, sized the model.
  tokenizer = llm_stage.load_tokenizer(stage)
  assert tokenizer.model_path == stage / "tokenizer" / "tokenizer.model"
  assert (tokenizer.eos_id, tokenizer.pad_id) == (2, -1)
  assert metrics["vocab_size"] == tokenizer.vocab_size == config.vocab_size
  assert metrics["bos_id"] == 1  # config.json's bos_token_id starts every example
  assert metrics["pretrained"]["tokenizer"] == "tokenizer.model"
  assert metrics["pretrained"]["fingerprint"] == pretrained.checkpoint_fingerprint(
      checkpoint)["hash"]
  # Step 0 is the imported model: checkpoint_0 holds the HF tensors, and the trainer read it.
  initial = _flat_params(stage / "pretrained" / "checkpoint_0")
  for key, mapping in ci.weight_mappings(config).items():
    np.testing.assert_array_equal(initial[key], mapping.to_param(tensors[mapping.hf_name]))
  assert any("restored params from" in r.getMessage() and "pretrained" in r.getMessage()
             for r in caplog.records)
  # Every weight trained, starting from (so staying near) the imported ones.
  final = _flat_params(_final_checkpoint(stage))
  assert set(final) == set(initial)
  moved = [float(np.abs(final[k] - initial[k]).max()) for k in initial]
  assert min(moved) > 0 and max(moved) < 0.5
  assert metrics["num_trainable_params"] == metrics["num_params"] == config.num_params()
  assert metrics["train_loss_last"] < metrics["train_loss_first"]
  hits = [metrics["planners"]["llm"]["all"][f"hit@{k}"] for k in (1, 5, 10)]
  assert 0 <= hits[0] <= hits[1] <= hits[2] <= 1
  # The folder's contents are a stage input: unchanged, the stage is skipped; new
  # weights at the same path make it stale (rebuilt on the next run).
  fingerprint = pretrained.checkpoint_fingerprint(checkpoint)["hash"]
  manifest = rundir.RunDir(run_dir).manifest("llm")
  assert manifest.inputs["external:pretrained_checkpoint"] == fingerprint
  assert dict(stages.run_stages(["llm"], rundir.RunDir(run_dir), seed=0))["llm"] == "skip"
  weights = checkpoint / "model.safetensors"
  os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
  llm = stages.registered_stages()["llm"]
  assert stages._stage_inputs(llm, rundir.RunDir(run_dir)) != manifest.inputs


def test_a_missing_pretrained_folder_is_named_before_any_work(run):
  run_dir, checkpoint, _, _ = run
  _parse(run_dir, checkpoint.parent / "no-such-folder")
  with pytest.raises(llm_stage.LlmStageError, match="pretrained_checkpoint=.*no-such-folder"):
    stages.run_stages(["llm"], rundir.RunDir(run_dir), seed=0)


def test_lora_fine_tune_trains_only_the_adapters(run):
  run_dir, checkpoint, config, tensors = run
  stage = _run_llm(run_dir, checkpoint, "DecoderConfig.lora_rank = 4")
  metrics = json.loads((stage / llm_stage.METRICS).read_text())
  lora_config = dataclasses.replace(config, lora_rank=4)
  assert metrics["lora_rank"] == 4
  assert metrics["num_params"] == lora_config.num_params()
  assert metrics["num_trainable_params"] == lora_config.num_lora_params()
  final = _flat_params(_final_checkpoint(stage))
  for key, mapping in ci.weight_mappings(config).items():  # the base: bit-identical
    np.testing.assert_array_equal(final[key], mapping.to_param(tensors[mapping.hf_name]))
  adapters = {k: v for k, v in final.items() if any(str(p).endswith("_lora") for p in k)}
  assert adapters and any(k[-1] == "b" and np.abs(v).max() > 0 for k, v in adapters.items())
  assert metrics["train_loss_last"] < metrics["train_loss_first"]
  assert set(metrics["planners"]) >= {"llm", "transition", "popular_novel"}
  assert 0 <= metrics["planners"]["llm"]["all"]["hit@10"] <= 1


# ----------------------------------------------------------------------------
# Bad input


def test_a_folder_without_config_json_is_named(run):
  run_dir, checkpoint, _, _ = run
  (checkpoint / "config.json").unlink()
  with pytest.raises(ci.CheckpointImportError, match=r"tiny-llama/config.json: file not found"):
    _run_llm(run_dir, checkpoint)


def test_a_tokenizer_larger_than_the_embedding_is_named(run, tmp_path):
  run_dir, _, _, _ = run
  small = tmp_path / "small-vocab"
  _write_hf_folder(small, _descriptions(run_dir), vocab_extra=-10)
  with pytest.raises(tokenizer_lib.TokenizerError,
                     match=r"small-vocab/tokenizer.model: the tokenizer has \d+ token ids but "
                           r".*config.json gives the embedding vocab_size=\d+"):
    _run_llm(run_dir, small)


def test_a_gin_bound_shape_that_differs_from_the_checkpoint_is_named(run):
  run_dir, checkpoint, _, _ = run
  with pytest.raises(ci.CheckpointImportError,
                     match=r"config.json: .*DecoderConfig.d_model = 48 \(the checkpoint has 32\)"):
    _run_llm(run_dir, checkpoint, "DecoderConfig.d_model = 48")


def test_a_second_initial_checkpoint_is_refused(run):
  run_dir, checkpoint, _, _ = run
  with pytest.raises(llm_stage.LlmStageError, match="initial_checkpoint_path='/ckpt/other'"):
    _run_llm(run_dir, checkpoint, "TrainerConfig.initial_checkpoint_path = '/ckpt/other'")


# ----------------------------------------------------------------------------
# Config merge, fingerprint, tokenizers


CHECKPOINT = DecoderConfig(family="llama", vocab_size=100, **SHAPE)


def test_every_decoder_field_has_one_source():
  fields = {f.name for f in dataclasses.fields(DecoderConfig)}
  sources = (pretrained.CHECKPOINT_FIELDS, pretrained.GIN_FIELDS, pretrained.STAGE_FIELDS)
  assert sorted(sum(sources, ())) == sorted(fields)


def test_merge_keeps_the_checkpoint_shape_and_gin_training_fields():
  configured = DecoderConfig(dtype="bfloat16", lora_rank=8, lora_alpha=32.0, remat=True)
  merged = pretrained.merge_decoder_config(
      CHECKPOINT, configured, {"lora_rank": 8, "d_model": 32, "vocab_size": 512,
                               "tie_embeddings": None, "rope_theta": 500000},
      "ckpt/config.json")
  assert merged == dataclasses.replace(CHECKPOINT, dtype="bfloat16", lora_rank=8,
                                       lora_alpha=32.0, remat=True)


def test_merge_lists_every_conflicting_field():
  with pytest.raises(ci.CheckpointImportError,
                     match=r"ckpt/config.json: .*DecoderConfig.family = 'gemma' .*"
                           r"DecoderConfig.num_layers = 4 \(the checkpoint has 2\)"):
    pretrained.merge_decoder_config(CHECKPOINT, DecoderConfig(),
                                    {"family": "gemma", "num_layers": 4}, "ckpt/config.json")


def test_fingerprint_follows_the_weights_and_config(tmp_path):
  _write_hf_folder(tmp_path, ["alpha, beta", "gamma, delta"])
  first = pretrained.checkpoint_fingerprint(tmp_path)
  assert pretrained.checkpoint_fingerprint(tmp_path) == first
  weights = tmp_path / "model.safetensors"
  stat = weights.stat()
  os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
  second = pretrained.checkpoint_fingerprint(tmp_path)
  assert second["hash"] != first["hash"]
  config = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-6}))
  assert pretrained.checkpoint_fingerprint(tmp_path)["hash"] != second["hash"]


def _write_bpe_tokenizer_json(folder: Path, texts: list[str]) -> None:
  tokenizers = pytest.importorskip("tokenizers")
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token=None))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(texts, trainer)
  folder.mkdir(parents=True, exist_ok=True)
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps(
      {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|end_of_text|>"}}))


DESCRIPTIONS = ["hiking, trails, camping", "cooking, pasta, italian", "drama, war"]


def test_a_tokenizer_json_encodes_without_special_tokens_and_ends_with_its_eos(tmp_path):
  _write_bpe_tokenizer_json(tmp_path / "ckpt", DESCRIPTIONS)
  tokenizer = checkpoint_tokenizer.load_checkpoint_tokenizer(tmp_path / "ckpt")
  eos = tokenizer._tokenizer.token_to_id("<|end_of_text|>")  # pylint: disable=protected-access
  assert (tokenizer.eos_id, tokenizer.pad_id) == (eos, -1)
  ids = tokenizer.encode(DESCRIPTIONS[0], add_eos=True)
  assert ids[-1] == eos and eos not in ids[:-1]
  assert tokenizer.decode(ids + [5, 6]) == DESCRIPTIONS[0]
  assert tokenizer.encode_batch(DESCRIPTIONS) == [tokenizer.encode(t) for t in DESCRIPTIONS]
  tokenizer_lib.check_descriptions_tokenize_uniquely(tokenizer, DESCRIPTIONS)
  with pytest.raises(tokenizer_lib.TokenizerError, match="not a SentencePiece model"):
    tokenizer_lib.seqio_vocabulary(tokenizer)
  # Copied into a stage folder, it reads back the same.
  copy = checkpoint_tokenizer.save_tokenizer(tokenizer, tmp_path / "stage" / "tokenizer")
  again = checkpoint_tokenizer.load_saved_tokenizer(copy.parent)
  assert again.model_path == copy and again.eos_id == eos
  assert again.encode_batch(DESCRIPTIONS, add_eos=True) == tokenizer.encode_batch(
      DESCRIPTIONS, add_eos=True)


def test_a_tokenizer_json_without_eos_is_named(tmp_path):
  _write_bpe_tokenizer_json(tmp_path, DESCRIPTIONS)
  (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|begin_of_text|>"}))
  with pytest.raises(tokenizer_lib.TokenizerError, match="tokenizer.json: no EOS token"):
    checkpoint_tokenizer.load_checkpoint_tokenizer(tmp_path)


def test_a_tokenizer_json_without_the_tokenizers_package_is_named(tmp_path, monkeypatch):
  _write_bpe_tokenizer_json(tmp_path, DESCRIPTIONS)
  monkeypatch.setitem(__import__("sys").modules, "tokenizers", None)
  with pytest.raises(tokenizer_lib.TokenizerError,
                     match=r"tokenizer.json: .*needs the 'tokenizers' package"):
    checkpoint_tokenizer.load_checkpoint_tokenizer(tmp_path)


def test_a_folder_without_tokenizer_is_named(tmp_path):
  (tmp_path / "config.json").write_text("{}")
  with pytest.raises(tokenizer_lib.TokenizerError, match="no tokenizer.model or tokenizer.json"):
    checkpoint_tokenizer.load_checkpoint_tokenizer(tmp_path)


def test_text_encoding_to_the_padding_id_is_named(tmp_path):
  texts = ["alpha beta", "gamma delta"]
  _llama_sentencepiece(tokenizer_lib.sentencepiece_corpus(texts), tmp_path / "tokenizer.model")
  tokenizer = checkpoint_tokenizer.load_checkpoint_tokenizer(tmp_path)  # unk is id 0
  tokenizer_lib.check_padding_id_unused(tokenizer, texts, "description of cluster")
  with pytest.raises(tokenizer_lib.TokenizerError,
                     match=r"description of cluster 1 \('zeta €'\) encodes to id 0"):
    tokenizer_lib.check_padding_id_unused(tokenizer, ["alpha", "zeta €"],
                                          "description of cluster")


def test_lora_gin_requires_a_pretrained_folder_and_trains_rank_8_adapters():
  with pytest.raises(gin_config.ConfigError, match="PRETRAINED_CHECKPOINT is not set"):
    gin_config.parse_gin(["llm/lora.gin"], [])
  gin.clear_config()
  gin_config.parse_gin(["llm/lora.gin"], ["PRETRAINED_CHECKPOINT = '/ckpt/llama'"])
  assert llm_stage.LlmStageOptions().pretrained_checkpoint == "/ckpt/llama"
  config = DecoderConfig()
  assert (config.lora_rank, config.lora_alpha) == (8, 16.0)
  assert pretrained.bound_decoder_fields().keys().isdisjoint(pretrained.CHECKPOINT_FIELDS)


def test_a_config_read_from_a_checkpoint_takes_nothing_from_gin(tmp_path):
  _write_hf_folder(tmp_path, ["alpha, beta", "gamma, delta"])
  gin.parse_config(["DecoderConfig.lora_rank = 4", "DecoderConfig.rope_scaling = 'llama3'",
                    "DecoderConfig.remat = True"])
  config = ci.decoder_config_from_hf(ci.read_hf_config(tmp_path))
  assert (config.lora_rank, config.rope_scaling, config.remat) == (0, None, False)


def test_an_import_is_reused_unless_the_checkpoint_changed(tmp_path):
  checkpoint, stage = tmp_path / "ckpt", tmp_path / "stage"
  _write_hf_folder(checkpoint, ["alpha, beta", "gamma, delta"])
  start = pretrained.prepare_pretrained(checkpoint, DecoderConfig(), {}, stage / "tokenizer")
  assert pretrained.write_initial_checkpoint_once(start, stage / "pretrained")
  (stage / "model" / "checkpoint_3").mkdir(parents=True)  # fine-tuning made from these weights
  assert not pretrained.write_initial_checkpoint_once(start, stage / "pretrained",
                                                      stale=(stage / "model",))
  assert (stage / "model").exists()
  _write_hf_folder(checkpoint, ["alpha, beta", "gamma, delta"], seed=1)  # other weights
  weights = checkpoint / "model.safetensors"  # same size: the fingerprint sees the mtime
  os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))
  changed = pretrained.prepare_pretrained(checkpoint, DecoderConfig(), {}, stage / "tokenizer")
  assert changed.fingerprint["hash"] != start.fingerprint["hash"]
  assert pretrained.write_initial_checkpoint_once(changed, stage / "pretrained",
                                                  stale=(stage / "model",))
  assert not (stage / "model").exists()
  assert (stage / "pretrained" / "checkpoint_0").is_dir()
