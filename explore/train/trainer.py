"""The T5X-style trainer: sharded jit steps, resumable checkpoints, TensorBoard scalars.

`Trainer(task, model_fn, model_dir, mesh, config)` builds the model sharded by
its logical axes, and `train(train_data, eval_data_fn)` runs to the absolute
step `config.train_steps`:

  * resume: from the latest `model_dir/checkpoint_<step>` (params, optimizer
    state, step and the data iterator's position), else from
    `initial_checkpoint_path` (weights only with `restore_weights_only`), else a
    fresh initialisation; a run already at `train_steps` returns "already_done";
  * each step is one `jax.jit` call with in/out shardings from the logical axis
    rules that donates the previous state (see `train_step`), lowered and run
    under `jax.set_mesh(mesh)` so the model's activation sharding constraints
    (`explore.llm.layers.constrain`) take effect;
  * `trainable` (an nnx filter, default every `nnx.Param`) picks the parameters
    the optimizer updates; the other parameters are frozen (e.g. the base of a
    LoRA model). Checkpoints hold every parameter whatever the filter, so an
    initial checkpoint made without adapters restores the frozen base of a LoRA
    model (weights only) while the adapters start fresh;
  * every `log_every` steps: a log line, `train/` TensorBoard scalars and
    `metrics.jsonl` (on resume, cut back to the restored step, so it holds each
    step once and `TrainResult.history` is the whole run's); every `eval_every` steps: `evaluate` into `training_eval/`;
    every `checkpoint_every` steps and at the end (unless `checkpoint_at_end` is
    False, e.g. for benchmarks): an asynchronous checkpoint;
  * a non-finite loss or gradient (tracked on device every step, checked on the
    host at every log, eval and checkpoint step) stops the run before anything
    is saved, so the last good checkpoint stays the latest.
"""

from __future__ import annotations

from pathlib import Path
import time
from typing import Any, Callable, Iterable, Mapping

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec
import numpy as np

from explore import partitioning
from explore import progress
from explore.train import checkpoints as checkpoints_lib
from explore.train import metrics as metrics_lib
from explore.train import model_info
from explore.train import optimizer as optimizer_lib
from explore.train import train_step as step_lib
from explore.train.batches import BatchPlacer
from explore.train.batches import TrainingDataError
from explore.train.data import ResumableIterator
from explore.train.optimizer import make_optimizer
from explore.train.task import TrainTask
from explore.train.trainer_config import TrainerConfig
from explore.train.trainer_config import TrainerConfigError
from explore.train.trainer_config import TrainResult

MODEL_INFO_FILE = "model-info.txt"
TRAIN_DIR = "train"
EVAL_DIR = "training_eval"


class Trainer:
  """Trains `model_fn()` on `task` under `model_dir` over `mesh`; see the module docstring."""

  def __init__(self, task: TrainTask, model_fn: Callable[[], nnx.Module],
               model_dir: str | Path, mesh: jax.sharding.Mesh,
               config: TrainerConfig | None = None, rules=None,
               optimizer: tuple | None = None, trainable: step_lib.Filter = nnx.Param):
    self.task = task
    self.config = TrainerConfig() if config is None else config
    self.config.validate()
    self.model_dir = Path(model_dir)
    self.mesh = mesh
    self.rules = partitioning.logical_axis_rules() if rules is None else rules
    self._is_chief = jax.process_index() == 0
    self._replicated = NamedSharding(mesh, PartitionSpec())

    self.batches = BatchPlacer(mesh, task.batch_logical_axes(), self.rules)
    micro = self.config.batch_size // self.config.grad_accum_steps
    if micro % self.batches.data_parallel_size:
      raise TrainerConfigError(
          f"TrainerConfig.batch_size={self.config.batch_size} / grad_accum_steps="
          f"{self.config.grad_accum_steps} = {micro} examples per microbatch is not divisible"
          f" by the data-parallel size {self.batches.data_parallel_size}"
          f" ({partitioning.describe_mesh(mesh)})")

    self.tx, self.schedule = (make_optimizer(total_steps=self.config.train_steps)
                              if optimizer is None else optimizer)
    model = partitioning.create_sharded_module(model_fn, mesh, self.rules)
    step_lib.check_trainable(model, trainable)
    self.trainable = trainable
    self.graphdef, params, frozen, extras = step_lib.split_trainable(model, trainable)
    params_sh = partitioning.state_shardings(mesh, params, self.rules)
    frozen_sh = partitioning.state_shardings(mesh, frozen, self.rules)
    extras_sh = partitioning.state_shardings(mesh, extras, self.rules)
    opt_sh = partitioning.state_shardings(mesh, jax.eval_shape(self.tx.init, params), self.rules)
    self.state_shardings = step_lib.TrainState(params=params_sh, extras=extras_sh,
                                               opt_state=opt_sh, step=self._replicated)
    self.frozen_shardings = frozen_sh
    self._init_opt_state = jax.jit(self.tx.init, out_shardings=opt_sh)
    self._state = step_lib.TrainState(
        params=params, extras=extras, opt_state=self._init_opt_state(params),
        step=jax.device_put(jnp.zeros((), jnp.int32), self._replicated))
    self._frozen = frozen  # parameters read by every step, never updated
    self.num_trainable_params = step_lib.param_count(params)
    self.num_params = self.num_trainable_params + step_lib.param_count(frozen)
    self.checkpoints = checkpoints_lib.TrainCheckpoints(
        self.model_dir, keep=self.config.keep_checkpoints,
        async_save=self.config.async_checkpointing)
    self._restored = False
    self._pending_data_state: dict | None = None
    self._compiled: tuple[Any, Any] | None = None  # (batch layout, compiled train step)
    self._compile_seconds: float | None = None  # reported with the next logged step

    step_fn = step_lib.make_train_step(self.graphdef, task, self.tx,
                                       self.config.grad_accum_steps,
                                       self.batches.microbatch_constraint, trainable)
    # The frozen parameters are an input only: not donated, not returned.
    self._train_step = jax.jit(
        step_fn,
        in_shardings=(self.state_shardings, frozen_sh, self.batches.shardings,
                      self._replicated),
        out_shardings=(self.state_shardings, self._replicated, self._replicated),
        donate_argnums=(0, 3))
    eval_fn, self._zero_metrics = step_lib.make_eval_step(self.graphdef, task, trainable)
    self._eval_step = jax.jit(
        eval_fn, in_shardings=(params_sh, frozen_sh, extras_sh, self.batches.shardings,
                               self._replicated),
        out_shardings=self._replicated, donate_argnums=(4,))

  # ---------------------------------------------------------------------------
  # State

  @property
  def model(self) -> nnx.Module:
    """The model with the current (trained or restored) state."""
    return nnx.merge(self.graphdef, self._state.params, self._frozen, self._state.extras)

  @property
  def averaged_model(self) -> nnx.Module | None:
    """The model with the optimizer's parameter average (`make_optimizer`'s
    `param_average_decay`) in place of the trained parameters; None without one."""
    average = optimizer_lib.averaged_params(self._state.opt_state)
    if average is None:
      return None
    return nnx.merge(self.graphdef, average, self._frozen, self._state.extras)

  @property
  def frozen_params(self) -> nnx.State:
    """The parameters the `trainable` filter leaves out (empty by default)."""
    return self._frozen

  def _checkpoint_state(self) -> step_lib.TrainState:
    """The state in the checkpoint layout: every nnx.Param in `params` (`split_model`)."""
    _, params, extras = step_lib.split_model(self.model)
    return step_lib.TrainState(params=params, extras=extras, opt_state=self._state.opt_state,
                               step=self._state.step)

  @property
  def step(self) -> int:
    return int(jax.device_get(self._state.step))

  def restore(self, train_data: ResumableIterator | None = None) -> int:
    """Loads the latest checkpoint of model_dir, else the initial one; returns the step.

    The first call decides what is loaded; later calls only hand a data position
    that is still pending to `train_data`. The data position is restored only
    from model_dir's own checkpoints (an initial checkpoint belongs to another run).
    """
    if not self._restored:
      self._restored = True
      self._load_checkpoint()
    if self._pending_data_state and train_data is not None:
      if not hasattr(train_data, "set_state"):
        raise TrainingDataError(
            f"{self.model_dir}/checkpoint_{self.step} holds a data position but the train"
            f" iterator {type(train_data).__name__} has no set_state()")
      train_data.set_state(self._pending_data_state)
      self._pending_data_state = None
      self._log(f"data iterator continues from its saved position at step {self.step}")
    return self.step

  def _load_checkpoint(self) -> None:
    cfg = self.config
    if self.checkpoints.latest_step() is not None:
      restored, step, data_state = self.checkpoints.restore(self._checkpoint_state())
      self._state = self._replace(restored, step)
      self._pending_data_state = data_state or None
      what = " and data position" if data_state else " (no data position saved)"
      self._log(f"resumed from {self.model_dir}/checkpoint_{step}: params, optimizer state"
                f" and step{what}")
    elif cfg.initial_checkpoint_path:
      restored, step, fresh_trainable = self._restore_initial()
      if cfg.restore_weights_only:
        self._state = self._replace(restored, 0)
        if fresh_trainable:
          self._log(f"restored the {self.num_params - self.num_trainable_params} frozen params"
                    f" from {cfg.initial_checkpoint_path} step {step}; the"
                    f" {self.num_trainable_params} trainable params (not in that checkpoint,"
                    " e.g. LoRA adapters) and the optimizer state freshly initialised")
        else:
          self._log(f"restored params from {cfg.initial_checkpoint_path} step {step};"
                    " optimizer state freshly initialised")
      else:
        self._state = self._replace(restored, step)
        self._log(f"restored params and optimizer state from {cfg.initial_checkpoint_path}"
                  f" step {step}; the data iterator starts from its beginning")
    else:
      self._log(f"no checkpoint in {self.model_dir} and no initial_checkpoint_path:"
                " training from a fresh initialisation")

  def _restore_initial(self) -> tuple[dict[str, Any], int, bool]:
    """Reads `initial_checkpoint_path`: (restored items, step, trainable params left fresh).

    A weights-only restore into a model with frozen parameters falls back to
    the frozen ones alone when the checkpoint lacks the trainable ones (an
    imported model fine-tuned with new LoRA adapters).
    """
    cfg = self.config
    path, weights_only = cfg.initial_checkpoint_path, cfg.restore_weights_only
    try:
      restored, step, _ = self.checkpoints.restore(self._checkpoint_state(), path=path,
                                                   weights_only=weights_only)
      return restored, step, False
    except checkpoints_lib.CheckpointError as every_param_error:
      if not (weights_only and jax.tree.leaves(self._frozen)):
        raise
      frozen_only = step_lib.TrainState(params=self._frozen, extras=self._state.extras,
                                        opt_state=self._state.opt_state, step=self._state.step)
      try:
        restored, step, _ = self.checkpoints.restore(frozen_only, path=path, weights_only=True)
      except checkpoints_lib.CheckpointError as e:
        raise checkpoints_lib.CheckpointError(
            f"{e}\n(restoring every parameter, trainable ones included, failed too:"
            f" {every_param_error})") from e
      return restored, step, True

  def _replace(self, restored: Mapping[str, Any], step: int) -> step_lib.TrainState:
    """The train state with restored parameters (all, or the frozen ones) and items.

    Restored parameters come in the checkpoint layout; they are written into the
    model and split again by `trainable`, so the state keeps its exact structure.
    """
    model = nnx.merge(self.graphdef, self._state.params, self._frozen, self._state.extras,
                      copy=True)
    nnx.update(model, restored["params"])
    if "extras" in restored:
      nnx.update(model, restored["extras"])
    _, params, self._frozen, extras = step_lib.split_trainable(model, self.trainable)
    return step_lib.TrainState(
        params=params, extras=extras,
        # Without a restored optimizer state, a fresh one from the restored parameters (a
        # parameter average starts there, not at the random initialisation).
        opt_state=(restored["opt_state"] if "opt_state" in restored
                   else self._init_opt_state(params)),
        step=jax.device_put(jnp.asarray(step, jnp.int32), self._replicated))

  # ---------------------------------------------------------------------------
  # Training

  def train(self, train_data: ResumableIterator,
            eval_data_fn: Callable[[], Iterable[dict]] | None = None) -> TrainResult:
    """Trains to `config.train_steps`, resuming where model_dir left off."""
    cfg = self.config
    step = self.restore(train_data)
    if step >= cfg.train_steps:
      self._log(f"{self.model_dir} is already at step {step} >= train_steps={cfg.train_steps};"
                " nothing to train")
      return TrainResult(step=step, history=metrics_lib.read_history(self.model_dir / TRAIN_DIR,
                                                                     step),
                         final_eval=None, stopped_reason="already_done")
    if self._is_chief:
      groups = [("params", self._state.params, self.state_shardings.params)]
      if jax.tree.leaves(self._frozen):
        groups.append(("frozen_params", self._frozen, self.frozen_shardings))
      groups.append(("extras", self._state.extras, self.state_shardings.extras))
      model_info.write_model_info(self.model_dir / MODEL_INFO_FILE, self.mesh, groups)
    self._log(f"trainable parameters: {self.num_trainable_params} of {self.num_params}"
              f" ({100.0 * self.num_trainable_params / max(self.num_params, 1):.3g}%)")
    train_writer = metrics_lib.MetricWriter(self.model_dir / TRAIN_DIR, self._is_chief)
    # The whole run's records: those up to the restored step, then this call's.
    history: list[dict] = train_writer.resume(step)
    if self._is_chief:
      metrics_lib.truncate_history(self.model_dir / EVAL_DIR, step)
    eval_writer = None
    final_eval = None
    try:
      batch = self.batches.place(next(train_data), cfg.batch_size, "train data")
      tokens_per_example = (self.task.tokens_per_example()
                            if hasattr(self.task, "tokens_per_example")
                            else self.batches.tokens_per_example(batch))
      nonfinite = jax.device_put(jnp.int32(-1), self._replicated)
      compiled = self._compiled_step(batch, nonfinite)
      peak = cfg.peak_flops_per_device or metrics_lib.peak_flops_for_device_kind(
          jax.devices()[0].device_kind)
      flops = self.task.flops_per_example()
      window: list[dict] = []
      window_start, paused = time.perf_counter(), 0.0
      steps = progress.Progress("train", total=cfg.train_steps, unit="steps", initial=step)
      while step < cfg.train_steps:
        if batch is None:
          batch = self.batches.place(next(train_data), cfg.batch_size, "train data")
        self._state, step_metrics, nonfinite = compiled(self._state, self._frozen, batch,
                                                        nonfinite)
        batch = None
        step += 1
        steps.update()
        window.append(step_metrics)
        last = step == cfg.train_steps
        log_now = step % cfg.log_every == 0 or last
        save_now = step % cfg.checkpoint_every == 0 or (last and cfg.checkpoint_at_end)
        eval_now = (eval_data_fn is not None and cfg.eval_every > 0
                    and (step % cfg.eval_every == 0 or last))
        if not (log_now or save_now or eval_now):
          continue
        bad_step = int(jax.device_get(nonfinite))
        if log_now or bad_step >= 0:
          seconds = time.perf_counter() - window_start - paused
          record = self._window_record(step, window, seconds, tokens_per_example, flops, peak)
          if self._compile_seconds is not None:
            record["timing/compilation_seconds"] = self._compile_seconds
            self._compile_seconds = None
          history.append(record)
          train_writer.write(step, record)
          self._log(metrics_lib.format_log_line(step, record))
          window, window_start, paused = [], time.perf_counter(), 0.0
        if bad_step >= 0:
          latest = self.checkpoints.latest_step()
          where = (f"{self.model_dir}/checkpoint_{latest}" if latest is not None
                   else "none (no checkpoint was written)")
          logging.error("non-finite loss or gradient at step %d: stopping at step %d without"
                        " saving this state; the latest checkpoint stays %s",
                        bad_step, step, where)
          return TrainResult(step=step, history=history, final_eval=final_eval,
                             stopped_reason="nan")
        pause_start = time.perf_counter()
        if save_now:
          data_state = train_data.get_state() if hasattr(train_data, "get_state") else None
          self.checkpoints.save(self._checkpoint_state(), data_state)
        if eval_now:
          final_eval = self.evaluate(eval_data_fn())
          if eval_writer is None:
            eval_writer = metrics_lib.MetricWriter(self.model_dir / EVAL_DIR, self._is_chief)
          eval_writer.write(step, final_eval)
          self._log("eval " + metrics_lib.format_log_line(step, final_eval))
        paused += time.perf_counter() - pause_start
      steps.close()
      return TrainResult(step=step, history=history, final_eval=final_eval,
                         stopped_reason="done")
    finally:
      self.checkpoints.wait_until_finished()
      train_writer.close()
      if eval_writer is not None:
        eval_writer.close()

  def _compiled_step(self, batch: dict[str, jax.Array], nonfinite: jax.Array):
    """The compiled train step for this batch layout, compiled (and timed) once per layout."""
    layout = tuple((k, v.shape, str(v.dtype)) for k, v in sorted(batch.items()))
    if self._compiled is None or self._compiled[0] != layout:
      start = time.perf_counter()
      lowered = self.lower_train_step(batch, nonfinite)
      with jax.set_mesh(self.mesh):
        compiled = lowered.compile()
      seconds = time.perf_counter() - start
      self._log(f"compiled the train step in {seconds:.2f} s")
      # Reported with the next logged step, so metrics.jsonl has one line per step.
      self._compile_seconds = seconds
      self._compiled = (layout, compiled)
    return self._compiled[1]

  def lower_train_step(self, batch: dict[str, jax.Array],
                       nonfinite: jax.Array | None = None) -> jax.stages.Lowered:
    """The train step lowered for a placed batch under the mesh (e.g. to read its HLO)."""
    if nonfinite is None:
      nonfinite = jax.device_put(jnp.int32(-1), self._replicated)
    with jax.set_mesh(self.mesh):
      return self._train_step.lower(self._state, self._frozen, batch, nonfinite)

  def _window_record(self, step: int, window: list[dict], seconds: float,
                     tokens_per_example: float | None, flops: float | None,
                     peak: float | None) -> dict[str, float]:
    """The logged scalars of the steps since the last log."""
    host = jax.device_get(window)
    sums = {k: float(np.sum([m[k] for m in host])) for k in host[0]}
    record = {"step": step, **metrics_lib.reduce_metrics(sums, steps=len(host)),
              "learning_rate": float(self.schedule(step - 1))}
    record.update(metrics_lib.throughput(
        len(host), seconds, self.config.batch_size, self.mesh.size, tokens_per_example,
        flops, peak, self.config.measured_peak_flops_per_device))
    return record

  # ---------------------------------------------------------------------------
  # Evaluation

  def evaluate(self, eval_batches: Iterable[dict]) -> dict[str, float]:
    """Averages the task's metric sums over (at most `config.eval_batches`) batches.

    Batches may differ in size (each must split over the data-parallel size);
    padding examples carry weight 0 in the task's sums.
    """
    params, frozen, extras = self._state.params, self._frozen, self._state.extras
    sums, num = None, 0
    for batch in eval_batches:
      if self.config.eval_batches is not None and num >= self.config.eval_batches:
        break
      batch = self.batches.place(batch, None, "eval data")
      with jax.set_mesh(self.mesh):  # traced here on first use: constraints need the mesh
        if sums is None:
          sums = jax.device_put(self._zero_metrics(params, frozen, extras, batch),
                                self._replicated)
        sums = self._eval_step(params, frozen, extras, batch, sums)
      num += 1
    if sums is None:
      raise TrainingDataError("eval data yielded no batches")
    result = metrics_lib.reduce_metrics(jax.device_get(sums), steps=num)
    result["eval_batches"] = float(num)
    return result

  def _log(self, message: str) -> None:
    if self._is_chief:
      logging.info("%s", message)
