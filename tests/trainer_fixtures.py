"""A tiny MLP classifier task for the trainer tests, also runnable as a training script.

`python3 tests/trainer_fixtures.py MODEL_DIR --train_steps=N ...` trains it
the way the preemption test needs (a subprocess it can SIGKILL) and prints
nothing but absl logs; its per-step losses land in MODEL_DIR/train/metrics.jsonl.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
import time

import numpy as np

NUM_FEATURES = 8
HIDDEN = 16
NUM_CLASSES = 8


def make_model(seed: int = 0, dropout: float = 0.0):
  """An MLP whose parameters carry logical axes (embed, mlp, vocab)."""
  from flax import nnx
  import jax.numpy as jnp

  class TinyClassifier(nnx.Module):

    def __init__(self, rngs: nnx.Rngs):
      init = nnx.initializers.normal(NUM_FEATURES ** -0.5)  # cheaper to compile than lecun's
      self.w_in = nnx.Param(nnx.with_partitioning(init, ("embed", "mlp"))(
          rngs.params(), (NUM_FEATURES, HIDDEN)))
      self.b_in = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, ("mlp",))(
          rngs.params(), (HIDDEN,)))
      self.w_out = nnx.Param(nnx.with_partitioning(init, ("mlp", "vocab"))(
          rngs.params(), (HIDDEN, NUM_CLASSES)))
      self.dropout = nnx.Dropout(dropout, rngs=rngs)

    def __call__(self, x, train: bool):
      h = jnp.tanh(jnp.einsum("BD,DF->BF", x, self.w_in[...]) + self.b_in[...])  # [batch, mlp]
      h = self.dropout(h, deterministic=not train)
      return jnp.einsum("BF,FV->BV", h, self.w_out[...])  # [batch, vocab]

  return TinyClassifier(nnx.Rngs(params=seed, dropout=seed + 1))


class TinyTask:
  """Weighted softmax cross-entropy; examples with weight 0 are padding."""

  def __init__(self, flops: float | None = None):
    self.flops = flops

  def loss(self, model, batch, train):
    import jax
    import jax.numpy as jnp
    logits = model(batch["inputs"], train)  # [batch, classes]
    labels = batch["labels"]  # [batch]
    weights = batch["weights"].astype(jnp.float32)  # [batch]
    per_example = -jnp.take_along_axis(
        jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]  # [batch]
    loss_sum = jnp.sum(per_example * weights)
    weight = jnp.sum(weights)
    correct = jnp.sum((jnp.argmax(logits, -1) == labels) * weights)
    return loss_sum / jnp.maximum(weight, 1e-9), {
        "loss_sum": loss_sum, "weight": weight, "correct": correct}

  def batch_logical_axes(self):
    return {"inputs": ("batch", None), "labels": ("batch",), "weights": ("batch",)}

  def flops_per_example(self):
    return self.flops


def make_data(num_examples: int = 256, seed: int = 0, nan_examples: slice | None = None
              ) -> dict[str, np.ndarray]:
  """Labels are a fixed linear function's argmax of Gaussian inputs (learnable)."""
  rng = np.random.default_rng(seed)
  inputs = rng.normal(size=(num_examples, NUM_FEATURES)).astype(np.float32)
  true_weights = np.random.default_rng(1234).normal(size=(NUM_FEATURES, NUM_CLASSES))
  labels = np.argmax(inputs @ true_weights, axis=-1).astype(np.int32)
  if nan_examples is not None:
    inputs[nan_examples] = np.nan
  return {"inputs": inputs, "labels": labels,
          "weights": np.ones(num_examples, np.float32)}


class SlowBatches:
  """Wraps a ResumableIterator, sleeping before each batch (to be killed mid-run)."""

  def __init__(self, inner, seconds: float):
    self.inner, self.seconds = inner, seconds

  def __next__(self):
    time.sleep(self.seconds)
    return next(self.inner)

  def get_state(self):
    return self.inner.get_state()

  def set_state(self, state):
    self.inner.set_state(state)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("model_dir")
  parser.add_argument("--train_steps", type=int, default=30)
  parser.add_argument("--checkpoint_every", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--dropout", type=float, default=0.1)
  parser.add_argument("--sleep_per_step", type=float, default=0.0)
  args = parser.parse_args()
  from absl import logging
  logging.set_verbosity(logging.INFO)  # the trainer's resume line goes to stderr
  from explore import partitioning
  from explore import train
  import jax

  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  config = train.TrainerConfig(train_steps=args.train_steps, batch_size=args.batch_size,
                               checkpoint_every=args.checkpoint_every, log_every=1,
                               eval_every=0, keep_checkpoints=10)
  trainer = train.Trainer(TinyTask(), lambda: make_model(dropout=args.dropout),
                          args.model_dir, mesh, config,
                          optimizer=train.make_optimizer(args.train_steps, learning_rate=1e-2,
                                                         warmup_steps=2))
  data = train.ArrayBatches(make_data(), args.batch_size, seed=0)
  batches = SlowBatches(data, args.sleep_per_step) if args.sleep_per_step else data
  result = trainer.train(batches)
  Path(args.model_dir, "result.json").write_text(json.dumps(
      {"step": result.step, "stopped_reason": result.stopped_reason}))


if __name__ == "__main__":
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's explore
  main()
