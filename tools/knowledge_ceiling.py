"""How much an oracle that knows the corpus's stated relations could add over counts.

Reads a run directory's synthetic world (`data`), clusters and transitions, and
for each corpus coverage prints the hit@k of last-cluster counts and of the
oracle of `explore.eval.knowledge_ceiling` (counts plus the true stated
relations, weights tuned on validation examples), overall and by unseen / rare
/ frequent test tuples, on the same test examples the `llm` stage evaluates.

  PYTHONPATH=. python3 tools/knowledge_ceiling.py --run_dir=/tmp/run \
      --coverages=0.25,0.5,1 --noise=0.1 --out=/tmp/ceiling.json
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from explore.clusters import stage as clusters_stage
from explore.data import stage as data_stage
from explore.data import synthetic_corpus
from explore.eval import knowledge_ceiling as ceiling_lib
from explore.llm import stage as llm_stage
from explore.transitions import stage as transitions_stage


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run_dir", type=Path, required=True)
  parser.add_argument("--coverages", default="0.25,0.5,1")
  parser.add_argument("--noise", type=float, default=0.1)
  parser.add_argument("--max_eval_examples", type=int, default=500,
                      help="as LlmStageOptions.max_eval_examples (0: every test example)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--k", type=int, default=5)
  parser.add_argument("--out", type=Path, help="write the results as JSON here")
  args = parser.parse_args()

  world = data_stage.load_world(args.run_dir / "data")
  if world is None:
    raise SystemExit(f"{args.run_dir / 'data'}: not a synthetic world; the ceiling needs its "
                     "ground truth")
  clusters = clusters_stage.load_exploration_clusters(args.run_dir / "clusters")
  transitions = transitions_stage.load_transitions(args.run_dir / "transitions")
  topic, purity = ceiling_lib.cluster_topics(clusters.item_to_cluster, world.item_topic,
                                             clusters.num_clusters)
  examples = llm_stage.eval_examples(transitions, args.max_eval_examples or None, args.seed)
  print(f"{clusters.num_clusters} clusters over {world.num_topics} topics; majority-topic "
        f"purity mean {purity.mean():.3f}, {len(set(topic.tolist()))} distinct topics; "
        f"{len(examples)} test examples")
  results = {}
  header = ("coverage", "planner", "all", "unseen", "rare", "frequent")
  print(" | ".join(header))
  for coverage in [float(c) for c in args.coverages.split(",")]:
    config = dataclasses.replace(synthetic_corpus.CorpusConfig(), coverage=coverage,
                                 noise=args.noise)
    known = ceiling_lib.known_relations(world, config)
    known_clusters = known[topic][:, topic]  # [M, M]
    result = ceiling_lib.ceiling(transitions, known_clusters, examples, seed=args.seed)
    results[str(coverage)] = result
    for name in ("last_cluster", "oracle"):
      by_bucket = result["planners"][name]
      cells = [by_bucket[b][f"hit@{args.k}"] for b in ("all", "unseen", "rare", "frequent")]
      print(f"{coverage} | {name} | " + " | ".join(
          "-" if c is None else f"{c:.3f}" for c in cells))
    print(f"{coverage} | tuned on validation: {result['tuned']}")
  print(f"examples per bucket: {results[next(iter(results))]['examples']}")
  if args.out:
    args.out.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
  main()
