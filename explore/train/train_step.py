"""The pure, jit-able train and eval steps over a `TrainState` pytree.

A model is kept as (graphdef, params, frozen, extras): `params` are the
trainable `nnx.Param` variables that the optimizer updates (all of them by
default; e.g. only the `nnx.LoRAParam` adapters for LoRA), `frozen` the other
`nnx.Param`s (read, never differentiated or updated), and `extras` every
other variable (RNG streams, batch statistics) that the forward pass may
advance. Each step is a pure function of (state, frozen, batch), so `jax.jit`
can shard it from logical-axis rules and donate the old state; the frozen
weights are an input only (neither donated nor returned).

Gradient accumulation splits the global batch into `grad_accum_steps`
microbatches and runs them in a `jax.lax.scan`. Microbatch `a` takes examples
a, a + A, a + 2A, ... so that every device keeps working on its own rows of
the batch (no re-sharding). Microbatch gradients are weighted by the task's
`weight` (when it reports one), so the update equals the full-batch update
even when padding is spread unevenly.
"""

from __future__ import annotations

from typing import Any, Callable

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import optax

from explore.train import task as task_lib

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
Filter = Any  # an nnx filter: a Variable type, nnx.All(...), a predicate, ...


@struct.dataclass
class TrainState:
  """Everything a train step reads and writes; checkpointed as a whole."""

  params: nnx.State  # nnx.Param variables, updated by the optimizer
  extras: nnx.State  # other model variables (RNG streams, statistics)
  opt_state: optax.OptState
  step: jax.Array  # int32 scalar: updates applied so far


class TrainableFilterError(ValueError):
  """A trainable-parameter filter selects no parameter, or variables that are not parameters."""


def split_model(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, params, extras) of a module: every nnx.Param, then the rest.

  This is also the checkpoint layout, whatever the trainable filter.
  """
  return nnx.split(model, nnx.Param, ...)


def split_trainable(model: nnx.Module, trainable: Filter = nnx.Param
                    ) -> tuple[nnx.GraphDef, nnx.State, nnx.State, nnx.State]:
  """(graphdef, params, frozen, extras): trainable Params, the other Params, the rest."""
  return nnx.split(model, trainable, nnx.Param, ...)


def check_trainable(model: nnx.Module, trainable: Filter) -> None:
  """Raises TrainableFilterError unless `trainable` selects some and only nnx.Param variables."""
  selected = nnx.state(model, trainable)
  flat = nnx.to_flat_state(selected)
  if not len(flat):
    raise TrainableFilterError(
        f"trainable={trainable!r} selects no parameter of {type(model).__name__} (e.g. LoRA"
        " adapters asked for while lora_rank = 0)")
  others = ["/".join(map(str, path)) for path, v in flat if not isinstance(v, nnx.Param)]
  if others:
    raise TrainableFilterError(
        f"trainable={trainable!r} selects variables that are not nnx.Param: {others[:5]}")


def _forward(graphdef: nnx.GraphDef, task: task_lib.TrainTask, train: bool,
             trainable: Filter = nnx.Param):
  """loss(params, frozen, extras, batch) -> (loss, (metrics, new extras))."""

  def loss_fn(params: nnx.State, frozen: nnx.State, extras: nnx.State, batch: Batch):
    # copy=True: fresh Variables owned by this trace (e.g. inside jax.grad), so
    # the forward pass may advance RNG counters.
    model = nnx.merge(graphdef, params, frozen, extras, copy=True)
    loss, metrics = task.loss(model, batch, train=train)
    new_extras = split_trainable(model, trainable)[3]
    return loss, (dict(metrics), new_extras)

  return loss_fn


def _microbatches(batch: Batch, num: int,
                  constrain: Callable[[str, jax.Array], jax.Array]) -> Batch:
  """[batch, ...] -> [num, batch / num, ...], microbatch a holding rows a, a + num, ..."""

  def split(name: str, x: jax.Array) -> jax.Array:
    x = x.reshape((x.shape[0] // num, num) + x.shape[1:])  # [batch / num, num, ...]
    return constrain(name, jnp.swapaxes(x, 0, 1))  # [num, batch / num, ...]

  return {name: split(name, x) for name, x in batch.items()}


def make_train_step(graphdef: nnx.GraphDef, task: task_lib.TrainTask,
                    tx: optax.GradientTransformation, grad_accum_steps: int = 1,
                    constrain_microbatch: Callable[[str, jax.Array], jax.Array] | None = None,
                    trainable: Filter = nnx.Param):
  """Returns step(state, frozen, batch, first_nonfinite) -> (state, metrics, first_nonfinite).

  `state.params` are the `trainable` parameters; `frozen` the other ones
  (gradients are taken with respect to `state.params` only).

  `metrics` holds the task's metric sums over the whole batch plus `loss` (the
  batch's mean loss) and `grad_norm` (before clipping). `first_nonfinite` is an
  int32 scalar, -1 until a step produces a non-finite loss or gradient, then the
  number of that step (state.step after it); it is carried through every step so
  the host can check it whenever it likes without a sync per step.
  """
  loss_fn = _forward(graphdef, task, train=True, trainable=trainable)
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  constrain = constrain_microbatch or (lambda name, x: x)

  def accumulate(params, frozen, extras, batch):
    micro = _microbatches(batch, grad_accum_steps, constrain)
    first = jax.tree.map(lambda x: x[0], micro)
    (_, (metric_shapes, _)) = jax.eval_shape(loss_fn, params, frozen, extras, first)
    weighted = task_lib.WEIGHT in metric_shapes

    def body(carry, microbatch):
      grads_sum, loss_sum, weight_sum, metrics_sum, extras = carry
      (loss, (metrics, extras)), grads = grad_fn(params, frozen, extras, microbatch)
      w = metrics[task_lib.WEIGHT].astype(jnp.float32) if weighted else jnp.float32(1.0)
      grads_sum = jax.tree.map(lambda s, g: s + w * g, grads_sum, grads)
      metrics_sum = jax.tree.map(jnp.add, metrics_sum, metrics)
      return (grads_sum, loss_sum + w * loss, weight_sum + w, metrics_sum, extras), None

    zeros = (jax.tree.map(jnp.zeros_like, params), jnp.float32(0.0), jnp.float32(0.0),
             jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metric_shapes), extras)
    (grads, loss, weight, metrics, extras), _ = jax.lax.scan(body, zeros, micro)
    # Weight 0 everywhere (an all-padding batch) gives zero gradients, not NaN.
    scale = jnp.where(weight > 0, 1.0 / jnp.maximum(weight, 1e-30), 0.0)
    grads = jax.tree.map(lambda g: g * scale, grads)
    return loss * scale, metrics, grads, extras

  def train_step(state: TrainState, frozen: nnx.State, batch: Batch,
                 first_nonfinite: jax.Array):
    if grad_accum_steps == 1:
      (loss, (metrics, extras)), grads = grad_fn(state.params, frozen, state.extras, batch)
    else:
      loss, metrics, grads, extras = accumulate(state.params, frozen, state.extras, batch)
    grad_norm = optax.global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    step = state.step + 1
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    first_nonfinite = jnp.where((first_nonfinite < 0) & ~finite, step, first_nonfinite)
    metrics = {**metrics, "loss": loss.astype(jnp.float32), "grad_norm": grad_norm}
    new_state = TrainState(params=params, extras=extras, opt_state=opt_state, step=step)
    return new_state, metrics, first_nonfinite.astype(jnp.int32)

  return train_step


def make_eval_step(graphdef: nnx.GraphDef, task: task_lib.TrainTask,
                   trainable: Filter = nnx.Param):
  """Returns (eval_step, zero_metrics) for the task run with train=False.

  eval_step(params, frozen, extras, batch, sums) -> sums + this batch's metrics
  (and `loss`); `zero_metrics(params, frozen, extras, batch)` gives the
  starting sums. Summing on device avoids a host transfer per batch.
  """
  loss_fn = _forward(graphdef, task, train=False, trainable=trainable)

  def eval_step(params: nnx.State, frozen: nnx.State, extras: nnx.State, batch: Batch,
                sums: Metrics) -> Metrics:
    loss, (metrics, _) = loss_fn(params, frozen, extras, batch)
    metrics = {**metrics, "loss": loss.astype(jnp.float32)}
    return jax.tree.map(jnp.add, sums, metrics)

  def zero_metrics(params: nnx.State, frozen: nnx.State, extras: nnx.State,
                   batch: Batch) -> Metrics:
    loss, (metrics, _) = jax.eval_shape(loss_fn, params, frozen, extras, batch)
    shapes = {**metrics, "loss": jax.ShapeDtypeStruct((), jnp.float32)}
    return {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}

  return eval_step, zero_metrics


def param_count(params: Any) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
