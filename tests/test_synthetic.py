"""The synthetic platform: ground truth, logs, catalog text, streaming and storage."""

from __future__ import annotations

import time

import gin
import numpy as np
import pytest

from explore.data import synthetic
from explore.data.synthetic import SyntheticConfig, SyntheticConfigError

SMALL = SyntheticConfig(num_users=300, num_items=2000, branching=(4, 4, 4), block_users=128)


@pytest.fixture(scope="module")
def small():
  return synthetic.generate(SMALL)


def _event_topics(world, interactions):
  return world.item_topic[interactions.item]  # [rows]


def _in_interests(world, users, topics):
  return (world.interest_topic[users] == topics[:, None]).any(axis=1)


def _hidden_slots(world):
  slots = np.arange(world.interest_topic.shape[1])[None, :]
  return (world.interest_topic >= 0) & (slots >= world.num_core[:, None])  # [users, slots]


def test_same_seed_gives_identical_world_and_logs(small):
  world, interactions, catalog = small
  world2, interactions2, catalog2 = synthetic.generate(SMALL)
  np.testing.assert_array_equal(world.interest_topic, world2.interest_topic)
  np.testing.assert_array_equal(world.item_topic, world2.item_topic)
  np.testing.assert_array_equal(world.affinity, world2.affinity)
  for column in ("user", "item", "timestamp", "engagement", "positive"):
    np.testing.assert_array_equal(getattr(interactions, column), getattr(interactions2, column))
  np.testing.assert_array_equal(catalog.text["keywords"], catalog2.text["keywords"])


def test_different_seed_gives_different_world_and_logs(small):
  world, interactions, catalog = small
  other_world, other, other_catalog = synthetic.generate(
      SyntheticConfig(**{**SMALL.to_json(), "seed": 1}))
  assert not np.array_equal(world.item_topic, other_world.item_topic)
  assert not np.array_equal(interactions.item[:1000], other.item[:1000])
  assert not np.array_equal(catalog.title, other_catalog.title)


def test_topic_tree_has_at_least_three_levels_with_consistent_parents(small):
  tree = small[0].topic_tree
  assert tree.num_levels >= 3
  assert tree.level_sizes == (4, 16, 64)
  assert (tree.parents[0] == -1).all()
  for level in range(1, tree.num_levels):
    parents = tree.parents[level]
    assert parents.min() == 0 and parents.max() == tree.level_sizes[level - 1] - 1
    np.testing.assert_array_equal(np.bincount(parents), np.full(tree.level_sizes[level - 1], 4))
  np.testing.assert_array_equal(tree.ancestors(0), tree.parents[1][tree.parents[2]])


def test_every_item_belongs_to_a_leaf_and_every_leaf_has_items(small):
  world = small[0]
  assert world.item_topic.min() >= 0 and world.item_topic.max() < world.topic_tree.num_leaves
  assert (np.bincount(world.item_topic, minlength=world.num_topics) >= 1).all()
  for topic in (0, 17, 63):
    lo, hi = world.topic_item_offsets[topic], world.topic_item_offsets[topic + 1]
    assert (world.item_topic[world.topic_items[lo:hi]] == topic).all()


def test_item_popularity_is_heavy_tailed(small):
  world, interactions, _ = small
  counts = np.sort(np.bincount(interactions.item, minlength=world.num_items))[::-1]
  top = counts[:world.num_items // 100].sum() / counts.sum()
  assert top > 0.08  # the top 1% of items take many times their share
  prior = np.sort(world.item_popularity())[::-1]
  assert prior.sum() == pytest.approx(1.0)
  assert prior[:world.num_items // 100].sum() > 0.08


def _leaf_word_sets(world, catalog):
  words = [set() for _ in range(world.num_topics)]
  for item, text in enumerate(catalog.text["keywords"]):
    words[world.item_topic[item]].update(text.split())
  return words


def _cross_root_overlap(world, words, pairs):
  root = world.topic_tree.ancestors(0)
  return [len(words[a] & words[b]) for a, b in pairs if root[a] != root[b]]


def test_affine_leaves_share_more_catalog_words_than_random_leaves(small):
  world, _, catalog = small
  words = _leaf_word_sets(world, catalog)
  affine = [(a, b) for a in range(world.num_topics) for b in world.affinity[a]]
  rng = np.random.default_rng(0)
  random_pairs = [tuple(p) for p in rng.integers(world.num_topics, size=(400, 2))
                  if p[1] not in world.affinity[p[0]] and p[0] not in world.affinity[p[1]]]
  affine_overlap = np.mean(_cross_root_overlap(world, words, affine))
  random_overlap = np.mean(_cross_root_overlap(world, words, random_pairs))
  assert affine_overlap >= 0.9 and random_overlap < 0.1


def test_without_bridge_words_affine_leaves_share_no_words():
  config = SyntheticConfig(**{**SMALL.to_json(), "num_users": 20, "bridge_words": 0})
  world = synthetic.build_world(config)
  words = _leaf_word_sets(world, synthetic.item_catalog(world))
  affine = [(a, b) for a in range(world.num_topics) for b in world.affinity[a]]
  assert max(_cross_root_overlap(world, words, affine)) == 0


def test_positives_are_mostly_in_core_and_hidden_interests(small):
  world, interactions, _ = small
  inside = _in_interests(world, interactions.user, _event_topics(world, interactions))
  assert inside[interactions.positive].mean() > 0.95
  assert interactions.positive[inside].mean() > 3 * interactions.positive[~inside].mean()


def test_enjoyment_is_higher_on_interest_topics(small):
  world = small[0]
  rng = np.random.default_rng(0)
  users = rng.integers(world.num_users, size=5000)
  items = rng.integers(world.num_items, size=5000)
  enjoyment = world.enjoyment(users, items)
  inside = _in_interests(world, users, world.item_topic[items])
  assert enjoyment[inside].mean() > enjoyment[~inside].mean() + 0.3
  assert ((enjoyment > 0) & (enjoyment < 1)).all()


def test_sampled_engagement_matches_expected_enjoyment(small):
  world = small[0]
  users = np.repeat(np.array([0, 1, 2]), 4000)
  items = np.repeat(np.array([world.topic_items[0], 5, 9]), 4000)
  watch, positive = world.sample_engagement(users, items, np.random.default_rng(0))
  for k in range(3):
    rows = slice(4000 * k, 4000 * (k + 1))
    assert watch[rows].mean() == pytest.approx(world.enjoyment(users[rows], items[rows])[0], abs=0.02)
    assert positive[rows].mean() == pytest.approx(
        world.positive_probability(users[rows], items[rows])[0], abs=0.03)


def test_user_interests_split_core_and_hidden(small):
  world = small[0]
  for user in range(20):
    core, hidden = world.user_interests(user)
    assert 1 <= len(core) <= SMALL.core_interests[1] and len(hidden) <= SMALL.hidden_interests[1]
    assert not set(core) & set(hidden)
  with pytest.raises(ValueError, match="user index"):
    world.user_interests(world.num_users)


def test_hidden_interests_are_discovered_over_time(small):
  world, interactions, _ = small
  topics = _event_topics(world, interactions)
  hidden = _hidden_slots(world)[interactions.user]  # [rows, slots]
  is_hidden = (hidden & (world.interest_topic[interactions.user] == topics[:, None])).any(axis=1)
  offsets = interactions.user_offsets()
  step = np.arange(len(interactions)) - offsets[interactions.user]  # event index per user
  early = interactions.positive & (step < 10)
  late = interactions.positive & (step >= world.user_events[interactions.user] // 2)
  assert is_hidden[early].mean() < 0.1
  assert is_hidden[late].mean() > 2 * is_hidden[early].mean() + 0.1
  discovered_total = sum(len(np.unique(topics[(interactions.user == u) & is_hidden
                                              & interactions.positive])) for u in range(50))
  hidden_total = _hidden_slots(world)[:50].sum()
  assert 0.1 < discovered_total / hidden_total < 0.9  # some are left for the simulator


def test_discoveries_follow_their_source_topic(small):
  world, interactions, _ = small
  topics = _event_topics(world, interactions)
  offsets = interactions.user_offsets()
  followed, total = 0, 0
  for user in range(world.num_users):
    rows = slice(offsets[user], offsets[user + 1])
    user_topics, positive = topics[rows], interactions.positive[rows]
    core_count = world.num_core[user]
    for slot in range(core_count, world.interest_topic.shape[1]):
      hits = np.flatnonzero((user_topics == world.interest_topic[user, slot]) & positive)
      if world.interest_topic[user, slot] < 0 or not len(hits) or hits[0] == 0:
        continue
      source_topic = world.interest_topic[user, world.interest_source[user, slot]]
      total += 1
      followed += user_topics[hits[0] - 1] == source_topic
  assert total > 50 and followed / total > 0.6


def test_timestamps_increase_per_user_and_users_start_at_different_times(small):
  world, interactions, _ = small
  same_user = np.diff(interactions.user) == 0
  assert (np.diff(interactions.timestamp)[same_user] > 0).all()
  first = interactions.timestamp[interactions.user_offsets()[:-1]]
  assert first.max() - first.min() > 200 * 86_400
  counts = np.bincount(interactions.user, minlength=world.num_users)
  np.testing.assert_array_equal(counts, world.user_events)
  assert counts.min() >= SMALL.events_per_user[0] and counts.max() <= SMALL.events_per_user[1]


@pytest.mark.parametrize("chunk_users", [77, 300, 1000])
def test_streamed_chunks_concatenate_to_the_one_shot_logs(small, chunk_users):
  world, interactions, _ = small
  chunks = list(synthetic.iter_interaction_chunks(world, chunk_users))
  assert len(chunks) == -(-world.num_users // chunk_users)
  for i, chunk in enumerate(chunks):
    np.testing.assert_array_equal(chunk.user_ids, np.arange(i * chunk_users, i * chunk_users
                                                            + chunk.num_users))
  joined = synthetic.concatenate_chunks(chunks)
  for column in ("user", "item", "timestamp", "engagement", "positive", "user_ids", "item_ids"):
    np.testing.assert_array_equal(getattr(joined, column), getattr(interactions, column))


def test_chunk_size_must_be_positive(small):
  with pytest.raises(ValueError, match="chunk_users"):
    next(synthetic.iter_interaction_chunks(small[0], 0))


def test_catalog_ranges_read_like_the_full_catalog(small):
  world, _, catalog = small
  assert catalog.num_items == world.num_items and all(catalog.title)
  part = synthetic.item_catalog(world, 1500, 1900)
  np.testing.assert_array_equal(part.title, catalog.title[1500:1900])
  np.testing.assert_array_equal(part.text["keywords"], catalog.text["keywords"][1500:1900])
  with pytest.raises(ValueError, match="item range"):
    synthetic.item_catalog(world, 0, world.num_items + 1)


def test_world_save_load_round_trips(small, tmp_path):
  world = small[0]
  world.save(tmp_path / "world")
  loaded = synthetic.SyntheticWorld.load(tmp_path / "world")
  assert loaded.config == world.config
  for name in ("affinity", "item_topic", "item_quality", "topic_items", "interest_topic",
               "interest_strength", "interest_source", "num_core", "user_start", "user_events"):
    np.testing.assert_array_equal(getattr(loaded, name), getattr(world, name))
  np.testing.assert_array_equal(loaded.vocabulary.words, world.vocabulary.words)
  for a, b in zip(loaded.topic_tree.parents, world.topic_tree.parents):
    np.testing.assert_array_equal(a, b)
  assert loaded.topic_description(5) == world.topic_description(5)
  users, items = np.arange(100), np.arange(100)
  np.testing.assert_array_equal(loaded.enjoyment(users, items), world.enjoyment(users, items))


@pytest.mark.parametrize("field, value", [
    ("num_users", 0), ("branching", (4, 0, 4)), ("branching", (8, 8)),
    ("positive_threshold", 1.5), ("positive_threshold", -0.1), ("num_items", 10),
    ("core_interests", (3, 1)), ("events_per_user", (0, 5)), ("affinity_degree", 64),
    ("explore_rate", 2.0), ("keyword_shares", (1.0, -1.0, 0.0)), ("block_users", 0),
])
def test_bad_config_values_raise_errors_naming_the_field(field, value):
  with pytest.raises(SyntheticConfigError, match=f"SyntheticConfig.{field}"):
    SyntheticConfig(**{**SMALL.to_json(), field: value})


def test_config_is_gin_configurable():
  try:
    gin.parse_config(["SyntheticConfig.num_users = 42", "SyntheticConfig.branching = (2, 3, 4)"])
    config = SyntheticConfig()
  finally:
    gin.clear_config()
  assert config.num_users == 42 and config.num_leaves == 24


def test_default_dataset_has_the_documented_size_and_builds_fast():
  start = time.perf_counter()
  world, interactions, catalog = synthetic.generate()
  seconds = time.perf_counter() - start
  assert (world.num_users, world.num_items, world.num_topics) == (5000, 20000, 256)
  assert catalog.num_items == 20000
  assert 50 <= len(interactions) / world.num_users <= 150
  assert seconds < 20
