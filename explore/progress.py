"""Rate and ETA logging for long loops (through absl logging, process 0 only); phase timing."""

from __future__ import annotations

import time

from absl import logging


class Progress:
  """Logs `done/total`, rate and ETA at most every `every_seconds`.

  Usage:
    progress = Progress("clusters: k-means", total=num_batches, unit="batches")
    for batch in batches:
      ...
      progress.update()
    progress.close()
  """

  def __init__(self, description: str, total: int | None = None, unit: str = "it",
               every_seconds: float = 10.0, clock=time.monotonic):
    self.description = description
    self.total = total
    self.unit = unit
    self.every_seconds = every_seconds
    self._clock = clock
    self._start = clock()
    self._last_log = self._start
    self.done = 0

  def rate(self) -> float:
    elapsed = self._clock() - self._start
    return self.done / elapsed if elapsed > 0 else 0.0

  def eta_seconds(self) -> float | None:
    rate = self.rate()
    if self.total is None or rate <= 0:
      return None
    return max(self.total - self.done, 0) / rate

  def message(self) -> str:
    total = f"/{self.total}" if self.total is not None else ""
    eta = self.eta_seconds()
    eta_text = f", ETA {_format_seconds(eta)}" if eta is not None else ""
    return f"{self.description}: {self.done}{total} {self.unit} ({self.rate():.2f} {self.unit}/s{eta_text})"

  def update(self, n: int = 1) -> None:
    self.done += n
    now = self._clock()
    if now - self._last_log >= self.every_seconds:
      self._last_log = now
      logging.info("%s", self.message())

  def close(self) -> None:
    elapsed = self._clock() - self._start
    logging.info("%s; done in %s", self.message(), _format_seconds(elapsed))


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


class PhaseClock:
  """Wall and process CPU seconds of named phases.

  CPU time shows a stage's own cost on a busy machine, where wall time also
  counts the waits behind other processes.
  """

  def __init__(self):
    self.seconds: dict[str, dict[str, float]] = {}

  def start(self):
    self._wall, self._cpu = time.perf_counter(), time.process_time()

  def stop(self, name: str):
    self.seconds[name] = {"wall": round(time.perf_counter() - self._wall, 2),
                          "cpu": round(time.process_time() - self._cpu, 2)}
