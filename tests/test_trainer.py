"""Trainer: learning, the T5X model_dir layout, resume rules, NaN stop and bad input."""

import json
import logging
import shutil

import jax
import numpy as np
import pytest

from explore import partitioning
from explore import train
import trainer_fixtures as fixtures

TRAIN_STEPS = 40
PEAK_FLOPS = 1e9
FLOPS_PER_EXAMPLE = 2e3


def _mesh(**sizes):
  if not sizes:
    return partitioning.create_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  return partitioning.create_mesh(partitioning.MeshConfig(**sizes))


def _trainer(model_dir, mesh=None, train_steps=TRAIN_STEPS, task=None, **config):
  config = {"batch_size": 8, "log_every": 10, "eval_every": 20, "checkpoint_every": 20,
            **config}
  return train.Trainer(
      task or fixtures.TinyTask(), fixtures.make_model, model_dir, mesh or _mesh(),
      train.TrainerConfig(train_steps=train_steps, **config),
      optimizer=train.make_optimizer(train_steps, learning_rate=3e-2, warmup_steps=0))


def _eval_batches(num_examples=32, batch_size=8):
  data = fixtures.make_data(num_examples, seed=7)
  return [{k: v[i:i + batch_size] for k, v in data.items()}
          for i in range(0, num_examples, batch_size)]


def _params(model):
  return {"w_in": np.asarray(model.w_in[...]), "w_out": np.asarray(model.w_out[...])}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """One 40-step run shared by the tests that only read its results."""
  model_dir = tmp_path_factory.mktemp("trained")
  trainer = _trainer(model_dir, task=fixtures.TinyTask(flops=FLOPS_PER_EXAMPLE),
                     peak_flops_per_device=PEAK_FLOPS)
  result = trainer.train(train.ArrayBatches(fixtures.make_data(), 8, seed=0), _eval_batches)
  return model_dir, result, _params(trainer.model)


def _jsonl(path):
  return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_goes_down(trained):
  _, result, _ = trained
  assert result.stopped_reason == "done" and result.step == TRAIN_STEPS
  losses = [r["loss"] for r in result.history]
  assert [r["step"] for r in result.history] == [10, 20, 30, 40]
  assert losses[-1] < 0.6 * losses[0], losses
  assert result.final_eval["accuracy"] > 0.6


def test_model_dir_has_the_t5x_layout(trained):
  model_dir, _, _ = trained
  assert train.checkpoint_steps(model_dir) == [20, 40]
  info = (model_dir / "model-info.txt").read_text()
  assert "params w_in  Param  dtype=float32  shape=(8, 16)" in info
  assert "logical_axes=('embed', 'mlp')  partition_spec=P('fsdp', 'model')" in info
  assert "extras dropout/rngs/key" in info
  assert list((model_dir / "train").glob("events.out.tfevents.*"))
  assert list((model_dir / "training_eval").glob("events.out.tfevents.*"))


def test_checkpoint_at_end_false_saves_only_every_checkpoint_every(tmp_path):
  trainer = _trainer(tmp_path, train_steps=30, checkpoint_at_end=False, eval_every=0)
  result = trainer.train(train.ArrayBatches(fixtures.make_data(), 8, seed=0))
  assert result.step == 30
  assert train.checkpoint_steps(tmp_path) == [20]


def test_train_scalars_include_the_t5x_tags_and_mfu(trained):
  model_dir, result, _ = trained
  lines = _jsonl(model_dir / "train" / "metrics.jsonl")
  assert "timing/compilation_seconds" in lines[0]
  last = lines[-1]
  for tag in ("loss", "accuracy", "learning_rate", "timing/steps_per_second",
              "timing/seqs_per_second", "mfu"):
    assert tag in last, tag
  assert last["mfu"] == pytest.approx(
      FLOPS_PER_EXAMPLE * last["timing/seqs_per_second"] / PEAK_FLOPS)  # one device
  assert last == {k: v for k, v in result.history[-1].items()}
  evals = _jsonl(model_dir / "training_eval" / "metrics.jsonl")
  assert [e["step"] for e in evals] == [20, 40] and evals[-1]["eval_batches"] == 4


@pytest.fixture(scope="module")
def rerun(trained):
  """A second trainer on the finished model_dir (restores instead of training)."""
  model_dir, _, _ = trained
  return _trainer(model_dir)


def test_rerun_at_train_steps_is_already_done_and_restores_the_model(trained, rerun, caplog):
  _, _, params = trained
  caplog.set_level(logging.INFO, logger="absl")
  rerun._restored = False  # whichever test runs first, this one sees the restore log
  result = rerun.train(train.ArrayBatches(fixtures.make_data(), 8, seed=0))
  assert result.stopped_reason == "already_done" and result.step == TRAIN_STEPS
  assert "already at step 40 >= train_steps=40" in caplog.text
  np.testing.assert_array_equal(_params(rerun.model)["w_in"], params["w_in"])


def test_evaluate_ignores_padding_with_weight_zero(rerun):
  rerun.restore()
  plain = rerun.evaluate(_eval_batches(24, batch_size=8))
  padded = _eval_batches(24, batch_size=8)
  last = padded.pop()
  for half in (slice(0, 4), slice(4, 8)):  # two batches of 4 examples + 4 padding
    batch = {k: np.concatenate([v[half], v[:4]]) for k, v in last.items()}
    batch["weights"][4:] = 0.0
    padded.append(batch)
  result = rerun.evaluate(padded)
  assert result["loss"] == pytest.approx(plain["loss"], rel=1e-6)
  assert result["accuracy"] == pytest.approx(plain["accuracy"])
  assert result["examples_weight"] == 24 and result["eval_batches"] == 4


def test_weights_only_restore_starts_a_fresh_optimizer(trained, tmp_path, caplog):
  model_dir, _, params = trained
  caplog.set_level(logging.INFO, logger="absl")
  trainer = _trainer(tmp_path / "finetune", train_steps=5,
                     initial_checkpoint_path=str(model_dir / "checkpoint_40"),
                     restore_weights_only=True)
  assert trainer.restore() == 0
  assert (f"restored params from {model_dir / 'checkpoint_40'} step 40; optimizer state"
          " freshly initialised") in caplog.text
  np.testing.assert_array_equal(_params(trainer.model)["w_out"], params["w_out"])
  adam = trainer._state.opt_state[1][0]
  assert int(adam.count) == 0
  assert not np.any(np.asarray(adam.mu["w_in"][...]))
  data = train.ArrayBatches(fixtures.make_data(), 8, seed=0)
  result = trainer.train(data)
  assert result.step == 5 and train.checkpoint_steps(tmp_path / "finetune") == [5]


def test_train_again_with_a_larger_train_steps_continues_without_recompiling(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  trainer = _trainer(tmp_path, train_steps=8, log_every=1, eval_every=0, checkpoint_every=100)
  data = train.ArrayBatches(fixtures.make_data(), 8, seed=0)
  trainer.config.train_steps = 3
  first = trainer.train(data)
  trainer.config.train_steps = 5
  second = trainer.train(data)
  assert [r["step"] for r in first.history] == [1, 2, 3]
  assert [r["step"] for r in second.history] == [1, 2, 3, 4, 5]  # the run's whole history
  assert train.checkpoint_steps(tmp_path) == [3, 5]
  assert caplog.text.count("compiled the train step") == 1


def test_resume_trains_on_to_a_larger_train_steps_and_keeps_n(trained, tmp_path):
  model_dir, _, _ = trained
  shutil.copytree(model_dir, tmp_path / "run")
  trainer = _trainer(tmp_path / "run", train_steps=60, checkpoint_every=5,
                     keep_checkpoints=2, eval_every=0)
  result = trainer.train(train.ArrayBatches(fixtures.make_data(), 8, seed=0))
  assert [r["step"] for r in result.history] == [10, 20, 30, 40, 50, 60]  # the whole run's
  assert train.checkpoint_steps(tmp_path / "run") == [55, 60]
  assert result.final_eval is None


def test_resumed_run_reports_the_first_loss_of_the_whole_run(tmp_path):
  """Stopped after N steps and resumed to 2N: the history starts as the uninterrupted run's."""
  kwargs = dict(log_every=2, checkpoint_every=4, eval_every=2)
  reference = _trainer(tmp_path / "reference", train_steps=8, **kwargs).train(
      train.ArrayBatches(fixtures.make_data(), 8, seed=0), _eval_batches)
  _trainer(tmp_path / "run", train_steps=4, **kwargs).train(
      train.ArrayBatches(fixtures.make_data(), 8, seed=0), _eval_batches)
  # A killed process may have logged steps after its last checkpoint: they are rewritten.
  with open(tmp_path / "run" / "train" / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 6, "loss": 123.0}) + "\n" + '{"step": 7, "lo')
  resumed = _trainer(tmp_path / "run", train_steps=8, **kwargs).train(
      train.ArrayBatches(fixtures.make_data(), 8, seed=0), _eval_batches)
  assert [r["step"] for r in resumed.history] == [2, 4, 6, 8]
  # The first loss is the run's (the learning-rate schedule, stretched to train_steps, makes
  # later steps differ from the 8-step reference).
  assert resumed.history[0]["loss"] == reference.history[0]["loss"]
  assert "timing/compilation_seconds" in resumed.history[-2]  # the resumed process compiled
  for folder in ("train", "training_eval"):
    steps = [r["step"] for r in _jsonl(tmp_path / "run" / folder / "metrics.jsonl")]
    assert steps == [2, 4, 6, 8], folder  # each step once


def test_nan_stops_without_saving_and_keeps_the_last_good_checkpoint(tmp_path, caplog):
  caplog.set_level(logging.INFO, logger="absl")
  data = fixtures.make_data(nan_examples=slice(48, 56))  # batch 7 (unshuffled)
  trainer = _trainer(tmp_path, train_steps=20, checkpoint_every=5, log_every=100,
                     eval_every=0)
  result = trainer.train(train.ArrayBatches(data, 8, seed=0, shuffle=False))
  assert result.stopped_reason == "nan" and result.step == 10
  assert train.checkpoint_steps(tmp_path) == [5]
  assert (f"non-finite loss or gradient at step 7: stopping at step 10 without saving this"
          f" state; the latest checkpoint stays {tmp_path}/checkpoint_5") in caplog.text
  assert np.isnan(result.history[-1]["loss"])


def test_batch_size_must_split_over_grad_accum_steps(tmp_path):
  with pytest.raises(train.TrainerConfigError,
                     match="batch_size=10 is not divisible by grad_accum_steps=4"):
    _trainer(tmp_path, batch_size=10, grad_accum_steps=4)


def test_batch_size_must_split_over_the_data_parallel_devices(tmp_path):
  with pytest.raises(train.TrainerConfigError, match="12 examples per microbatch .* 8"):
    _trainer(tmp_path, mesh=_mesh(data=8), batch_size=12)


def test_train_steps_must_be_positive(tmp_path):
  with pytest.raises(train.TrainerConfigError, match="train_steps=0"):
    train.Trainer(fixtures.TinyTask(), fixtures.make_model, tmp_path, _mesh(),
                  train.TrainerConfig(train_steps=0, batch_size=8))


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
  return _trainer(tmp_path_factory.mktemp("fresh"))


def test_a_missing_batch_feature_is_named(fresh):
  data = fixtures.make_data()
  del data["weights"]
  with pytest.raises(train.TrainingDataError, match="lacks feature 'weights'"):
    fresh.train(train.ArrayBatches(data, 8, seed=0))


def test_a_wrong_batch_size_is_named(fresh):
  with pytest.raises(train.TrainingDataError, match="has 4 examples, expected batch_size=8"):
    fresh.train(train.ArrayBatches(fixtures.make_data(), 4, seed=0))


def _averaging_trainer(model_dir, train_steps, **config):
  config = {"batch_size": 8, "log_every": 10, "eval_every": 0, "checkpoint_every": 5, **config}
  return train.Trainer(
      fixtures.TinyTask(), fixtures.make_model, model_dir, _mesh(),
      train.TrainerConfig(train_steps=train_steps, **config),
      optimizer=train.make_optimizer(train_steps, learning_rate=3e-2, warmup_steps=0,
                                     param_average_decay=0.5))


def test_parameter_average_starts_at_restored_weights_and_resumes(trained, tmp_path):
  model_dir, _, params = trained
  assert _trainer(tmp_path / "plain").averaged_model is None
  trainer = _averaging_trainer(tmp_path / "avg", train_steps=5,
                               initial_checkpoint_path=str(model_dir / "checkpoint_40"),
                               restore_weights_only=True)
  trainer.restore()
  # Not the random initialisation: the imported weights.
  np.testing.assert_array_equal(_params(trainer.averaged_model)["w_out"], params["w_out"])
  trainer.train(train.ArrayBatches(fixtures.make_data(), 8, seed=0))
  average, trained_now = _params(trainer.averaged_model), _params(trainer.model)
  assert not np.allclose(average["w_out"], trained_now["w_out"])  # it lags the weights
  assert not np.allclose(average["w_out"], params["w_out"])  # and it moved
  resumed = _averaging_trainer(tmp_path / "avg", train_steps=5)
  assert resumed.restore() == 5  # the average is checkpointed with the optimizer state
  np.testing.assert_array_equal(_params(resumed.averaged_model)["w_out"], average["w_out"])
