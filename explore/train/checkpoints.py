"""Train-state checkpoints in `model_dir/checkpoint_<step>/` (orbax-checkpoint).

Each checkpoint is an orbax composite of items:
  params     the model's nnx.Param variables (sharded arrays)
  extras     the model's other variables, e.g. RNG streams (only when it has any)
  opt_state  the optax state (omitted in a weights-only checkpoint, e.g. an import)
  data       the train iterator's position (JSON), so a resume replays nothing
  train      {"step", "format_version"} (JSON)
Saves are asynchronous (arrays are copied off the devices before `save`
returns, then written in the background) and keep the newest
`keep_checkpoints`. Restores place every array straight into its target
sharding. Orbax writes into a temporary folder and renames it on commit, so a
`checkpoint_<step>` folder is always complete.
"""

from __future__ import annotations

import os
from pathlib import Path
import re
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp

from explore.train.train_step import TrainState
from explore.train.train_step import split_model

STEP_PREFIX = "checkpoint"
FORMAT_VERSION = 1
_STEP_DIR = re.compile(rf"^{STEP_PREFIX}_(\d+)$")


class CheckpointError(ValueError):
  """A checkpoint path is missing, not a checkpoint, or does not fit the model."""


def save_weights(model: Any, model_dir: str | os.PathLike, step: int = 0) -> Path:
  """Saves `model`'s variables without optimizer state as `model_dir/checkpoint_<step>`.

  A weights-only checkpoint: restore it with `weights_only=True` (or
  `TrainerConfig.restore_weights_only = True`). Returns the checkpoint folder.
  """
  _, params, extras = split_model(model)
  state = TrainState(params=params, extras=extras, opt_state={},
                     step=jax.numpy.asarray(step, jax.numpy.int32))
  manager = TrainCheckpoints(model_dir, keep=None, async_save=False)
  try:
    manager.save(state, data_state=None)
  finally:
    manager.close()
  return Path(model_dir) / f"{STEP_PREFIX}_{step}"


def checkpoint_steps(directory: str | os.PathLike) -> list[int]:
  """Steps of the committed `checkpoint_<step>` folders in `directory`, ascending."""
  directory = Path(directory)
  if not directory.is_dir():
    return []
  return sorted(int(m.group(1)) for p in directory.iterdir()
                if p.is_dir() and (m := _STEP_DIR.match(p.name)))


def resolve_checkpoint(path: str | os.PathLike) -> tuple[Path, int]:
  """(model_dir, step) of a `checkpoint_<step>` folder or of a model_dir's latest one."""
  path = Path(path)
  if not path.exists():
    raise CheckpointError(f"checkpoint path {path} does not exist")
  match = _STEP_DIR.match(path.name)
  if match and path.is_dir():
    return path.parent, int(match.group(1))
  steps = checkpoint_steps(path)
  if not steps:
    raise CheckpointError(f"checkpoint path {path} is neither a {STEP_PREFIX}_<step> folder"
                          f" nor a folder holding one")
  return path, steps[-1]


def _has_leaves(tree: Any) -> bool:
  return bool(jax.tree.leaves(tree))


def _conform(restored: Any, target: Any) -> Any:
  """Restored leaves in exactly the target's tree structure (jit cache friendly)."""
  leaves = jax.tree.leaves(restored)
  treedef = jax.tree.structure(target)
  if len(leaves) != treedef.num_leaves:
    raise CheckpointError(f"restored {len(leaves)} arrays where the model expects"
                          f" {treedef.num_leaves}")
  return jax.tree.unflatten(treedef, leaves)


class TrainCheckpoints:
  """Saves and restores `TrainState` plus the data position under `model_dir`."""

  def __init__(self, model_dir: str | os.PathLike, keep: int | None = 3,
               async_save: bool = True):
    self.model_dir = Path(model_dir).absolute()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, step_prefix=STEP_PREFIX, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=True, create=True)
    self._manager = ocp.CheckpointManager(self.model_dir, options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, state: TrainState, data_state: dict | None) -> int:
    """Starts an asynchronous save of `state` at its step; returns the step."""
    step = int(jax.device_get(state.step))
    items = {
        "params": ocp.args.StandardSave(state.params),
        "data": ocp.args.JsonSave(data_state or {}),
        "train": ocp.args.JsonSave({"step": step, "format_version": FORMAT_VERSION}),
    }
    # Orbax refuses empty trees: a model without extras, or a weights-only
    # checkpoint (an imported model) without optimizer state, omits the item.
    if _has_leaves(state.extras):
      items["extras"] = ocp.args.StandardSave(state.extras)
    if _has_leaves(state.opt_state):
      items["opt_state"] = ocp.args.StandardSave(state.opt_state)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    return step

  def restore(self, target: TrainState, path: str | os.PathLike | None = None,
              weights_only: bool = False) -> tuple[dict[str, Any], int, dict | None]:
    """Restores from `path` (a checkpoint or model_dir; default: this model_dir's latest).

    `target` holds arrays or jax.ShapeDtypeStructs with the target shardings.
    Returns ({"params", "extras"[, "opt_state"]}, step, data_state); with
    `weights_only` the optimizer state and data position are not read.
    """
    if path is None:
      directory, step = self.model_dir, self.latest_step()
      if step is None:
        raise CheckpointError(f"no {STEP_PREFIX}_<step> folder in {self.model_dir}")
    else:
      directory, step = resolve_checkpoint(path)
    folder = directory / f"{STEP_PREFIX}_{step}"
    present = {p.name for p in folder.iterdir()}
    if "params" not in present:
      raise CheckpointError(f"{folder} holds no 'params' item (found {sorted(present)})")

    def abstract(tree):
      return jax.tree.map(
          lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=s.sharding), tree)

    wanted = {"params": ocp.args.StandardRestore(abstract(target.params))}
    if _has_leaves(target.extras) and "extras" in present:
      wanted["extras"] = ocp.args.StandardRestore(abstract(target.extras))
    if not weights_only:
      if "opt_state" not in present:
        raise CheckpointError(f"{folder} holds no optimizer state (weights only); restore it"
                              " with TrainerConfig.restore_weights_only = True")
      wanted["opt_state"] = ocp.args.StandardRestore(abstract(target.opt_state))
      if "data" in present:
        wanted["data"] = ocp.args.JsonRestore()
    try:
      restored = self._manager.restore(step, directory=directory,
                                       args=ocp.args.Composite(**wanted))
    except (ValueError, KeyError, TypeError, FileNotFoundError) as e:
      raise CheckpointError(f"cannot restore {folder} into this model: {e}") from e
    out = {"params": _conform(restored["params"], target.params)}
    if "extras" in wanted:
      out["extras"] = _conform(restored["extras"], target.extras)
    if "opt_state" in wanted:
      out["opt_state"] = _conform(restored["opt_state"], target.opt_state)
    data_state = restored["data"] if "data" in wanted else None
    logging.info("read %s (%s)", folder, ", ".join(sorted(wanted)))
    return out, step, data_state

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
