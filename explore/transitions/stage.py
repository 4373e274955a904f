"""The `transitions` stage: novel-interest examples, tuple counts, the LLM task source.

Writes into the stage folder:
  transitions/    `NovelTransitions` (every example, train/test by time)
  task_source/    train.tsv / test.tsv (curated (tuple, next) pairs with prompts) for seqio
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from absl import logging

from explore import stages
from explore import transitions
from explore.clusters import stage as clusters_stage
from explore.data import stage as data_stage

TRANSITIONS = "transitions"
TASK_SOURCE = "task_source"


def load_transitions(stage_path: Path) -> transitions.NovelTransitions:
  """Every novel-transition example of the run, with its train/test split."""
  return transitions.NovelTransitions.load(Path(stage_path) / TRANSITIONS)


@stages.register_stage(
    "transitions", deps=("data", "clusters"),
    configurables=("novel_transitions", "curate", "format_history_prompt"))
def transitions_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Builds (last K clusters) -> next novel cluster examples and exports the task source."""
  interactions = data_stage.load_interactions(ctx.input_path("data"))
  clusters = clusters_stage.load_exploration_clusters(ctx.input_path("clusters"))
  examples = transitions.novel_transitions(interactions, clusters.item_to_cluster,
                                           clusters.num_clusters)
  fingerprint = transitions.clusters_fingerprint(clusters.item_to_cluster)
  examples.save(ctx.path / TRANSITIONS, meta={"clusters_fingerprint": fingerprint,
                                              "exploration_level": clusters.level})
  train = transitions.curate(examples.tuple_counts(transitions.TRAIN))
  test = examples.tuple_counts(transitions.TEST)
  transitions.export_task_source(ctx.path / TASK_SOURCE, train, test, clusters.texts)
  summary = examples.summary(descriptions=list(clusters.texts))
  summary["curated_train_pairs"] = int(len(train.count))
  logging.info("transitions: %s", {k: v for k, v in summary.items() if not isinstance(v, list)})
  return summary
