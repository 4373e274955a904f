"""Paired comparison of the planner LLMs of two runs on the same test examples.

Two `llm` stages trained on the same transitions (e.g. pretrained on the
knowledge corpus vs on the control corpus) evaluate the same test examples;
this reads each LLM's scores of them as its `llm` stage kept them
(`llm_stage.load_eval_scores`; a stage that did not keep them has its planner
reopened and scored, `llm_stage.load_planner`), and prints hit@k of run a, of
run b, and the paired bootstrap 95% interval of a - b, overall and on unseen /
rare / frequent tuples (`explore.eval.bootstrap.paired_buckets`).

  PYTHONPATH=. python3 tools/compare_runs.py --run_a=/tmp/sw/c05mix \
      --run_b=/tmp/sw/ctlmix --k=5 --out=/tmp/compare.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from explore.eval import bootstrap
from explore.llm import stage as llm_stage
from explore.transitions import stage as transitions_stage


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


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_a", type=Path, required=True)
  parser.add_argument("--run_b", type=Path, required=True)
  parser.add_argument("--k", type=int, default=5)
  parser.add_argument("--samples", type=int, default=2000, help="bootstrap resamples")
  parser.add_argument("--out", type=Path, help="write the results as JSON here")
  args = parser.parse_args()

  transitions, examples, rare_max = load_run(args.run_a)
  transitions_b, examples_b, _ = load_run(args.run_b)
  if not (np.array_equal(examples, examples_b)
          and np.array_equal(transitions.history, transitions_b.history)
          and np.array_equal(transitions.next_cluster, transitions_b.next_cluster)):
    raise SystemExit(f"{args.run_a} and {args.run_b} did not evaluate the same test examples "
                     "(different transitions, seed or max_eval_examples): a paired comparison "
                     "needs the same ones")
  history = transitions.history[examples]  # [n, K]
  result = bootstrap.paired_buckets(transitions, llm_scores(args.run_a, history),
                                    llm_scores(args.run_b, history), examples, k=args.k,
                                    rare_max=rare_max, samples=args.samples)
  result.update({"run_a": str(args.run_a), "run_b": str(args.run_b)})
  print(f"hit@{args.k}: a = {args.run_a}, b = {args.run_b}")
  print("bucket | examples | a | b | a - b [95% interval]")
  for bucket in ("all", "unseen", "rare", "frequent"):
    row = result[bucket]
    if not row["examples"]:
      print(f"{bucket} | 0 | - | - | -")
      continue
    print(f"{bucket} | {row['examples']} | {row['a']:.3f} | {row['b']:.3f} | "
          f"{row['difference']:+.3f} [{row['low']:+.3f}, {row['high']:+.3f}]")
  if args.out:
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
  main()
