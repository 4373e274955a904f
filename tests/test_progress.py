"""Progress of long work: log lines with count, rate and ETA; a tqdm bar on a terminal."""

import io

from absl import logging

from explore import progress


class FakeClock:
  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now


def test_rate_and_eta_follow_the_clock():
  clock = FakeClock()
  p = progress.Progress("epochs", total=10, unit="steps", clock=clock, bar=False)
  clock.now = 4.0
  p.update(2)
  assert p.rate() == 0.5
  assert p.eta_seconds() == 16.0
  assert p.message() == "epochs: 2/10 steps [00:04<00:16, 0.50 steps/s]"


def test_resumed_count_starts_from_initial_and_rates_only_new_steps():
  clock = FakeClock()
  p = progress.Progress("train", total=100, unit="steps", initial=40, clock=clock, bar=False)
  clock.now = 10.0
  p.update(20)
  assert p.message() == "train: 60/100 steps [00:10<00:20, 2.00 steps/s]"


def test_logs_at_most_every_interval(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  clock = FakeClock()
  with progress.Progress("k-means", total=100, clock=clock, every_seconds=10, bar=False) as p:
    for _ in range(50):
      clock.now += 1.0
      p.update()
    assert len(lines) == 5
  assert lines[-1] == "k-means: 50/100 it [00:50<00:50, 1.00 it/s]; done"


def test_unknown_total_has_no_eta():
  clock = FakeClock()
  p = progress.Progress("rows", clock=clock, bar=False)
  clock.now = 2.0
  p.update(10)
  assert p.eta_seconds() is None
  assert p.message() == "rows: 10 it [00:02, 5.00 it/s]"


def test_bar_is_drawn_on_a_terminal(monkeypatch):
  class Terminal(io.StringIO):
    def isatty(self):
      return True

  terminal = Terminal()
  monkeypatch.setattr("sys.stderr", terminal)
  with progress.Progress("seqrec: epochs", total=4, unit="epochs") as p:
    p.update(4)
  assert "seqrec: epochs:" in terminal.getvalue() and "/4 [" in terminal.getvalue()
  piped = io.StringIO()
  monkeypatch.setattr("sys.stderr", piped)
  with progress.Progress("seqrec: epochs", total=4, unit="epochs") as p:
    p.update(4)
  assert piped.getvalue() == ""  # not a terminal: the log lines only


def test_phase_logs_start_and_duration(monkeypatch):
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  clock = FakeClock()
  with progress.phase("clusters: embeddings", clock=clock):
    clock.now = 75.0
  assert lines == ["clusters: embeddings ...", "clusters: embeddings: done in 01:15"]


def test_cluster_tree_reports_each_kmeans_cut(monkeypatch):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from explore.clusters.tree import build_cluster_tree  # pylint: disable=g-import-not-at-top
  lines = []
  monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
  vectors = np.random.default_rng(0).normal(size=(64, 4)).astype(np.float32)
  build_cluster_tree(vectors, levels=(2, 4), seed=0, coarse_restarts=1)
  cuts = [line for line in lines if line.startswith("clusters: balanced k-means: ")]
  assert [c.split(" [")[0] for c in cuts] == [
      "clusters: balanced k-means: 1/2 cuts", "clusters: balanced k-means: 2/2 cuts",
      "clusters: balanced k-means: 2/2 cuts"]  # each cut, then the final line
  assert cuts[-1].endswith("; done")
