"""Per-user sequences, the leave-last-two-out split, training windows, ranking cases."""

import numpy as np
import pytest

from explore.data.schema import Interactions
from explore.seqrec import data as data_lib
from explore.seqrec import sampling


def make_log(rows, num_items=10):
  """rows: (user, item, timestamp) in file order."""
  user, item, ts = (np.array(c) for c in zip(*rows))
  num_users = int(user.max()) + 1
  return Interactions.from_columns(
      user=user, item=item, timestamp=ts, engagement=np.ones(len(rows)),
      positive=np.ones(len(rows), bool), user_ids=np.arange(num_users),
      item_ids=np.arange(num_items))


def test_sequences_are_in_time_order_with_ties_in_file_order():
  log = make_log([(0, 5, 30), (0, 1, 10), (0, 2, 20), (0, 3, 20), (1, 4, 5)])
  seq = data_lib.user_sequences(log)
  # Tokens are item + 1; user 0: t=10 (1), t=20 (2 then 3, file order), t=30 (5).
  np.testing.assert_array_equal(seq.user_tokens(0), [2, 3, 4, 6])
  np.testing.assert_array_equal(seq.user_tokens(1), [5])


def test_split_puts_last_item_in_test_and_second_last_in_validation():
  log = make_log([(0, i, i) for i in range(5)] + [(1, 7, 0), (1, 8, 1)])
  split = data_lib.leave_last_out(data_lib.user_sequences(log))
  np.testing.assert_array_equal(split.eval_users, [0])  # user 1 has only 2 items
  np.testing.assert_array_equal(split.train_length, [3, 2])
  val = data_lib.ranking_examples(split, "val", max_len=4)
  test = data_lib.ranking_examples(split, "test", max_len=4)
  assert val.targets.tolist() == [4] and test.targets.tolist() == [5]
  np.testing.assert_array_equal(val.inputs, [[0, 1, 2, 3]])
  np.testing.assert_array_equal(test.inputs, [[1, 2, 3, 4]])
  np.testing.assert_array_equal(val.history_matrix(np.array([0]), 6), [[1, 2, 3, 0, 0, 0]])
  np.testing.assert_array_equal(test.history_matrix(np.array([0]), 6), [[1, 2, 3, 4, 0, 0]])


def test_training_counts_leave_out_validation_and_test_items():
  log = make_log([(0, 0, 0), (0, 1, 1), (0, 2, 2), (0, 3, 3), (1, 0, 0), (1, 9, 1)])
  split = data_lib.leave_last_out(data_lib.user_sequences(log))
  counts = split.target_counts()
  assert counts[0] == 0  # padding
  assert counts[1] == 2 and counts[2] == 1 and counts[10] == 1  # user 1: train only
  assert counts[3] == 0 and counts[4] == 0  # user 0's validation and test items


def test_training_windows_cover_every_pair_once_newest_window_full():
  items = list(range(9))  # 9 items -> 7 training items -> 6 (input, next) pairs
  log = make_log([(0, i, t) for t, i in enumerate(items)])
  split = data_lib.leave_last_out(data_lib.user_sequences(log))
  windows = data_lib.training_windows(split, max_len=4)
  np.testing.assert_array_equal(windows["inputs"], [[3, 4, 5, 6], [0, 0, 1, 2]])
  np.testing.assert_array_equal(windows["targets"], [[4, 5, 6, 7], [0, 0, 2, 3]])


def test_strided_windows_score_each_pair_once_with_its_longest_context():
  log = make_log([(0, i, i) for i in range(8)])  # 6 train items (tokens 1..6), 5 pairs
  split = data_lib.leave_last_out(data_lib.user_sequences(log))
  windows = data_lib.training_windows(split, max_len=3, stride=2)
  # Rows end at pairs 5, 3, 1; each scores only its newest 2 targets.
  np.testing.assert_array_equal(windows["inputs"], [[3, 4, 5], [1, 2, 3], [0, 0, 1]])
  np.testing.assert_array_equal(windows["targets"], [[5, 6], [3, 4], [0, 2]])
  # Every target 2..6 appears once.
  np.testing.assert_array_equal(np.sort(windows["targets"][windows["targets"] > 0]),
                                [2, 3, 4, 5, 6])


def test_stride_one_is_the_last_window_of_every_prefix():
  log = make_log([(0, i, i) for i in range(8)])
  split = data_lib.leave_last_out(data_lib.user_sequences(log))
  windows = data_lib.training_windows(split, max_len=3, stride=1)
  np.testing.assert_array_equal(windows["inputs"],
                                [[3, 4, 5], [2, 3, 4], [1, 2, 3], [0, 1, 2], [0, 0, 1]])
  np.testing.assert_array_equal(windows["targets"], [[6], [5], [4], [3], [2]])
  # Context per target: min(items before it, max_len) = 3, 3, 3, 2, 1.
  assert data_lib.mean_context(windows) == pytest.approx(12 / 5)


def test_smaller_strides_give_longer_contexts_at_a_linear_cost():
  log = make_log([(u, (u + i) % 50, i) for u in range(4) for i in range(102)], num_items=50)
  split = data_lib.leave_last_out(data_lib.user_sequences(log))
  whole = data_lib.training_windows(split, max_len=20)
  strided = data_lib.training_windows(split, max_len=20, stride=5)
  # Non-overlapping windows: the mean context is about max_len / 2; stride 5: >= 16.
  assert data_lib.mean_context(whole) < 11 and data_lib.mean_context(strided) > 16
  # Scored targets are the same 4 x 99 pairs; rows grow as pairs / stride.
  for windows in (whole, strided):
    assert (windows["targets"] > 0).sum() == 4 * 99
  assert len(strided["inputs"]) == 4 * 20 and strided["targets"].shape == (80, 5)


def test_empty_log_is_a_clear_error():
  log = Interactions.from_columns([], [], [], [], [], user_ids=np.arange(0),
                                  item_ids=np.arange(3))
  with pytest.raises(data_lib.SequenceDataError, match="no rows"):
    data_lib.user_sequences(log)


def test_log_without_a_three_item_history_is_a_clear_error():
  log = make_log([(0, 1, 0), (0, 2, 1), (1, 3, 0)])
  with pytest.raises(data_lib.SequenceDataError, match="at least 3 interactions"):
    data_lib.leave_last_out(data_lib.user_sequences(log))


def test_bad_window_stride_names_the_argument():
  log = make_log([(0, i, i) for i in range(5)])
  split = data_lib.leave_last_out(data_lib.user_sequences(log))
  with pytest.raises(data_lib.SequenceDataError, match="stride=9"):
    data_lib.training_windows(split, max_len=4, stride=9)


def test_proposal_sampler_never_draws_padding_and_follows_popularity():
  counts = np.array([0, 99, 0, 0], np.int64)  # token 1 popular
  sampler = sampling.ProposalSampler.create("popularity", counts, power=1.0)
  draws = sampler.sample(np.random.default_rng(0), (20000,))
  assert draws.min() >= 1 and draws.max() <= 3
  np.testing.assert_allclose(np.bincount(draws, minlength=4)[1:] / 20000,
                             sampler.probabilities[1:], atol=0.01)


def test_batches_resume_with_the_same_negatives():
  windows = {"inputs": np.arange(40).reshape(10, 4), "targets": np.arange(40).reshape(10, 4)}
  sampler = sampling.ProposalSampler.create("uniform", np.ones(50))
  first = sampling.SequenceBatches(windows, 4, seed=3, negatives_per_example=2, sampler=sampler)
  next(first)
  state = first.get_state()
  expected = [next(first) for _ in range(3)]
  resumed = sampling.SequenceBatches(windows, 4, seed=3, negatives_per_example=2,
                                     sampler=sampler)
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    for name in ("inputs", "negatives"):
      np.testing.assert_array_equal(got[name], want[name])


def test_sasrec_style_one_window_per_user_keeps_the_newest():
  log = make_log([(0, i, i) for i in range(9)])
  split = data_lib.leave_last_out(data_lib.user_sequences(log))
  windows = data_lib.training_windows(split, max_len=4, max_windows_per_user=1)
  np.testing.assert_array_equal(windows["inputs"], [[3, 4, 5, 6]])


def test_encode_histories_left_pads_and_keeps_the_newest_items():
  rows = data_lib.encode_histories([[4, 0], [1, 2, 3, 5, 6]], num_items=7, max_len=3)
  np.testing.assert_array_equal(rows, [[0, 5, 1], [4, 6, 7]])


@pytest.mark.parametrize("histories, message", [
    ([[1], []], "history 1 is empty"),
    ([[1, 7]], "item id 7 is out of range \\[0, 7\\)"),
    ([[-1]], "item id -1 is out of range"),
])
def test_encode_histories_rejects_empty_histories_and_unknown_items(histories, message):
  with pytest.raises(data_lib.SequenceDataError, match=message):
    data_lib.encode_histories(histories, num_items=7, max_len=3)


def test_batches_carry_the_cluster_of_every_input_item():
  windows = {"inputs": np.array([[0, 1, 2], [3, 1, 0]] * 2),
             "targets": np.array([[0, 2, 3], [1, 2, 0]] * 2)}
  token_clusters = np.array([0, 5, 6, 7])  # padding -> 0
  batch = next(sampling.SequenceBatches(windows, 4, seed=0, token_clusters=token_clusters))
  np.testing.assert_array_equal(batch["input_clusters"], token_clusters[batch["inputs"]])
