"""`SyntheticWorld`: the ground truth of the synthetic platform (topics, items, users).

The world is what a live platform hides: which topic each item is about, which topics
each user enjoys (known "core" interests and "hidden" ones they have not discovered
yet), and how much a user enjoys an item. The logs (`synthetic_logs`) and the
closed-loop user simulator both draw engagement from it, so the simulator's users
behave like the users in the training logs. Memory is O(items + users): nothing is
ever a dense user x item or topic x item matrix.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from explore import artifacts
from explore.data import synthetic_sampling as sampling
from explore.data import synthetic_topics as topics_lib
from explore.data.synthetic_config import SyntheticConfig, SyntheticConfigError

WORLD_KIND = "synthetic_world"
WORLD_VERSION = 1

# Independent random streams per part, so resizing one part leaves the others unchanged.
_TOPIC_STREAM, _ITEM_STREAM, _USER_STREAM = 0, 1, 2
_ITEMS_FOLLOW_POPULARITY = 0.5  # items per topic grow as topic popularity ** this
_DEDUP_ROUNDS = 16  # redraws before a user gets one interest fewer than asked
_WATCH_EPS = 0.02  # expected watch fractions stay inside (0, 1) for the Beta noise


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticWorld:
  """Ground truth of the synthetic platform. Build with `build_world(config)`.

  Users' interests are stored compactly per user: slots 0..num_core-1 are the core
  interests, the following non-negative slots the hidden ones, -1 pads.
  """

  config: SyntheticConfig
  topic_tree: topics_lib.TopicTree
  vocabulary: topics_lib.TopicVocabulary
  affinity: np.ndarray  # [num_leaves, degree] int32 affine leaves of each leaf
  topic_popularity: np.ndarray  # [num_leaves] float64, sums to one
  item_topic: np.ndarray  # [num_items] int32 leaf topic of each item
  item_quality: np.ndarray  # [num_items] float32 additive effect on the watch fraction
  topic_item_offsets: np.ndarray  # [num_leaves + 1] int64 into topic_items
  topic_items: np.ndarray  # [num_items] int32 each topic's items, most popular first
  interest_topic: np.ndarray  # [num_users, slots] int32 leaf per interest slot, -1 pads
  interest_strength: np.ndarray  # [num_users, slots] float32 expected watch fraction
  interest_source: np.ndarray  # [num_users, slots] int32 slot whose enjoyment reveals it
  num_core: np.ndarray  # [num_users] int32
  user_start: np.ndarray  # [num_users] int64 unix seconds of the first session
  user_events: np.ndarray  # [num_users] int32 events in the user's log

  @property
  def num_users(self) -> int:
    return len(self.num_core)

  @property
  def num_items(self) -> int:
    return len(self.item_topic)

  @property
  def num_topics(self) -> int:
    return self.topic_tree.num_leaves

  @functools.cached_property
  def user_ids(self) -> np.ndarray:
    """[num_users] int64 original user ids (the dense index itself)."""
    return np.arange(self.num_users, dtype=np.int64)

  @functools.cached_property
  def item_ids(self) -> np.ndarray:
    """[num_items] int64 original item ids (the dense index itself)."""
    return np.arange(self.num_items, dtype=np.int64)

  @functools.cached_property
  def topic_popularity_cdf(self) -> np.ndarray:
    return np.cumsum(self.topic_popularity)

  def _check_users(self, users: np.ndarray) -> np.ndarray:
    users = np.asarray(users, np.int64)
    if users.size and (users.min() < 0 or users.max() >= self.num_users):
      raise ValueError(f"SyntheticWorld: user index out of range [0, {self.num_users})")
    return users

  def _check_items(self, items: np.ndarray) -> np.ndarray:
    items = np.asarray(items, np.int64)
    if items.size and (items.min() < 0 or items.max() >= self.num_items):
      raise ValueError(f"SyntheticWorld: item index out of range [0, {self.num_items})")
    return items

  def user_interests(self, user: int) -> tuple[np.ndarray, np.ndarray]:
    """(core, hidden) leaf topics of one user; hidden ones are not in their known set at the start."""
    user = int(self._check_users(np.array([user]))[0])
    slots = self.interest_topic[user]
    core = slots[:self.num_core[user]]
    hidden = slots[self.num_core[user]:]
    return core.copy(), hidden[hidden >= 0].copy()

  def interest_level(self, users: np.ndarray, topics: np.ndarray) -> np.ndarray:
    """[n] float32: user's strength for the topic if it is an interest, else `base_enjoyment`."""
    match = self.interest_topic[users] == np.asarray(topics)[:, None]  # [n, slots]
    strength = np.where(match, self.interest_strength[users], 0.0).max(axis=1)  # [n]
    return np.where(match.any(axis=1), strength, self.config.base_enjoyment).astype(np.float32)

  def expected_watch(self, level: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[n] float32 expected watch fraction from interest levels and the items' quality."""
    return np.clip(level + self.item_quality[items], _WATCH_EPS, 1 - _WATCH_EPS).astype(np.float32)

  def enjoyment(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[n] float32 expected watch fraction of each (user, item) pair, in (0, 1)."""
    users, items = self._check_users(users), self._check_items(items)
    return self.expected_watch(self.interest_level(users, self.item_topic[items]), items)

  def positive_probability(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """[n] float64 probability that an engagement reaches `positive_threshold`."""
    from scipy import special  # only the simulator's reports need it
    mean = self.enjoyment(users, items).astype(np.float64)
    k = self.config.engagement_concentration
    return 1.0 - special.betainc(mean * k, (1.0 - mean) * k, self.config.positive_threshold)

  def draw_engagement(self, expected: np.ndarray, rng: np.random.Generator
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(watch fraction [n] float32, positive [n] bool) drawn from Beta noise around `expected`."""
    mean = np.asarray(expected, np.float64)
    k = self.config.engagement_concentration
    watch = rng.beta(mean * k, (1.0 - mean) * k).astype(np.float32)
    return watch, watch >= np.float32(self.config.positive_threshold)

  def sample_engagement(self, users: np.ndarray, items: np.ndarray, rng: np.random.Generator
                        ) -> tuple[np.ndarray, np.ndarray]:
    """(watch fraction [n] float32 in [0, 1], positive [n] bool) for each (user, item) pair."""
    return self.draw_engagement(self.enjoyment(users, items), rng)

  def popular_topics(self, quantiles: np.ndarray) -> np.ndarray:
    """[n] int32 leaf topics at the given quantiles (uniforms in [0, 1)) of topic popularity."""
    cdf = self.topic_popularity_cdf
    return np.minimum(np.searchsorted(cdf, np.asarray(quantiles) * cdf[-1], side="right"),
                      self.num_topics - 1).astype(np.int32)

  def sample_topics(self, count: int, rng: np.random.Generator) -> np.ndarray:
    """[count] int32 leaf topics drawn by popularity."""
    return self.popular_topics(rng.random(count))

  def sample_items(self, topics: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """[n] int32: one item of each given topic, by its popularity rank in the topic."""
    topics = np.asarray(topics, np.int64)
    start = self.topic_item_offsets[topics]
    size = self.topic_item_offsets[topics + 1] - start
    rank = sampling.zipf_rank(rng.random(len(topics)), size, self.config.item_zipf)
    return self.topic_items[start + rank]

  def item_popularity(self) -> np.ndarray:
    """[num_items] float64 prior probability of each item (topic popularity x rank in topic)."""
    sizes = np.diff(self.topic_item_offsets)
    topic = np.repeat(np.arange(self.num_topics), sizes)  # [num_items] in topic_items order
    rank = np.arange(self.num_items) - self.topic_item_offsets[topic]
    p = self.topic_popularity[topic] * sampling.zipf_rank_probability(
        rank, sizes[topic], self.config.item_zipf)
    out = np.empty(self.num_items)
    out[self.topic_items] = p
    return out

  def topic_description(self, leaf: int) -> str:
    """Readable ground-truth name of a leaf topic (own words, then its ancestors')."""
    return self.vocabulary.describe(self.topic_tree, leaf)

  def save(self, directory: str | os.PathLike) -> None:
    arrays = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
              if isinstance(getattr(self, f.name), np.ndarray)}
    arrays["vocabulary.words"] = self.vocabulary.words
    arrays["vocabulary.bridge_words"] = self.vocabulary.bridge_words
    for level in range(self.topic_tree.num_levels):
      arrays[f"topic_tree.parents.{level}"] = self.topic_tree.parents[level]
      arrays[f"vocabulary.node_words.{level}"] = self.vocabulary.node_words[level]
    artifacts.save_artifact(directory, WORLD_KIND, WORLD_VERSION, arrays,
                            {"config": self.config.to_json(),
                             "num_levels": self.topic_tree.num_levels})

  @classmethod
  def load(cls, directory: str | os.PathLike) -> SyntheticWorld:
    arrays, meta, _ = artifacts.load_artifact(directory, WORLD_KIND, WORLD_VERSION)
    try:
      levels = range(meta["num_levels"])
      tree = topics_lib.TopicTree(tuple(arrays.pop(f"topic_tree.parents.{l}") for l in levels))
      vocabulary = topics_lib.TopicVocabulary(
          words=arrays.pop("vocabulary.words"),
          node_words=tuple(arrays.pop(f"vocabulary.node_words.{l}") for l in levels),
          bridge_words=arrays.pop("vocabulary.bridge_words"))
      world = cls(config=SyntheticConfig.from_json(meta["config"]), topic_tree=tree,
                  vocabulary=vocabulary, **arrays)
    except (KeyError, TypeError) as e:
      raise artifacts.ArtifactError(f"{directory}: synthetic world is incomplete ({e})") from None
    if world.config.num_items != world.num_items or world.config.num_users != world.num_users:
      raise artifacts.ArtifactError(f"{directory}: synthetic world arrays do not match its config")
    return world


def _build_items(config: SyntheticConfig, num_leaves: int, rng: np.random.Generator) -> dict:
  """Topic popularity, items per topic, each item's topic, popularity rank and quality."""
  popularity = np.empty(num_leaves)
  popularity[rng.permutation(num_leaves)] = sampling.zipf_weights(num_leaves, config.topic_zipf)
  share = popularity ** _ITEMS_FOLLOW_POPULARITY
  sizes = 1 + rng.multinomial(config.num_items - num_leaves, share / share.sum())  # [num_leaves]
  offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
  topic_items = rng.permutation(config.num_items).astype(np.int32)  # segment t: topic t by rank
  item_topic = np.empty(config.num_items, np.int32)
  item_topic[topic_items] = np.repeat(np.arange(num_leaves, dtype=np.int32), sizes)
  quality = rng.normal(0.0, config.item_quality_std, config.num_items).astype(np.float32)
  return dict(topic_popularity=popularity, item_topic=item_topic, item_quality=quality,
              topic_item_offsets=offsets, topic_items=topic_items)


def _fill_interest_slot(interests: np.ndarray, filled: np.ndarray, rows: np.ndarray,
                        propose, rng: np.random.Generator) -> np.ndarray:
  """Writes one new distinct interest for each of `rows` at its next free slot.

  `propose(rows, rng)` returns (candidate topics, source slots). Rows whose candidate
  repeats an interest they already have redraw; after `_DEDUP_ROUNDS` they get none.
  Returns [len(rows)] int32 source slots written (-1 where nothing was written).
  """
  sources = np.full(len(rows), -1, np.int32)
  todo = np.arange(len(rows))
  for _ in range(_DEDUP_ROUNDS):
    if not len(todo):
      break
    r = rows[todo]
    candidate, source = propose(r, rng)
    ok = (candidate >= 0) & ~(interests[r] == candidate[:, None]).any(axis=1)
    interests[r[ok], filled[r[ok]]] = candidate[ok]
    sources[todo[ok]] = source[ok]
    filled[r[ok]] += 1
    todo = todo[~ok]
  return sources


def _build_users(config: SyntheticConfig, world_parts: dict, rng: np.random.Generator) -> dict:
  """Core interests (by topic popularity) and hidden ones reached through affinity or siblings."""
  num_users = config.num_users
  max_core, max_hidden = config.core_interests[1], config.hidden_interests[1]
  interests = np.full((num_users, max_core + max_hidden), -1, np.int32)
  source_slot = np.full(interests.shape, -1, np.int32)
  filled = np.zeros(num_users, np.int64)
  wanted_core = rng.integers(config.core_interests[0], max_core + 1, num_users)
  wanted_hidden = rng.integers(config.hidden_interests[0], max_hidden + 1, num_users)
  cdf = np.cumsum(world_parts["topic_popularity"])
  affinity = world_parts["affinity"]
  siblings = config.branching[-1]

  def propose_core(rows, rng):
    u = rng.random(len(rows)) * cdf[-1]
    topic = np.minimum(np.searchsorted(cdf, u, side="right"), len(cdf) - 1)
    return topic.astype(np.int32), np.full(len(rows), -1, np.int32)

  def propose_hidden(rows, rng):
    slot = np.floor(rng.random(len(rows)) * filled[rows]).astype(np.int64)  # a known slot
    source = interests[rows, slot]  # [n] leaf
    by_affinity = affinity[source, rng.integers(affinity.shape[1], size=len(rows))]
    offset = rng.integers(1, max(siblings, 2), size=len(rows))
    sibling = (source // siblings) * siblings + (source % siblings + offset) % siblings
    use_affinity = (rng.random(len(rows)) < config.hidden_from_affinity) | (siblings == 1)
    return np.where(use_affinity, by_affinity, sibling).astype(np.int32), slot.astype(np.int32)

  for j in range(max_core):
    rows = np.flatnonzero(wanted_core > j)
    _fill_interest_slot(interests, filled, rows, propose_core, rng)
  num_core = filled.astype(np.int32)
  for j in range(max_hidden):
    rows = np.flatnonzero((wanted_hidden > j) & (filled > 0))
    at = filled[rows].copy()
    sources = _fill_interest_slot(interests, filled, rows, propose_hidden, rng)
    written = sources >= 0
    source_slot[rows[written], at[written]] = sources[written]
  lo, hi = config.interest_strength
  strength = np.where(interests >= 0, rng.uniform(lo, hi, interests.shape), 0.0)
  start = config.start_time + np.floor(
      rng.uniform(0.0, config.start_spread_days * 86_400.0, num_users)).astype(np.int64)
  events = sampling.log_uniform_int(rng, *config.events_per_user, num_users)
  return dict(interest_topic=interests, interest_strength=strength.astype(np.float32),
              interest_source=source_slot, num_core=num_core, user_start=start,
              user_events=events)


def build_world(config: SyntheticConfig) -> SyntheticWorld:
  """Builds the ground truth deterministically from `config` (vectorised numpy)."""
  if not isinstance(config, SyntheticConfig):
    raise SyntheticConfigError(f"build_world: expected a SyntheticConfig, got {type(config).__name__}")
  seed = config.seed
  topic_rng = np.random.default_rng([seed, _TOPIC_STREAM])
  tree = topics_lib.TopicTree.from_branching(config.branching)
  affinity = topics_lib.build_affinity(tree, config.affinity_degree, config.affinity_cross_branch,
                                       topic_rng)
  vocabulary = topics_lib.TopicVocabulary.build(tree, affinity, config.words_per_topic,
                                                config.bridge_words, topic_rng)
  parts = _build_items(config, tree.num_leaves, np.random.default_rng([seed, _ITEM_STREAM]))
  parts["affinity"] = affinity
  parts.update(_build_users(config, parts, np.random.default_rng([seed, _USER_STREAM])))
  return SyntheticWorld(config=config, topic_tree=tree, vocabulary=vocabulary, **parts)
