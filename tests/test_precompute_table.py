"""The precomputed tuple table: O(1) rows, lookups, planner face, storage and its errors."""

import itertools

import numpy as np
import pytest

from explore.precompute import table as table_lib
from explore.precompute.table import TableError, TupleTable


def _filled_table(m=5, k=2, n=3):
  table = TupleTable.empty(m, k, n, fingerprints={"clusters": "abc"})
  tuples = table_lib.distinct_tuples(m, k)
  # Each tuple's plan: the n clusters after its last one, cyclically, skipping the tuple.
  plans = []
  for row in tuples.tolist():
    plan = [c for c in ((row[-1] + j) % m for j in range(1, m)) if c not in row][:n]
    plans.append(plan + [-1] * (n - len(plan)))
  scores = -np.tile(np.arange(n, dtype=np.float32), (len(tuples), 1))
  table.set_rows(tuples, np.asarray(plans), scores)
  return table, tuples, np.asarray(plans)


def test_tuple_index_is_the_base_m_number_of_the_tuple():
  history = np.array([[0, 1], [4, 2], [2, 4]])
  np.testing.assert_array_equal(table_lib.tuple_index(history, 5), [1, 22, 14])
  assert table_lib.tuple_index(np.array([[1, 2, 3]]), 4)[0] == 1 * 16 + 2 * 4 + 3


def test_distinct_tuples_enumerates_every_ordered_tuple_once_in_row_order():
  tuples = table_lib.distinct_tuples(4, 3)
  expected = [t for t in itertools.product(range(4), repeat=3) if len(set(t)) == 3]
  assert tuples.tolist() == [list(t) for t in expected]
  np.testing.assert_array_equal(np.diff(table_lib.tuple_index(tuples, 4)) > 0, True)
  assert len(table_lib.distinct_tuples(256, 2)) == 65_280


def test_lookup_returns_each_tuples_plan():
  table, tuples, plans = _filled_table()
  clusters, scores = table.lookup(tuples[::-1])
  np.testing.assert_array_equal(clusters, plans[::-1])
  assert scores[0].tolist() == [0.0, -1.0, -2.0]


def test_rows_without_a_cluster_score_minus_infinity():
  table = TupleTable.empty(3, 2, 2)
  table.set_rows(np.array([[0, 1]]), np.array([[2, -1]]), np.array([[0.5, 9.0]]))
  clusters, scores = table.lookup(np.array([[0, 1]]))
  assert clusters.tolist() == [[2, -1]] and scores.tolist() == [[0.5, -np.inf]]


def test_planner_scores_rank_the_table_order_first():
  table, tuples, plans = _filled_table()
  scores = table.planner_scores(tuples[:4])
  for row, plan in zip(scores, plans[:4]):
    ranked = np.argsort(-row, kind="stable")[:len(plan)]
    assert ranked.tolist() == plan.tolist()
    assert np.isneginf(np.delete(row, plan)).all()


@pytest.mark.parametrize("history, message", [
    (np.array([[1, 1]]), "repeats a cluster"),
    (np.array([[1, 7]]), "outside"),
    (np.array([1, 2]), "must be"),
    (np.array([[0.5, 1.0]]), "integer"),
])
def test_bad_histories_are_named(history, message):
  table, _, _ = _filled_table()
  with pytest.raises(TableError, match=message):
    table.lookup(history)


def test_save_and_memory_mapped_load_round_trip(tmp_path):
  table, tuples, plans = _filled_table()
  table.save(tmp_path / "table")
  loaded = TupleTable.load(tmp_path / "table")
  assert isinstance(loaded.clusters, np.memmap)
  np.testing.assert_array_equal(loaded.lookup(tuples)[0], plans)
  assert loaded.fingerprints == {"clusters": "abc"} and loaded.top_n == 3


def test_fingerprint_mismatch_names_the_input_and_the_fix(tmp_path):
  table, _, _ = _filled_table()
  table.save(tmp_path / "table")
  loaded = TupleTable.load(tmp_path / "table")
  loaded.check_fingerprints({"clusters": "abc"})
  with pytest.raises(TableError, match=r"clusters .*explore precompute --force"):
    loaded.check_fingerprints({"clusters": "xyz"}, tmp_path / "table")


def test_truncated_table_file_is_a_clear_error(tmp_path):
  table, _, _ = _filled_table()
  table.save(tmp_path / "table")
  path = tmp_path / "table" / table_lib.SCORES_FILE
  path.write_bytes(path.read_bytes()[:-7])
  with pytest.raises(TableError, match=r"scores.npy.*(truncated|expected)"):
    TupleTable.load(tmp_path / "table")


def test_a_failed_save_keeps_the_previous_table(tmp_path):
  table, tuples, plans = _filled_table()
  table.save(tmp_path / "table")
  broken = TupleTable.empty(5, 2, 3)
  broken.scores = object()  # not an array: np.save fails half-way
  with pytest.raises(Exception):
    broken.save(tmp_path / "table")
  np.testing.assert_array_equal(TupleTable.load(tmp_path / "table").lookup(tuples)[0], plans)


def test_text_fingerprint_depends_on_order_and_boundaries():
  assert table_lib.text_fingerprint(["a", "b"]) != table_lib.text_fingerprint(["b", "a"])
  assert table_lib.text_fingerprint(["ab", ""]) != table_lib.text_fingerprint(["a", "b"])
