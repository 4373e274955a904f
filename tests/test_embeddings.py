"""Co-engagement item embeddings: counts, SPPMI, randomized SVD, the artifact."""

import numpy as np
import pytest

from explore.artifacts import ArtifactError
from explore.clusters import embeddings as emb_lib
from explore.data.schema import Interactions


def _log(rows, num_items, positive=None):
  """Interactions from (user, item) rows in time order."""
  user = np.array([u for u, _ in rows])
  item = np.array([i for _, i in rows])
  n = len(rows)
  return Interactions.from_columns(
      user, item, np.arange(n), np.ones(n), np.ones(n, bool) if positive is None else positive,
      np.arange(user.max() + 1), np.arange(num_items))


def planted_log(num_groups=8, items_per_group=40, num_users=400, events=25, in_group=0.9,
                seed=0):
  """Users who engage (mostly) with the items of one planted group."""
  rng = np.random.default_rng(seed)
  num_items = num_groups * items_per_group
  group = rng.integers(num_groups, size=num_users)  # [users]
  user = np.repeat(np.arange(num_users), events)  # [events]
  own = group[user] * items_per_group + rng.integers(items_per_group, size=user.size)
  item = np.where(rng.random(user.size) < in_group, own, rng.integers(num_items, size=user.size))
  log = Interactions.from_columns(
      user, item, np.tile(np.arange(events), num_users), np.ones(user.size),
      np.ones(user.size, bool), np.arange(num_users), np.arange(num_items))
  return log, np.arange(num_items) // items_per_group


def test_counts_pair_items_within_the_window_of_one_user():
  log = _log([(0, 0), (0, 1), (0, 2), (1, 3), (1, 0)], num_items=4)
  counts = emb_lib.co_engagement_counts(log, window=1).toarray()
  expected = np.zeros((4, 4))
  for a, b in [(0, 1), (1, 2), (3, 0)]:  # consecutive within a user; none across users
    expected[a, b] = expected[b, a] = 1
  np.testing.assert_array_equal(counts, expected)


def test_counts_skip_negatives_and_self_pairs():
  positive = np.array([True, False, True, True])
  log = _log([(0, 0), (0, 1), (0, 2), (0, 2)], num_items=3, positive=positive)
  counts = emb_lib.co_engagement_counts(log, window=2).toarray()
  assert counts[0, 1] == 0 and counts[1, 2] == 0  # item 1 was not positive
  assert counts[0, 2] == counts[2, 0] == 2  # two copies of item 2, both in the window
  assert np.all(np.diag(counts) == 0)


def test_shifted_ppmi_matches_dense_formula():
  rng = np.random.default_rng(0)
  dense = rng.integers(0, 4, size=(6, 6)).astype(np.float64)
  dense = dense + dense.T
  np.fill_diagonal(dense, 0)
  sppmi = emb_lib.shifted_ppmi(emb_lib.sp.csr_matrix(dense), shift=2.0,
                               context_smoothing=0.75).toarray()
  total, rows, cols = dense.sum(), dense.sum(1), dense.sum(0)
  context = cols ** 0.75 / (cols ** 0.75).sum()
  with np.errstate(divide="ignore"):
    pmi = np.log(dense * total / (rows[:, None] * total * context[None, :]))
  np.testing.assert_allclose(sppmi, np.maximum(pmi - np.log(2.0), 0), rtol=1e-5, atol=1e-6)


def test_randomized_svd_matches_numpy_top_singular_values():
  rng = np.random.default_rng(0)
  spectrum = np.array([50.0, 30, 20, 10, 5] + [0.1] * 35)
  u, _ = np.linalg.qr(rng.normal(size=(120, 40)))
  v, _ = np.linalg.qr(rng.normal(size=(80, 40)))
  matrix = (u * spectrum) @ v.T  # [120, 80]
  got_u, got_s, got_v = emb_lib.randomized_svd(matrix, rank=5, oversample=10, power_iters=3)
  want_u, want_s, _ = np.linalg.svd(matrix)
  np.testing.assert_allclose(got_s, want_s[:5], rtol=1e-4)
  np.testing.assert_allclose(np.abs(got_u.T @ want_u[:, :5]), np.eye(5), atol=1e-3)
  np.testing.assert_allclose(got_u * got_s @ got_v.T, (want_u[:, :5] * want_s[:5]) @
                             np.linalg.svd(matrix)[2][:5], atol=1e-3)


def test_device_sparse_products_match_scipy_across_chunks():
  matrix = emb_lib.sp.random(30, 20, density=0.2, random_state=0, format="csr", dtype=np.float32)
  times, times_transposed = emb_lib._device_products(matrix, chunk=7)  # 120 nonzeros, padded
  rng = np.random.default_rng(0)
  right, left = rng.normal(size=(20, 3)), rng.normal(size=(30, 3))
  np.testing.assert_allclose(times(right), matrix @ right, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(times_transposed(left), matrix.T @ left, rtol=1e-5, atol=1e-5)


def test_randomized_svd_backends_agree():
  matrix = emb_lib.sp.random(60, 40, density=0.1, random_state=1, format="csr", dtype=np.float32)
  _, host, _ = emb_lib.randomized_svd(matrix, rank=4, sparse_backend="scipy")
  _, device, _ = emb_lib.randomized_svd(matrix, rank=4, sparse_backend="jax")
  np.testing.assert_allclose(host, device, rtol=1e-4)


def test_randomized_svd_rejects_rank_above_matrix_size():
  with pytest.raises(emb_lib.EmbeddingError, match="rank must be in"):
    emb_lib.randomized_svd(np.ones((5, 3)), rank=4)


def test_embeddings_put_planted_groups_together():
  log, group = planted_log()
  result = emb_lib.co_engagement_embeddings(log, dim=16, window=5)
  x = result.embeddings
  assert x.shape == (log.num_items, 16) and x.dtype == np.float32
  np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
  cosine = x @ x.T
  same = group[:, None] == group[None, :]
  off_diagonal = ~np.eye(len(group), dtype=bool)
  assert cosine[same & off_diagonal].mean() > 0.5 > 0.1 > cosine[~same].mean()


def test_embeddings_report_cold_items_as_zero_vectors():
  log = _log([(0, 0), (0, 1), (1, 1), (1, 2), (2, 0), (2, 2)], num_items=5)
  result = emb_lib.co_engagement_embeddings(log, dim=2, window=1)
  np.testing.assert_array_equal(result.cold, [False, False, False, True, True])
  assert result.stats["num_cold_items"] == 2
  assert np.all(result.embeddings[3:] == 0)


def test_embeddings_are_deterministic_by_seed():
  log, _ = planted_log(num_users=100)
  first = emb_lib.co_engagement_embeddings(log, dim=8, seed=3)
  again = emb_lib.co_engagement_embeddings(log, dim=8, seed=3)
  np.testing.assert_array_equal(first.embeddings, again.embeddings)


def test_embeddings_save_and_load_round_trip(tmp_path):
  log, _ = planted_log(num_users=100)
  result = emb_lib.co_engagement_embeddings(log, dim=8)
  result.save(tmp_path / "embeddings")
  loaded = emb_lib.ItemEmbeddings.load(tmp_path / "embeddings")
  np.testing.assert_array_equal(loaded.embeddings, result.embeddings)
  np.testing.assert_array_equal(loaded.cold, result.cold)
  assert loaded.stats == result.stats
  with pytest.raises(ArtifactError, match="expected a 'cluster_tree' artifact"):
    from explore.clusters.tree import ClusterTree
    ClusterTree.load(tmp_path / "embeddings")


@pytest.mark.parametrize("kwargs, message", [
    (dict(dim=0), "dim must be in"),
    (dict(dim=320), "dim must be in"),
    (dict(window=0), "window must be >= 1"),
    (dict(min_count=0), "min_count >= 1"),
    (dict(min_count=10_000), "no item pair is co-engaged"),
])
def test_embeddings_reject_bad_settings(kwargs, message):
  log, _ = planted_log(num_users=50)
  with pytest.raises(emb_lib.EmbeddingError, match=message):
    emb_lib.co_engagement_embeddings(log, **kwargs)


def test_embeddings_reject_a_log_without_positives():
  log = _log([(0, 0), (0, 1)], num_items=3, positive=np.zeros(2, bool))
  with pytest.raises(emb_lib.EmbeddingError, match="no positive events"):
    emb_lib.co_engagement_embeddings(log, dim=2)
