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
with the ground-truth topics at the level of matching size. Data too small for
the configured tree (`check_data_fits`) stop the stage before any work.
"""

from __future__ import annotations

import dataclasses
import inspect
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


class DataTooSmallError(ValueError):
  """Fewer items (or positive events) than the configured clusters and embeddings need."""


def _configured(fn, name: str):
  """The value gin binds for `fn`'s parameter `name`, or the parameter's default."""
  bound = gin.get_bindings(fn)
  if name in bound:
    return bound[name]
  return inspect.signature(fn).parameters[name].default


def check_data_fits(interactions) -> None:
  """Raises DataTooSmallError, before any work, when the data cannot fill the configured tree.

  Every level of `build_cluster_tree.levels` needs at least one item per
  cluster, the embeddings need more items than `co_engagement_embeddings.dim`,
  and both need positive events.
  """
  items = interactions.num_items
  levels = tuple(_configured(tree_lib.build_cluster_tree, "levels"))
  too_many = [f"level {i}: {k} clusters" for i, k in enumerate(levels) if k > items]
  if too_many:
    raise DataTooSmallError(
        f"clusters: the data has {items} items, fewer than the clusters of "
        f"build_cluster_tree.levels = {levels} ({'; '.join(too_many)}). Lower "
        f"build_cluster_tree.levels (NUM_CLUSTERS in the shipped run files) so the finest level "
        f"has at most {items} clusters (clusters of tens of items work best), or load more data")
  dim = _configured(embeddings_lib.co_engagement_embeddings, "dim")
  if isinstance(dim, int) and dim >= items:
    raise DataTooSmallError(
        f"clusters: the data has {items} items, but co_engagement_embeddings.dim = {dim} needs "
        f"more items than dimensions; set co_engagement_embeddings.dim below {items}")
  positives_only = _configured(embeddings_lib.co_engagement_embeddings, "positives_only")
  if positives_only and len(interactions) and not interactions.positive.any():
    raise DataTooSmallError(
        f"clusters: none of the {len(interactions)} interactions is positive, so there is no "
        "co-engagement to cluster; lower positive_rule.threshold (or check the rating column)")


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
  check_data_fits(interactions)
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
