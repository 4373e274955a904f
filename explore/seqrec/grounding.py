"""Grounding a cluster-level plan in items: restricted retrieval against the test item.

The LLM planner names a cluster; the sequence recommender must then find the
item the user will engage with *inside* that cluster. This module measures how
well it does with an oracle plan: for each evaluated user the plan is the
cluster of the held-out test item, and the recommender's top-k inside that
cluster (`RestrictedRetriever`, the user's history excluded) either holds the
test item or not. Reported next to it, on the same users:

* the recommender over the full catalog (no plan), the usual HR@k / NDCG@k;
* the most popular items of the planned cluster (training counts), the
  baseline a plan alone gives without a recommender;
* optionally the recommender blended with a popularity prior inside the plan,
  u . v + w * log(1 + count), with w tuned on the *validation* cases
  (`tune_prior_weight`): inside one cluster the user's vector says which of
  its items fit the user, and popularity says which of them most users like.

Both for all evaluated users and for the *novel* ones only: users whose test
item's cluster is not among the clusters of their history. That is the case
the LLM planner produces (a cluster the user has never engaged with), and the
one where the history says least about what to pick inside the cluster.

History exclusion follows `evaluation.py`: every item of the history
(training items and the validation item) is removed except the target itself
(repeat consumption still counts), and ties go to the lower item id, so the
full-catalog numbers here equal the test numbers of the ranking evaluation
when computed from the same user vectors.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp
import numpy as np

from explore.seqrec import evaluation
from explore.seqrec.data import PAD, LeaveLastOutSplit, ranking_examples
from explore.retrieval.restricted import RestrictedRetriever
from explore.seqrec.vectors import popularity_prior, with_prior


class GroundingError(ValueError):
  """Grounding inputs that do not fit together (shapes, catalog, cluster ids)."""


@dataclasses.dataclass(frozen=True)
class GroundingCases:
  """One case per evaluated user: the oracle plan and what to exclude."""

  users: np.ndarray  # [E] int64 dense user index
  targets: np.ndarray  # [E] int32 dense item id of the held-out item
  target_clusters: np.ndarray  # [E] int32 cluster of the held-out item: the oracle plan
  history: np.ndarray  # [E, H] int32 items before the target (but the target itself); -1 pad
  novel: np.ndarray  # [E] bool: the target cluster is not among the history's clusters

  def __len__(self) -> int:
    return len(self.users)


def _width(longest: int) -> int:
  """A power of two >= 16 (few compiled shapes)."""
  return max(16, 1 << max(0, math.ceil(math.log2(max(longest, 1)))))


def grounding_cases(split: LeaveLastOutSplit, item_to_cluster: np.ndarray,
                    which: str = "test") -> GroundingCases:
  """The test (or `which="val"` validation) cases of `split`'s evaluated users.

  Test cases hold the training items and the validation item as history;
  validation cases the training items only (`data.ranking_examples`).
  """
  item_to_cluster = np.asarray(item_to_cluster)
  num_items = split.sequences.num_items
  if item_to_cluster.shape != (num_items,):
    raise GroundingError(f"item_to_cluster has shape {item_to_cluster.shape}, expected "
                         f"({num_items},): one cluster per item of the interactions")
  if num_items and item_to_cluster.min() < 0:
    raise GroundingError(f"item_to_cluster holds cluster {int(item_to_cluster.min())}; "
                         "cluster ids must be >= 0")
  examples = ranking_examples(split, which, max_len=1)
  rows = np.arange(len(examples))
  tokens = examples.history_matrix(rows, int(examples.history_length.max()))  # [E, H]
  history = tokens.astype(np.int64) - 1  # [E, H] dense items, -1 padding
  targets = examples.targets.astype(np.int64) - 1  # [E]
  target_clusters = item_to_cluster[targets]  # [E]
  history_clusters = np.where(history >= 0, item_to_cluster[np.maximum(history, 0)], -1)
  novel = ~np.any(history_clusters == target_clusters[:, None], axis=1)  # [E]
  history = np.where(history == targets[:, None], -1, history)  # the target stays a candidate
  return GroundingCases(users=examples.users, targets=targets.astype(np.int32),
                        target_clusters=target_clusters.astype(np.int32),
                        history=history.astype(np.int32), novel=novel)


def _seen_in_plan(cases: GroundingCases, item_to_cluster: np.ndarray) -> np.ndarray:
  """[E, S] the history items inside each case's planned cluster (-1 padding).

  Items outside the plan cannot be retrieved anyway, so this is all the
  retriever has to exclude, and S is far smaller than the longest history.
  """
  history_clusters = np.where(cases.history >= 0,
                              item_to_cluster[np.maximum(cases.history, 0)], -1)
  inside = (cases.history >= 0) & (history_clusters == cases.target_clusters[:, None])
  width = _width(int(inside.sum(axis=1).max()) if len(cases) else 0)
  order = np.argsort(~inside, axis=1, kind="stable")[:, :width]  # inside entries first
  kept = np.take_along_axis(cases.history, order, axis=1)  # [E, width]
  return np.where(np.take_along_axis(inside, order, axis=1), kept, -1).astype(np.int32)


def restricted_ranks(retriever: RestrictedRetriever, user_vectors: np.ndarray,
                     cases: GroundingCases, seen: np.ndarray, k: int,
                     batch_size: int = 1024) -> np.ndarray:
  """[E] rank of each target in its user's top-k inside the planned cluster; k if absent."""
  ranks = []
  for begin in range(0, len(cases), batch_size):
    rows = np.arange(begin, min(begin + batch_size, len(cases)))
    padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])  # static shape
    _, ids = retriever.top_k(user_vectors[padded], cases.target_clusters[padded][:, None], k,
                             seen[padded])
    ids = np.asarray(ids)[:len(rows)]  # [b, k]
    hit = ids == cases.targets[rows][:, None]  # [b, k]
    ranks.append(np.where(hit.any(axis=1), np.argmax(hit, axis=1), k))
  return np.concatenate(ranks).astype(np.int64)


def full_catalog_ranks(user_vectors: np.ndarray, item_vectors: np.ndarray,
                       cases: GroundingCases, batch_size: int = 256) -> np.ndarray:
  """[E] rank of each target over the whole catalog, history excluded (no plan)."""
  items = jnp.asarray(item_vectors, jnp.float32)  # [N, D]
  ranks = []
  for begin in range(0, len(cases), batch_size):
    rows = np.arange(begin, min(begin + batch_size, len(cases)))
    padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])
    users = jnp.asarray(user_vectors[padded], jnp.float32)  # [B, D]
    scores = jnp.einsum("BD,ND->BN", users, items, precision="highest")  # [B, N]
    scores = jnp.pad(scores, ((0, 0), (1, 0)))  # [B, N + 1] token order, column 0 padding
    seen = np.where(cases.history[padded] >= 0, cases.history[padded] + 1, PAD)  # [B, H] tokens
    batch = evaluation.target_ranks(scores, jnp.asarray(cases.targets[padded] + 1),
                                    jnp.asarray(seen, jnp.int32), len(item_vectors))
    ranks.append(np.asarray(batch)[:len(rows)])
  return np.concatenate(ranks).astype(np.int64)


def _metrics(ranks: np.ndarray, k: int) -> dict[str, float] | None:
  return evaluation.ranking_metrics(ranks, (k,)) if len(ranks) else None


def _check_inputs(user_vectors, item_vectors, item_to_cluster, cases, item_counts, k) -> None:
  num_items = len(item_vectors)
  if user_vectors.shape != (len(cases), item_vectors.shape[1]):
    raise GroundingError(f"user_vectors has shape {user_vectors.shape}, expected "
                         f"({len(cases)}, {item_vectors.shape[1]}): one vector per case")
  for name, array in (("item_to_cluster", item_to_cluster), ("item_counts", item_counts)):
    if np.shape(array) != (num_items,):
      raise GroundingError(f"{name} has shape {np.shape(array)}, expected ({num_items},): "
                           "one entry per item vector")
  if not isinstance(k, int) or k < 1:
    raise GroundingError(f"k={k!r} must be a positive integer")


class _PlanRanker:
  """Ranks of the targets inside their planned clusters, for one item table."""

  def __init__(self, item_vectors: np.ndarray, item_to_cluster: np.ndarray,
               cases: GroundingCases, seen: np.ndarray, k: int, implementation: str):
    """`seen`: `_seen_in_plan(cases, item_to_cluster)`, shared by every table."""
    self.retriever = RestrictedRetriever(item_vectors, item_to_cluster,
                                         implementation=implementation,
                                         num_clusters=int(item_to_cluster.max()) + 1)
    self.cases, self.seen, self.k = cases, seen, k

  def ranks(self, user_vectors: np.ndarray) -> np.ndarray:
    return restricted_ranks(self.retriever, user_vectors, self.cases, self.seen, self.k)


def tune_prior_weight(user_vectors: np.ndarray, item_vectors: np.ndarray,
                      item_to_cluster: np.ndarray, cases: GroundingCases,
                      item_counts: np.ndarray, weights: tuple[float, ...], k: int = 10,
                      implementation: str = "contiguous") -> dict[str, Any]:
  """The popularity-prior weight with the best in-cluster NDCG@k on `cases`.

  Tune on validation cases (`grounding_cases(..., which="val")`) and report
  on test. Scores are u . v + w * log(1 + count); ties go to the smaller weight.

  Returns:
    {"weight": the best w, "ndcg@k": {str(w): NDCG@k of every w tried}}.
  """
  item_to_cluster = np.asarray(item_to_cluster)
  _check_inputs(user_vectors, item_vectors, item_to_cluster, cases, item_counts, k)
  if (not weights or isinstance(weights, str)
      or not all(isinstance(w, (int, float, np.number)) and np.isfinite(w) for w in weights)):
    raise GroundingError(f"weights={weights!r} must be a non-empty tuple of finite numbers")
  prior = popularity_prior(item_counts)
  ranker, ndcg = None, {}
  for weight in sorted(set(float(w) for w in weights)):
    users, items = with_prior(user_vectors, item_vectors, prior, weight)
    if ranker is None:  # the items' coordinates do not depend on the weight
      ranker = _PlanRanker(items, item_to_cluster, cases,
                           _seen_in_plan(cases, item_to_cluster), k, implementation)
    ndcg[weight] = evaluation.ranking_metrics(ranker.ranks(users), (k,))[f"ndcg@{k}"]
  best = max(ndcg, key=lambda w: (ndcg[w], -w))
  return {"weight": best, f"ndcg@{k}": {str(w): v for w, v in ndcg.items()}}


def grounding_metrics(user_vectors: np.ndarray, item_vectors: np.ndarray,
                      item_to_cluster: np.ndarray, cases: GroundingCases,
                      item_counts: np.ndarray, k: int = 10,
                      implementation: str = "contiguous",
                      prior_weight: float | None = None) -> dict[str, Any]:
  """HR@k / NDCG@k with the oracle plan, without a plan, and most popular in the plan.

  Args:
    user_vectors: [E, D] the recommender's user vector of each case (row i = cases[i]),
      read from the test history (training + validation items).
    item_vectors: [N, D] the recommender's item vectors.
    item_to_cluster: [N] cluster of every item (the level the planner uses).
    cases: from `grounding_cases`.
    item_counts: [N] training interactions per item (the popularity baseline).
    k: the cutoff.
    implementation: the `RestrictedRetriever` implementation.
    prior_weight: if given, also rank inside the plan by u . v + prior_weight *
      log(1 + count) ("model_prior_in_cluster").

  Returns:
    {"k", "all": {...}, "novel": {...}}, each part with "users",
    "model_full_catalog", "model_in_cluster", "most_popular_in_cluster" and,
    with a prior weight, "model_prior_in_cluster" (None where a part has no users).
  """
  item_to_cluster = np.asarray(item_to_cluster)
  _check_inputs(user_vectors, item_vectors, item_to_cluster, cases, item_counts, k)
  seen = _seen_in_plan(cases, item_to_cluster)

  def plan_ranks(users, items):
    return _PlanRanker(items, item_to_cluster, cases, seen, k, implementation).ranks(users)

  # Popularity as a 1-d "embedding": every user scores item i by its count.
  ranks = {
      "model_full_catalog": full_catalog_ranks(user_vectors, item_vectors, cases),
      "model_in_cluster": plan_ranks(user_vectors, item_vectors),
      "most_popular_in_cluster": plan_ranks(np.ones((len(cases), 1), np.float32),
                                            np.asarray(item_counts, np.float32)[:, None]),
  }
  if prior_weight is not None:
    ranks["model_prior_in_cluster"] = plan_ranks(*with_prior(
        user_vectors, item_vectors, popularity_prior(item_counts), prior_weight))
  out: dict[str, Any] = {"k": k}
  for part, rows in (("all", np.ones(len(cases), bool)), ("novel", cases.novel)):
    out[part] = {"users": int(rows.sum()),
                 **{name: _metrics(r[rows], k) for name, r in ranks.items()}}
  return out
