"""`Explorer`: a run directory loaded once, answering exploration slates fast.

  explorer = Explorer.load("/tmp/explore")
  explorer.recommend([12, 40, 7])            # an explicit history (original item ids)
  explorer.recommend_user(3)                 # a user of the run's log
  batch = explorer.recommend_batch(histories)  # arrays for many histories at once

Per history: its last K unique clusters -> the table's novel clusters
(`plan.py`, fallbacks named) -> per planned cluster, the recommender's top
items inside it, ranked with the tuned popularity prior (`RestrictedRetriever`)
-> the exploration slate, mixed with the regular unrestricted top-k
(`slate.py`). Items in the history are never returned; clusters it engaged with
are never planned. A logged user is served with the stored user vector; any
other history is encoded by the seqrec model (`encoder.py`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from explore.serving import histories as histories_lib
from explore.serving import plan as plan_lib
from explore.serving import response
from explore.serving import run_inputs
from explore.serving import slate as slate_lib
from explore.serving.config import ServingConfig, check_sizes
from explore.serving.histories import Histories, IdIndex, ServingError

@dataclasses.dataclass(frozen=True)
class SlateBatch:
  """Slates of a batch as arrays (dense ids; -1 pads); `Explorer.describe` renders one row."""

  users: np.ndarray  # [B] int64 dense user of each row, -1 for an explicit history
  history_lengths: np.ndarray  # [B]
  recent: np.ndarray  # [B, K] int32 last K unique clusters, oldest first, -1 pads left
  plan: plan_lib.Plan  # [B, c] planned novel clusters
  cluster_items: np.ndarray  # [B, c, n_explore] int32 each planned cluster's best items
  cluster_scores: np.ndarray  # [B, c, n_explore] float32
  explore_items: np.ndarray  # [B, n_explore] int32 round-robin over the planned clusters
  explore_scores: np.ndarray  # [B, n_explore] float32
  explore_clusters: np.ndarray  # [B, n_explore] int32
  mixed: slate_lib.Mixed  # [B, n_explore + n_regular] the slate; the regular items kept

  def __len__(self) -> int:
    return len(self.users)


class Explorer:
  """A run's catalog, clusters, vectors, model and table, loaded once; see the module docstring."""

  def __init__(self, inputs: run_inputs.ServingInputs, config: ServingConfig | None = None):
    from explore.retrieval import RestrictedRetriever  # pylint: disable=g-import-not-at-top
    from explore.serving import encoder  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    self.inputs = inputs
    self.config = config or ServingConfig()
    interactions, clusters = inputs.interactions, inputs.clusters
    self.items = IdIndex(interactions.item_ids, "item")
    self.users = IdIndex(interactions.user_ids, "user")
    self.titles = np.asarray(inputs.catalog.title)
    self.descriptions = clusters.display_texts()
    self.item_to_cluster = np.asarray(clusters.item_to_cluster, np.int32)
    self.num_clusters = clusters.num_clusters
    self.k = inputs.table.k
    self.log = Histories(interactions.user_offsets(), interactions.item.astype(np.int32),
                         np.asarray(interactions.positive, bool))
    self.planner = plan_lib.ClusterPlanner(inputs.table, run_inputs.cluster_popularity(
        interactions, self.item_to_cluster, self.num_clusters))
    vectors = inputs.vectors
    _, prior_items = vectors.retrieval_tables()
    self.prior_weight = float(vectors.prior_weight) if vectors.item_prior is not None else None
    self.retriever = RestrictedRetriever(prior_items, self.item_to_cluster,
                                         implementation=self.config.implementation,
                                         num_clusters=self.num_clusters)
    self.item_vectors = jnp.asarray(vectors.item_vectors, jnp.float32)  # [N, D], on device once
    self.user_vectors = np.asarray(vectors.user_vectors, np.float32)  # [U, D]
    self.encoder = encoder.HistoryEncoder.load(
        inputs.seqrec_path, inputs.seqrec_config, int(vectors.meta["step"]),
        self.item_to_cluster, self.config.max_batch)
    self.regular_cache = self.regular_candidates(min(self.config.regular_cache,
                                                      len(self.item_vectors)))

  @classmethod
  def load(cls, run_dir: str | os.PathLike, table: str | os.PathLike | None = None,
           config: ServingConfig | None = None) -> "Explorer":
    """Loads a run (its `precompute` table, or the table folder `table`)."""
    return cls(run_inputs.load_inputs(run_dir, table), config)

  # One user ------------------------------------------------------------------

  def recommend(self, history_item_ids: Sequence, n_explore: int | None = None,
                n_regular: int | None = None) -> dict[str, Any]:
    """The slate of one explicit history (original item ids, oldest first), as a dict."""
    return self.describe(self.recommend_batch([history_item_ids], n_explore, n_regular), 0)

  def recommend_user(self, user_id, n_explore: int | None = None,
                     n_regular: int | None = None) -> dict[str, Any]:
    """The slate of a user of the run's log (original user id), as a dict."""
    return self.describe(self.recommend_users([user_id], n_explore, n_regular), 0)

  # Batches -------------------------------------------------------------------

  def recommend_batch(self, histories: Sequence[Sequence], n_explore: int | None = None,
                      n_regular: int | None = None) -> SlateBatch:
    """Slates of explicit histories (lists of original item ids; each item counts as engaged)."""
    if not len(histories):
      raise ServingError("no histories given")
    dense = [self.items.dense(h) for h in histories]
    batch = Histories.from_lists(dense)
    return self._slates(batch, self.encoder.encode(batch), np.full(len(dense), -1), n_explore,
                        n_regular)

  def recommend_users(self, user_ids: Sequence, n_explore: int | None = None,
                      n_regular: int | None = None) -> SlateBatch:
    """Slates of logged users, from their logs and stored user vectors."""
    users = self.users.dense(user_ids)
    if not len(users):
      raise ServingError("no user ids given")
    return self._slates(self._logged(users), self.user_vectors[users], users, n_explore,
                        n_regular)

  def _logged(self, users: np.ndarray) -> Histories:
    """The logged histories of dense users [B], as a batch."""
    lengths = self.log.lengths[users]
    starts = self.log.offsets[users]
    index = np.repeat(starts - np.concatenate([[0], np.cumsum(lengths)[:-1]]), lengths) + \
        np.arange(int(lengths.sum()))  # [T] positions in the log
    return Histories(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64),
                     self.log.items[index], self.log.engaged[index])

  def regular_candidates(self, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """([U, width] scores, ids): every logged user's regular top-`width`, or None if 0."""
    if width <= 0:
      return None
    parts = [self._regular(self.user_vectors[rows], self._logged(rows).seen_matrix(), width)
             for rows in np.array_split(np.arange(len(self.user_vectors)),
                                        max(1, -(-len(self.user_vectors) // 4096)))]
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))

  def user_history(self, user_id) -> list:
    """A logged user's items (original ids, oldest first)."""
    user = int(self.users.dense([user_id])[0])
    return self.items.original(self.log.items[self.log.offsets[user]:self.log.offsets[user + 1]])

  def _slates(self, batch: Histories, users: np.ndarray, user_rows: np.ndarray,
              n_explore: int | None, n_regular: int | None) -> SlateBatch:
    n_explore = self.config.n_explore if n_explore is None else n_explore
    n_regular = self.config.n_regular if n_regular is None else n_regular
    check_sizes(n_explore, n_regular)
    history = histories_lib.cluster_history(batch, self.item_to_cluster, self.num_clusters,
                                            self.k)
    plan = self.planner.plan(history, self.config.plan_clusters)
    seen = batch.seen_matrix()  # [B, S]
    b, c = plan.clusters.shape
    per_cluster = max(n_explore, 1)
    scores, ids = self._search(self._prior_users(users), plan.clusters, seen, per_cluster)
    scores = scores.reshape(b, c, per_cluster)
    ids = ids.reshape(b, c, per_cluster)
    explore_ids, explore_scores, explore_clusters = slate_lib.round_robin(
        ids, scores, plan.clusters, n_explore)
    wanted = min(n_regular + n_explore, len(self.item_vectors))
    if n_regular and self.regular_cache is not None and wanted <= self.regular_cache[0].shape[1] \
        and (user_rows >= 0).all():  # logged users: their catalog scan was done at load
      regular_scores = self.regular_cache[0][user_rows, :wanted]
      regular_ids = self.regular_cache[1][user_rows, :wanted]
    elif n_regular:
      regular_scores, regular_ids = self._regular(users, seen, n_regular + n_explore)
    else:  # exploration only: skip the full-catalog scan
      regular_scores, regular_ids = np.zeros((b, 0), np.float32), np.zeros((b, 0), np.int32)
    mixed = slate_lib.mix(explore_ids, regular_ids, regular_scores, n_regular)
    return SlateBatch(np.asarray(user_rows, np.int64), batch.lengths, history.recent, plan,
                      ids, scores, explore_ids, explore_scores, explore_clusters, mixed)

  def _prior_users(self, users: np.ndarray) -> np.ndarray:
    """[B, D (+1)] user vectors with the prior's weight as the extra coordinate, if any."""
    if self.prior_weight is None:
      return users
    return np.concatenate([users, np.full((len(users), 1), self.prior_weight, np.float32)], 1)

  def _chunks(self, rows: int):
    step = self.config.max_batch
    for begin in range(0, rows, step):
      end = min(begin + step, rows)
      yield begin, end, 1 << (end - begin - 1).bit_length()

  def _search(self, users: np.ndarray, clusters: np.ndarray, seen: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray]:
    """([B * c, k] scores, ids): each (user, planned cluster) pair's restricted top-k."""
    b, c = clusters.shape
    pair_users = np.repeat(users, c, axis=0)  # [B * c, D']
    pair_clusters = clusters.reshape(b * c, 1)
    pair_seen = np.repeat(seen, c, axis=0)
    out_scores, out_ids = [], []
    for begin, end, size in self._chunks(b * c):
      pad = size - (end - begin)
      rows = np.concatenate([np.arange(begin, end), np.full(pad, begin)])
      top, ids = self.retriever.top_k(pair_users[rows], pair_clusters[rows], k, pair_seen[rows],
                                      validate=False)
      out_scores.append(np.asarray(top)[:end - begin])
      out_ids.append(np.asarray(ids)[:end - begin])
    return np.concatenate(out_scores), np.concatenate(out_ids)

  def _regular(self, users: np.ndarray, seen: np.ndarray, k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """([B, k] scores, ids) of the unrestricted top-k by u . v, seen items excluded."""
    k = min(k, len(self.item_vectors))
    out_scores, out_ids = [], []
    for begin, end, size in self._chunks(len(users)):
      rows = np.concatenate([np.arange(begin, end), np.full(size - (end - begin), begin)])
      top, ids = slate_lib.regular_top_k(users[rows], self.item_vectors, seen[rows], k=k)
      out_scores.append(np.asarray(top)[:end - begin])
      out_ids.append(np.asarray(ids)[:end - begin])
    return np.concatenate(out_scores), np.concatenate(out_ids)

  def describe(self, batch: SlateBatch, row: int) -> dict[str, Any]:
    """Row `row` of a batch as a JSON-ready dict (`response.describe_row`)."""
    return response.describe_row(self, batch, row)
