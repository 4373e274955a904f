"""The knowledge ceiling: what knowing the corpus's stated relations could add over counts.

A pretrained planner can at best know the relations its corpus states. This
module measures, from the synthetic world's ground truth, how much an oracle
that knows exactly the true stated affinity edges adds to last-cluster counts
on the test tuples (above all the unseen ones), so that a target for the LLM
can be checked for reachability before any model is trained.

The oracle's score of cluster c after a history (c_1, ..., c_K):

  log(1 + count(c_K -> c)) + a * known[c_K, c] + b * known[c_{K-1}, c]
  + 1e-6 * popularity(c)

with known[x, y] = 1 when the corpus states the true affinity edge
topic(x) -> topic(y) (topic(c): the majority leaf topic of the cluster's items;
a relation the corpus states falsely is not known, as the oracle knows the
truth), and the weights a, b chosen on validation examples only (the latest
tenth of the train split by time, `explore.eval.blend.validation_split`).
"""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from explore.data import synthetic_corpus
from explore.data.synthetic_world import SyntheticWorld
from explore.eval import blend
from explore.eval import hit_rate
from explore.eval.planners import PairCounts
from explore.transitions.examples import NovelTransitions, TRAIN

WEIGHTS = (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)


class KnowledgeCeilingError(ValueError):
  """Inputs the knowledge ceiling cannot use."""


def cluster_topics(item_to_cluster: np.ndarray, item_topic: np.ndarray, num_clusters: int
                   ) -> tuple[np.ndarray, np.ndarray]:
  """([M] majority leaf topic of each cluster's items, [M] the fraction of items in it)."""
  item_to_cluster = np.asarray(item_to_cluster, np.int64)
  item_topic = np.asarray(item_topic, np.int64)
  if item_to_cluster.shape != item_topic.shape:
    raise KnowledgeCeilingError(
        f"cluster_topics: {len(item_to_cluster)} items mapped to clusters but the world has "
        f"{len(item_topic)} items; the clusters stage was run on other data")
  num_topics = int(item_topic.max()) + 1
  counts = np.zeros((num_clusters, num_topics), np.int64)
  np.add.at(counts, (item_to_cluster, item_topic), 1)
  sizes = counts.sum(axis=1)
  if np.any(sizes == 0):
    raise KnowledgeCeilingError(f"cluster_topics: cluster {int(np.argmin(sizes))} has no items")
  return counts.argmax(axis=1), counts.max(axis=1) / sizes


def known_relations(world: SyntheticWorld, config: synthetic_corpus.CorpusConfig) -> np.ndarray:
  """[L, L] bool: the true affinity edges the corpus of `config` states (the same draw)."""
  rng = np.random.default_rng([config.seed, 7])  # as synthetic_corpus.generate_corpus
  relations = synthetic_corpus.stated_relations(world, config.coverage, config.noise, rng)
  known = np.zeros((world.num_topics, world.num_topics), bool)
  known[relations.source[relations.true], relations.target[relations.true]] = True
  return known


def oracle_scores(last_counts: PairCounts, popularity: np.ndarray, known_clusters: np.ndarray,
                  history: np.ndarray, a: float, b: float) -> np.ndarray:
  """[n, M] the oracle's scores (see the module docstring) of [n, K] histories."""
  history = np.asarray(history, np.int64)
  scores = np.log1p(last_counts.scores(history[:, -1:]))  # [n, M]
  scores = scores + a * known_clusters[history[:, -1]]
  if history.shape[1] > 1:
    scores = scores + b * known_clusters[history[:, -2]]
  return scores + 1e-6 * popularity / max(float(popularity.max()), 1.0)


def _fit(transitions: NovelTransitions, indices: np.ndarray) -> tuple[PairCounts, np.ndarray]:
  history, nxt = transitions.history[indices], transitions.next_cluster[indices]
  counts = PairCounts.fit(history[:, -1:], nxt, transitions.num_clusters)
  return counts, np.bincount(nxt, minlength=transitions.num_clusters).astype(np.float64)


def tune(transitions: NovelTransitions, known_clusters: np.ndarray,
         weights: Sequence[float] = WEIGHTS, k: int = 5, seed: int = 0) -> dict:
  """(a, b) with the best validation hit@k (ties: the smaller sum), counts fitted before it."""
  fit, validation = blend.validation_split(transitions, 0.1, 500, seed)
  counts, popularity = _fit(transitions, fit)
  history = transitions.history[validation]
  mask = transitions.previously_engaged_mask(validation)
  truth = transitions.next_cluster[validation]
  results = {}
  for a, b in itertools.product(weights, weights):
    ranks = hit_rate.novel_ranks(oracle_scores(counts, popularity, known_clusters, history, a, b),
                                 truth, mask)
    results[(a, b)] = float(np.mean(ranks < k))
  best = max(results, key=lambda ab: (results[ab], -sum(ab)))
  return {"a": best[0], "b": best[1], f"validation_hit@{k}": results[best],
          f"validation_hit@{k}_counts_only": results[(0.0, 0.0)]}


def ceiling(transitions: NovelTransitions, known_clusters: np.ndarray, examples: np.ndarray,
            rare_max: int = 4, seed: int = 0, ks: Sequence[int] = (1, 5, 10),
            weights: Sequence[float] = WEIGHTS, tune_k: int = 5) -> dict:
  """hit@ks of the tuned oracle and of the last-cluster counts on `examples`, by bucket.

  The oracle's weights maximise validation hit@`tune_k` (`tune`).
  """
  tuned = tune(transitions, known_clusters, weights, tune_k, seed=seed)
  counts, popularity = _fit(transitions, transitions.indices(TRAIN))
  history = transitions.history[examples]
  scores = {"last_cluster": oracle_scores(counts, popularity, known_clusters, history, 0.0, 0.0),
            "oracle": oracle_scores(counts, popularity, known_clusters, history,
                                    tuned["a"], tuned["b"])}
  evaluation = hit_rate.evaluate_planners(transitions, scores, ks=ks, examples=examples,
                                          rare_max=rare_max)
  return {"tuned": tuned, **evaluation}
