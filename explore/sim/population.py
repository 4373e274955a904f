"""The simulated population: the world's truth and each user's state when the log ends.

The simulator starts every user where their logged history left them:
  known interests   core interests, plus hidden ones the user already enjoyed
                    (a positive event on that topic) in the log;
  engaged clusters  a per-user bitmask (uint32 words) of the clusters with a positive
                    event in the log, so "new cluster" is exact and costs M / 8 bytes;
  history           the last K unique clusters of the positive sequence (the planner's
                    input, as in `explore.transitions`), -1 padded on the left;
  taste             the sequence recommender's stored user vector.
The world must be the one the run's data were generated from: `check_world_matches`
regenerates the first user's log and compares it with the data stage's rows.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from explore.data import synthetic
from explore.data.schema import Interactions

WORD_BITS = 32


class PopulationError(ValueError):
  """A world, log, cluster map or vector table that does not fit the others."""


class Catalog(NamedTuple):
  """Per-item arrays the simulator reads (device arrays)."""

  topic: jax.Array  # [N] int32 true topic
  quality: jax.Array  # [N] float32 additive effect on the watch fraction
  cluster: jax.Array  # [N] int32 exploration-level cluster
  vectors: jax.Array  # [N, D] float32 recommender item vectors


class Users(NamedTuple):
  """Per-user arrays at the start of the simulation (device arrays, [B, ...])."""

  interest_topic: jax.Array  # [B, I] int32, -1 pads
  interest_strength: jax.Array  # [B, I] float32
  known: jax.Array  # [B, I] bool known at the start (core or found in the log)
  engaged: jax.Array  # [B, W] uint32 bitmask of clusters engaged positively
  history: jax.Array  # [B, K] int32 last K unique clusters, oldest first, -1 pads
  taste: jax.Array  # [B, D] float32 recommender user vector


def num_words(num_clusters: int) -> int:
  return -(-num_clusters // WORD_BITS)


def pack_bits(mask: np.ndarray) -> np.ndarray:
  """[B, W] uint32 words of a [B, M] bool mask (bit c % 32 of word c // 32)."""
  mask = np.asarray(mask, bool)
  width = num_words(mask.shape[1]) * WORD_BITS
  padded = np.zeros((mask.shape[0], width), np.uint64)
  padded[:, :mask.shape[1]] = mask
  weights = (np.uint64(1) << np.arange(WORD_BITS, dtype=np.uint64))  # [32]
  words = (padded.reshape(len(mask), -1, WORD_BITS) * weights).sum(-1)
  return words.astype(np.uint32)


def unpack_bits(words: jax.Array, num_clusters: int) -> jax.Array:
  """[..., M] bool mask of [..., W] uint32 words."""
  shifts = jnp.arange(WORD_BITS, dtype=jnp.uint32)  # [32]
  bits = (words[..., :, None] >> shifts) & jnp.uint32(1)  # [..., W, 32]
  return bits.reshape(*words.shape[:-1], -1)[..., :num_clusters].astype(bool)


def set_bits(words: jax.Array, cluster: jax.Array, enable: jax.Array) -> jax.Array:
  """[..., W] words with bit `cluster` [...] set where `enable` [...] is true."""
  word = jnp.maximum(cluster, 0) // WORD_BITS  # [...]
  bit = jnp.left_shift(jnp.uint32(1), (jnp.maximum(cluster, 0) % WORD_BITS).astype(jnp.uint32))
  hit = (jnp.arange(words.shape[-1]) == word[..., None]) & (enable & (cluster >= 0))[..., None]
  return jnp.where(hit, words | bit[..., None], words)


def check_world_matches(world: synthetic.SyntheticWorld, interactions: Interactions) -> None:
  """Refuses a world that did not generate these logs (sizes, ids and user 0's rows)."""
  if (world.num_users, world.num_items) != (interactions.num_users, interactions.num_items):
    raise PopulationError(
        f"the synthetic world has {world.num_users} users x {world.num_items} items, the data "
        f"stage's logs {interactions.num_users} x {interactions.num_items}; the world does not "
        "match the run's data (rerun the data stage)")
  if not (np.array_equal(interactions.user_ids, world.user_ids)
          and np.array_equal(interactions.item_ids, world.item_ids)):
    raise PopulationError("the data stage's user or item ids are not the world's; the world "
                          "does not match the run's data (rerun the data stage)")
  first = next(synthetic.iter_interaction_chunks(world, 1))
  rows = slice(0, int(interactions.user_offsets()[1]))
  if not (np.array_equal(first.item, interactions.item[rows])
          and np.array_equal(first.positive, interactions.positive[rows])):
    raise PopulationError("user 0's logged items differ from the world's; the world does not "
                          "match the run's data (rerun the data stage)")


def last_unique(sequence: np.ndarray, k: int) -> np.ndarray:
  """[K] the last K unique values of a sequence, oldest first, -1 padded on the left."""
  out: list[int] = []
  for value in sequence[::-1].tolist():
    if value not in out:
      out.append(value)
      if len(out) == k:
        break
  return np.array([-1] * (k - len(out)) + out[::-1], np.int32)


def log_state(world: synthetic.SyntheticWorld, interactions: Interactions,
              item_to_cluster: np.ndarray, num_clusters: int, users: np.ndarray, k: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """([B, I] known, [B, M] engaged, [B, K] history) of `users` after their logged events."""
  offsets = interactions.user_offsets()
  known = np.arange(world.interest_topic.shape[1])[None, :] < world.num_core[users, None]
  engaged = np.zeros((len(users), num_clusters), bool)
  history = np.full((len(users), k), -1, np.int32)
  for row, user in enumerate(users.tolist()):
    span = slice(offsets[user], offsets[user + 1])
    items = interactions.item[span][interactions.positive[span]]  # positives in time order
    topics = np.unique(world.item_topic[items])
    known[row] |= np.isin(world.interest_topic[user], topics) & (world.interest_topic[user] >= 0)
    clusters = item_to_cluster[items]
    engaged[row, clusters] = True
    history[row] = last_unique(clusters, k)
  return known, engaged, history


def build_population(world: synthetic.SyntheticWorld, interactions: Interactions,
                     item_to_cluster: np.ndarray, num_clusters: int, item_vectors: np.ndarray,
                     user_vectors: np.ndarray, users: np.ndarray, k: int
                     ) -> tuple[Catalog, Users]:
  """The catalog and the chosen `users` (world indices) ready for `simulate`."""
  item_to_cluster = np.asarray(item_to_cluster, np.int32)
  if item_to_cluster.shape != (world.num_items,) or item_vectors.shape[0] != world.num_items:
    raise PopulationError(
        f"the clusters cover {item_to_cluster.shape[0]} items and the recommender "
        f"{item_vectors.shape[0]}; the world has {world.num_items} (rerun clusters / seqrec)")
  if user_vectors.shape[0] != world.num_users:
    raise PopulationError(f"the recommender has {user_vectors.shape[0]} user vectors, the "
                          f"world {world.num_users} users (rerun seqrec)")
  users = np.asarray(users, np.int64)
  known, engaged, history = log_state(world, interactions, item_to_cluster, num_clusters, users, k)
  catalog = Catalog(topic=jnp.asarray(world.item_topic), quality=jnp.asarray(world.item_quality),
                    cluster=jnp.asarray(item_to_cluster),
                    vectors=jnp.asarray(item_vectors, jnp.float32))
  population = Users(
      interest_topic=jnp.asarray(world.interest_topic[users]),
      interest_strength=jnp.asarray(world.interest_strength[users]),
      known=jnp.asarray(known), engaged=jnp.asarray(pack_bits(engaged)),
      history=jnp.asarray(history), taste=jnp.asarray(user_vectors[users], jnp.float32))
  return catalog, population


def topic_clusters(world_item_topic: np.ndarray, item_to_cluster: np.ndarray,
                   num_topics: int, num_clusters: int) -> np.ndarray:
  """[T] int32 the cluster holding most of each topic's items (the oracle's map)."""
  counts = np.zeros((num_topics, num_clusters), np.int64)
  np.add.at(counts, (world_item_topic, item_to_cluster), 1)
  return counts.argmax(axis=1).astype(np.int32)
