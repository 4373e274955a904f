"""ArrayBatches: deterministic epochs and a position that resumes exactly."""

import json

import numpy as np
import pytest

from explore.train import ArrayBatches, DataStateError


def _arrays(n=10):
  return {"x": np.arange(n * 2).reshape(n, 2), "y": np.arange(n)}


def test_each_epoch_visits_every_example_once_in_a_seeded_order():
  batches = ArrayBatches(_arrays(), batch_size=5, seed=3)
  epoch0 = np.concatenate([next(batches)["y"] for _ in range(2)])
  epoch1 = np.concatenate([next(batches)["y"] for _ in range(2)])
  assert sorted(epoch0) == list(range(10)) and sorted(epoch1) == list(range(10))
  assert not np.array_equal(epoch0, epoch1)
  again = ArrayBatches(_arrays(), batch_size=5, seed=3)
  assert np.array_equal(next(again)["y"], epoch0[:5])


def test_features_stay_aligned():
  batch = next(ArrayBatches(_arrays(), batch_size=4, seed=0))
  np.testing.assert_array_equal(batch["x"][:, 0], batch["y"] * 2)


def test_drop_remainder_skips_the_partial_batch():
  batches = ArrayBatches(_arrays(10), batch_size=4, seed=0, shuffle=False)
  sizes = [len(next(batches)["y"]) for _ in range(3)]
  assert sizes == [4, 4, 4]
  kept = ArrayBatches(_arrays(10), batch_size=4, seed=0, shuffle=False, drop_remainder=False)
  assert [len(next(kept)["y"]) for _ in range(4)] == [4, 4, 2, 4]


def test_saved_position_resumes_with_the_same_next_batches():
  batches = ArrayBatches(_arrays(), batch_size=3, seed=1)
  for _ in range(4):  # into the second epoch
    next(batches)
  state = json.loads(json.dumps(batches.get_state()))  # JSON-able
  expected = [next(batches)["y"] for _ in range(5)]
  resumed = ArrayBatches(_arrays(), batch_size=3, seed=1)
  resumed.set_state(state)
  for want in expected:
    np.testing.assert_array_equal(next(resumed)["y"], want)


def test_a_position_from_other_data_is_refused():
  state = ArrayBatches(_arrays(10), batch_size=2, seed=0).get_state()
  with pytest.raises(DataStateError, match="num_examples=10"):
    ArrayBatches(_arrays(12), batch_size=2, seed=0).set_state(state)


def test_bad_arrays_are_refused():
  with pytest.raises(DataStateError, match="leading"):
    ArrayBatches({"x": np.zeros(4), "y": np.zeros(5)}, batch_size=2, seed=0)
  with pytest.raises(DataStateError, match="batch_size=8"):
    ArrayBatches({"x": np.zeros(4)}, batch_size=8, seed=0)
