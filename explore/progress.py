"""Progress of long work: one utility for every loop that can run longer than ~10 s.

`Progress` counts steps and, at most every `every_seconds`, logs
`description: done/total unit [elapsed<ETA, rate]` through absl logging (so
the line is in every log, on a terminal or not, times formatted by tqdm); when
stderr is a terminal it also draws tqdm's live bar there. `phase` logs the
start and the duration of one step of a stage that has no inner count, and
`PhaseClock` records wall and CPU seconds of a stage's phases for its metrics.

  with progress.Progress("clusters: k-means", total=levels, unit="levels") as p:
    for level in levels:
      ...
      p.update()

Only process 0 reports (the others' progress is the same).
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Iterator

from absl import logging
import tqdm


def _is_process_zero() -> bool:
  jax = sys.modules.get("jax")  # never imports JAX itself
  return jax is None or jax.process_index() == 0


class Progress:
  """Counts steps of one loop; logs rate and ETA, and shows a bar on a terminal."""

  def __init__(self, description: str, total: int | None = None, unit: str = "it",
               initial: int = 0, every_seconds: float = 10.0,
               clock: Callable[[], float] = time.monotonic, bar: bool | None = None):
    self.description = description
    self.total = total
    self.unit = unit
    self.done = initial
    self.every_seconds = every_seconds
    self._clock = clock
    self._start = clock()
    self._last_log = self._start
    self._initial = initial
    self._enabled = _is_process_zero()
    if bar is None:
      bar = self._enabled and sys.stderr.isatty()
    self._bar = (tqdm.tqdm(total=total, initial=initial, desc=description, unit=unit,
                           file=sys.stderr, leave=False, dynamic_ncols=True) if bar else None)

  def rate(self) -> float:
    """Steps per second since the start (steps done before `initial` not counted)."""
    elapsed = self._clock() - self._start
    return (self.done - self._initial) / elapsed if elapsed > 0 else 0.0

  def eta_seconds(self) -> float | None:
    rate = self.rate()
    if self.total is None or rate <= 0:
      return None
    return max(self.total - self.done, 0) / rate

  def message(self) -> str:
    """The log line: `description: done/total unit [elapsed<ETA, rate unit/s]`."""
    total = f"/{self.total}" if self.total is not None else ""
    eta = self.eta_seconds()
    timing = tqdm.tqdm.format_interval(self._clock() - self._start)
    if eta is not None:
      timing += "<" + tqdm.tqdm.format_interval(eta)
    rate = f"{self.rate():.2f} {self.unit}/s"
    return f"{self.description}: {self.done}{total} {self.unit} [{timing}, {rate}]"

  def update(self, n: int = 1) -> None:
    self.done += n
    if self._bar is not None:
      self._bar.update(n)
    now = self._clock()
    if self._enabled and now - self._last_log >= self.every_seconds:
      self._last_log = now
      logging.info("%s", self.message())

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if self._enabled:
      logging.info("%s; done", self.message())

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


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


@contextlib.contextmanager
def phase(description: str, clock: Callable[[], float] = time.monotonic) -> Iterator[None]:
  """Logs `description ...` at the start of a step of work and `description: done in X` after."""
  if _is_process_zero():
    logging.info("%s ...", description)
  start = clock()
  yield
  if _is_process_zero():
    logging.info("%s: done in %s", description, tqdm.tqdm.format_interval(clock() - start))
