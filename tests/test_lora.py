"""LoRA adapters in the decoder, merging them, and training only them with the trainer."""

import dataclasses
import functools

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore import partitioning
from explore import train
from explore.llm import layers
from explore.llm import lora
from explore.llm.checkpoint_import import write_initial_checkpoint
from explore.llm.decoder import build_decoder
from explore.llm.decoder_config import DecoderConfig, DecoderConfigError
from explore.llm.decoder_task import DecoderTask

BASE = DecoderConfig(vocab_size=32, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     head_dim=8, mlp_dim=64)
LORA = dataclasses.replace(BASE, lora_rank=4, lora_alpha=8.0)
LENGTH = 16


@functools.lru_cache(maxsize=None)
def _built(config, seed):
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  return nnx.split(partitioning.create_sharded_module(lambda: build_decoder(config, seed), mesh))


def _build(config, seed=0):
  """A fresh copy of the decoder built as the trainer builds it (eager init is slow)."""
  return nnx.merge(*_built(config, seed), copy=True)


@nnx.jit
def _forward(model, tokens):
  return model(tokens)


def _tokens(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(1, 32, shape), jnp.int32)


def _randomize_adapters(model, seed=0):
  """Non-zero B matrices, so the adapters change the outputs."""
  for i, (_, node) in enumerate(nnx.iter_graph(model)):
    if isinstance(node, layers.LoraAdapter):
      b = node.b.get_value()
      node.b.set_value(0.2 * jax.random.normal(jax.random.key(seed * 1000 + i), b.shape))


def _flat(state):
  return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(state)}


# ----------------------------------------------------------------------------
# The decoder with adapters


def test_fresh_adapters_leave_the_outputs_and_base_weights_unchanged():
  plain, adapted = _build(BASE, seed=3), _build(LORA, seed=3)
  tokens = _tokens((2, LENGTH))
  np.testing.assert_array_equal(_forward(adapted, tokens), _forward(plain, tokens))
  base = _flat(nnx.state(adapted, nnx.Not(nnx.LoRAParam)))
  assert base.keys() == _flat(nnx.state(plain)).keys()
  for key, value in _flat(nnx.state(plain)).items():
    np.testing.assert_array_equal(base[key], value)


def test_adapter_adds_scaled_low_rank_update_on_a_multi_axis_kernel():
  """The output projection [N, H, D]: base(x) + alpha / r * (x A) B, A [N, H, r], B [r, D]."""
  model = _build(LORA, seed=0)
  _randomize_adapters(model)
  attention = model.blocks[0].attention
  x = np.random.default_rng(1).normal(size=(2, 3, 4, 8)).astype(np.float32)  # [B, T, N, H]
  got = layers.project(attention, "out", "BTNH,NHD->BTD", jnp.asarray(x), jnp.float32)
  kernel = np.asarray(attention.out[...], np.float64)  # [N, H, D]
  a = np.asarray(attention.out_lora.a[...], np.float64)  # [N, H, r]
  b = np.asarray(attention.out_lora.b[...], np.float64)  # [r, D]
  assert a.shape == (4, 8, 4) and b.shape == (4, 32)
  want = (np.einsum("btnh,nhd->btd", x, kernel)
          + (8.0 / 4) * np.einsum("btnh,nhr,rd->btd", x, a, b))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_adapters_only_on_targets_and_counted_by_the_config():
  config = dataclasses.replace(LORA, lora_targets=("query", "down"))
  model = _build(config, seed=0)
  names = {k[2:4] for k in _flat(nnx.state(model, nnx.LoRAParam))}
  assert names == {("attention", "query_lora"), ("mlp", "down_lora")}
  total = sum(v.size for v in _flat(nnx.state(model, nnx.LoRAParam)).values())
  assert total == config.num_lora_params() == 2 * 4 * ((32 + 32) + (64 + 32))
  assert sum(v.size for v in _flat(nnx.state(model)).values()) == config.num_params()


def test_adapter_axes_mirror_the_kernel_with_the_rank_replicated():
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=2, model=4))
  model = partitioning.create_sharded_module(lambda: build_decoder(LORA, seed=0), mesh)
  query = model.blocks[0].attention.query_lora
  assert tuple(partitioning.variable_logical_axes(query.a)) == ("embed", None)
  assert tuple(partitioning.variable_logical_axes(query.b)) == (None, "heads", "kv")
  P = jax.sharding.PartitionSpec
  assert query.b[...].sharding.spec == P(None, "model", None)
  assert model.blocks[0].mlp.down_lora.a[...].sharding.spec == P("model", None)


@pytest.mark.parametrize("change, match", [
    (dict(lora_targets=("query", "q_proj")), r"unknown projections \['q_proj'\]"),
    (dict(lora_targets="query"), "must be a tuple"),
    (dict(lora_rank=-1), "lora_rank=-1"),
    (dict(lora_alpha=0.0), "lora_alpha"),
    (dict(lora_targets=()), "lora_targets is empty"),
])
def test_bad_lora_settings_are_named(change, match):
  with pytest.raises(DecoderConfigError, match=match):
    dataclasses.replace(LORA, **change)


def test_merged_model_matches_the_adapted_one():
  model = _build(LORA, seed=0)
  _randomize_adapters(model, seed=1)
  tokens = _tokens((2, LENGTH), seed=2)
  merged = lora.merge_lora(model)
  assert merged.config.lora_rank == 0
  assert not jax.tree.leaves(nnx.state(merged, nnx.LoRAParam))
  adapted = _forward(model, tokens)
  assert np.abs(adapted - _forward(_build(BASE, seed=0), tokens)).max() > 1e-2
  np.testing.assert_allclose(_forward(merged, tokens), adapted, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------
# Training only the adapters


def _copy_batches(num, seed):
  """Second half of each row repeats the first: learnable in a few steps."""
  rng = np.random.default_rng(seed)
  half = rng.integers(2, 32, (num, LENGTH // 2))
  row = np.concatenate([half, half], axis=1)
  inputs = np.concatenate([np.zeros((num, 1), int), row[:, :-1]], axis=1)
  weights = np.zeros((num, LENGTH), np.float32)
  weights[:, LENGTH // 2:] = 1.0
  return dict(decoder_input_tokens=inputs.astype(np.int32),
              decoder_target_tokens=row.astype(np.int32), decoder_loss_weights=weights)


TASK = DecoderTask(config=LORA, sequence_length=LENGTH, packed=False)


def _trainer(model_dir, steps, total_steps=6, **config):
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  return train.Trainer(
      TASK, TASK.model_fn(seed=0), model_dir, mesh,
      train.TrainerConfig(train_steps=steps, batch_size=8, log_every=1, eval_every=0,
                          checkpoint_every=3, keep_checkpoints=5,
                          async_checkpointing=False, **config),
      optimizer=train.make_optimizer(total_steps, learning_rate=3e-2, warmup_steps=0),
      trainable=lora.trainable_filter(LORA))


def _data():
  return train.ArrayBatches(_copy_batches(64, seed=0), batch_size=8, seed=0)


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
  model_dir = tmp_path_factory.mktemp("lora")
  trainer = _trainer(model_dir, steps=6)
  result = trainer.train(_data())
  return trainer, result, model_dir


def test_lora_training_lowers_the_loss_and_changes_only_the_adapters(lora_run):
  trainer, result, _ = lora_run
  losses = [h["loss"] for h in result.history]
  assert result.stopped_reason == "done" and len(losses) == 6
  assert losses[-1] < losses[0], losses
  initial = _build(LORA, seed=0)
  base = _flat(nnx.state(trainer.model, nnx.Not(nnx.LoRAParam)))
  for key, value in _flat(nnx.state(initial, nnx.Not(nnx.LoRAParam))).items():
    np.testing.assert_array_equal(base[key], value, err_msg=str(key))
  adapters = _flat(nnx.state(trainer.model, nnx.LoRAParam))
  for key, value in _flat(nnx.state(initial, nnx.LoRAParam)).items():
    assert not np.array_equal(adapters[key], value), key


def test_optimizer_state_covers_only_the_adapters(lora_run):
  trainer, _, model_dir = lora_run
  adapter_sizes = sorted(v.size for v in _flat(nnx.state(trainer.model, nnx.LoRAParam)).values())
  moment_sizes = sorted(x.size for x in jax.tree.leaves(trainer._state.opt_state) if x.ndim)
  assert moment_sizes == sorted(adapter_sizes * 2)  # Adam's mu and nu per adapter matrix
  assert trainer.num_trainable_params == LORA.num_lora_params()
  assert trainer.num_params == LORA.num_params()
  info = (model_dir / "model-info.txt").read_text()
  assert f"Total params size: {LORA.num_lora_params()}" in info
  assert f"Total frozen_params size: {LORA.num_params() - LORA.num_lora_params()}" in info


def test_lora_resume_continues_with_the_same_losses(lora_run, tmp_path):
  _, uninterrupted, _ = lora_run
  first = _trainer(tmp_path, steps=3).train(_data())
  resumed = _trainer(tmp_path, steps=6).train(_data())
  # The resumed trainer's history is the whole run's: the first process's steps, then its own.
  assert [h["step"] for h in resumed.history] == [h["step"] for h in uninterrupted.history]
  np.testing.assert_allclose([h["loss"] for h in resumed.history[:len(first.history)]],
                             [h["loss"] for h in first.history], rtol=1e-6)
  np.testing.assert_allclose([h["loss"] for h in resumed.history],
                             [h["loss"] for h in uninterrupted.history], rtol=1e-6)


def test_a_checkpoint_without_adapters_restores_the_base_of_a_lora_model(tmp_path):
  pretrained = _build(BASE, seed=7)  # another seed: restored weights are visible
  write_initial_checkpoint(pretrained, tmp_path / "init")
  trainer = _trainer(tmp_path / "run", steps=6, initial_checkpoint_path=str(tmp_path / "init"),
                     restore_weights_only=True)
  assert trainer.restore() == 0
  model = trainer.model
  base = _flat(nnx.state(model, nnx.Not(nnx.LoRAParam)))
  for key, value in _flat(nnx.state(pretrained)).items():
    np.testing.assert_array_equal(base[key], value, err_msg=str(key))
  fresh = _flat(nnx.state(_build(LORA, seed=0), nnx.LoRAParam))
  for key, value in _flat(nnx.state(model, nnx.LoRAParam)).items():
    np.testing.assert_array_equal(value, fresh[key])
  tokens = _tokens((2, LENGTH), seed=4)
  np.testing.assert_allclose(_forward(model, tokens), _forward(pretrained, tokens), atol=1e-6)


def test_a_filter_that_selects_no_parameter_is_refused(tmp_path):
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  task = DecoderTask(config=BASE, sequence_length=LENGTH, packed=False)
  with pytest.raises(train.TrainableFilterError, match="selects no parameter"):
    train.Trainer(task, task.model_fn(seed=0), tmp_path, mesh,
                  train.TrainerConfig(train_steps=1, batch_size=8),
                  trainable=lora.trainable_filter(LORA))
