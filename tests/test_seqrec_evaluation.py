"""Full-catalog ranking protocol: exact ranks, seen items excluded, baselines."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from explore.data.schema import Interactions
from explore.seqrec import data as data_lib
from explore.seqrec import evaluation
from explore.seqrec.model import SeqRecConfig, build_model


def make_split(histories, num_items):
  """histories: one list of item indices per user, in time order."""
  rows = [(u, i, t) for u, items in enumerate(histories) for t, i in enumerate(items)]
  user, item, ts = (np.array(c) for c in zip(*rows))
  log = Interactions.from_columns(user, item, ts, np.ones(len(rows)), np.ones(len(rows), bool),
                                  user_ids=np.arange(len(histories)),
                                  item_ids=np.arange(num_items))
  return data_lib.leave_last_out(data_lib.user_sequences(log))


def fixed_scorer(token_scores):
  scores = jnp.asarray(token_scores, jnp.float32)
  return lambda inputs: jnp.broadcast_to(scores, (inputs.shape[0], len(token_scores)))


# Tokens 1..6 score 6..1; padding (token 0) scores highest and must be ignored.
DESCENDING = [100.0, 6, 5, 4, 3, 2, 1]


def test_validation_ranks_exclude_training_items():
  split = make_split([[0, 1, 2, 3], [5, 4, 0]], num_items=6)
  val = data_lib.ranking_examples(split, "val", max_len=3)
  ranks = evaluation.rank_examples(fixed_scorer(DESCENDING), val, num_items=6, batch_size=4)
  # User 0: target token 3, tokens 1 and 2 seen -> nothing ahead. User 1: target token 5,
  # token 6 seen -> tokens 1-4 ahead.
  np.testing.assert_array_equal(ranks, [0, 4])


def test_test_ranks_also_exclude_the_validation_item():
  split = make_split([[0, 1, 2, 3], [5, 4, 0]], num_items=6)
  test = data_lib.ranking_examples(split, "test", max_len=3)
  ranks = evaluation.rank_examples(fixed_scorer(DESCENDING), test, num_items=6, batch_size=1)
  # User 0: target token 4, seen 1-3 -> rank 0. User 1: target token 1 -> rank 0.
  np.testing.assert_array_equal(ranks, [0, 0])


def test_unmasked_ranks_keep_the_history_among_the_candidates():
  split = make_split([[0, 1, 2, 3], [5, 4, 0]], num_items=6)
  val = data_lib.ranking_examples(split, "val", max_len=3)
  test = data_lib.ranking_examples(split, "test", max_len=3)
  scorer = fixed_scorer(DESCENDING)
  # Validation, user 0: target token 3 behind its history tokens 1 and 2 (masked: rank 0).
  # User 1: its history token 6 scores lowest, so it changes nothing (rank 4 either way).
  np.testing.assert_array_equal(
      evaluation.rank_examples(scorer, val, num_items=6, batch_size=4, mask_history=False),
      [2, 4])
  # Test, user 0: target token 4 behind tokens 1-3 (masked: 0); user 1: target token 1, first.
  np.testing.assert_array_equal(
      evaluation.rank_examples(scorer, test, num_items=6, batch_size=1, mask_history=False),
      [3, 0])
  metrics = evaluation.evaluate(scorer, val, num_items=6, ks=(1, 5), mask_history=False)
  assert metrics["hr@1"] == 0.0 and metrics["hr@5"] == 1.0
  assert metrics["ndcg@5"] == pytest.approx((1.0 / math.log2(4) + 1.0 / math.log2(6)) / 2)


def test_hr_and_ndcg_values():
  split = make_split([[0, 1, 2, 3], [5, 4, 0]], num_items=6)
  val = data_lib.ranking_examples(split, "val", max_len=3)
  metrics = evaluation.evaluate(fixed_scorer(DESCENDING), val, num_items=6, ks=(1, 5))
  assert metrics["hr@1"] == 0.5 and metrics["ndcg@1"] == 0.5
  assert metrics["hr@5"] == 1.0
  assert metrics["ndcg@5"] == pytest.approx((1.0 + 1.0 / math.log2(6)) / 2)


def test_mrr_is_the_mean_reciprocal_rank_of_hits():
  metrics = evaluation.ranking_metrics(np.array([0, 1, 3, 12]), ks=(10,))
  assert metrics["mrr@10"] == pytest.approx((1 + 1 / 2 + 1 / 4 + 0) / 4)


def test_a_target_seen_before_is_still_ranked():
  split = make_split([[1, 2, 1]], num_items=6)  # test target = token 2, also a training item
  test = data_lib.ranking_examples(split, "test", max_len=3)
  ranks = evaluation.rank_examples(fixed_scorer(DESCENDING), test, num_items=6)
  # Token 1 is ahead; token 3 (the validation item) is seen; the seen target still counts.
  np.testing.assert_array_equal(ranks, [1])


def test_ties_go_to_the_lower_item_id():
  split = make_split([[0, 1, 5, 3]], num_items=6)
  val = data_lib.ranking_examples(split, "val", max_len=3)  # target token 6, seen 1, 2
  ranks = evaluation.rank_examples(fixed_scorer([0.0] * 7), val, num_items=6)
  np.testing.assert_array_equal(ranks, [3])  # tokens 3, 4, 5


def test_most_popular_baseline_ranks_by_training_counts():
  # Training prefixes [4, 2, 1], [4, 2], [4]: item 4 x3, item 2 x2, item 1 x1, the rest 0.
  histories = [[4, 2, 1, 3, 5], [4, 2, 0, 5], [4, 9, 8]]
  split = make_split(histories, num_items=10)
  val = data_lib.ranking_examples(split, "val", max_len=5)
  ranks = evaluation.rank_examples(evaluation.popularity_scorer(split.target_counts()), val, 10)
  # User 0 (val target item 3, count 0): unseen items with counts ahead: none above 0 except
  # seen 4, 2, 1; ties at 0: items 0 lower id -> rank 1.
  # User 1 (val target item 0, count 0): seen 4, 2; ahead: item 1 (count 1) -> rank 1.
  # User 2 (val target item 9, count 0): seen 4; ahead: 2, 1 (counts) + ties 0, 3, 5, 6, 7, 8.
  np.testing.assert_array_equal(ranks, [1, 1, 8])
  metrics = evaluation.most_popular_baseline(split, val, ks=(2,))
  assert metrics["hr@2"] == pytest.approx(2 / 3)


def test_model_ranks_match_a_numpy_reference():
  rng = np.random.default_rng(0)
  histories = [list(rng.integers(0, 30, size=n)) for n in (3, 7, 12, 5, 9)]
  split = make_split(histories, num_items=30)
  config = SeqRecConfig(num_items=30, max_len=6, embed_dim=8, num_blocks=1, dropout=0.0)
  model = build_model(config, seed=1)
  test = data_lib.ranking_examples(split, "test", max_len=6)
  ranks = evaluation.rank_examples(evaluation.model_scorer(model), test, 30, batch_size=2)
  scores = np.asarray(model.items.decode(model.user_vectors(jnp.asarray(test.inputs))))
  for row in range(len(test)):
    seen = set(test.history_matrix(np.array([row]), 16)[0]) - {0}
    target = test.targets[row]
    s = scores[row]
    ahead = [t for t in range(1, 31) if t not in seen and
             (s[t] > s[target] or (s[t] == s[target] and t < target))]
    assert ranks[row] == len(ahead)


def test_bad_cutoff_is_a_clear_error():
  with pytest.raises(evaluation.EvaluationError, match="k=0"):
    evaluation.ranking_metrics(np.array([1, 2]), ks=(0,))
