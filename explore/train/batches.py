"""Placing host batches on the mesh by the task's logical batch axes.

Each feature's sharding comes from `task.batch_logical_axes()` through the
logical axis rules (`batch` -> data [+ fsdp]). Every process passes the same
global batch; `jax.device_put` keeps the shards its devices own.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from absl import logging
import jax
import numpy as np

from explore import partitioning


class TrainingDataError(ValueError):
  """A batch lacks a feature the task declares, or has the wrong shape."""


class BatchPlacer:
  """Checks host batches against the declared features and shards them."""

  def __init__(self, mesh: jax.sharding.Mesh, batch_axes: Mapping[str, tuple[str | None, ...]],
               rules: Any):
    self.mesh = mesh
    self.rules = rules
    self.batch_axes = {name: tuple(axes) for name, axes in batch_axes.items()}
    self.shardings = {name: partitioning.logical_sharding(mesh, axes, rules)
                      for name, axes in self.batch_axes.items()}
    spec = partitioning.logical_to_mesh_axes(("batch",), rules)[0]
    axes = () if spec is None else ((spec,) if isinstance(spec, str) else tuple(spec))
    self.data_parallel_size = math.prod(mesh.shape[a] for a in axes)
    self._warned: set[str] = set()

  def microbatch_constraint(self, name: str, x: jax.Array) -> jax.Array:
    """Inside jit: keeps a [microbatches, batch, ...] feature split like its batch."""
    axes = (None,) + self.batch_axes[name]
    return jax.lax.with_sharding_constraint(
        x, partitioning.logical_sharding(self.mesh, axes, self.rules))

  def place(self, batch: Mapping[str, Any], batch_size: int | None,
            what: str) -> dict[str, jax.Array]:
    """The batch's declared features as sharded arrays; `what` names the data in errors."""
    if not isinstance(batch, Mapping):
      raise TrainingDataError(f"{what}: a batch must be a dict of arrays, got"
                              f" {type(batch).__name__}")
    out = {}
    for name, axes in self.batch_axes.items():
      if name not in batch:
        raise TrainingDataError(
            f"{what}: batch lacks feature {name!r} that task.batch_logical_axes() declares;"
            f" it has {sorted(batch)}")
      x = np.asarray(batch[name])
      if x.ndim != len(axes):
        raise TrainingDataError(f"{what}: feature {name!r} has shape {x.shape} but logical"
                                f" axes {axes}")
      if batch_size is not None and x.shape[0] != batch_size:
        raise TrainingDataError(f"{what}: feature {name!r} has {x.shape[0]} examples, expected"
                                f" batch_size={batch_size}")
      if x.shape[0] % self.data_parallel_size:
        raise TrainingDataError(
            f"{what}: feature {name!r} has {x.shape[0]} examples, not divisible by the"
            f" data-parallel size {self.data_parallel_size}; pad the batch (weight 0)")
      out[name] = jax.device_put(x, self.shardings[name])
    for name in sorted(set(batch) - set(self.batch_axes) - self._warned):
      self._warned.add(name)
      logging.warning("%s: ignoring batch feature %r (not in task.batch_logical_axes())",
                      what, name)
    return out

  def tokens_per_example(self, batch: Mapping[str, Any]) -> float | None:
    """Elements per example of the first feature with a `length` axis (None if none)."""
    for name, axes in self.batch_axes.items():
      if "length" in axes:
        return float(np.prod(np.shape(batch[name])[1:]))
    return None
