"""Tests of `explore export --format=hf`: a trained planner as a Hugging Face folder.

The parity tests load the exported folder with `transformers`
(`AutoModelForCausalLM`, `AutoTokenizer`, torch on CPU) and compare its logits
with our decoder's; they skip where torch or transformers cannot be imported.
"""

from __future__ import annotations

import dataclasses
import json

from flax import nnx
import jax
import numpy as np
import pytest

from conftest import DESCRIPTIONS
from explore.llm import checkpoint_export as ce
from explore.llm import checkpoint_import as ci
from explore.llm import tokenizer as tokenizer_lib
from explore.llm.decoder import build_decoder
from explore.llm.decoder_config import DecoderConfig
from explore.llm.planner import LlmPlanner
from explore.llm.planner import history_prompts
from hf_parity import hf  # noqa: F401  (the fixture)
import hf_parity

LLAMA3_ROPE = dict(rope_scaling="llama3", rope_scaling_factor=8.0, rope_low_freq_factor=1.0,
                   rope_high_freq_factor=4.0, rope_original_max_length=8)


def _config(family: str, vocab_size: int, **overrides) -> DecoderConfig:
  return DecoderConfig(family=family, vocab_size=vocab_size, d_model=64, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128, **overrides)


def _randomize(model, variable_type, scale: float, seed: int) -> None:
  """Adds noise to every `variable_type` variable (norm scales, LoRA factors) so they matter."""
  state = nnx.state(model, variable_type)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  noisy = [x + scale * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
  nnx.update(model, jax.tree.unflatten(treedef, noisy))


def _planner(tmp_path, family: str, model_type: str = "unigram", seed: int = 0,
             **overrides) -> LlmPlanner:
  tokenizer = tokenizer_lib.train_sentencepiece(
      tokenizer_lib.sentencepiece_corpus(DESCRIPTIONS), tmp_path / "spm.model", vocab_size=120,
      model_type=model_type)
  config = _config(family, tokenizer.vocab_size, **overrides)
  model = build_decoder(config, seed=seed)
  _randomize(model, nnx.All(nnx.Param, nnx.PathContains("scale")), 0.2, seed + 1)
  return LlmPlanner(model=model, tokenizer=tokenizer, descriptions=list(DESCRIPTIONS),
                    config=config, k=2)


def _sequences(planner: LlmPlanner) -> np.ndarray:
  """[b, L] token rows as the decoder sees them: bos, prompt + EOS, description + EOS."""
  history = np.array([[0, 1], [2, 3], [4, 0]])
  prompts = planner.tokenizer.encode_batch(history_prompts(planner.descriptions, history),
                                           add_eos=True)
  targets = planner.tokenizer.encode_batch(planner.descriptions[1:4], add_eos=True)
  rows = [[planner.bos_id] + p + t for p, t in zip(prompts, targets)]
  length = min(len(r) for r in rows)
  return np.array([r[:length] for r in rows], np.int32)


def _check_tokenizer(hf, planner: LlmPlanner, folder) -> None:
  _, transformers = hf
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  texts = list(planner.descriptions) + history_prompts(
      planner.descriptions, np.array([[0, 1], [3, 2], [2, 0]]))
  for text in texts:
    assert tokenizer(text, add_special_tokens=False).input_ids == planner.tokenizer.encode(text)
  assert tokenizer.eos_token_id == planner.tokenizer.eos_id
  assert tokenizer.bos_token_id == planner.bos_id
  text = planner.descriptions[3]
  assert tokenizer.decode(planner.tokenizer.encode(text)) == text


@pytest.mark.parametrize("family, overrides", [
    ("llama", LLAMA3_ROPE), ("llama", dict(tie_embeddings=True)), ("gemma", {})],
    ids=["llama-llama3-rope", "llama-tied", "gemma"])
def test_exported_planner_matches_in_transformers(hf, tmp_path, family, overrides):
  planner = _planner(tmp_path, family, **overrides)
  folder = ce.export_planner(planner, tmp_path / "hf")
  reference = hf_parity.load_hf_folder(hf, folder)
  assert type(reference).__name__ == {"llama": "LlamaForCausalLM",
                                      "gemma": "GemmaForCausalLM"}[family]
  tokens = _sequences(planner)
  hf_parity.assert_logits_match(hf_parity.our_logits(planner.model, tokens),
                                hf_parity.hf_logits(hf, reference, tokens))
  _check_tokenizer(hf, planner, folder)
  config = json.loads((folder / "config.json").read_text())
  assert (config["bos_token_id"], config["eos_token_id"]) == (0, 1)
  assert ci.decoder_config_from_hf(config) == dataclasses.replace(
      planner.config, tie_embeddings=planner.config.tied,
      activation=planner.config.mlp_activation)


def test_lora_adapters_are_merged_into_the_exported_weights(hf, tmp_path):
  planner = _planner(tmp_path, "llama", lora_rank=4, lora_targets=("query", "value", "down"))
  _randomize(planner.model, nnx.LoRAParam, 0.3, seed=7)  # fresh adapters add exactly 0
  tokens = _sequences(planner)
  with_adapters = hf_parity.our_logits(planner.model, tokens)
  base = dataclasses.replace(planner.config, lora_rank=0)
  no_adapters = hf_parity.our_logits(nnx.merge(
      nnx.graphdef(build_decoder(base)), nnx.state(planner.model, nnx.Not(nnx.LoRAParam))),
      tokens)
  assert np.abs(with_adapters - no_adapters).max() > 1e-2  # the adapters matter
  folder = ce.export_planner(planner, tmp_path / "hf")
  assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] == 2
  reference = hf_parity.load_hf_folder(hf, folder)
  hf_parity.assert_logits_match(with_adapters, hf_parity.hf_logits(hf, reference, tokens))


def test_bpe_tokenizer_is_exported_for_llama_tokenizer(hf, tmp_path):
  planner = _planner(tmp_path, "llama", model_type="bpe")
  folder = ce.export_planner(planner, tmp_path / "hf")
  assert json.loads((folder / ce.TOKENIZER_CONFIG).read_text())["tokenizer_class"] == (
      "LlamaTokenizer")
  _check_tokenizer(hf, planner, folder)


def test_semantic_id_level_tokens_are_exported_as_one_piece_each(hf, tmp_path):
  texts = ["<a0> <b1> <c3>", "<a1> <b2> <c5>", "<a0> <b0> <c0>", "<a1> <b3> <c7>"]
  tokenizer = tokenizer_lib.train_sentencepiece(
      tokenizer_lib.sentencepiece_corpus(texts * 10), tmp_path / "spm.model", vocab_size=60)
  planner = LlmPlanner(model=None, tokenizer=tokenizer, descriptions=texts, config=None, k=2)
  folder = tmp_path / "hf"
  folder.mkdir()
  ce.export_tokenizer(tokenizer, "llama", 0, folder)
  _check_tokenizer(hf, planner, folder)
  assert [len(tokenizer.encode(t)) for t in texts] == [3, 3, 3, 3]


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_import_then_export_round_trips(hf, tmp_path, family):
  original = hf_parity.hf_model(hf, family)
  original.save_pretrained(tmp_path / "original", safe_serialization=True)
  imported = ci.import_hf_checkpoint(tmp_path / "original")
  folder = ce.export_decoder(imported.model, tmp_path / "exported")
  reloaded = hf_parity.load_hf_folder(hf, folder)
  theirs = original.state_dict()
  for name, tensor in reloaded.state_dict().items():
    np.testing.assert_array_equal(tensor.numpy(), theirs[name].numpy(), err_msg=name)
  hf_parity.assert_logits_match(hf_parity.hf_logits(hf, reloaded),
                                hf_parity.hf_logits(hf, original))


def test_existing_non_empty_out_is_refused_and_kept(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "notes.txt").write_text("mine")
  planner = _planner(tmp_path, "llama")
  with pytest.raises(ce.ExportError, match=r"--out=.*out: exists and is not empty"):
    ce.export_planner(planner, out)
  assert [p.name for p in out.iterdir()] == ["notes.txt"]
  empty = tmp_path / "empty"
  empty.mkdir()
  assert (ce.export_planner(planner, empty) / "model.safetensors").exists()


# ----------------------------------------------------------------------------
# The command line: explore export --format=hf --out=DIR


def _explore(*args):
  from test_cli import explore  # pylint: disable=g-import-not-at-top
  return explore(*args)


@pytest.mark.parametrize("args, message", [
    (["--format=onnx"], "explore export: unknown --format='onnx'; known: ['hf']"),
    ([], "explore export needs --format (one of ['hf'])"),
    (["--format=hf", "--out="], "explore export needs --out=DIR (a new or empty folder)"),
])
def test_cli_bad_flags_are_one_line_errors(tmp_path, args, message):
  result = _explore("export", f"--run_dir={tmp_path}", f"--out={tmp_path / 'out'}", *args)
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == f"explore: error: {message}"


def test_cli_refuses_a_non_empty_out_and_a_run_without_llm_stage(tmp_path):
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("x")
  result = _explore("export", "--format=hf", f"--out={out}", f"--run_dir={tmp_path / 'run'}")
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"explore: error: --out={out}: exists and is not empty; export into a new or empty folder"
      " (nothing was written)")
  result = _explore("export", "--format=hf", f"--out={tmp_path / 'new'}",
                    f"--run_dir={tmp_path / 'run'}")
  assert result.returncode == 1
  assert (f"explore: error: explore export: {tmp_path / 'run'} has no complete llm stage"
          " (state: missing)") in result.stderr
  assert not (tmp_path / "new").exists()


def test_cli_exports_the_llm_stage_planner(hf, tmp_path, clean_gin):
  from explore import gin_config
  from explore import rundir
  from explore import stages
  from explore.llm import stage as llm_stage
  from test_llm_stage import TINY

  run = tmp_path / "run"
  gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{run}'", *TINY,
                                            "TrainerConfig.train_steps = 10",
                                            "TrainerConfig.checkpoint_every = 10",
                                            "LlmStageOptions.max_eval_examples = 20"])
  stages.run_stages(["llm"], rundir.RunDir(run), seed=0)
  result = _explore("export", "--format=hf", f"--out={tmp_path / 'hf'}", f"--run_dir={run}")
  assert result.returncode == 0, result.stderr
  assert "exported the llm stage's decoder (llama" in result.stdout
  planner = llm_stage.load_planner(run / "llm")
  tokens = _sequences(planner)
  reference = hf_parity.load_hf_folder(hf, tmp_path / "hf")
  hf_parity.assert_logits_match(hf_parity.our_logits(planner.model, tokens),
                                hf_parity.hf_logits(hf, reference, tokens))
  _check_tokenizer(hf, planner, tmp_path / "hf")
