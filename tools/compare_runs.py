"""Paired comparison of the planner LLMs of two runs (or two groups of seeds) on the same tests.

Two `llm` stages trained on the same transitions (e.g. pretrained on the
knowledge corpus vs on the control corpus) evaluate the same test examples;
this reads each LLM's scores of them as its `llm` stage kept them
(`llm_stage.load_eval_scores`; a stage that did not keep them has its planner
reopened and scored, `llm_stage.load_planner`), and prints hit@k of run a, of
run b, and the paired bootstrap 95% interval of a - b, overall and on unseen /
rare / frequent tuples (`explore.eval.bootstrap.paired_buckets`).

Repeat `--run_a` / `--run_b` to compare groups of runs, e.g. the seeds of two
settings (`--gin.RunConfig.seed=N` with the world's `SEED` fixed, so every run
has the same transitions): each side's hit of an example is then the fraction
of its runs that hit it, and each run's own hit@k is printed beside the pooled
one (`bootstrap.pooled_buckets`). `--run_b=counts` compares against the best
count planner (last-cluster or transition counts, whichever has the higher
overall hit@k on these examples), fitted on the runs' train examples.
`--planner=blend` compares each run's blended planner instead of its LLM: the
LLM's scores plus the run's tuned weight (`llm/metrics.json` "blend") times
log(1 + last-cluster counts), as its `llm` stage scored the test examples.

`--across_worlds` pools runs of different worlds (`--gin.SEED=N`: each its
own data, transitions and test examples) instead of refusing them: every
`--run_a` is compared with its own world's best count planner
(`--run_b=counts`) or with the `--run_b` in the same position (same world),
hit@k is the mean over all worlds' test examples, and the interval
resamples each world's examples within it (`bootstrap.across_worlds`); each
world's own hit@k is printed beside the pooled one.

  PYTHONPATH=. python3 tools/compare_runs.py --run_a=/tmp/sw/c05mix \
      --run_b=/tmp/sw/ctlmix --k=5 --out=/tmp/compare.json
  PYTHONPATH=. python3 tools/compare_runs.py --run_a=/tmp/s/k0 --run_a=/tmp/s/k1 \
      --run_a=/tmp/s/k2 --run_b=counts [--planner=blend]
  PYTHONPATH=. python3 tools/compare_runs.py --across_worlds --run_a=/tmp/w/w0 \
      --run_a=/tmp/w/w1 --run_a=/tmp/w/w2 --run_b=counts
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from explore.eval import blend
from explore.eval import bootstrap
from explore.eval import hit_rate
from explore.eval import planners as planners_lib
from explore.llm import stage as llm_stage
from explore.transitions import stage as transitions_stage
from explore.transitions.examples import TRAIN


def load_run(run_dir: Path):
  """(transitions, evaluated test examples, rare_max) of a run directory."""
  for stage in ("transitions", "llm"):
    if not (run_dir / stage / "MANIFEST.json").exists():
      raise SystemExit(f"{run_dir / stage}: no complete {stage} stage here; run "
                       f"`explore llm --gin.RUN_DIR=\"'{run_dir}'\"` first")
  transitions = transitions_stage.load_transitions(run_dir / "transitions")
  examples, rare_max = llm_stage.load_eval_examples(run_dir / "llm")
  return transitions, examples, rare_max


def llm_scores(run_dir: Path, history: np.ndarray) -> np.ndarray:
  """[n, M] the run's LLM scores of its evaluated examples (`history` [n, K])."""
  kept = llm_stage.load_eval_scores(run_dir / "llm")
  if kept is not None:
    return kept
  return llm_stage.load_planner(run_dir / "llm").scores(history)


PLANNERS = ("llm", "blend")


def run_scores(run_dir: Path, transitions, examples: np.ndarray, planner: str) -> np.ndarray:
  """[n, M] scores of `examples` by the run's LLM, or by its blend with last-cluster counts."""
  history = transitions.history[examples]  # [n, K]
  llm = llm_scores(run_dir, history)
  if planner == "llm":
    return llm
  weight = llm_stage.load_metrics(run_dir / "llm")["blend"]["weight"]
  fit = transitions.indices(TRAIN)
  return blend.BlendedPlanner(None, transitions.history[fit], transitions.next_cluster[fit],
                              transitions.num_clusters, weight).blend(llm, history)


COUNTS = "counts"


def count_scores(transitions, examples: np.ndarray, k: int) -> tuple[str, np.ndarray]:
  """(name, [n, M] scores) of the best count planner on `examples`, fitted on train."""
  fit = transitions.indices(TRAIN)
  baselines = planners_lib.fit_baselines(transitions.history[fit], transitions.next_cluster[fit],
                                         transitions.num_clusters)
  history = transitions.history[examples]  # [n, K]
  scores = {name: baselines[name].scores(history) for name in bootstrap.COUNT_PLANNERS}
  best = bootstrap.best_count_planner(transitions, scores, examples, k)
  return best, scores[best]


def _same_examples(run_a: Path, loaded_a, run_b: Path, loaded_b) -> None:
  """Exits naming both runs unless they evaluated the same test examples."""
  (transitions, examples, _), (transitions_o, examples_o, _) = loaded_a, loaded_b
  if not (np.array_equal(examples, examples_o)
          and np.array_equal(transitions.history, transitions_o.history)
          and np.array_equal(transitions.next_cluster, transitions_o.next_cluster)):
    raise SystemExit(f"{run_a} and {run_b} did not evaluate the same test examples "
                     "(different transitions, world seed or max_eval_examples): a paired "
                     "comparison needs the same ones")


def compare_one_world(runs_a: list[Path], runs_b: list[Path] | None, planner: str, k: int,
                      samples: int) -> tuple[dict, str]:
  """(`bootstrap.pooled_buckets` result, side b's label): runs of one world (the same test
  examples, checked), against each other or against the best count planner (`runs_b` None)."""
  runs = runs_a + (runs_b or [])
  loaded = load_run(runs[0])
  transitions, examples, rare_max = loaded
  for other in runs[1:]:
    _same_examples(runs[0], loaded, other, load_run(other))
  scores_a = [run_scores(run, transitions, examples, planner) for run in runs_a]
  if runs_b is None:
    name_b, counts = count_scores(transitions, examples, k)
    scores_b, label_b = [counts], f"{name_b} counts"
  else:
    scores_b = [run_scores(run, transitions, examples, planner) for run in runs_b]
    label_b = ", ".join(map(str, runs_b))
  return bootstrap.pooled_buckets(transitions, scores_a, scores_b, examples, k=k,
                                  rare_max=rare_max, samples=samples), label_b


def _fmt(hit: float | None) -> str:
  return "-" if hit is None else f"{hit:.3f}"


def compare_worlds(runs_a: list[Path], runs_b: list[Path] | None, planner: str, k: int,
                   samples: int) -> tuple[dict, str]:
  """(`bootstrap.across_worlds` result, side b's label): run i of a against run i of b
  (the same world), or against its world's best count planner when `runs_b` is None."""
  if runs_b is not None and len(runs_b) != len(runs_a):
    raise SystemExit(f"--across_worlds pairs the runs by position: {len(runs_a)} --run_a but "
                     f"{len(runs_b)} --run_b (give one per world, or --run_b=counts)")
  worlds, names_b, seen = [], [], {}
  for index, run_a in enumerate(runs_a):
    loaded = load_run(run_a)
    transitions, examples, rare_max = loaded
    world = (transitions.history.tobytes(), transitions.next_cluster.tobytes())
    if world in seen:
      raise SystemExit(f"--across_worlds: {seen[world]} and {run_a} are the same world (the same "
                       "transitions): pool seeds of one world without --across_worlds")
    seen[world] = run_a
    scores_a = run_scores(run_a, transitions, examples, planner)
    if runs_b is None:
      name_b, scores_b = count_scores(transitions, examples, k)
      names_b.append(f"{name_b} counts")
    else:
      _same_examples(run_a, loaded, runs_b[index], load_run(runs_b[index]))
      scores_b = run_scores(runs_b[index], transitions, examples, planner)
      names_b.append(str(runs_b[index]))
    worlds.append((transitions, scores_a, scores_b, examples, rare_max))
  label = (f"{names_b[0]} (each world's own)" if runs_b is None and len(set(names_b)) == 1
           else ", ".join(names_b))
  return bootstrap.across_worlds(worlds, k=k, samples=samples), label


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_a", type=Path, action="append", required=True,
                      help="a run directory; repeat for a group of runs (seeds)")
  parser.add_argument("--run_b", type=Path, action="append", required=True,
                      help=f"a run directory (repeatable), or '{COUNTS}' for the best count "
                           "planner")
  parser.add_argument("--planner", choices=PLANNERS, default="llm",
                      help="each run's LLM, or its blend with last-cluster counts")
  parser.add_argument("--across_worlds", action="store_true",
                      help="each --run_a is its own world, paired with its own counts or "
                           "the --run_b in the same position; pooled over worlds")
  parser.add_argument("--k", type=int, default=5)
  parser.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
  parser.add_argument("--out", type=Path, help="write the results as JSON here")
  args = parser.parse_args()

  against_counts = [str(r) for r in args.run_b] == [COUNTS]
  if COUNTS in map(str, args.run_a) or (not against_counts and COUNTS in map(str, args.run_b)):
    raise SystemExit(f"'{COUNTS}' stands alone as the one --run_b")
  if args.across_worlds:
    result, label_b = compare_worlds(args.run_a, None if against_counts else args.run_b,
                                     args.planner, args.k, args.samples)
  else:
    result, label_b = compare_one_world(args.run_a, None if against_counts else args.run_b,
                                        args.planner, args.k, args.samples)
  result.update({"run_a": list(map(str, args.run_a)), "run_b": label_b,
                 "planner": args.planner})
  by = "world" if args.across_worlds else "run"
  print(f"hit@{args.k} of each run's {args.planner}: a = {', '.join(map(str, args.run_a))}; "
        f"b = {label_b}" + (" (pooled over worlds)" if args.across_worlds else ""))
  print(f"bucket | examples | a | b | a - b [95% interval] | a by {by} | b by {by}")
  for bucket in hit_rate.BUCKETS:
    row = result[bucket]
    if not row["examples"]:
      print(f"{bucket} | 0 | - | - | - | - | -")
      continue
    print(f"{bucket} | {row['examples']} | {row['a']:.3f} | {row['b']:.3f} | "
          f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}] | "
          f"{' '.join(_fmt(h) for h in row['runs_a'])} | "
          f"{' '.join(_fmt(h) for h in row['runs_b'])}")
  if args.out:
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
