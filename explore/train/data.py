"""Resumable batch iterators: the trainer saves their position in each checkpoint.

A `ResumableIterator` yields global batches (dicts of numpy arrays) and can
report and restore a JSON-able position, so a run restarted from a checkpoint
continues with exactly the batch that would have come next: no example is
replayed or skipped. `ArrayBatches` is a ready one over in-memory arrays.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, runtime_checkable

import numpy as np


class DataStateError(ValueError):
  """Bad arrays or settings for a batch iterator, or a saved position that does not fit it."""


@runtime_checkable
class ResumableIterator(Protocol):
  """Iterator of numpy batch dicts (global batch) with a JSON-able position.

  The position is saved in checkpoints so a restart continues with the same
  next batch (no example replayed or skipped).
  """

  def __next__(self) -> dict[str, np.ndarray]:
    ...

  def get_state(self) -> dict:
    ...

  def set_state(self, state: dict) -> None:
    ...


class ArrayBatches:
  """Endless epochs over in-memory arrays that share a leading (example) dimension.

  Each epoch visits the examples in a permutation drawn from (seed, epoch), so
  the order is a pure function of the position: `get_state()` is just
  {epoch, index}. With `drop_remainder` an epoch's last partial batch is
  skipped (static shapes for training); without it the last batch is smaller.
  """

  def __init__(self, arrays: Mapping[str, np.ndarray], batch_size: int, seed: int,
               shuffle: bool = True, drop_remainder: bool = True):
    if not arrays:
      raise DataStateError("ArrayBatches: arrays is empty; give at least one feature")
    self.arrays = {name: np.asarray(a) for name, a in arrays.items()}
    lengths = {name: (a.shape[0] if a.ndim else None) for name, a in self.arrays.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
      raise DataStateError(f"ArrayBatches: features must share their leading (example)"
                           f" dimension; got lengths {lengths}")
    self.num_examples = next(iter(lengths.values()))
    if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
      raise DataStateError(f"ArrayBatches: batch_size={batch_size!r} must be a positive integer")
    if drop_remainder and self.num_examples < batch_size:
      raise DataStateError(f"ArrayBatches: batch_size={batch_size} is larger than the"
                           f" {self.num_examples} examples and drop_remainder=True would"
                           " never yield a batch")
    if self.num_examples == 0:
      raise DataStateError("ArrayBatches: the arrays hold no examples")
    self.batch_size = int(batch_size)
    self.seed = int(seed)
    self.shuffle = shuffle
    self.drop_remainder = drop_remainder
    self.epoch = 0
    self.index = 0  # examples of the current epoch already served
    self._order = self._epoch_order(0)

  @property
  def batches_per_epoch(self) -> int:
    full, rest = divmod(self.num_examples, self.batch_size)
    return full + (1 if rest and not self.drop_remainder else 0)

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if not self.shuffle:
      return np.arange(self.num_examples)
    return np.random.default_rng([self.seed, epoch]).permutation(self.num_examples)

  def __iter__(self) -> "ArrayBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    remaining = self.num_examples - self.index
    if remaining == 0 or (self.drop_remainder and remaining < self.batch_size):
      self.epoch += 1
      self.index = 0
      self._order = self._epoch_order(self.epoch)
    take = self._order[self.index:self.index + self.batch_size]  # [batch]
    self.index += len(take)
    return {name: a[take] for name, a in self.arrays.items()}

  def get_state(self) -> dict[str, Any]:
    return {"epoch": self.epoch, "index": self.index, "seed": self.seed,
            "num_examples": self.num_examples, "batch_size": self.batch_size}

  def set_state(self, state: Mapping[str, Any]) -> None:
    """Moves to a position from `get_state()`; refuses one made for other data."""
    for key in ("epoch", "index"):
      if not isinstance(state.get(key), int) or state[key] < 0:
        raise DataStateError(f"ArrayBatches.set_state: {key}={state.get(key)!r} must be a"
                             f" non-negative integer (state {dict(state)})")
    for key in ("seed", "num_examples", "batch_size"):
      if key in state and state[key] != getattr(self, key):
        raise DataStateError(
            f"ArrayBatches.set_state: saved {key}={state[key]} but this iterator has"
            f" {key}={getattr(self, key)}; the checkpoint was made with other data")
    if state["index"] > self.num_examples:
      raise DataStateError(f"ArrayBatches.set_state: index={state['index']} is past the"
                           f" {self.num_examples} examples")
    self.epoch = state["epoch"]
    self.index = state["index"]
    self._order = self._epoch_order(self.epoch)
