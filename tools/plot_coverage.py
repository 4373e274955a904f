"""Plots unseen-tuple hit@k against the knowledge corpus's coverage, from `llm` stage metrics.

Each run directory is one point: its `pretrain/MANIFEST.json` config gives
`CorpusConfig.coverage`, its `llm/metrics.json` the hit@k of the LLM and of
every baseline planner. A run without pretraining can be added with
`--scratch=RUN_DIR` and is drawn as a horizontal line; a control-corpus run
(`CorpusConfig.control`) with `--control=RUN_DIR`, drawn as single points
(its LLM and blend) at its coverage; the knowledge ceiling's oracle
(`tools/knowledge_ceiling.py --out=JSON`, on the same evaluated examples) with
`--ceiling=JSON`, drawn as a dotted line.

  python3 tools/plot_coverage.py --out=docs/coverage.png /tmp/c0 /tmp/c025 /tmp/c05 /tmp/c1 \
    --scratch=/tmp/scratch

Uses matplotlib (in the default install: `pip install -e .`). Prints the plotted numbers as a table too.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

PLANNERS = ("llm", "blend", "last_cluster", "transition", "popular_novel")
COUNT_PLANNERS = ("last_cluster", "transition", "popular_novel")


def _read(run_dir: Path, bucket: str, k: int) -> tuple[float | None, dict[str, float]]:
  """(coverage or None without pretraining, planner -> hit@k in `bucket`)."""
  metrics = json.loads((run_dir / "llm" / "metrics.json").read_text())
  hits = {name: by_bucket[bucket][f"hit@{k}"] for name, by_bucket in metrics["planners"].items()}
  manifest = json.loads((run_dir / "pretrain" / "MANIFEST.json").read_text())
  config = manifest.get("config", {})
  enabled = config.get("PretrainOptions.enabled", False)
  return (config.get("CorpusConfig.coverage") if enabled else None), hits


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("runs", nargs="+", type=Path, help="run directories with pretraining")
  parser.add_argument("--scratch", type=Path, help="a run directory without pretraining")
  parser.add_argument("--control", type=Path, help="a run directory with the control corpus")
  parser.add_argument("--ceiling", type=Path, help="tools/knowledge_ceiling.py's JSON output")
  parser.add_argument("--title", default="")
  parser.add_argument("--bucket", default="unseen", choices=("all", "unseen", "rare", "frequent"))
  parser.add_argument("--k", type=int, default=5)
  parser.add_argument("--out", type=Path, required=True, help="the .png to write")
  args = parser.parse_args()
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  points = sorted((_read(r, args.bucket, args.k) for r in args.runs), key=lambda p: p[0])
  if any(coverage is None for coverage, _ in points):
    raise SystemExit("every positional run directory needs PretrainOptions.enabled = True")
  coverages = [c for c, _ in points]
  fig, ax = plt.subplots(figsize=(6, 4))
  print(f"coverage | " + " | ".join(PLANNERS))
  for coverage, hits in points:
    print(f"{coverage} | " + " | ".join(f"{hits.get(p, float('nan')):.3f}" for p in PLANNERS))
  colors = dict(zip(PLANNERS, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
  for name in PLANNERS:
    values = [hits.get(name) for _, hits in points]
    if any(v is None for v in values):
      continue
    if name in COUNT_PLANNERS:  # fitted on the logs only: the same in every run
      ax.axhline(sum(values) / len(values), color=colors[name], linewidth=1,
                 label=f"{name} (no corpus)")
    else:
      ax.plot(coverages, values, marker="o", color=colors[name], label=name)
  if args.scratch is not None:
    _, hits = _read(args.scratch, args.bucket, args.k)
    ax.axhline(hits["llm"], linestyle="--", color="gray", label="llm from scratch")
    print(f"from scratch | llm {hits['llm']:.3f}")
  if args.control is not None:
    coverage, hits = _read(args.control, args.bucket, args.k)
    for name, marker in (("llm", "X"), ("blend", "P")):
      if name in hits:
        ax.plot([coverage], [hits[name]], marker=marker, linestyle="none", markersize=9,
                color="black", label=f"{name}, control corpus")
        print(f"control ({coverage}) | {name} {hits[name]:.3f}")
  if args.ceiling is not None:
    ceiling = json.loads(args.ceiling.read_text())
    xs = sorted(ceiling, key=float)
    ys = [ceiling[x]["planners"]["oracle"][args.bucket][f"hit@{args.k}"] for x in xs]
    ax.plot([float(x) for x in xs], ys, linestyle=":", marker=".", color="gray",
            label="oracle: counts + true stated relations")
    print("ceiling | " + " | ".join(f"{x}: {y:.3f}" for x, y in zip(xs, ys)))
  if args.title:
    ax.set_title(args.title)
  ax.set_xlabel("CorpusConfig.coverage (fraction of affinity edges stated)")
  ax.set_ylabel(f"{args.bucket}-tuple hit@{args.k}")
  ax.legend(fontsize=7, loc="best")
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
