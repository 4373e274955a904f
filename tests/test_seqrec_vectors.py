"""`SeqRecVectors` and the popularity prior folded into retrieval vectors."""

import numpy as np
import pytest

from explore import artifacts
from explore.seqrec import vectors as vectors_lib
from explore.retrieval.restricted import RestrictedRetriever


def test_with_prior_adds_the_weighted_prior_to_every_dot_product():
  rng = np.random.default_rng(0)
  users = rng.normal(size=(5, 8)).astype(np.float32)
  items = rng.normal(size=(12, 8)).astype(np.float32)
  prior = vectors_lib.popularity_prior(rng.integers(0, 100, size=12))
  blended_users, blended_items = vectors_lib.with_prior(users, items, prior, 1.5)
  assert blended_users.shape == (5, 9) and blended_items.shape == (12, 9)
  np.testing.assert_allclose(blended_users @ blended_items.T,
                             users @ items.T + 1.5 * prior[None, :], rtol=1e-6, atol=1e-6)


def test_popularity_prior_is_log_one_plus_count():
  np.testing.assert_allclose(vectors_lib.popularity_prior(np.array([0, 1, 9])),
                             np.log([1.0, 2.0, 10.0]), rtol=1e-6)
  with pytest.raises(vectors_lib.VectorsError, match="counts >= 0.*minimum -1"):
    vectors_lib.popularity_prior(np.array([3, -1]))


def test_bad_priors_are_named():
  items = np.zeros((4, 2), np.float32)
  with pytest.raises(vectors_lib.VectorsError, match="item_prior has shape \\(3,\\), expected "
                     "\\(4,\\)"):
    vectors_lib.with_prior(np.zeros((1, 2)), items, np.zeros(3), 1.0)
  with pytest.raises(vectors_lib.VectorsError, match="inf or nan"):
    vectors_lib.with_prior(np.zeros((1, 2)), items, np.array([0, 1, np.inf, 2]), 1.0)
  with pytest.raises(vectors_lib.VectorsError, match="prior weight nan"):
    vectors_lib.SeqRecVectors(items, np.zeros((2, 2), np.float32), item_prior=np.zeros(4),
                              prior_weight=float("nan"))


def test_vectors_keep_their_prior_through_save_and_load(tmp_path):
  rng = np.random.default_rng(1)
  items = rng.integers(-3, 4, size=(30, 4)).astype(np.float32)
  users = rng.integers(-3, 4, size=(6, 4)).astype(np.float32)
  prior = vectors_lib.popularity_prior(rng.integers(0, 20, size=30))
  saved = vectors_lib.SeqRecVectors(items, users, {"step": 7}, item_prior=prior, prior_weight=2.0)
  saved.save(tmp_path / "vectors")
  loaded = vectors_lib.SeqRecVectors.load(tmp_path / "vectors")
  assert loaded.meta == {"step": 7} and loaded.prior_weight == 2.0
  np.testing.assert_array_equal(loaded.item_prior, prior)
  user_table, item_table = loaded.retrieval_tables()
  np.testing.assert_array_equal(user_table[:, -1], 2.0)
  # The tables rank inside a cluster by u . v + 2 * prior, with any implementation.
  item_to_cluster = np.arange(30) % 3
  scores, ids = RestrictedRetriever(item_table, item_to_cluster).top_k(
      user_table, np.zeros((6, 1), np.int32), 4)
  expected = users @ items.T + 2.0 * prior[None, :]
  for user in range(6):
    in_plan = np.flatnonzero(item_to_cluster == 0)
    best = in_plan[np.lexsort((in_plan, -expected[user, in_plan]))][:4]
    np.testing.assert_array_equal(np.asarray(ids)[user], best)


def test_vectors_without_a_prior_rank_by_the_dot_product_and_old_artifacts_load(tmp_path):
  items = np.ones((3, 2), np.float32)
  users = np.ones((2, 2), np.float32)
  plain = vectors_lib.SeqRecVectors(items, users, {"step": 1})
  tables = plain.retrieval_tables()
  assert tables[0] is users and tables[1] is items
  # A version-1 artifact (written before the prior existed) still loads.
  artifacts.save_artifact(tmp_path / "v1", vectors_lib.KIND, 1,
                          {"item_vectors": items, "user_vectors": users}, {"step": 1})
  old = vectors_lib.SeqRecVectors.load(tmp_path / "v1")
  assert old.item_prior is None and old.prior_weight == 0.0 and old.meta == {"step": 1}
