"""The trainer's settings (`TrainerConfig`, gin-configurable) and its result.

Kept apart from `trainer.py` so configuration and reporting code can read
them without the training loop; `explore.train.trainer` re-exports them.
"""

from __future__ import annotations

import dataclasses
import math

import gin
import numpy as np


class TrainerConfigError(ValueError):
  """A TrainerConfig value, or its fit to the mesh, is invalid."""


@gin.configurable
@dataclasses.dataclass
class TrainerConfig:
  """Trainer settings (gin: `TrainerConfig.train_steps = %TRAIN_STEPS`)."""

  train_steps: int = gin.REQUIRED  # absolute step to train to (T5X TRAIN_STEPS)
  batch_size: int = gin.REQUIRED  # global batch size (examples)
  grad_accum_steps: int = 1  # microbatches per step (batch_size divisible by it)
  eval_every: int = 500  # steps; 0 disables
  eval_batches: int | None = None  # None = the whole eval iterator
  checkpoint_every: int = 1000
  checkpoint_at_end: bool = True  # False: only every checkpoint_every steps
  keep_checkpoints: int = 3
  log_every: int = 50
  initial_checkpoint_path: str | None = None  # used when model_dir has no checkpoint
  restore_weights_only: bool = False  # new optimizer state (fine-tuning); logged
  peak_flops_per_device: float | None = None  # None = look up by device kind
  seed: int = 0  # for the caller's model_fn and data order; recorded, not used here
  measured_peak_flops_per_device: float | None = None  # measured matmul peak: `mfu_measured`
  async_checkpointing: bool = True

  def validate(self) -> None:
    def positive_int(name: str, allow_zero: bool = False) -> None:
      value = getattr(self, name)
      low = 0 if allow_zero else 1
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise TrainerConfigError(f"TrainerConfig.{name}={value!r} must be an integer >= {low}")

    for name in ("train_steps", "batch_size", "grad_accum_steps", "checkpoint_every",
                 "keep_checkpoints", "log_every"):
      positive_int(name)
    positive_int("eval_every", allow_zero=True)
    if self.eval_batches is not None:
      positive_int("eval_batches")
    if self.batch_size % self.grad_accum_steps:
      raise TrainerConfigError(
          f"TrainerConfig.batch_size={self.batch_size} is not divisible by"
          f" grad_accum_steps={self.grad_accum_steps}")
    for name in ("peak_flops_per_device", "measured_peak_flops_per_device"):
      value = getattr(self, name)
      if value is not None and not value > 0:
        raise TrainerConfigError(f"TrainerConfig.{name}={value!r} must be > 0 or None")


@dataclasses.dataclass
class TrainResult:
  step: int
  history: list[dict]  # the run's logged metrics per log step (earlier processes' from metrics.jsonl)
  final_eval: dict | None
  stopped_reason: str  # "done" | "already_done" | "nan"


def steps_for_epochs(epochs: float, rows: int, batch_size: int) -> int:
  """Training steps for `epochs` passes over `rows` examples: ceil(epochs * rows / batch_size).

  Lets a config state its training length in epochs, so that the same config
  trains a larger dataset as thoroughly as a small one (at least one step).
  """
  if not epochs > 0 or rows < 1 or batch_size < 1:
    raise TrainerConfigError(f"steps_for_epochs: epochs={epochs!r} must be > 0, rows={rows} "
                             f"and batch_size={batch_size} >= 1")
  return max(1, math.ceil(epochs * rows / batch_size))
