"""Progress logging: rate, ETA and throttling."""

from absl import logging

from explore import progress


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_rate_and_eta_follow_the_clock():
  clock = FakeClock()
  p = progress.Progress("epochs", total=10, unit="steps", clock=clock)
  clock.now = 4.0
  p.update(2)
  assert p.rate() == 0.5
  assert p.eta_seconds() == 16.0
  assert p.message() == "epochs: 2/10 steps (0.50 steps/s, ETA 0m16s)"


def test_logs_at_most_every_interval(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  clock = FakeClock()
  p = progress.Progress("k-means", total=100, clock=clock, every_seconds=10)
  for _ in range(50):
    clock.now += 1.0
    p.update()
  assert len(lines) == 5
  p.close()
  assert lines[-1].endswith("done in 0m50s")


def test_unknown_total_has_no_eta():
  clock = FakeClock()
  p = progress.Progress("rows", clock=clock)
  clock.now = 2.0
  p.update(10)
  assert p.eta_seconds() is None
  assert p.message() == "rows: 10 it (5.00 it/s)"
