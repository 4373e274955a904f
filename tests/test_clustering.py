"""Balanced k-means, the cluster tree and its quality reports."""

import numpy as np
import pytest

from explore.artifacts import ArtifactError
from explore.clusters import quality
from explore.clusters.balanced_kmeans import ClusteringError, balanced_kmeans
from explore.clusters.embeddings import co_engagement_counts, co_engagement_embeddings
from explore.clusters.tree import ClusterTree, ClusterTreeError, build_cluster_tree
from explore.data.movielens import load_movielens
from explore.data.schema import Interactions

LEVELS = (4, 16)


def planted_hierarchy(seed=0):
  """4 x 4 planted topics of 56-68 items; users engage mostly in one leaf, some in its siblings."""
  rng = np.random.default_rng(seed)
  leaf_sizes = rng.integers(56, 69, size=16)
  leaf = np.repeat(np.arange(16), leaf_sizes)  # [items]
  num_items, num_users, events = leaf.size, 900, 30
  user_leaf = rng.integers(16, size=num_users)
  user = np.repeat(np.arange(num_users), events)  # [events]
  r = rng.random(user.size)
  topic = np.where(r < 0.75, user_leaf[user],
                   np.where(r < 0.95, user_leaf[user] // 4 * 4 + rng.integers(4, size=user.size),
                            rng.integers(16, size=user.size)))
  starts = np.concatenate([[0], np.cumsum(leaf_sizes)])
  item = starts[topic] + (rng.random(user.size) * leaf_sizes[topic]).astype(int)
  log = Interactions.from_columns(
      user, item, np.tile(np.arange(events), num_users), np.ones(user.size),
      np.ones(user.size, bool), np.arange(num_users), np.arange(num_items))
  return log, {0: leaf // 4, 1: leaf}


@pytest.fixture(scope="module")
def planted():
  log, truth = planted_hierarchy()
  embeddings = co_engagement_embeddings(log, dim=16, window=5)
  return log, truth, embeddings


@pytest.fixture(scope="module")
def planted_tree(planted):
  return build_cluster_tree(planted[2], levels=LEVELS, seed=0)


@pytest.fixture(scope="module")
def planted_top_down_tree(planted):
  return build_cluster_tree(planted[2], levels=LEVELS, seed=0, strategy="top_down")


def _exact_sizes_ok(sizes, n):
  k = len(sizes)
  return sizes.sum() == n and set(np.unique(sizes)) <= {n // k, -(-n // k)}


# --- recovery and balance ---------------------------------------------------


@pytest.mark.parametrize("tree_fixture", ["planted_tree", "planted_top_down_tree"])
def test_tree_recovers_planted_topics(planted, tree_fixture, request):
  tree = request.getfixturevalue(tree_fixture)
  _, truth, _ = planted
  for level in range(2):
    assert quality.adjusted_mutual_info(truth[level], tree.item_to_cluster(level)) > 0.85


def test_bottom_up_finest_level_is_exactly_balanced_and_coarser_levels_nearly(planted_tree):
  n = planted_tree.num_items
  assert n % 16 and n % 4  # sizes cannot all be equal
  assert _exact_sizes_ok(planted_tree.sizes(1), n)
  coarse = planted_tree.sizes(0)  # each is 4 finest clusters: within 4 x floor/ceil(n / 16)
  assert coarse.sum() == n and coarse.min() >= 4 * (n // 16) and coarse.max() <= 4 * -(-n // 16)
  assert max(planted_tree.balance(0), planted_tree.balance(1)) <= 2


def test_top_down_every_level_is_exactly_balanced(planted_top_down_tree):
  for level in range(2):
    assert _exact_sizes_ok(planted_top_down_tree.sizes(level), planted_top_down_tree.num_items)


@pytest.mark.parametrize("tree_fixture", ["planted_tree", "planted_top_down_tree"])
def test_each_child_cluster_lies_in_exactly_one_parent(tree_fixture, request):
  tree = request.getfixturevalue(tree_fixture)
  coarse, fine = tree.item_to_cluster(0), tree.item_to_cluster(1)
  for child in range(16):
    assert np.unique(coarse[fine == child]).tolist() == [tree.parents[1][child]]
  for parent in range(4):
    np.testing.assert_array_equal(tree.children(0, parent), np.arange(4 * parent, 4 * parent + 4))
    assert set(np.unique(fine[coarse == parent])) == set(tree.children(0, parent))


def test_same_seed_gives_the_same_tree(planted, planted_tree):
  again = build_cluster_tree(planted[2], levels=LEVELS, seed=0)
  np.testing.assert_array_equal(again.assignments, planted_tree.assignments)


def test_other_seed_gives_a_valid_tree(planted):
  other = build_cluster_tree(planted[2], levels=LEVELS, seed=1)
  assert _exact_sizes_ok(other.sizes(1), other.num_items)
  assert quality.adjusted_mutual_info(planted[1][1], other.item_to_cluster(1)) > 0.85


def test_weighted_clusters_balance_traffic_within_capacity(planted):
  x = planted[2].embeddings
  weights = np.random.default_rng(0).pareto(1.5, size=len(x)) + 0.1  # heavy-tailed traffic
  weighted = balanced_kmeans(x, 4, weights=weights, seed=0)
  plain = balanced_kmeans(x, 4, seed=0)
  load = np.bincount(weighted.assignment, weights=weights, minlength=4)
  assert np.all(load <= weights.sum() / 4 + weights.max() + 1e-3)
  np.testing.assert_allclose(weighted.capacity[0], weights.sum() / 4 + weights.max(), rtol=1e-5)
  plain_load = np.bincount(plain.assignment, weights=weights, minlength=4)
  assert load.max() - load.min() <= plain_load.max() - plain_load.min()


def test_capacity_assignment_spills_a_crowded_cluster_greedily():
  import jax.numpy as jnp
  from explore.clusters.capacity_assignment import AssignConfig, capacity_assign

  x = jnp.arange(10, dtype=jnp.float32)[:, None]  # every point is nearest to centroid 0
  centroids = jnp.array([[0.0], [100.0], [200.0]])
  cfg = AssignConfig(k=3, weighted=False, chunk_size=10, dual_passes=0, candidates=2,
                     max_rounds=100)
  assign, _, caps, rounds = capacity_assign(x, jnp.ones(10), jnp.ones(10, bool), centroids,
                                            jnp.zeros(3), 100.0, cfg)
  np.testing.assert_array_equal(caps, [4, 3, 3])  # the most demanded cluster gets the extra
  # Round 1: cluster 0 keeps its 4 nearest; round 2: cluster 1 its 3 nearest of the rest;
  # round 3: points 4-6 have run out of candidates, are re-ranked and go to cluster 2.
  np.testing.assert_array_equal(assign, [0, 0, 0, 0, 2, 2, 2, 1, 1, 1])
  assert int(rounds) == 3


# --- errors -------------------------------------------------------------------


@pytest.mark.parametrize("levels, message", [
    ((4, 10), r"level 1 \(10 clusters\) must be a multiple of level 0 \(4 clusters\)"),
    ((8, 4), "must be a multiple"),
    ((), "non-empty"),
    ((4, 2048), r"finest level has more clusters \(2048\) than there are items"),
])
def test_bad_levels_are_rejected(levels, message):
  with pytest.raises(ClusterTreeError, match=message):
    build_cluster_tree(np.zeros((1000, 4), np.float32), levels=levels)


def test_k_above_the_number_of_points_is_rejected():
  with pytest.raises(ClusteringError, match="k=12 exceeds the 10 points"):
    balanced_kmeans(np.zeros((10, 3)), 12)


def test_nan_embeddings_are_rejected():
  x = np.ones((50, 4))
  x[7, 2] = np.nan
  with pytest.raises(ClusteringError, match="NaN or inf.*row 7"):
    build_cluster_tree(x, levels=(2, 4))


def test_unknown_strategy_is_rejected():
  with pytest.raises(ClusterTreeError, match="strategy 'sideways'"):
    build_cluster_tree(np.ones((50, 4)), levels=(2, 4), strategy="sideways")


def test_requesting_a_missing_level_names_the_available_ones(planted_tree):
  with pytest.raises(ClusterTreeError, match=r"level 2 does not exist; available levels: "
                     r"0 \(4 clusters\), 1 \(16 clusters\)"):
    planted_tree.item_to_cluster(2)
  with pytest.raises(ClusterTreeError, match=r"no level has 64 clusters; levels have \[4, 16\]"):
    planted_tree.level_with(64)
  assert planted_tree.level_with(16) == 1


def test_inconsistent_tree_is_rejected():
  with pytest.raises(ClusterTreeError, match="not a child"):
    ClusterTree(levels=(2, 4), assignments=np.array([[0, 0, 1, 1], [2, 1, 2, 3]], np.int32),
                parents=(np.full(2, -1, np.int32), np.array([0, 0, 1, 1], np.int32)))


# --- artifact -----------------------------------------------------------------


def test_tree_save_and_load_round_trip(planted_tree, tmp_path):
  planted_tree.save(tmp_path / "tree")
  loaded = ClusterTree.load(tmp_path / "tree")
  assert loaded.levels == planted_tree.levels
  np.testing.assert_array_equal(loaded.assignments, planted_tree.assignments)
  for a, b in zip(loaded.parents, planted_tree.parents):
    np.testing.assert_array_equal(a, b)
  assert loaded.meta == planted_tree.meta


def test_loading_another_tree_version_says_what_to_do(planted_tree, tmp_path):
  from explore import artifacts
  artifacts.save_artifact(tmp_path / "tree", "cluster_tree", 99, {"levels": np.array([2])})
  with pytest.raises(ArtifactError, match="format version 99"):
    ClusterTree.load(tmp_path / "tree")


# --- quality ------------------------------------------------------------------


def test_ami_of_identical_partitions_is_one_whatever_the_names():
  assert quality.adjusted_mutual_info([0, 0, 1, 1, 2], [5, 5, 3, 3, 9]) == pytest.approx(1.0)


def test_ami_matches_a_hand_computed_case():
  # MI = 0; E[MI] = 4 cells x P(n_ij = 2) = 1/6 x (2/4) log 2 = log(2) / 3; H = log 2 each,
  # so AMI = (0 - log2/3) / (log2 - log2/3) = -1/2.
  assert quality.adjusted_mutual_info([0, 0, 1, 1], [0, 1, 0, 1]) == pytest.approx(-0.5)


def test_ami_of_independent_labels_is_near_zero():
  rng = np.random.default_rng(0)
  assert abs(quality.adjusted_mutual_info(rng.integers(8, size=4000),
                                          rng.integers(8, size=4000))) < 0.01


def test_ami_matches_scikit_learn_when_installed():
  metrics = pytest.importorskip("sklearn.metrics")
  rng = np.random.default_rng(1)
  a, b = rng.integers(6, size=300), rng.integers(9, size=300)
  b[:150] = a[:150]
  assert quality.adjusted_mutual_info(a, b) == pytest.approx(
      metrics.adjusted_mutual_info_score(a, b), abs=1e-10)


def test_ami_rejects_labellings_of_different_lengths():
  with pytest.raises(quality.QualityError, match="3 items.*2"):
    quality.adjusted_mutual_info([0, 1, 1], [0, 1])


def test_intra_cluster_cosine_matches_brute_force():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(30, 5))
  labels = rng.integers(3, size=30)
  unit = x / np.linalg.norm(x, axis=1, keepdims=True)
  per_item = [np.mean([unit[i] @ unit[j] for j in range(30) if j != i and labels[j] == labels[i]])
              for i in range(30)]
  assert quality.intra_cluster_cosine(x, labels) == pytest.approx(np.mean(per_item))


def test_tree_is_more_coherent_than_random_assignment(planted, planted_tree):
  log, _, embeddings = planted
  reports = quality.tree_quality(planted_tree, embeddings, co_engagement_counts(log, window=5))
  for report in reports:
    assert report["intra_cosine"] > report["random_intra_cosine"] + 0.2
    assert report["pairs_inside"] > 2 * report["random_pairs_inside"]


# --- real data ----------------------------------------------------------------


def test_movielens_small_tree_is_balanced_and_coherent(movielens_small_dir):
  log, _ = load_movielens(movielens_small_dir)
  embeddings = co_engagement_embeddings(log, dim=32)
  tree = build_cluster_tree(embeddings, levels=(8, 32, 128))
  warm = ~embeddings.cold  # cold items have no co-engagement to be coherent about
  counts = co_engagement_counts(log)
  for level in range(tree.num_levels):
    assert tree.balance(level) <= 2
    labels = tree.item_to_cluster(level)
    report = quality.coherence(embeddings.embeddings[warm], labels[warm],
                               counts[warm][:, warm])
    assert report["intra_cosine"] > report["random_intra_cosine"] + 0.05
    assert report["pairs_inside"] > 1.5 * report["random_pairs_inside"]
