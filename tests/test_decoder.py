"""Tests of the decoder LLM: layers, masking, KV-cache decoding, presets and its TrainTask."""

from __future__ import annotations

import dataclasses
from pathlib import Path
import re

from flax import nnx
import gin
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore import partitioning
from explore.llm import layers
from explore.llm.decoder import Decoder, build_decoder, positions_from_segments
from explore.llm.decoder_config import DecoderConfig, DecoderConfigError
from explore.llm.decoder_task import DecoderTask, DecoderTaskError, token_cross_entropy

MODELS_DIR = Path(__file__).resolve().parents[1] / "configs" / "models"
TINY = DecoderConfig()  # llama, vocab 256, d 64, 2 layers, 4 heads, 2 kv heads
TINY_GEMMA = DecoderConfig(family="gemma")


@pytest.fixture(scope="module")
def llama():
  return build_decoder(TINY, seed=0)


@pytest.fixture(scope="module")
def gemma():
  return build_decoder(TINY_GEMMA, seed=1)


def _tokens(shape, seed=0, vocab=TINY.vocab_size):
  return jnp.asarray(np.random.RandomState(seed).randint(0, vocab, shape), jnp.int32)


@nnx.jit
def _forward(model, tokens, positions=None, segment_ids=None, padding_mask=None):
  """The full forward, compiled once per shape (eager op-by-op dispatch is slow on CPU)."""
  return model(tokens, positions, segment_ids, padding_mask)


@nnx.jit
def _decode(model, tokens, cache, positions, padding_mask=None):
  return model.decode(tokens, cache, positions, padding_mask)


def _task_loss(task: DecoderTask, model: Decoder, batch: dict) -> tuple[jax.Array, dict]:
  return nnx.jit(lambda m, b: task.loss(m, b, train=True))(model, batch)


def _param_count(model: nnx.Module) -> int:
  return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


# ----------------------------------------------------------------------------
# Config and presets


@pytest.mark.parametrize("config", [TINY, TINY_GEMMA, DecoderConfig(tie_embeddings=True),
                                    DecoderConfig(family="gemma", tie_embeddings=False)])
def test_num_params_counts_every_parameter(config):
  assert config.num_params() == _param_count(build_decoder(config))


def test_model_presets_state_their_parameter_counts():
  names = sorted(p.stem for p in MODELS_DIR.glob("*.gin"))
  assert names == ["100m", "1b", "2b", "300m", "tiny"]
  counts = {}
  for name in names:
    text = (MODELS_DIR / f"{name}.gin").read_text()
    stated = int(re.search(r"# Parameters: ([\d,]+)", text).group(1).replace(",", ""))
    gin.clear_config()
    try:
      gin.parse_config(text)
      config = DecoderConfig()
      task = DecoderTask()
    finally:
      gin.clear_config()
    assert config.num_params() == stated, name
    assert task.config == config
    counts[name] = stated
  assert counts["2b"] == 2_506_172_416  # Gemma 2B
  assert counts["1b"] == 1_100_048_384  # TinyLlama 1.1B
  assert counts["tiny"] < counts["100m"] < counts["300m"] < counts["1b"]


@pytest.mark.parametrize("kwargs, field", [
    (dict(family="gpt"), "family"), (dict(num_heads=6, num_kv_heads=4), "num_kv_heads"),
    (dict(head_dim=15), "head_dim"), (dict(dtype="float64"), "dtype"),
    (dict(activation="relu"), "activation"), (dict(rope_scaling="yarn"), "rope_scaling")])
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
  with pytest.raises(DecoderConfigError, match=field):
    DecoderConfig(**kwargs)


# ----------------------------------------------------------------------------
# Layers


def test_rmsnorm_scales_by_w_for_llama_and_one_plus_w_for_gemma():
  x = jnp.asarray(np.random.RandomState(0).randn(2, 3, 8), jnp.float32)
  normed = x / np.sqrt(np.mean(np.square(x), -1, keepdims=True) + 1e-6)
  for offset in (False, True):
    with nnx.use_eager_sharding(False):
      norm = layers.RMSNorm(8, eps=1e-6, add_unit_offset=offset, param_dtype=jnp.float32,
                            rngs=nnx.Rngs(0))
    norm.scale[...] = jnp.full((8,), 0.5)
    np.testing.assert_allclose(norm(x), normed * (1.5 if offset else 0.5), rtol=1e-5)


def test_rope_pairs_dimension_i_with_i_plus_half():
  head_dim, theta = 8, 100.0
  inv_freq = theta ** (-np.arange(0, head_dim, 2) / head_dim)
  x = np.random.RandomState(0).randn(1, 3, 2, head_dim).astype(np.float32)
  positions = np.array([[0, 5, 17]])
  # Reference: the pair (x_i, x_{i+H/2}) as a complex number times e^{i p f_i}.
  pairs = (x[..., :head_dim // 2] + 1j * x[..., head_dim // 2:])
  rotated = pairs * np.exp(1j * positions[..., None, None] * inv_freq)
  expected = np.concatenate([rotated.real, rotated.imag], axis=-1)
  out = layers.apply_rope(jnp.asarray(x), jnp.asarray(positions), jnp.asarray(inv_freq))
  np.testing.assert_allclose(out, expected, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
  inv_freq = jnp.asarray(TINY.rope_inverse_frequencies())
  q = jnp.asarray(np.random.RandomState(1).randn(1, 1, 1, 16), jnp.float32)
  k = jnp.asarray(np.random.RandomState(2).randn(1, 1, 1, 16), jnp.float32)

  def score(pq, pk):
    rq = layers.apply_rope(q, jnp.full((1, 1), pq), inv_freq)
    rk = layers.apply_rope(k, jnp.full((1, 1), pk), inv_freq)
    return float(jnp.sum(rq * rk))

  assert score(7, 3) == pytest.approx(score(104, 100), abs=1e-4)
  assert score(7, 3) != pytest.approx(score(7, 4), abs=1e-3)


# ----------------------------------------------------------------------------
# Masking


def test_logits_of_a_position_ignore_later_tokens(llama):
  tokens = _tokens((1, 10))
  changed = tokens.at[0, 6:].set((tokens[0, 6:] + 1) % TINY.vocab_size)
  a, b = _forward(llama, tokens), _forward(llama, changed)
  np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
  assert np.abs(a[:, 6:] - b[:, 6:]).max() > 1e-3


def test_positions_restart_in_each_segment():
  segments = jnp.asarray([[1, 1, 1, 2, 2, 3, 0, 0]])
  np.testing.assert_array_equal(positions_from_segments(segments), [[0, 1, 2, 0, 1, 0, 0, 1]])


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_packed_row_equals_its_examples_run_alone(family, llama, gemma):
  model = llama if family == "llama" else gemma
  first, second = _tokens((1, 5), seed=1), _tokens((1, 4), seed=2)
  packed = jnp.concatenate([first, second, jnp.zeros((1, 3), jnp.int32)], axis=1)
  segments = jnp.asarray([[1] * 5 + [2] * 4 + [0] * 3])
  logits = _forward(model, packed, segment_ids=segments)  # positions derived from segments
  np.testing.assert_allclose(logits[:, :5], _forward(model, first), atol=2e-5)
  np.testing.assert_allclose(logits[:, 5:9], _forward(model, second), atol=2e-5)


def test_padding_mask_hides_left_padding(llama):
  sequence = _tokens((1, 6), seed=3)
  padded = jnp.concatenate([jnp.full((1, 3), 7, jnp.int32), sequence], axis=1)
  mask = jnp.asarray([[False] * 3 + [True] * 6])
  positions = jnp.asarray([[0, 0, 0, 0, 1, 2, 3, 4, 5]])
  logits = _forward(llama, padded, positions, padding_mask=mask)
  np.testing.assert_allclose(logits[:, 3:], _forward(llama, sequence), atol=2e-5)


# ----------------------------------------------------------------------------
# KV-cache decoding


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_incremental_decoding_matches_the_full_forward(family, llama, gemma):
  model = llama if family == "llama" else gemma
  batch, length, prompt = 2, 12, 5
  tokens = _tokens((batch, length), seed=4)
  full = _forward(model, tokens)  # [B, T, V]
  cache = model.init_cache(batch, max_length=16)
  positions = jnp.broadcast_to(jnp.arange(length), (batch, length))
  logits, cache = _decode(model, tokens[:, :prompt], cache, positions[:, :prompt])
  outputs = [logits]
  for i in range(prompt, length):
    logits, cache = _decode(model, tokens[:, i:i + 1], cache, positions[:, i:i + 1])
    outputs.append(logits)
  assert int(cache.index) == length
  np.testing.assert_allclose(jnp.concatenate(outputs, axis=1), full, atol=1e-5, rtol=1e-5)


def test_left_padded_prompts_decode_like_unpadded_ones(llama):
  long_prompt, short_prompt = _tokens((1, 6), seed=5), _tokens((1, 3), seed=6)
  next_token = _tokens((2, 1), seed=7)
  prompts = jnp.concatenate(
      [long_prompt, jnp.concatenate([jnp.zeros((1, 3), jnp.int32), short_prompt], 1)], 0)
  padding = jnp.asarray([[True] * 6, [False] * 3 + [True] * 3])
  positions = jnp.asarray([[0, 1, 2, 3, 4, 5], [0, 0, 0, 0, 1, 2]])
  _, cache = _decode(llama, prompts, llama.init_cache(2, 8), positions, padding)
  logits, _ = _decode(llama, next_token, cache, jnp.asarray([[6], [3]]))
  alone_long = _forward(llama, jnp.concatenate([long_prompt, next_token[:1]], 1))[:, -1]
  alone_short = _forward(llama, jnp.concatenate([short_prompt, next_token[1:]], 1))[:, -1]
  np.testing.assert_allclose(logits[0, 0], alone_long[0], atol=2e-5)
  np.testing.assert_allclose(logits[1, 0], alone_short[0], atol=2e-5)


def test_cache_gather_follows_the_chosen_rows(llama):
  tokens = _tokens((3, 4), seed=8)
  positions = jnp.broadcast_to(jnp.arange(4), (3, 4))
  _, cache = _decode(llama, tokens, llama.init_cache(3, 6), positions)
  gathered = cache.gather(jnp.asarray([2, 2, 0]))
  np.testing.assert_array_equal(gathered.keys[1][1], cache.keys[1][2])
  np.testing.assert_array_equal(gathered.values[0][2], cache.values[0][0])
  next_tokens = _tokens((3, 1), seed=9)
  logits, _ = _decode(llama, next_tokens, gathered, jnp.full((3, 1), 4))
  chosen = tokens[jnp.asarray([2, 2, 0])]
  expected = _forward(llama, jnp.concatenate([chosen, next_tokens], 1))[:, -1]
  np.testing.assert_allclose(logits[:, 0], expected, atol=2e-5)


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_rows_over_a_shared_prefix_decode_like_rows_holding_a_copy(family, llama, gemma):
  """Beams reading their prompt's cache as a prefix equal beams that copied it."""
  model = llama if family == "llama" else gemma
  prompts = _tokens((2, 5), seed=10)
  padding = jnp.asarray([[True] * 5, [True] * 3 + [False] * 2])  # prompt 1 is 3 tokens
  positions = jnp.broadcast_to(jnp.arange(5), (2, 5))
  _, prompt_cache = _decode(model, prompts, model.init_cache(2, 5), positions, padding)
  beams = 3  # rows 0-2 continue prompt 0, rows 3-5 prompt 1
  outputs = _tokens((6, 3), seed=11)
  starts = jnp.repeat(jnp.asarray([5, 3]), beams)[:, None]  # first output position of each row
  own = model.init_cache(6, 3)
  copied = prompt_cache.gather(jnp.repeat(jnp.arange(2), beams))
  copied = dataclasses.replace(copied, keys=tuple(jnp.pad(k, ((0, 0), (0, 3), (0, 0), (0, 0)))
                                                  for k in copied.keys),
                               values=tuple(jnp.pad(v, ((0, 0), (0, 3), (0, 0), (0, 0)))
                                            for v in copied.values),
                               valid=jnp.pad(copied.valid, ((0, 0), (0, 3))))
  for step in range(3):
    token, position = outputs[:, step:step + 1], starts + step
    shared_logits, own = model.decode(token, own, position, prefix=prompt_cache)
    copy_logits, copied = _decode(model, token, copied, position)
    np.testing.assert_allclose(shared_logits, copy_logits, atol=2e-5, rtol=2e-5)
  assert int(own.index) == 3 and own.keys[0].shape[1] == 3  # the rows hold outputs only


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_logits_at_one_position_equal_that_position_of_the_full_logits(family, llama, gemma):
  model = llama if family == "llama" else gemma
  prompts = _tokens((3, 6), seed=12)
  padding = jnp.arange(6)[None, :] < jnp.asarray([6, 4, 1])[:, None]
  positions = jnp.broadcast_to(jnp.arange(6), (3, 6))
  last = jnp.asarray([5, 3, 0])
  full, full_cache = model.decode(prompts, model.init_cache(3, 8), positions, padding_mask=padding)
  one, one_cache = model.decode(prompts, model.init_cache(3, 8), positions, padding_mask=padding,
                                logits_at=last)
  assert one.shape == (3, 1, full.shape[-1])
  np.testing.assert_allclose(one[:, 0], full[jnp.arange(3), last], atol=1e-5, rtol=1e-5)
  for a, b in zip(full_cache.keys + full_cache.values, one_cache.keys + one_cache.values):
    np.testing.assert_array_equal(a, b)  # the cache does not depend on which logits are read


# ----------------------------------------------------------------------------
# Precision, remat, sharding


def test_bfloat16_compute_keeps_float32_params_and_logits(llama):
  config = dataclasses.replace(TINY, dtype="bfloat16")
  model = build_decoder(config, seed=0)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  tokens = _tokens((2, 8), seed=10)
  logits = _forward(model, tokens)
  assert logits.dtype == jnp.float32
  np.testing.assert_allclose(logits, _forward(llama, tokens), atol=0.1)


def test_remat_gives_the_same_gradients():
  tokens = _tokens((2, 6), seed=11)

  def grads(config):
    model = build_decoder(config, seed=0)
    graphdef, params = nnx.split(model, nnx.Param)
    loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(tokens) ** 2)
    return jax.jit(jax.grad(loss))(params)

  plain, remat = grads(TINY), grads(dataclasses.replace(TINY, remat=True))
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(remat)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_sharded_forward_under_a_mesh_matches_single_device(llama):
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=2, fsdp=1, model=4))
  model = partitioning.create_sharded_module(lambda: build_decoder(TINY, seed=0), mesh)
  query = nnx.state(model)["blocks"][0]["attention"]["query"].get_value()
  assert query.sharding.spec == jax.sharding.PartitionSpec("fsdp", "model", None)
  tokens = _tokens((4, 8), seed=12)
  with jax.set_mesh(mesh):
    logits = nnx.jit(lambda m, t: m(t))(model, tokens)
  np.testing.assert_allclose(logits, _forward(llama, tokens), atol=1e-5)


# ----------------------------------------------------------------------------
# DecoderTask


def test_token_cross_entropy_matches_a_numpy_reference():
  rng = np.random.RandomState(13)
  logits = rng.randn(2, 3, 5).astype(np.float32)
  targets = rng.randint(0, 5, (2, 3))
  weights = np.array([[1, 1, 0], [0, 2, 1]], np.float32)
  sums = token_cross_entropy(jnp.asarray(logits), jnp.asarray(targets), jnp.asarray(weights),
                             z_loss=1e-2)
  lse = np.log(np.exp(logits).sum(-1))
  ce = lse - np.take_along_axis(logits, targets[..., None], -1)[..., 0]
  z = 1e-2 * lse ** 2
  assert float(sums["weight"]) == 5.0
  assert float(sums["loss_sum"]) == pytest.approx(float((weights * (ce + z)).sum()), rel=1e-5)
  assert float(sums["z_loss_sum"]) == pytest.approx(float((weights * z).sum()), rel=1e-5)
  assert float(sums["correct"]) == float((weights * (logits.argmax(-1) == targets)).sum())


def test_task_loss_ignores_tokens_of_weight_zero(llama):
  task = DecoderTask(config=TINY, packed=False)
  inputs = _tokens((2, 8), seed=14)
  targets = _tokens((2, 8), seed=15)
  weights = jnp.asarray([[0] * 4 + [1] * 4] * 2)
  batch = dict(decoder_input_tokens=inputs, decoder_target_tokens=targets,
               decoder_loss_weights=weights)
  loss, sums = _task_loss(task, llama, batch)
  other = dict(batch, decoder_target_tokens=targets.at[:, :4].set(0))
  loss_other, _ = _task_loss(task, llama, other)
  assert float(sums["weight"]) == 8.0
  assert float(loss) == pytest.approx(float(sums["loss_sum"]) / 8.0)
  assert float(loss) == pytest.approx(float(loss_other), rel=1e-6)


def test_task_uses_segment_ids_when_packed(llama):
  task = DecoderTask(config=TINY)
  assert set(task.batch_logical_axes()) == {
      "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights",
      "decoder_segment_ids", "decoder_positions"}
  inputs = _tokens((1, 8), seed=16)
  batch = dict(decoder_input_tokens=inputs, decoder_target_tokens=_tokens((1, 8), seed=17),
               decoder_loss_weights=jnp.ones((1, 8)),
               decoder_segment_ids=jnp.asarray([[1] * 4 + [2] * 4]),
               decoder_positions=jnp.asarray([[0, 1, 2, 3] * 2]))
  unpacked = {k: v for k, v in batch.items() if k.startswith("decoder_") and "seg" not in k
              and "pos" not in k}
  assert float(_task_loss(task, llama, batch)[0]) != pytest.approx(
      float(_task_loss(task, llama, unpacked)[0]), abs=1e-4)


def test_task_names_missing_features(llama):
  with pytest.raises(DecoderTaskError, match="decoder_loss_weights"):
    DecoderTask(config=TINY).loss(llama, {"decoder_input_tokens": _tokens((1, 4)),
                                          "decoder_target_tokens": _tokens((1, 4))}, True)


def test_flops_per_example_matches_a_hand_count():
  # Tiny: D=64, L=2, N=4, K=2, H=16, F=256, V=256, T=32.
  t = 32
  q_o = 2 * (64 * 4 * 16)  # q and o projections
  k_v = 2 * (64 * 2 * 16)  # k and v projections
  mlp = 3 * 64 * 256
  forward = 2 * t * 2 * (q_o + k_v + mlp) + 2 * 2 * t * t * 4 * 16 + 2 * t * 64 * 256
  assert DecoderTask(config=TINY, sequence_length=t).flops_per_example() == 3 * forward
  assert DecoderTask(config=TINY).flops_per_example() is None


# ----------------------------------------------------------------------------
# Training with the shared trainer


def _copy_task_batches(num: int, length: int, vocab: int, seed: int) -> dict[str, np.ndarray]:
  """Rows `x SEP x` (x of length/2 - 1 random tokens); the loss is on the copy."""
  rng = np.random.RandomState(seed)
  half = length // 2
  source = rng.randint(3, vocab, (num, half - 1))
  targets = np.concatenate([source, np.full((num, 1), 2), source, np.ones((num, 1), int)], 1)
  inputs = np.concatenate([np.zeros((num, 1), int), targets[:, :-1]], 1)
  weights = np.zeros((num, length), np.float32)
  weights[:, half:] = 1.0
  return dict(decoder_input_tokens=inputs.astype(np.int32),
              decoder_target_tokens=targets.astype(np.int32), decoder_loss_weights=weights)


def test_trainer_learns_a_copy_task(tmp_path):
  from explore.train import ArrayBatches, Trainer, TrainerConfig, make_optimizer

  config = DecoderConfig(vocab_size=16, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=8, mlp_dim=64)
  task = DecoderTask(config=config, sequence_length=16, packed=False)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=-1))
  steps = 40
  trainer = Trainer(task, task.model_fn(seed=0), tmp_path / "model", mesh,
                    TrainerConfig(train_steps=steps, batch_size=32, log_every=10, eval_every=0,
                                  checkpoint_every=steps, async_checkpointing=False),
                    optimizer=make_optimizer(steps, learning_rate=1e-2, warmup_steps=5))
  data = ArrayBatches(_copy_task_batches(512, 16, 16, seed=0), batch_size=32, seed=0)
  result = trainer.train(data)
  assert result.stopped_reason == "done"
  first, last = result.history[0]["loss"], result.history[-1]["loss"]
  assert last < 0.75 * first, (first, last)
  assert "mfu" in result.history[-1] or "timing/tokens_per_second" in result.history[-1]
