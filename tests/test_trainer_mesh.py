"""The trainer runs its steps under the mesh, so the decoder's activation constraints apply."""

import jax
import jax.numpy as jnp
import numpy as np

from explore import partitioning
from explore import train
from explore.llm import layers
from explore.llm.decoder_config import DecoderConfig
from explore.llm.decoder_task import DecoderTask

LENGTH = 16
BATCH = 8
CONFIG = DecoderConfig(vocab_size=32, d_model=32, num_layers=1, num_heads=4, num_kv_heads=4,
                       head_dim=8, mlp_dim=64)
TASK = DecoderTask(config=CONFIG, sequence_length=LENGTH, packed=False)


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  return {"decoder_input_tokens": rng.integers(0, 32, (64, LENGTH)).astype(np.int32),
          "decoder_target_tokens": rng.integers(0, 32, (64, LENGTH)).astype(np.int32),
          "decoder_loss_weights": np.ones((64, LENGTH), np.float32)}


def _trainer(model_dir, mesh, steps=3):
  return train.Trainer(
      TASK, TASK.model_fn(seed=0), model_dir, mesh,
      train.TrainerConfig(train_steps=steps, batch_size=BATCH, log_every=1, eval_every=0,
                          checkpoint_every=100, async_checkpointing=False),
      optimizer=train.make_optimizer(steps, learning_rate=1e-2, warmup_steps=0))


def test_compiled_train_step_carries_the_activation_constraints(tmp_path):
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=2, model=4))
  trainer = _trainer(tmp_path, mesh)
  batch = trainer.batches.place({k: v[:BATCH] for k, v in _batch().items()}, BATCH, "test")
  text = trainer.lower_train_step(batch).as_text()
  # The MLP hidden activation [batch, length, mlp]: batch over data x fsdp, mlp over model.
  assert ('sharding_constraint' in text
          and '[{"data", "fsdp"}, {}, {"model"}]> : tensor<8x16x64xf32>' in text), text[:2000]
  # GQA keys/values [batch, length, kv_heads, kv]: 4 kv heads divide model=4.
  assert '[{"data", "fsdp"}, {}, {"model"}, {}]> : tensor<8x16x4x8xf32>' in text


def test_kv_heads_shard_over_model_only_when_they_divide():
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=2, model=4))
  axes = ("batch", "length", "kv_heads", "kv")
  constrain = jax.jit(lambda x: layers.constrain(x * 2.0, axes))
  with jax.set_mesh(mesh):
    divides = constrain(jnp.ones((2, 4, 4, 8)))
    does_not = constrain(jnp.ones((2, 4, 2, 8)))  # 2 kv heads over model=4: replicated
  assert divides.sharding.shard_shape(divides.shape) == (1, 4, 1, 8)
  assert does_not.sharding.shard_shape(does_not.shape) == (1, 4, 2, 8)
  # Outside a mesh context the constraint is a no-op.
  np.testing.assert_array_equal(layers.constrain(jnp.ones((2, 4, 2, 8)), axes), 1.0)


def test_sharded_decoder_training_matches_one_device(tmp_path):
  results = []
  for name, config, devices in (("one", partitioning.MeshConfig(data=1), jax.devices()[:1]),
                                ("mesh", partitioning.MeshConfig(data=2, model=4), None)):
    trainer = _trainer(tmp_path / name, partitioning.create_mesh(config, devices))
    result = trainer.train(train.ArrayBatches(_batch(), BATCH, seed=0))
    mlp_gate = np.asarray(trainer.model.blocks[0].mlp.gate[...])
    results.append(([h["loss"] for h in result.history], mlp_gate))
  (single_losses, single_gate), (mesh_losses, mesh_gate) = results
  np.testing.assert_allclose(mesh_losses, single_losses, rtol=1e-5)
  np.testing.assert_allclose(mesh_gate, single_gate, rtol=1e-5, atol=1e-6)
