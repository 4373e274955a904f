"""Turning summed task metrics into reported numbers, and writing them out.

Tasks return sums (`loss_sum`, `correct`, `weight`, `<name>_sum`) so that
averaging over microbatches, steps and eval batches of any size is exact: sum
everything, divide once. `MetricWriter` writes one folder's scalars both as
TensorBoard events (`tfevents.EventFileWriter`) and as `metrics.jsonl` lines.
MFU uses the device's peak dense bf16 FLOP/s from `PEAK_FLOPS_BY_DEVICE_KIND`.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping

from explore.train import task as task_lib
from explore.train import tfevents

# Peak dense bf16 FLOP/s per chip from the vendors' spec sheets, matched as a
# substring of `jax.devices()[0].device_kind` (first match wins).
PEAK_FLOPS_BY_DEVICE_KIND: tuple[tuple[str, float], ...] = (
    ("H200", 989e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5 lite", 197e12),
    ("TPU v5e", 197e12),
    ("TPU v4", 275e12),
)


def peak_flops_for_device_kind(device_kind: str) -> float | None:
  """The spec-sheet peak of a device kind, None where unknown (e.g. CPU)."""
  for name, flops in PEAK_FLOPS_BY_DEVICE_KIND:
    if name.lower() in device_kind.lower():
      return flops
  return None


def reduce_metrics(sums: Mapping[str, float], steps: int = 1) -> dict[str, float]:
  """Reported metrics from metric sums accumulated over `steps` steps or batches.

  `loss_sum / weight` -> loss (else the mean of the per-step `loss`),
  `correct / weight` -> accuracy, `<name>_sum / weight` -> name; `weight` is
  reported as `examples_weight`; any other key is averaged per step.
  """
  weight = float(sums.get(task_lib.WEIGHT, 0.0))
  out: dict[str, float] = {}
  for key, value in sums.items():
    value = float(value)
    if key == task_lib.WEIGHT:
      out["examples_weight"] = value
    elif key == task_lib.CORRECT:
      out["accuracy"] = value / weight if weight else math.nan
    elif key.endswith(task_lib.SUM_SUFFIX) and task_lib.WEIGHT in sums:
      out[key[:-len(task_lib.SUM_SUFFIX)]] = value / weight if weight else math.nan
    elif key == "loss" and task_lib.LOSS_SUM in sums:
      continue  # loss_sum / weight is the exact average.
    else:
      out[key] = value / steps
  return out


class MetricWriter:
  """Scalars of one run folder (`train/` or `training_eval/`): tfevents + metrics.jsonl.

  Writes nothing when `enabled` is False (processes other than 0).
  """

  JSONL = "metrics.jsonl"

  def __init__(self, logdir: str | os.PathLike, enabled: bool = True):
    self.logdir = Path(logdir)
    self.enabled = enabled
    self._events = tfevents.EventFileWriter(self.logdir) if enabled else None

  def write(self, step: int, scalars: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    values = {k: float(v) for k, v in scalars.items() if v is not None and k != "step"}
    self._events.scalars(step, values)
    self._events.flush()
    # JSON has no NaN/inf: those are written as strings ("nan").
    line = {"step": int(step), **{k: (v if math.isfinite(v) else str(v))
                                  for k, v in values.items()}}
    with open(self.logdir / self.JSONL, "a") as f:
      f.write(json.dumps(line, sort_keys=True) + "\n")

  def resume(self, step: int) -> list[dict]:
    """The folder's records up to `step`, later ones dropped from the file (`truncate_history`)."""
    if not self.enabled:
      return read_history(self.logdir, step)
    return truncate_history(self.logdir, step)

  def close(self) -> None:
    if self._events is not None:
      self._events.close()


def truncate_history(logdir: str | os.PathLike, step: int) -> list[dict]:
  """Keeps the records of steps <= `step` in `logdir/metrics.jsonl`; returns them.

  A run resumed from its checkpoint at `step` rewrites the steps after it, so
  `metrics.jsonl` keeps one line per step and holds the whole run's history.
  """
  records = read_history(logdir, step)
  path = Path(logdir) / MetricWriter.JSONL
  if path.exists():
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
    os.replace(tmp, path)
  return records


def read_history(logdir: str | os.PathLike, up_to_step: int | None = None) -> list[dict]:
  """The records of `logdir/metrics.jsonl` (steps <= `up_to_step` if given), in file order.

  A step written twice (by a run killed after its checkpoint, before this
  truncation existed) keeps its last record. A torn last line is skipped.
  """
  path = Path(logdir) / MetricWriter.JSONL
  if not path.exists():
    return []
  by_step: dict[int, dict] = {}
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # a line cut short by a kill
    step = record.get("step") if isinstance(record, dict) else None
    if isinstance(step, int) and (up_to_step is None or step <= up_to_step):
      by_step.pop(step, None)
      by_step[step] = record
  return sorted(by_step.values(), key=lambda r: r["step"])


def throughput(steps: int, seconds: float, batch_size: int, num_devices: int,
               tokens_per_example: float | None = None,
               flops_per_example: float | None = None,
               peak_flops_per_device: float | None = None,
               measured_peak_flops_per_device: float | None = None) -> dict[str, float]:
  """Timing scalars of a window of `steps` train steps that took `seconds`.

  MFU = flops_per_example * examples/s / (num_devices * peak FLOP/s per device),
  against the spec peak (`mfu`) and, when given, a measured matmul peak
  (`mfu_measured`).
  """
  if steps <= 0 or seconds <= 0:
    return {}
  examples_per_second = steps * batch_size / seconds
  out = {"timing/steps_per_second": steps / seconds,
         "timing/seqs_per_second": examples_per_second,
         "timing/seconds_per_step": seconds / steps}
  if tokens_per_example:
    out["timing/tokens_per_second"] = examples_per_second * tokens_per_example
  if flops_per_example:
    model_flops = flops_per_example * examples_per_second / num_devices  # per device
    out["timing/model_flops_per_second_per_device"] = model_flops
    if peak_flops_per_device:
      out["mfu"] = model_flops / peak_flops_per_device
    if measured_peak_flops_per_device:
      out["mfu_measured"] = model_flops / measured_peak_flops_per_device
  return out


def format_log_line(step: int, record: Mapping[str, float]) -> str:
  """One human line: step, loss, accuracy, lr, then speed, tokens/s and MFU when known."""
  parts = [f"step {step}"]
  for key, fmt in (("loss", "{:.4f}"), ("accuracy", "{:.4f}"), ("learning_rate", "{:.3g}"),
                   ("grad_norm", "{:.3g}")):
    if key in record:
      parts.append(f"{key} " + fmt.format(record[key]))
  speed = []
  for key, label, fmt in (("timing/steps_per_second", "steps/s", "{:.2f}"),
                          ("timing/seqs_per_second", "examples/s", "{:.1f}"),
                          ("timing/tokens_per_second", "tokens/s", "{:.0f}"),
                          ("mfu", "MFU", "{:.1%}"),
                          ("mfu_measured", "MFU (measured peak)", "{:.1%}")):
    if key in record:
      speed.append(fmt.format(record[key]) + f" {label}")
  line = ", ".join(parts)
  return line + (" | " + ", ".join(speed) if speed else "")
