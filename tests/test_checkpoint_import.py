"""Tests of importing Hugging Face Llama/Gemma safetensors checkpoints into the NNX decoder.

The parity tests build tiny random `LlamaForCausalLM` / `GemmaForCausalLM`
models with `transformers` (torch, CPU) and compare logits; they skip where
torch or transformers cannot be imported. The other tests write HF-layout
folders from our own model with numpy, so they run without torch.
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path
import struct

from flax import nnx
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

from explore.llm import checkpoint_import as ci
from explore.llm.safetensors_reader import INDEX_FILE, SINGLE_FILE, SafetensorsReader
from explore.llm.decoder import build_decoder
from explore.llm.decoder_config import DecoderConfig

from hf_parity import VOCAB
from hf_parity import hf  # noqa: F401  (the fixture)
import hf_parity

TINY_LLAMA = DecoderConfig(family="llama", vocab_size=VOCAB, d_model=64, num_layers=2,
                           num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128)
TINY_GEMMA = dataclasses.replace(TINY_LLAMA, family="gemma")


# ----------------------------------------------------------------------------
# Writing HF-layout folders without torch


def _hf_config(config: DecoderConfig, **overrides) -> dict:
  architecture = {"llama": "LlamaForCausalLM", "gemma": "GemmaForCausalLM"}[config.family]
  hf = dict(architectures=[architecture], model_type=config.family,
            vocab_size=config.vocab_size, hidden_size=config.d_model,
            intermediate_size=config.mlp_dim, num_hidden_layers=config.num_layers,
            num_attention_heads=config.num_heads, num_key_value_heads=config.num_kv_heads,
            head_dim=config.head_dim, rms_norm_eps=config.norm_eps,
            rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
            tie_word_embeddings=config.tied,
            hidden_act="silu" if config.family == "llama" else "gelu_pytorch_tanh")
  hf.update(overrides)
  return hf


def _write_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
  """A safetensors file written by hand (the format: u64 header size, JSON header, bytes)."""
  names = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16"}
  header, chunks, offset = {}, [], 0
  for name, array in tensors.items():
    data = np.ascontiguousarray(array).tobytes()
    header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(data)]}
    chunks.append(data)
    offset += len(data)
  encoded = json.dumps(header).encode()
  path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + b"".join(chunks))


def _hf_tensors(model, config: DecoderConfig) -> dict[str, np.ndarray]:
  """Our parameters in HF's names and layouts (the inverse of `weight_mappings`)."""
  flat = {ci._path_key(path): np.asarray(v.get_value()) for path, v in
          jax.tree_util.tree_leaves_with_path(nnx.state(model),
                                              is_leaf=lambda x: isinstance(x, nnx.Variable))}
  tensors = {}
  for key, mapping in ci.weight_mappings(config).items():
    ours = flat[key]
    if len(mapping.hf_shape) == 1 or mapping.hf_name.endswith("embed_tokens.weight"):
      hf = ours
    else:
      rows, cols = mapping.hf_shape
      hf = ours.reshape(cols, rows).T
    np.testing.assert_array_equal(mapping.to_param(hf), ours)
    tensors[mapping.hf_name] = np.ascontiguousarray(hf)
  return tensors


def _write_folder(directory: Path, config: DecoderConfig, seed: int = 0, shards: int = 1,
                  dtype=np.float32, **config_overrides):
  """An HF checkpoint folder holding a random decoder's weights; returns that decoder."""
  directory.mkdir(parents=True, exist_ok=True)
  model = build_decoder(config, seed=seed)
  (directory / "config.json").write_text(json.dumps(_hf_config(config, **config_overrides)))
  tensors = {k: v.astype(dtype) for k, v in _hf_tensors(model, config).items()}
  if shards == 1:
    _write_safetensors(directory / SINGLE_FILE, tensors)
  else:
    names = sorted(tensors)
    weight_map = {}
    for s in range(shards):
      file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
      part = names[s::shards]
      _write_safetensors(directory / file, {n: tensors[n] for n in part})
      weight_map.update({n: file for n in part})
    (directory / INDEX_FILE).write_text(json.dumps({"weight_map": weight_map}))
  return model


def _write_tokenizer_json(directory: Path, size: int) -> None:
  vocab = {f"tok{i}": i for i in range(size - 1)}
  added = [{"id": size - 1, "content": "<eos>", "special": True}]
  (directory / "tokenizer.json").write_text(
      json.dumps({"model": {"type": "BPE", "vocab": vocab}, "added_tokens": added}))


# ----------------------------------------------------------------------------
# Import of HF-layout folders (no torch)


@pytest.mark.parametrize("config", [TINY_LLAMA, TINY_GEMMA])
def test_import_restores_every_weight(tmp_path, config):
  model = _write_folder(tmp_path, config, seed=3)
  imported = ci.import_hf_checkpoint(tmp_path)
  assert imported.config == dataclasses.replace(config, tie_embeddings=config.tied,
                                                activation=config.mlp_activation)
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(imported.model))):
    np.testing.assert_array_equal(a, b)


def test_import_reads_sharded_bfloat16_checkpoints(tmp_path):
  model = _write_folder(tmp_path, TINY_LLAMA, seed=4, shards=3, dtype=ml_dtypes.bfloat16)
  imported = ci.import_hf_checkpoint(tmp_path, param_dtype="bfloat16")
  table = imported.model.embedder.table.get_value()
  assert table.dtype == jnp.bfloat16
  expected = np.asarray(model.embedder.table.get_value()).astype(ml_dtypes.bfloat16)
  np.testing.assert_array_equal(np.asarray(table), expected)


def test_import_places_weights_by_their_logical_axes_on_a_mesh(tmp_path):
  from explore import partitioning

  _write_folder(tmp_path, TINY_LLAMA)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=2, model=4))
  imported = ci.import_hf_checkpoint(tmp_path, mesh=mesh)
  up = imported.model.blocks[0].mlp.up.get_value()
  assert up.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model")


def _rewrite_tensors(directory: Path, edit) -> None:
  reader = SafetensorsReader(directory)
  tensors = {n: reader.read(n) for n in reader.names()}
  edit(tensors)
  _write_safetensors(directory / SINGLE_FILE, tensors)


def test_missing_tensor_is_named(tmp_path):
  _write_folder(tmp_path, TINY_LLAMA)
  _rewrite_tensors(tmp_path, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
  with pytest.raises(ci.CheckpointImportError, match=r"missing tensor 'model\.layers\.1\.mlp"
                     r"\.up_proj\.weight'"):
    ci.import_hf_checkpoint(tmp_path)


def test_misshaped_tensor_names_expected_and_found_shapes(tmp_path):
  _write_folder(tmp_path, TINY_LLAMA)
  name = "model.layers.0.self_attn.k_proj.weight"
  _rewrite_tensors(tmp_path, lambda t: t.update({name: t[name][:16]}))
  with pytest.raises(ci.CheckpointImportError,
                     match=r"model\.safetensors: tensor 'model\.layers\.0\.self_attn\.k_proj"
                     r"\.weight' has shape \(16, 64\), expected \(32, 64\)"):
    ci.import_hf_checkpoint(tmp_path)


@pytest.mark.parametrize("overrides, message", [
    (dict(architectures=["Qwen2ForCausalLM"], model_type="qwen2"), "unsupported architecture"),
    (dict(attention_bias=True), "attention_bias"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4, "factor": 4.0}), "yarn"),
    (dict(hidden_act="relu"), "hidden_act='relu'"),
])
def test_unsupported_configs_are_rejected(overrides, message):
  with pytest.raises(ci.CheckpointImportError, match=message):
    ci.decoder_config_from_hf(_hf_config(TINY_LLAMA, **overrides))


def test_config_mapping_reads_old_and_new_rope_fields():
  old = _hf_config(TINY_LLAMA, rope_parameters=None, rope_theta=5e5)
  assert ci.decoder_config_from_hf(old).rope_theta == 5e5
  scaled = ci.decoder_config_from_hf(_hf_config(TINY_LLAMA, rope_parameters=dict(
      rope_type="llama3", rope_theta=5e5, factor=32.0, low_freq_factor=1.0,
      high_freq_factor=4.0, original_max_position_embeddings=8192)))
  assert (scaled.rope_scaling, scaled.rope_scaling_factor) == ("llama3", 32.0)
  legacy_gemma = ci.decoder_config_from_hf(_hf_config(TINY_GEMMA, hidden_act="gelu"))
  assert legacy_gemma.mlp_activation == "gelu_tanh"  # as HF reads Gemma's legacy value


def test_tokenizer_with_another_vocab_size_is_rejected(tmp_path):
  _write_folder(tmp_path, TINY_LLAMA)
  _write_tokenizer_json(tmp_path, VOCAB + 2)
  with pytest.raises(ci.CheckpointImportError,
                     match=r"tokenizer\.json: the tokenizer has 130 token ids but the model's"
                     r" embedding has vocab_size=128"):
    ci.import_hf_checkpoint(tmp_path)
  _write_tokenizer_json(tmp_path, VOCAB - 8)
  with pytest.raises(ci.CheckpointImportError, match="needs exactly 128"):
    ci.import_hf_checkpoint(tmp_path)
  assert ci.import_hf_checkpoint(tmp_path, allow_vocab_padding=True).tokenizer_vocab_size == 120
  _write_tokenizer_json(tmp_path, VOCAB)
  imported = ci.import_hf_checkpoint(tmp_path)
  assert (imported.tokenizer_file.name, imported.tokenizer_vocab_size) == ("tokenizer.json", 128)


def test_sentencepiece_tokenizer_model_is_counted(tmp_path):
  import sentencepiece as spm

  proto = io.BytesIO()
  words = ["hiking trails", "camping tents", "trail running", "jazz piano", "rock guitar"]
  spm.SentencePieceTrainer.train(sentence_iterator=iter(words * 20), model_writer=proto,
                                 vocab_size=40, model_type="char", num_threads=1)
  (tmp_path / "tokenizer.model").write_bytes(proto.getvalue())
  path, size = ci.tokenizer_vocab_size(tmp_path)
  assert path.name == "tokenizer.model" and 20 < size <= 40
  with pytest.raises(ci.CheckpointImportError, match=f"has {size} token ids"):
    ci.check_tokenizer(tmp_path, TINY_LLAMA)


def test_missing_files_are_named(tmp_path):
  with pytest.raises(ci.CheckpointImportError, match="config.json"):
    ci.import_hf_checkpoint(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps(_hf_config(TINY_LLAMA)))
  with pytest.raises(ci.CheckpointImportError, match="model.safetensors"):
    ci.import_hf_checkpoint(tmp_path)


def test_imported_weights_seed_the_trainer(tmp_path):
  from explore import partitioning
  from explore.llm.decoder_task import DecoderTask
  from explore.train import Trainer, TrainerConfig

  model = _write_folder(tmp_path / "hf", TINY_LLAMA, seed=5)
  imported = ci.import_hf_checkpoint(tmp_path / "hf")
  initial = ci.write_initial_checkpoint(imported.model, tmp_path / "initial")
  assert initial.name == "checkpoint_0"
  task = DecoderTask(config=imported.config)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=-1))
  trainer = Trainer(task, task.model_fn(seed=9), tmp_path / "finetune", mesh,
                    TrainerConfig(train_steps=1, batch_size=8,
                                  initial_checkpoint_path=str(tmp_path / "initial"),
                                  restore_weights_only=True))
  assert trainer.restore() == 0
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                  jax.tree.leaves(nnx.state(trainer.model, nnx.Param))):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------
# Parity with the reference implementation (transformers, torch on CPU)


@pytest.mark.parametrize("family, kwargs", [
    ("llama", {}),
    ("llama", dict(tie_word_embeddings=True, rope_parameters=dict(
        rope_type="llama3", rope_theta=5e5, factor=8.0, low_freq_factor=1.0,
        high_freq_factor=4.0, original_max_position_embeddings=8))),
    ("gemma", {}),
], ids=["llama", "llama3-rope-tied", "gemma"])
def test_logits_match_transformers(hf, tmp_path, family, kwargs):
  reference = hf_parity.hf_model(hf, family, **kwargs)
  reference.save_pretrained(tmp_path, safe_serialization=True)
  imported = ci.import_hf_checkpoint(tmp_path)
  assert imported.config.family == family
  hf_parity.assert_logits_match(hf_parity.our_logits(imported.model),
                                hf_parity.hf_logits(hf, reference))


def test_bfloat16_sharded_save_imports_exact_weights(hf, tmp_path):
  reference = hf_parity.hf_model(hf, "gemma").to(hf[0].bfloat16)
  reference.save_pretrained(tmp_path, safe_serialization=True, max_shard_size="50KB")
  assert (tmp_path / INDEX_FILE).exists()
  imported = ci.import_hf_checkpoint(tmp_path)
  expected = reference.model.layers[1].mlp.down_proj.weight.detach().float().numpy().T
  np.testing.assert_array_equal(np.asarray(imported.model.blocks[1].mlp.down.get_value()),
                                expected)
