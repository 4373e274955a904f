"""tools/plot_steps.py: a training-steps sweep read from llm run directories and drawn."""

from __future__ import annotations

import json
import sys

import pytest

import plot_steps

BUCKETS = ("all", "unseen", "rare", "frequent")


def _run(tmp_path, steps, llm, counts=0.30, validation=True, rows=640, batch=64):
  run = tmp_path / f"s{steps}"
  (run / "llm").mkdir(parents=True)

  def planners(llm_hit):
    return {name: {b: {"hit@5": hit, "hit@1": hit / 2} for b in BUCKETS}
            for name, hit in (("llm", llm_hit), ("last_cluster", counts), ("transition", 0.29))}

  metrics = {"train_steps": steps, "train_rows": rows, "train_loss_last": 1.0 / steps,
             "planners": planners(llm)}
  if validation:
    metrics["validation"] = {"planners": planners(llm + 0.01)}
  (run / "llm" / "metrics.json").write_text(json.dumps(metrics))
  (run / "llm" / "MANIFEST.json").write_text(
      json.dumps({"config": {"TrainerConfig.batch_size": batch}}))
  return run


def test_sweep_sorts_by_steps_and_counts_epochs(tmp_path):
  runs = [_run(tmp_path, 300, 0.35), _run(tmp_path, 50, 0.20), _run(tmp_path, 100, 0.30)]
  points = plot_steps.sweep(runs, "all", 5)
  assert [p["steps"] for p in points] == [50, 100, 300]
  assert [p["epochs"] for p in points] == [5.0, 10.0, 30.0]  # steps x 64 / 640 rows
  assert points[0]["test"]["llm"] == 0.20
  assert points[0]["validation"]["llm"] == pytest.approx(0.21)


@pytest.mark.parametrize("second,message", [
    (dict(steps=50, llm=0.3), r"steps \[50\] appear in more than one run"),
    (dict(steps=100, llm=0.3, counts=0.31), "last_cluster validation hit@5 differs across the runs"),
])
def test_sweep_refuses_runs_that_are_not_one_sweep(tmp_path, second, message):
  first = _run(tmp_path / "a", 50, 0.2)
  with pytest.raises(SystemExit, match=message):
    plot_steps.sweep([first, _run(tmp_path / "b", **second)], "all", 5)


def test_missing_metrics_are_named(tmp_path):
  with pytest.raises(SystemExit, match="no llm/metrics.json"):
    plot_steps.read_point(tmp_path, "all", 5)


def test_main_prints_the_table_and_writes_the_figure(tmp_path, monkeypatch, capsys):
  runs = [_run(tmp_path, 50, 0.20), _run(tmp_path, 100, 0.30, validation=False)]
  out = tmp_path / "steps.png"
  monkeypatch.setattr(sys, "argv", ["plot_steps.py", f"--out={out}", *map(str, runs)])
  plot_steps.main()
  text = capsys.readouterr().out
  assert "50 | 5.0 | 0.020 | 0.210 | 0.300 | 0.290 | 0.200 | 0.300 | 0.290" in text
  assert "100 | 10.0 | 0.010 | nan | nan | nan | 0.300" in text
  assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
