"""Probes whether a run's decoder knows its knowledge corpus's relations (log-probabilities).

Reads the run's synthetic world (`data`) and the corpus settings its `pretrain`
stage ran with (`pretrain/MANIFEST.json`), then scores every leaf topic's name
after each topic's probe prompt with the pretrained export (`--stage=pretrain`)
or the fine-tuned planner (`--stage=llm`), and prints, per edge group (stated /
unstated / false), the mean percentile of the true target among the source's
non-affine topics (0.5: chance) and its hit@5 (`explore.llm.relation_probe`).

  PYTHONPATH=. python3 tools/relation_probe.py --run_dir=/tmp/run --stage=pretrain \
      --forms=task,sentence --out=/tmp/probe.json

`--corpus_run_dir` takes the edge groups from another run's corpus settings (e.g.
probe the control run's model on the knowledge corpus's stated edges).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from explore import artifacts
from explore.data import stage as data_stage
from explore.data import synthetic_corpus
from explore.llm import checkpoint_import
from explore.llm import checkpoint_tokenizer
from explore.llm import features
from explore.llm import planner as planner_lib
from explore.llm import relation_probe


def corpus_config(run_dir: Path) -> synthetic_corpus.CorpusConfig:
  """The CorpusConfig the run's pretrain stage recorded."""
  config = artifacts.read_json(run_dir / "pretrain" / "MANIFEST.json").get("config", {})
  if not config.get("PretrainOptions.enabled"):
    raise SystemExit(f"{run_dir / 'pretrain'}: pretraining was not enabled in this run")
  fields = {key.split(".", 1)[1]: value for key, value in config.items()
            if key.startswith("CorpusConfig.")}
  return synthetic_corpus.CorpusConfig(**fields)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", type=Path, required=True)
  parser.add_argument("--stage", choices=("pretrain", "llm"), default="pretrain")
  parser.add_argument("--forms", default="task,sentence")
  parser.add_argument("--corpus_run_dir", type=Path,
                      help="take the stated/unstated edges from this run's corpus settings")
  parser.add_argument("--out", type=Path, help="write the results as JSON here")
  args = parser.parse_args()
  world = data_stage.load_world(args.run_dir / "data")
  if world is None:
    raise SystemExit(f"{args.run_dir / 'data'}: not a synthetic world")
  config = corpus_config(args.corpus_run_dir or args.run_dir)
  if args.stage == "pretrain":
    export = args.run_dir / "pretrain" / "hf"
    model = checkpoint_import.import_hf_checkpoint(export).model
    tokenizer = checkpoint_tokenizer.load_checkpoint_tokenizer(export)
    bos_id = features.BOS_ID  # the export has no bos_token_id: seqio's 0, as it trained
  else:
    planner = planner_lib.LlmPlanner.load(args.run_dir / "llm")
    model, tokenizer, bos_id = planner.model, planner.tokenizer, planner.bos_id
  results = {"run_dir": str(args.run_dir), "stage": args.stage,
             "corpus": {"coverage": config.coverage, "noise": config.noise,
                        "control": config.control, "task_form": config.task_form}}
  print(f"{args.run_dir} ({args.stage}); corpus {results['corpus']}")
  print("form | group | edges | percentile | hit@5")
  for form in args.forms.split(","):
    scores = relation_probe.leaf_scores(model, tokenizer, world, form, bos_id=bos_id,
                                        name_words=config.name_words)
    result = relation_probe.probe(scores, world, config)
    results[form] = result
    for group, r in result.items():
      cells = ["-" if r[key] is None else f"{r[key]:.3f}" for key in ("percentile", "hit@5")]
      print(f"{form} | {group} | {r['edges']} | " + " | ".join(cells))
  if args.out:
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  main()
