"""Sharded training (8 emulated devices) and gradient accumulation match one device."""

import jax
import numpy as np
import pytest

from explore import partitioning
from explore import train
import trainer_fixtures as fixtures

STEPS = 5


def _run(model_dir, mesh_config, devices=None, grad_accum_steps=1, steps=STEPS):
  mesh = partitioning.create_mesh(mesh_config, devices)
  trainer = train.Trainer(
      fixtures.TinyTask(), fixtures.make_model, model_dir, mesh,
      train.TrainerConfig(train_steps=steps, batch_size=8, grad_accum_steps=grad_accum_steps,
                          log_every=1, eval_every=0, checkpoint_every=100),
      optimizer=train.make_optimizer(steps, learning_rate=3e-2, warmup_steps=0))
  result = trainer.train(train.ArrayBatches(fixtures.make_data(), 8, seed=0))
  model = trainer.model
  params = {name: np.asarray(getattr(model, name)[...]) for name in ("w_in", "b_in", "w_out")}
  shardings = {name: getattr(model, name)[...].sharding for name in ("w_in", "w_out")}
  return [r["loss"] for r in result.history], params, shardings


@pytest.fixture(scope="module")
def single_device(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("one"), partitioning.MeshConfig(data=1),
              jax.devices()[:1])


@pytest.mark.parametrize("sizes", [{"data": 8}, {"data": 2, "model": 4}],
                         ids=["data8", "data2_model4"])
def test_sharded_training_matches_one_device(single_device, tmp_path, sizes):
  losses, params, shardings = _run(tmp_path, partitioning.MeshConfig(**sizes))
  ref_losses, ref_params, _ = single_device
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for name in ref_params:
    np.testing.assert_allclose(params[name], ref_params[name], rtol=1e-5, atol=1e-7)
  if sizes.get("model") == 4:  # the logical axes really split the parameters
    assert shardings["w_in"].spec == jax.sharding.PartitionSpec("fsdp", "model")
    assert shardings["w_in"].shard_shape((8, 16)) == (8, 4)


def test_grad_accumulation_gives_the_full_batch_update(single_device, tmp_path):
  losses, params, _ = _run(tmp_path, partitioning.MeshConfig(data=2, model=4),
                           grad_accum_steps=2)
  ref_losses, ref_params, _ = single_device
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  for name in ref_params:
    np.testing.assert_allclose(params[name], ref_params[name], rtol=1e-5, atol=1e-7)
