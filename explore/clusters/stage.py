"""The `clusters` stage: item embeddings, the balanced cluster tree, descriptions.

Writes into the stage folder:
  embeddings/     `ItemEmbeddings` from co-engagement
  tree/           `ClusterTree` (every level)
  descriptions/   `ClusterDescriptions` of the exploration level
  texts/          `ClusterTexts`: what the LLM planner reads and writes for each
                  cluster (the keyword descriptions, or semantic IDs; see
                  `explore.clusters.semantic_ids` and `cluster_vocabulary`)
and reports, per level, balance (max/min size), coherence against a random
balanced assignment, and, on the synthetic platform, adjusted mutual information
with the ground-truth topics at the level of matching size.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from absl import logging
import gin
import numpy as np

from explore import progress
from explore import stages
from explore.clusters import descriptions as descriptions_lib
from explore.clusters import embeddings as embeddings_lib
from explore.clusters import quality
from explore.clusters import semantic_ids
from explore.clusters import tree as tree_lib
from explore.data import stage as data_stage

EMBEDDINGS = "embeddings"
TREE = "tree"
DESCRIPTIONS = "descriptions"
TEXTS = "texts"


class ExplorationLevelError(ValueError):
  """An exploration level the cluster tree does not have."""


@gin.configurable
def exploration_level(level: int = -1) -> int:
  """The tree level whose clusters the LLM plans over (-1: the finest level)."""
  return level


@dataclasses.dataclass(frozen=True)
class ExplorationClusters:
  """What later stages need: the chosen level's item -> cluster map, descriptions and texts.

  `texts` are what the LLM planner reads (prompts) and writes (targets, the
  decoding trie) for each cluster; every stage takes them from here, never
  from `descriptions` (the keyword descriptions, kept for display).
  """

  level: int
  item_to_cluster: np.ndarray  # [num_items] int32
  num_clusters: int
  descriptions: Any  # ClusterDescriptions
  texts: tuple[str, ...] = ()  # [num_clusters] the planner's text of each cluster
  vocabulary: str = semantic_ids.KEYWORDS

  def display_texts(self) -> list[str]:
    """Texts for people: the planner's texts, semantic IDs followed by their keywords."""
    if self.vocabulary == semantic_ids.KEYWORDS:
      return list(self.texts)
    return [f"{text} ({keywords})" for text, keywords in zip(self.texts,
                                                             map(str, self.descriptions.texts))]


def _resolve_level(tree, level: int) -> int:
  resolved = level + tree.num_levels if level < 0 else level
  if not 0 <= resolved < tree.num_levels:
    raise ExplorationLevelError(
        f"exploration_level.level = {level}, but the cluster tree has levels "
        f"{list(range(tree.num_levels))} ({list(tree.levels)} clusters); use one of them or -1")
  return resolved


def load_exploration_clusters(stage_path: Path) -> ExplorationClusters:
  tree = tree_lib.ClusterTree.load(stage_path / TREE)
  descriptions = descriptions_lib.ClusterDescriptions.load(stage_path / DESCRIPTIONS)
  level = int(tree.meta["exploration_level"])
  if (stage_path / TEXTS).is_dir():
    texts = semantic_ids.ClusterTexts.load(stage_path / TEXTS)
  else:  # a clusters stage written before texts existed: its keyword descriptions
    texts = semantic_ids.ClusterTexts(tuple(descriptions.texts), semantic_ids.KEYWORDS)
  if len(texts.texts) != tree.levels[level]:
    raise ExplorationLevelError(
        f"{stage_path / TEXTS}: {len(texts.texts)} cluster texts for the {tree.levels[level]} "
        f"clusters of level {level}; rerun the clusters stage")
  return ExplorationClusters(level=level, item_to_cluster=tree.item_to_cluster(level),
                             num_clusters=tree.levels[level], descriptions=descriptions,
                             texts=texts.texts, vocabulary=texts.vocabulary)


def ground_truth_labels(world, levels) -> dict[int, np.ndarray]:
  """Synthetic ground truth: for each cluster level, the topic level of the same size."""
  truth = {}
  topic_levels = world.topic_tree.level_sizes
  for level, size in enumerate(levels):
    if size in topic_levels:
      topic_level = topic_levels.index(size)
      truth[level] = world.topic_tree.ancestors(topic_level)[world.item_topic]
  return truth


@stages.register_stage(
    "clusters", deps=("data",),
    configurables=("co_engagement_embeddings", "build_cluster_tree", "balanced_kmeans",
                   "describe_clusters", "exploration_level", "cluster_vocabulary"))
def clusters_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Embeds items, clusters them into a balanced tree and describes the exploration level."""
  data_path = ctx.input_path("data")
  interactions = data_stage.load_interactions(data_path)
  catalog = data_stage.load_catalog(data_path)
  with progress.phase(f"clusters: co-engagement embeddings of {interactions.num_items} items"):
    embeddings = embeddings_lib.co_engagement_embeddings(interactions)
  embeddings.save(ctx.path / EMBEDDINGS)
  with progress.phase("clusters: cluster tree"):
    tree = tree_lib.build_cluster_tree(embeddings.embeddings)
  level = _resolve_level(tree, exploration_level())
  tree = dataclasses.replace(tree, meta={**tree.meta, "exploration_level": level})
  tree.save(ctx.path / TREE)
  item_to_cluster = tree.item_to_cluster(level)
  # Words of popular items count more (log of positive engagements per item).
  popularity = np.log1p(np.bincount(interactions.item[interactions.positive],
                                    minlength=interactions.num_items))
  with progress.phase(f"clusters: descriptions of the {tree.levels[level]} clusters"):
    descriptions = descriptions_lib.describe_clusters(catalog, item_to_cluster,
                                                      tree.levels[level], weights=popularity)
  descriptions.save(ctx.path / DESCRIPTIONS)
  vocabulary = semantic_ids.cluster_vocabulary()
  texts = semantic_ids.cluster_texts(vocabulary, tree.levels, tree.parents, level, descriptions)
  texts.save(ctx.path / TEXTS)

  world = data_stage.load_world(data_path)
  truth = ground_truth_labels(world, tree.levels) if world is not None else None
  with progress.phase("clusters: quality report"):
    reports = quality.tree_quality(tree, embeddings.embeddings, labels_true=truth, seed=ctx.seed)
  for report in reports:
    logging.info("clusters level %d: %s", report["level"],
                 ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in report.items() if k != "level"))
  return {
      "levels": list(tree.levels),
      "exploration_level": level,
      "quality": reports,
      "sample_descriptions": [str(t) for t in descriptions.texts[:8]],
      "vocabulary": vocabulary.vocabulary,
      "sample_texts": list(texts.texts[:8]),
  }
