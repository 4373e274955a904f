"""Cluster-restricted top-k: every implementation against a numpy brute force.

Vectors hold small integers, so every float32 dot product is exact whatever the
summation order, and ids and scores are compared with exact equality (ties are
frequent, which exercises the lower-id-first rule).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore.retrieval import ClusterLayout
from explore.retrieval import RestrictedRetriever
from explore.retrieval import RetrievalInputError
from explore.retrieval import brute_force_top_k
from explore.retrieval import contiguous_retrieval
from explore.retrieval import restricted_top_k

IMPLEMENTATIONS = {
    "dense": {},
    "contiguous": {},
    "contiguous_small_tiles": {"implementation": "contiguous", "users_per_tile": 2},
    "sharded": {},
    "pallas_interpret": {"implementation": "pallas", "interpret": True},
    "pallas_fused_interpret": {"implementation": "pallas_fused", "interpret": True},
}


def _options(name):
  options = dict(IMPLEMENTATIONS[name])
  options.setdefault("implementation", name)
  return options


def _int_matrix(rng, rows, cols):
  return rng.integers(-3, 4, (rows, cols)).astype(np.float32)


def _problem(seed=0, num_items=301, dim=8, num_clusters=13, num_users=21, per_user=3):
  """Uneven clusters (two of them empty), integer vectors, random choices."""
  rng = np.random.default_rng(seed)
  weights = rng.uniform(0.1, 3.0, num_clusters)
  weights[[4, num_clusters - 4]] = 0.0  # empty clusters
  item_to_cluster = rng.choice(num_clusters, num_items, p=weights / weights.sum())
  return dict(
      users=_int_matrix(rng, num_users, dim), items=_int_matrix(rng, num_items, dim),
      chosen=rng.integers(0, num_clusters, (num_users, per_user)).astype(np.int32),
      item_to_cluster=item_to_cluster.astype(np.int32), num_clusters=num_clusters, rng=rng)


def _search(name, p, k, chosen=None, seen=None):
  chosen = p["chosen"] if chosen is None else chosen
  scores, ids = restricted_top_k(p["users"], p["items"], chosen, p["item_to_cluster"], k,
                                 seen_items=seen, num_clusters=p["num_clusters"],
                                 **_options(name))
  return np.asarray(scores), np.asarray(ids)


def _reference(p, k, chosen=None, seen=None):
  chosen = p["chosen"] if chosen is None else chosen
  return brute_force_top_k(p["users"], p["items"], chosen, p["item_to_cluster"], k, seen)


def _assert_same(actual, expected):
  np.testing.assert_array_equal(actual[1], expected[1])  # ids
  np.testing.assert_array_equal(actual[0], expected[0])  # scores, bit for bit


# ----------------------------------------------------------------------------- layout


def test_layout_puts_each_cluster_in_one_ascending_slice():
  assignment = np.array([2, 0, 2, 3, 0, 2, 3, 3, 0])  # cluster 1 and 4 empty
  layout = ClusterLayout.build(assignment, num_clusters=5)
  np.testing.assert_array_equal(layout.offsets, [0, 3, 3, 6, 9, 9])
  np.testing.assert_array_equal(layout.cluster_items(0), [1, 4, 8])
  np.testing.assert_array_equal(layout.cluster_items(1), [])
  np.testing.assert_array_equal(layout.cluster_items(2), [0, 2, 5])
  np.testing.assert_array_equal(layout.cluster_items(3), [3, 6, 7])
  assert layout.max_cluster_size == 3 and layout.slab_width(8) == 8


def test_layout_maps_ids_to_positions_and_back():
  assignment = np.random.default_rng(3).integers(0, 7, 500)
  layout = ClusterLayout.build(assignment)
  np.testing.assert_array_equal(layout.order[layout.positions], np.arange(500))
  np.testing.assert_array_equal(layout.positions[layout.order], np.arange(500))
  np.testing.assert_array_equal(assignment[layout.order],
                                np.repeat(np.arange(7), layout.cluster_sizes))


def test_layout_save_and_load_round_trip(tmp_path):
  layout = ClusterLayout.build(np.array([1, 1, 0, 3, 0]), num_clusters=4)
  layout.save(tmp_path / "layout")
  loaded = ClusterLayout.load(tmp_path / "layout")
  for field in ("item_to_cluster", "order", "positions", "offsets"):
    np.testing.assert_array_equal(getattr(loaded, field), getattr(layout, field))


# ----------------------------------------------------------------------------- semantics


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_matches_brute_force_on_uneven_and_empty_clusters(name):
  p = _problem()
  p["chosen"][0] = [4, 9, 4]  # only the empty clusters: nothing to retrieve
  _assert_same(_search(name, p, k=7), _reference(p, k=7))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_k_beyond_the_valid_items_pads_with_minus_inf_and_minus_one(name):
  p = _problem(seed=1, num_items=60, num_clusters=6, per_user=1)
  k = 40  # more than any one cluster holds
  scores, ids = _search(name, p, k)
  _assert_same((scores, ids), _reference(p, k))
  sizes = np.bincount(p["item_to_cluster"], minlength=6)[p["chosen"][:, 0]]
  for b, size in enumerate(sizes):
    assert np.all(np.isfinite(scores[b, :size])) and np.all(ids[b, :size] >= 0)
    assert np.all(scores[b, size:] == -np.inf) and np.all(ids[b, size:] == -1)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_repeated_chosen_clusters_count_once(name):
  p = _problem(seed=2)
  once = p["chosen"].copy()
  once[:, 1:] = -1  # one cluster, the rest "none"
  twice = np.repeat(once[:, :1], 3, axis=1)  # the same cluster three times
  _assert_same(_search(name, p, k=9, chosen=twice), _search(name, p, k=9, chosen=once))
  _assert_same(_search(name, p, k=9, chosen=twice), _reference(p, k=9, chosen=once))


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_seen_items_are_excluded(name):
  p = _problem(seed=3)
  best = _reference(p, k=5)[1]
  seen = np.full((len(best), 4), -1, np.int32)
  seen[:, :3] = best[:, :3]  # hide each user's three best items
  scores, ids = _search(name, p, k=5, seen=seen)
  _assert_same((scores, ids), _reference(p, k=5, seen=seen))
  for b in range(len(ids)):
    assert not np.isin(ids[b], best[b, :3]).any()


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_ties_go_to_the_lower_item_id(name):
  p = _problem(seed=4)
  p["users"][:] = 0.0  # every score is zero (some products are -0.0)
  p["items"] = -np.abs(p["items"])
  scores, ids = _search(name, p, k=6)
  _assert_same((scores, ids), _reference(p, k=6))
  for b in range(len(ids)):
    valid = ids[b][ids[b] >= 0]
    np.testing.assert_array_equal(valid, np.sort(valid))


def test_all_implementations_agree_on_popular_clusters():
  """Most users pick the same few clusters, so clusters span several tiles."""
  rng = np.random.default_rng(5)
  p = _problem(seed=5, num_users=64, per_user=2)
  p["chosen"] = rng.choice([0, 1, 2, 5], (64, 2), p=[0.4, 0.3, 0.2, 0.1]).astype(np.int32)
  expected = _reference(p, k=11)
  for name in IMPLEMENTATIONS:
    _assert_same(_search(name, p, k=11), expected)


@pytest.mark.parametrize("options", [
    {"score_schedule": "loop", "items_major": True, "merge": "pallas"},
    {"chunk": None, "search": "bits", "block_items": 64},
])
def test_pallas_kernel_options_agree_with_brute_force(options):
  p = _problem(seed=10)
  seen = np.random.default_rng(10).integers(-1, 301, (21, 5))
  scores, ids = restricted_top_k(p["users"], p["items"], p["chosen"], p["item_to_cluster"], 9,
                                 seen_items=seen, num_clusters=13, implementation="pallas",
                                 interpret=True, pallas_options=options)
  _assert_same((np.asarray(scores), np.asarray(ids)), _reference(p, k=9, seen=seen))


def test_brute_force_reference_on_a_hand_checked_example():
  items = np.array([[1, 0], [0, 1], [1, 1], [2, 0], [0, 0]], np.float32)
  item_to_cluster = np.array([0, 1, 0, 1, 1])
  users = np.array([[1, 1], [1, 0]], np.float32)
  chosen = np.array([[0, 1], [1, -1]])
  scores, ids = brute_force_top_k(users, items, chosen, item_to_cluster, k=4,
                                  seen_items=np.array([[3, -1], [-1, -1]]))
  # user 0: items 0..4 but 3 seen: scores 1, 1, 2, -, 0 -> 2 (id 2), 1 (id 0), 1 (id 1), 0 (id 4)
  np.testing.assert_array_equal(ids, [[2, 0, 1, 4], [3, 1, 4, -1]])
  np.testing.assert_array_equal(scores, [[2, 1, 1, 0], [2, 0, 0, -np.inf]])


def test_float_data_agrees_with_a_float64_reference():
  """General float data: scores to float32 rounding, ids wherever scores are apart."""
  rng = np.random.default_rng(6)
  p = _problem(seed=6, num_items=2000, dim=32, num_clusters=20, num_users=16)
  p["users"] = rng.standard_normal(p["users"].shape).astype(np.float32)
  p["items"] = rng.standard_normal(p["items"].shape).astype(np.float32)
  ref_scores, ref_ids = _reference(p, k=25)
  for name in ("dense", "contiguous", "sharded"):
    scores, ids = _search(name, p, k=25)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(ids, ref_ids)


def test_retriever_reuses_its_prepared_table_across_batches():
  p = _problem(seed=7)
  retriever = RestrictedRetriever(p["items"], ClusterLayout.build(p["item_to_cluster"], 13))
  for seed in (8, 9):
    chosen = np.random.default_rng(seed).integers(-1, 13, p["chosen"].shape)
    _assert_same(tuple(map(np.asarray, retriever.top_k(p["users"], chosen, 4))),
                 _reference(p, k=4, chosen=chosen))


def test_pair_grouping_puts_every_distinct_pair_in_one_used_slot():
  chosen = jnp.array([[3, 3, 1], [1, -1, 0], [3, 1, 2], [1, 1, 1]], jnp.int32)
  groups = contiguous_retrieval.group_pairs(chosen, num_clusters=4, users_per_tile=2)
  tile_user = np.asarray(groups.tile_user)
  tile_cluster = np.asarray(groups.tile_cluster)
  assert tile_user.shape[0] == contiguous_retrieval.num_tiles(12, 4, 2)
  pairs = set()
  for b, row in enumerate(np.asarray(groups.pair_row)):
    for r in row[row >= 0]:
      tile, slot = divmod(int(r), 2)
      assert tile_user[tile, slot] == b
      pairs.add((b, int(tile_cluster[tile])))
  assert pairs == {(0, 1), (0, 3), (1, 0), (1, 1), (2, 1), (2, 2), (2, 3), (3, 1)}
  assert (tile_user >= 0).sum() == len(pairs)


# ----------------------------------------------------------------------------- errors


def _retriever(p, **options):
  return RestrictedRetriever(p["items"], p["item_to_cluster"], num_clusters=p["num_clusters"],
                             **options)


@pytest.mark.parametrize("bad", [13, -2])
def test_chosen_cluster_out_of_range_is_rejected(bad):
  p = _problem()
  p["chosen"][2, 1] = bad
  with pytest.raises(RetrievalInputError, match=r"chosen_clusters: entry \[2, 1\]"):
    _retriever(p).top_k(p["users"], p["chosen"], 3)


def test_seen_item_out_of_range_is_rejected():
  p = _problem()
  seen = np.full((21, 2), -1)
  seen[5, 0] = 301
  with pytest.raises(RetrievalInputError, match=r"seen_items: entry \[5, 0\] = 301"):
    _retriever(p).top_k(p["users"], p["chosen"], 3, seen)


def test_user_dimension_must_match_the_item_dimension():
  p = _problem()
  with pytest.raises(RetrievalInputError, match="user_vectors: dimension 5 .* dimension 8"):
    _retriever(p).top_k(p["users"][:, :5], p["chosen"], 3)


def test_item_to_cluster_length_must_match_the_item_table():
  p = _problem()
  with pytest.raises(RetrievalInputError, match=r"item_to_cluster: .*\(301\)"):
    RestrictedRetriever(p["items"], p["item_to_cluster"][:-1])


def test_layout_size_must_match_the_item_table():
  p = _problem()
  with pytest.raises(RetrievalInputError, match="clusters: the layout covers 300 items"):
    RestrictedRetriever(p["items"], ClusterLayout.build(p["item_to_cluster"][:300]))


def test_empty_item_table_is_rejected():
  with pytest.raises(RetrievalInputError, match="item_table: the item table is empty"):
    RestrictedRetriever(np.zeros((0, 4), np.float32), np.zeros(0, np.int32))


@pytest.mark.parametrize("k", [0, -3, 2.5, True])
def test_k_must_be_a_positive_integer(k):
  p = _problem()
  with pytest.raises(RetrievalInputError, match="k: must be an integer >= 1"):
    _retriever(p).top_k(p["users"], p["chosen"], k)


def test_unknown_implementation_is_rejected():
  p = _problem()
  with pytest.raises(RetrievalInputError, match="implementation: 'sparse' is not one of"):
    _retriever(p, implementation="sparse")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="checks the CPU refusal")
def test_pallas_without_a_gpu_asks_for_interpret_mode():
  p = _problem()
  with pytest.raises(RetrievalInputError, match="interpret=True"):
    _retriever(p, implementation="pallas")
