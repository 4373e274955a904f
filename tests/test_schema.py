"""Interactions and ItemCatalog: ordering, validation, round trips."""

import numpy as np
import pytest

from explore.data import schema


def _columns(user, item, ts):
  n = len(user)
  return dict(user=user, item=item, timestamp=ts, engagement=np.ones(n), positive=np.ones(n, bool),
              user_ids=np.array([10, 20, 30]), item_ids=np.array(["a", "b", "c"]))


def test_from_columns_sorts_by_user_then_time_keeping_ties_in_input_order():
  inter = schema.Interactions.from_columns(**_columns(
      user=[2, 0, 0, 2, 0], item=[0, 1, 2, 1, 0], ts=[5, 9, 3, 5, 3]))
  assert inter.user.tolist() == [0, 0, 0, 2, 2]
  assert inter.timestamp.tolist() == [3, 3, 9, 5, 5]
  assert inter.item.tolist() == [2, 0, 1, 0, 1]  # ties (t=3 and t=5) in input order
  assert inter.user_offsets().tolist() == [0, 3, 3, 5]


def test_order_matches_lexsort_on_random_and_huge_timestamps():
  rng = np.random.default_rng(0)
  for hi in (100, 2**40):
    user = rng.integers(0, 3, 500)
    ts = rng.integers(-hi, hi, 500)
    np.testing.assert_array_equal(schema._user_time_order(user, ts), np.lexsort((ts, user)))


def test_out_of_range_ids_and_ragged_columns_are_errors():
  with pytest.raises(schema.SchemaError, match="user index out of range"):
    schema.Interactions.from_columns(**_columns(user=[3], item=[0], ts=[1]))
  with pytest.raises(schema.SchemaError, match="different lengths"):
    schema.Interactions(user=np.zeros(2, np.int32), item=np.zeros(1, np.int32),
                        timestamp=np.zeros(2, np.int64), engagement=np.zeros(2, np.float32),
                        positive=np.zeros(2, bool), user_ids=np.arange(1), item_ids=np.arange(1))


def test_round_trips(tmp_path):
  inter = schema.Interactions.from_columns(**_columns(user=[1, 0], item=[2, 1], ts=[1, 2]))
  inter.save(tmp_path / "i")
  back = schema.Interactions.load(tmp_path / "i")
  for field in ("user", "item", "timestamp", "user_ids", "item_ids"):
    np.testing.assert_array_equal(getattr(back, field), getattr(inter, field))
  catalog = schema.ItemCatalog(item_ids=np.array(["a", "b"]), title=np.array(["A", "B"]),
                               text={"genres": np.array(["x y", ""])})
  catalog.save(tmp_path / "c")
  back_catalog = schema.ItemCatalog.load(tmp_path / "c")
  assert back_catalog.item_text(0) == "A x y" and back_catalog.item_text(1) == "B"
