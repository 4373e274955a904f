"""Plots the planner's hit@k against its training length, from `llm` stage run directories.

Each run directory is one point of a training-steps sweep: its `llm/metrics.json`
gives the steps trained, the packed training rows and the hit@k of the LLM and of
every baseline planner, on the test examples and (with
`LlmStageOptions.validation_fraction` > 0) on the held-out validation examples;
its `llm/MANIFEST.json` the batch size, so the x axis shows epochs as well. The
count planners are fitted on the logs, not trained, so they are drawn as
horizontal lines (they must agree across the runs: a sweep changes only the
training length). The left panel is the chosen bucket on validation (where a
length is chosen), the right one on test.

  python3 tools/plot_steps.py --out=docs/images/steps_hit5.png /tmp/steps/s50 /tmp/steps/s150 \
    /tmp/steps/s600

Uses matplotlib (in the default install: `pip install -e .`). Prints the plotted numbers as a table too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COUNT_PLANNERS = ("last_cluster", "transition")
SPLITS = ("validation", "test")


def read_point(run_dir: Path, bucket: str, k: int) -> dict:
  """One run's training length and its planners' hit@k in `bucket`, per split."""
  metrics_path = run_dir / "llm" / "metrics.json"
  if not metrics_path.is_file():
    raise SystemExit(f"{run_dir}: no llm/metrics.json (run the llm stage there first)")
  metrics = json.loads(metrics_path.read_text())
  config = json.loads((run_dir / "llm" / "MANIFEST.json").read_text()).get("config", {})
  batch = config.get("TrainerConfig.batch_size")
  if batch is None:
    raise SystemExit(f"{run_dir}: llm/MANIFEST.json has no TrainerConfig.batch_size")
  key = f"hit@{k}"
  point = {"run": str(run_dir), "steps": metrics["train_steps"],
           "epochs": metrics["train_steps"] * batch / metrics["train_rows"],
           "train_loss": metrics["train_loss_last"],
           "test": {name: b[bucket][key] for name, b in metrics["planners"].items()}}
  if "validation" in metrics:
    point["validation"] = {name: b[bucket][key]
                           for name, b in metrics["validation"]["planners"].items()}
  return point


def sweep(run_dirs: list[Path], bucket: str, k: int) -> list[dict]:
  """The points sorted by steps; refuses repeated lengths and count planners that differ."""
  points = sorted((read_point(r, bucket, k) for r in run_dirs), key=lambda p: p["steps"])
  steps = [p["steps"] for p in points]
  repeated = sorted({s for s in steps if steps.count(s) > 1})
  if repeated:
    raise SystemExit(f"steps {repeated} appear in more than one run: one run per length")
  for split in SPLITS:
    for name in COUNT_PLANNERS:
      values = {round(p[split][name], 6) for p in points if name in p.get(split, {})}
      if len(values) > 1:
        raise SystemExit(f"{name} {split} hit@{k} differs across the runs ({sorted(values)}): "
                         "they are not one world's sweep (same data, clusters, transitions and "
                         "validation split)")
  return points


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", type=Path, help="run directories, one per length")
  parser.add_argument("--bucket", default="all", choices=("all", "unseen", "rare", "frequent"))
  parser.add_argument("--k", type=int, default=5)
  parser.add_argument("--title", default="")
  parser.add_argument("--out", type=Path, required=True, help="the .png to write")
  args = parser.parse_args()
  points = sweep(args.runs, args.bucket, args.k)
  print("steps | epochs | train loss | " + " | ".join(
      f"{split} {name}" for split in SPLITS for name in ("llm",) + COUNT_PLANNERS))
  for p in points:
    cells = [f"{p.get(split, {}).get(name, float('nan')):.3f}"
             for split in SPLITS for name in ("llm",) + COUNT_PLANNERS]
    print(f"{p['steps']} | {p['epochs']:.1f} | {p['train_loss']:.3f} | " + " | ".join(cells))
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
  steps = [p["steps"] for p in points]
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  for ax, split in zip(axes, SPLITS):
    have = [p for p in points if split in p]
    if not have:
      ax.set_title(f"{split}: not measured (validation_fraction 0)")
      continue
    ax.plot([p["steps"] for p in have], [p[split]["llm"] for p in have], marker="o",
            color=colors[0], label="llm (from scratch)")
    for name, color in zip(COUNT_PLANNERS, colors[1:]):
      if name in have[0][split]:
        ax.axhline(have[0][split][name], color=color, linewidth=1, label=f"{name} counts")
    ax.set_xscale("log")
    ax.set_xticks(steps)
    ax.set_xticklabels([f"{p['steps']}\n{p['epochs']:.1f} ep" for p in points], fontsize=7)
    ax.set_xlabel("training steps (epochs of the packed rows)")
    ax.set_title(f"{split} ({args.bucket} tuples)")
    ax.legend(fontsize=7, loc="best")
  axes[0].set_ylabel(f"hit@{args.k}")
  if args.title:
    fig.suptitle(args.title)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
