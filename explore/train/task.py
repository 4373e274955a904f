"""What a model family gives the trainer: its loss, batch layout and FLOPs.

The trainer is generic: a `TrainTask` turns (model, batch) into a scalar loss
to differentiate plus *summed* metric numerators with their denominators, so
metrics average correctly over microbatches, steps and eval batches whatever
their sizes (padding examples simply carry weight 0).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from flax import nnx
import jax

# Metric keys with a fixed meaning (see `TrainTask.loss`).
WEIGHT = "weight"
CORRECT = "correct"
LOSS_SUM = "loss_sum"
SUM_SUFFIX = "_sum"


@runtime_checkable
class TrainTask(Protocol):
  """The contract between a model family and `Trainer`."""

  def loss(self, model: nnx.Module, batch: dict[str, jax.Array], train: bool
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scalar mean loss and a dict of *summed* metric numerators with their denominators.

    E.g. {"correct": n_correct, "weight": n_targets, "loss_sum": sum_loss}; the
    trainer reports loss = loss_sum / weight and accuracy = correct / weight
    (keys it knows) and passes the rest through as sum/weight ratios when a key
    ends in '_sum' (`mrr_sum` -> `mrr`).
    """
    ...

  def batch_logical_axes(self) -> dict[str, tuple[str | None, ...]]:
    """Logical axes of each batch feature, e.g. {"inputs": ("batch", "length")}."""
    ...

  def flops_per_example(self) -> float | None:
    """Training FLOPs per example (3 x forward, MaxText counting) for MFU; None to skip MFU."""
    ...
