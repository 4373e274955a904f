"""Checkpoint selection for the `llm` stage: train in rounds, keep the best validation round.

With `LlmStageOptions.select_every = s` and a held-out split
(`validation_fraction` > 0) the decoder trains to steps s, 2s, ...,
`TrainerConfig.train_steps` on the whole run's learning-rate schedule; after
each round the planner ranks the held-out validation examples and the round
with the highest validation hit@k (`select_metric`, on `select_bucket` tuples)
is the planner the stage evaluates on test and writes (`planner.json` "step").
Test examples are never scored before the choice. The rounds go to
`selection.jsonl` in the stage folder, so a rerun continues after the recorded
ones, and every round's checkpoint stays in `model/` (the trainer keeps as
many as there are rounds).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from absl import logging

from explore import artifacts
from explore import train
from explore.eval import hit_rate

SELECTION_LOG = "selection.jsonl"
METRICS = ("hit@1", "hit@5", "hit@10")


class SelectionError(ValueError):
  """Checkpoint-selection settings that cannot work."""


def check_options(select_every: int | None, select_metric: str, select_bucket: str,
                  validation_fraction: float) -> None:
  """Raises SelectionError naming the `LlmStageOptions` field that is wrong."""
  if select_every is None:
    return
  if isinstance(select_every, bool) or not isinstance(select_every, int) or select_every < 1:
    raise SelectionError(f"LlmStageOptions.select_every={select_every!r} must be an integer"
                         " >= 1 or None")
  if not validation_fraction:
    raise SelectionError(f"LlmStageOptions.select_every={select_every} chooses the checkpoint on"
                         " held-out validation examples: set LlmStageOptions.validation_fraction"
                         " > 0 (e.g. 0.1)")
  if select_metric not in METRICS:
    raise SelectionError(f"LlmStageOptions.select_metric={select_metric!r} is not one of"
                         f" {METRICS}")
  if select_bucket not in hit_rate.BUCKETS:
    raise SelectionError(f"LlmStageOptions.select_bucket={select_bucket!r} is not one of"
                         f" {hit_rate.BUCKETS}")


def round_steps(train_steps: int, every: int) -> list[int]:
  """The steps that end a round: every, 2 * every, ..., and train_steps."""
  return list(range(every, train_steps, every)) + [train_steps]


def best_round(rounds: list[dict[str, Any]], metric: str, bucket: str) -> dict[str, Any]:
  """The first round with the highest validation `metric` on `bucket` (ties: the earlier)."""
  if not rounds:
    raise SelectionError("no selection round was recorded")
  values = [r["validation"][bucket][metric] for r in rounds]
  values = [-1.0 if v is None else v for v in values]  # an empty bucket never wins
  return rounds[max(range(len(rounds)), key=lambda i: (values[i], -i))]


def train_in_rounds(trainer: train.Trainer, batches, steps: list[int],
                    validate: Callable[[int], dict[str, Any]], log_path: Path
                    ) -> tuple[train.TrainResult, list[dict[str, Any]]]:
  """Trains `trainer` round by round to each of `steps`, validating after each.

  `validate(step)` returns the validation report ({bucket: {hit@k: rate}}) of
  the model at `step`. Rounds already in `log_path` are not repeated. Returns
  the last training result and every round, in step order; stops early on a
  non-finite loss (the result says "nan").
  """
  rounds = [r for r in artifacts.read_jsonl(log_path) if r["step"] in steps]
  done = {r["step"] for r in rounds}
  result = None
  for step in steps:
    if step in done:
      continue
    trainer.config.train_steps = step
    result = trainer.train(batches)
    if result.stopped_reason == "nan":
      return result, rounds
    losses = [h["loss"] for h in result.history
              if h.get("step", step) <= step and isinstance(h.get("loss"), (int, float))]
    record = {"step": step, "train_loss": losses[-1] if losses else None,
              "validation": validate(step)}
    artifacts.append_jsonl(log_path, record)
    rounds.append(record)
    logging.info("llm: round to step %d: validation %s", step,
                 {bucket: record["validation"][bucket].get("hit@5")
                  for bucket in record["validation"]})
  if result is None:  # every round was recorded by an earlier run: reopen its end
    trainer.config.train_steps = steps[-1]
    result = trainer.train(batches)
  return result, sorted(rounds, key=lambda r: r["step"])
