"""Exploration policies: which clusters fill a slate's exploration slots each round.

Every policy scores all M clusters for each user ([B, M], higher first, -inf never);
the simulator keeps the best `explore_slots` clusters the user has not engaged with
(`novel_only`) and grounds each in one item by restricted retrieval. A policy whose
`cluster_scores` is None fills those slots with more exploitation items instead. The
slate size and the number of exploration slots are the same for every policy.

  exploit_only   no exploration: the next items of the recommender's ranking
  random         uniformly random novel clusters
  popular_novel  the clusters most often discovered in the training logs
  transition / last_cluster / planner
                 a planner table (`plan_table`): the top-n clusters a planner ranks
                 for each K-tuple of clusters, looked up with the user's history;
                 popular-novel fills in when the user's history is shorter than K
  ucb_bandit     UCB1 over clusters per user on the reward "positive engagement with
                 the explored item"; untried clusters first, by popularity
  oracle         knows each user's undiscovered hidden interests and explores the
                 cluster holding most of their items (strongest first)

Any object with `scores(history [b, K]) -> [b, M]` (the baselines of
`explore.eval.planners`, the precomputed `TupleTable.planner_scores`, an LLM scorer)
becomes a policy through `plan_table`; a `TupleTable` is used as it is.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from explore.precompute import table as table_lib

NEVER = -jnp.inf


class View(NamedTuple):
  """What a policy may read about its users this round ([B, ...])."""

  history: jax.Array  # [B, K] int32 last K unique clusters, -1 pads
  engaged: jax.Array  # [B, M] bool clusters engaged positively
  interest_topic: jax.Array  # [B, I] int32 (the oracle only)
  interest_strength: jax.Array  # [B, I] float32 (the oracle only)
  known: jax.Array  # [B, I] bool (the oracle only)
  round: jax.Array  # [] int32


class Planner(Protocol):
  def scores(self, history: np.ndarray) -> np.ndarray: ...


class Policy:
  """Base: no state, no exploration. Subclasses override `cluster_scores`."""

  name = "exploit_only"
  novel_only = True

  def init(self, batch: int) -> Any:
    del batch
    return ()

  def cluster_scores(self, state, view: View, key: jax.Array) -> jax.Array | None:
    del state, view, key
    return None

  def update(self, state, clusters: jax.Array, reward: jax.Array) -> Any:
    """State after the round: `clusters` [B, E] explored (-1 none), `reward` [B, E] bool."""
    del clusters, reward
    return state


class ExploitOnly(Policy):
  name = "exploit_only"


class RandomExploration(Policy):
  name = "random"

  def cluster_scores(self, state, view, key):
    return jax.random.uniform(key, view.engaged.shape)  # [B, M]


def _normalised(prior: np.ndarray) -> jax.Array:
  prior = np.asarray(prior, np.float64)
  return jnp.asarray(prior / (prior.max() + 1.0), jnp.float32)  # [M] in [0, 1)


class TablePolicy(Policy):
  """Ranks the planner table's clusters for the history tuple first, then by `fallback`."""

  def __init__(self, name: str, table: np.ndarray | None, fallback: np.ndarray):
    self.name = name
    self.table = None if table is None else jnp.asarray(table, jnp.int32)  # [M^K, n]
    self.fallback = _normalised(fallback)  # [M]

  def cluster_scores(self, state, view, key):
    batch, num_clusters = view.engaged.shape
    scores = jnp.broadcast_to(self.fallback, (batch, num_clusters))  # [B, M]
    if self.table is None:
      return scores
    history = view.history  # [B, K]
    row = jnp.zeros(batch, jnp.int32)
    for position in range(history.shape[1]):
      row = row * num_clusters + jnp.maximum(history[:, position], 0)
    planned = self.table[row]  # [B, n]
    full = jnp.all(history >= 0, axis=1, keepdims=True)  # [B, 1]
    planned = jnp.where(full & (planned >= 0), planned, num_clusters)  # M: dropped
    rank_score = jnp.arange(planned.shape[1], 0, -1, dtype=jnp.float32)  # [n] n .. 1
    users = jnp.arange(batch)[:, None]
    return scores.at[users, planned].add(jnp.broadcast_to(rank_score, planned.shape), mode="drop")


class BanditState(NamedTuple):
  pulls: jax.Array  # [B, M] float32
  wins: jax.Array  # [B, M] float32


class UcbBandit(Policy):
  """UCB1 per user over clusters; untried clusters first, ordered by `prior` popularity."""

  name = "ucb_bandit"

  def __init__(self, prior: np.ndarray, exploration: float = 1.0):
    self.prior = _normalised(prior)  # [M]
    self.exploration = float(exploration)

  def init(self, batch):
    shape = (batch, self.prior.shape[0])
    return BanditState(jnp.zeros(shape, jnp.float32), jnp.zeros(shape, jnp.float32))

  def cluster_scores(self, state, view, key):
    total = jnp.maximum(state.pulls.sum(axis=1, keepdims=True), 1.0)  # [B, 1]
    mean = state.wins / jnp.maximum(state.pulls, 1.0)
    bonus = self.exploration * jnp.sqrt(2.0 * jnp.log(total + 1.0) / jnp.maximum(state.pulls, 1.0))
    untried = 1e3 + self.prior  # [M] above any UCB value, by popularity
    return jnp.where(state.pulls > 0, mean + bonus, untried)  # [B, M]

  def update(self, state, clusters, reward):
    users = jnp.arange(clusters.shape[0])[:, None]
    index = jnp.where(clusters >= 0, clusters, state.pulls.shape[1])  # [B, E], M: dropped
    return BanditState(state.pulls.at[users, index].add(1.0, mode="drop"),
                       state.wins.at[users, index].add(reward.astype(jnp.float32), mode="drop"))


class Oracle(Policy):
  """Explores the clusters of each user's undiscovered hidden interests (strongest first)."""

  name = "oracle"
  novel_only = False  # a hidden interest may sit in a cluster the user already engaged with

  def __init__(self, topic_cluster: np.ndarray, num_clusters: int):
    self.topic_cluster = jnp.asarray(topic_cluster, jnp.int32)  # [T]
    self.num_clusters = int(num_clusters)

  def cluster_scores(self, state, view, key):
    hidden = (view.interest_topic >= 0) & ~view.known  # [B, I]
    cluster = jnp.where(hidden, self.topic_cluster[jnp.maximum(view.interest_topic, 0)],
                        self.num_clusters)  # [B, I]
    users = jnp.arange(cluster.shape[0])[:, None]
    scores = jnp.full((cluster.shape[0], self.num_clusters), NEVER)
    return scores.at[users, cluster].max(view.interest_strength, mode="drop")  # [B, M]


def plan_table(planner: Planner, num_clusters: int, k: int, top_n: int,
               chunk: int = 4096) -> np.ndarray:
  """[M^K, n] int32 the planner's top-n clusters for every tuple of distinct clusters.

  Rows whose tuple repeats a cluster (never a history) hold -1; ties go to the
  lower cluster id; n is at most M. A `TupleTable` is returned as it is.
  """
  if isinstance(planner, table_lib.TupleTable):
    if (planner.num_clusters, planner.k) != (num_clusters, k):
      raise table_lib.TableError(
          f"the planner table covers M={planner.num_clusters}, K={planner.k}; the simulation "
          f"needs M={num_clusters}, K={k}")
    return np.asarray(planner.clusters, np.int32)
  top_n = min(int(top_n), num_clusters)
  table = table_lib.TupleTable.empty(num_clusters, k, top_n)
  tuples = table_lib.distinct_tuples(num_clusters, k)  # [r, K]
  for begin in range(0, len(tuples), chunk):
    history = tuples[begin:begin + chunk]
    scores = np.asarray(planner.scores(history), np.float64)  # [c, M]
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_n]  # [c, n]
    table.set_rows(history, order, np.take_along_axis(scores, order, 1))
  return table.clusters
