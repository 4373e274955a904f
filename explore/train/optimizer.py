"""The optimizer and learning-rate schedule every trainer run uses (optax).

AdamW behind global-norm gradient clipping, with a warmup followed by a
cosine, linear or constant schedule; all knobs are gin-configurable
(`make_optimizer.learning_rate = 3e-4`). The schedule is returned next to the
transformation so the trainer can log the learning rate of each step.

`param_average_decay` adds Polyak averaging: the optimizer state then also
holds an exponential moving average of the parameters after every update
(`averaged_params` reads it), which is checkpointed and resumed with the rest
of the optimizer state; training itself is unchanged.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import gin
import jax
import optax

SCHEDULES = ("cosine", "constant", "linear")


class OptimizerConfigError(ValueError):
  """An optimizer or schedule setting is out of range."""


def _check(condition: bool, message: str) -> None:
  if not condition:
    raise OptimizerConfigError(f"make_optimizer: {message}")


@gin.configurable
def make_optimizer(total_steps: int, learning_rate: float = 1e-3, warmup_steps: int = 100,
                   schedule: str = "cosine", end_learning_rate_fraction: float = 0.1,
                   weight_decay: float = 0.0, clip_norm: float | None = 1.0,
                   b1: float = 0.9, b2: float = 0.98,
                   param_average_decay: float | None = None,
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (clip -> AdamW [-> parameter average], schedule).

  The schedule warms up linearly from 0 over `warmup_steps` (capped at
  `total_steps`), then decays to `end_learning_rate_fraction * learning_rate`
  at `total_steps` ("cosine", "linear") or stays flat ("constant").
  `clip_norm=None` disables clipping. `param_average_decay` (in (0, 1), e.g.
  0.99: an average over about 100 steps) keeps `param_average`'s moving
  average of the parameters in the optimizer state.
  """
  _check(isinstance(total_steps, int) and total_steps > 0,
         f"total_steps={total_steps!r} must be a positive integer")
  _check(learning_rate > 0, f"learning_rate={learning_rate!r} must be > 0")
  _check(isinstance(warmup_steps, int) and warmup_steps >= 0,
         f"warmup_steps={warmup_steps!r} must be a non-negative integer")
  _check(schedule in SCHEDULES, f"schedule={schedule!r} is not one of {SCHEDULES}")
  _check(0.0 <= end_learning_rate_fraction <= 1.0,
         f"end_learning_rate_fraction={end_learning_rate_fraction!r} must be in [0, 1]")
  _check(weight_decay >= 0, f"weight_decay={weight_decay!r} must be >= 0")
  _check(clip_norm is None or clip_norm > 0, f"clip_norm={clip_norm!r} must be > 0 or None")
  _check(0 <= b1 < 1 and 0 <= b2 < 1, f"b1={b1!r} and b2={b2!r} must be in [0, 1)")
  _check(param_average_decay is None or 0 < param_average_decay < 1,
         f"param_average_decay={param_average_decay!r} must be in (0, 1) or None")

  warmup = min(warmup_steps, total_steps)
  decay_steps = total_steps - warmup
  end_value = learning_rate * end_learning_rate_fraction
  if schedule == "constant" or decay_steps == 0:
    after = optax.constant_schedule(learning_rate)
  elif schedule == "cosine":
    after = optax.cosine_decay_schedule(learning_rate, decay_steps,
                                        alpha=end_learning_rate_fraction)
  else:
    after = optax.linear_schedule(learning_rate, end_value, decay_steps)
  if warmup:
    lr_schedule = optax.join_schedules(
        [optax.linear_schedule(0.0, learning_rate, warmup), after], [warmup])
  else:
    lr_schedule = after

  parts = [] if clip_norm is None else [optax.clip_by_global_norm(clip_norm)]
  parts.append(optax.adamw(lr_schedule, b1=b1, b2=b2, weight_decay=weight_decay))
  if param_average_decay is not None:
    parts.append(param_average(param_average_decay))
  return optax.chain(*parts), lr_schedule


class ParamAverageState(NamedTuple):
  """`param_average`'s state: the moving average of the parameters (a tree like them)."""

  average: Any


def param_average(decay: float) -> optax.GradientTransformation:
  """Keeps avg <- decay * avg + (1 - decay) * (params + updates); updates pass unchanged.

  The last link of a chain, so that `params + updates` are the parameters after
  the step. The average starts at the initial parameters and keeps their dtypes.
  """
  def init(params):
    return ParamAverageState(average=jax.tree.map(lambda p: p.copy(), params))

  def update(updates, state, params=None):
    if params is None:
      raise OptimizerConfigError("param_average needs the parameters: call "
                                 "tx.update(grads, opt_state, params)")
    new = optax.apply_updates(params, updates)
    average = jax.tree.map(lambda a, p: (a + (1.0 - decay) * (p - a)).astype(a.dtype),
                           state.average, new)
    return updates, ParamAverageState(average=average)

  return optax.GradientTransformation(init, update)


def averaged_params(opt_state: optax.OptState) -> Any | None:
  """The parameter average in `opt_state` (see `param_average`), or None without one."""
  found = [leaf for leaf in jax.tree.leaves(
      opt_state, is_leaf=lambda x: isinstance(x, ParamAverageState))
           if isinstance(leaf, ParamAverageState)]
  if len(found) > 1:
    raise OptimizerConfigError(f"the optimizer state holds {len(found)} parameter averages;"
                               " chain at most one param_average")
  return found[0].average if found else None
