"""Checks on real CSV logs: item text from a log column, duplicates, rating range, baskets."""

from __future__ import annotations

import gin
import numpy as np
import pytest

from explore.data.csv_logs import load_csv_logs, log_item_text
from explore.data.log_checks import LogCheckError, LogChecks, first_of_group
from explore.data.tables import MissingColumnError

COLUMNS = dict(user_column="user", item_column="item", timestamp_column="ts",
               engagement_column="rating")


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _load(tmp_path, text, **kwargs):
  path = tmp_path / "log.csv"
  path.write_text(text)
  return load_csv_logs(path, **{**COLUMNS, **kwargs})


def _events(result):
  """(original user, original item, timestamp, engagement) per stored row."""
  i = result.interactions
  return [(str(i.user_ids[u]), str(i.item_ids[t]), int(s), float(e))
          for u, t, s, e in zip(i.user, i.item, i.timestamp, i.engagement)]


# --- Item text from a column of the log. ---

TITLED = """user,item,ts,rating,title,genre
u1,a,1,5,Alpha,x
u1,b,2,5,Beta,
u2,a,3,5, alpha ,y
u2,a,4,5,alpha,y
u2,b,5,5,Beta (1999),
u3,b,6,5,Beta (1999),
u3,b,7,5,Beta,
u3,c,8,5,,
"""


def test_log_title_is_the_most_frequent_nonempty_value_ties_to_the_first_seen(tmp_path):
  result = _load(tmp_path, TITLED, log_title_column="title", log_text_columns=("genre",))
  catalog = result.catalog
  assert list(catalog.item_ids) == ["a", "b", "c"]
  # a: "alpha" twice (whitespace trimmed) beats "Alpha" once; b: "Beta" and "Beta (1999)"
  # twice each, "Beta" seen first; c: no title, so its id.
  assert list(catalog.title) == ["alpha", "Beta", "c"]
  assert list(catalog.text["genre"]) == ["y", "", ""]
  assert catalog.item_text(0) == "alpha y"


def test_log_item_text_rule_directly():
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  items, text = log_item_text(pa.array([3, 1, 3, 3, 1, 2]), pa.array(["x", "p", "y", "y", "", ""]),
                              np.array([5, 0, 1, 2, 3, 4]))
  assert items.to_pylist() == [1, 2, 3] and text.to_pylist() == ["p", "", "y"]
  # ties: "x" (record 5) and "y" (record 1) once each for item 3 -> the first seen, "y"
  items, text = log_item_text(pa.array([3, 3]), pa.array(["x", "y"]), np.array([5, 1]))
  assert text.to_pylist() == ["y"]


def test_missing_log_title_column_names_the_file_and_the_columns(tmp_path):
  with pytest.raises(MissingColumnError) as e:
    _load(tmp_path, TITLED, log_title_column="name")
  message = str(e.value)
  assert "log.csv" in message and "'name'" in message and "log_title_column" in message
  assert "['user', 'item', 'ts', 'rating', 'title', 'genre']" in message


def test_missing_log_text_column_is_named(tmp_path):
  with pytest.raises(MissingColumnError, match=r"no column 'tags'.*log_text_columns"):
    _load(tmp_path, TITLED, log_text_columns=("tags",))


def test_missing_rating_column_names_the_setting_to_change(tmp_path):
  with pytest.raises(MissingColumnError, match=r"no column 'stars' \(the engagement, named by "
                     r"load_csv_logs.engagement_column\)"):
    _load(tmp_path, TITLED, engagement_column="stars")


def test_items_file_columns_without_an_items_file_point_to_the_log_settings(tmp_path):
  with pytest.raises(ValueError, match="log_title_column"):
    _load(tmp_path, TITLED, title_column="title")


def test_log_text_beside_an_items_file(tmp_path):
  items = tmp_path / "items.csv"
  items.write_text("item,name\na,A\nb,B\nc,C\nd,D\n")
  result = _load(tmp_path, TITLED, items_path=items, title_column="name",
                 log_text_columns=("genre",), keep_unrated_items=True)
  assert list(result.catalog.title) == ["A", "B", "C", "D"]
  assert list(result.catalog.text["genre"]) == ["y", "", "", ""]
  with pytest.raises(ValueError, match="not both"):
    _load(tmp_path, TITLED, items_path=items, title_column="name", log_title_column="title")


# --- Duplicate (user, item, timestamp) rows. ---

DUPLICATED = """user,item,ts,rating
u1,a,1,5
u1,b,2,4
u1,a,1,3
u2,a,1,5
u1,a,1,5
"""


def test_duplicates_keep_keeps_every_row_and_counts_them(tmp_path):
  result = _load(tmp_path, DUPLICATED, checks=LogChecks(on_duplicates="keep"))
  assert len(result.interactions) == 5
  assert result.report.checks["duplicate_rows"] == 2
  assert result.report.skipped == {}


def test_duplicates_skip_keeps_the_first_in_file_order(tmp_path):
  result = _load(tmp_path, DUPLICATED, checks=LogChecks(on_duplicates="skip"))
  assert _events(result) == [("u1", "a", 1, 5.0), ("u1", "b", 2, 4.0), ("u2", "a", 1, 5.0)]
  assert result.report.checks["duplicate_rows"] == 2
  assert result.report.skipped == {"log.csv: duplicate (user, item, timestamp)": 2}
  assert result.report.rows_read == 5 and result.report.rows_kept == 3


def test_duplicates_error_names_both_lines(tmp_path):
  with pytest.raises(LogCheckError, match=r"log.csv, line 4: repeats line 2 \(user 'u1', "
                     r"item 'a', timestamp 1\); 2 duplicate .*on_duplicates"):
    _load(tmp_path, DUPLICATED, checks=LogChecks(on_duplicates="error"))


def test_duplicate_policy_comes_from_gin(tmp_path):
  gin.parse_config("LogChecks.on_duplicates = 'skip'")
  assert len(_load(tmp_path, DUPLICATED).interactions) == 3


def test_without_a_timestamp_column_rows_are_never_duplicates(tmp_path):
  result = _load(tmp_path, DUPLICATED, timestamp_column=None,
                 checks=LogChecks(on_duplicates="error"))
  assert len(result.interactions) == 5 and "duplicate_rows" not in result.report.checks


# --- Ratings outside the declared range. ---

RATED = """user,item,ts,rating
u1,a,1,5
u1,b,2,7
u1,c,3,0
u2,a,1,4.5
"""


def test_out_of_range_clip(tmp_path):
  result = _load(tmp_path, RATED, checks=LogChecks(rating_range=(0.5, 5.0),
                                                   on_out_of_range="clip"))
  assert [e[3] for e in _events(result)] == [5.0, 5.0, 0.5, 4.5]
  assert list(result.interactions.positive) == [True, True, False, True]  # clipped, then the rule
  assert result.report.checks["out_of_range_rows"] == 2
  assert result.report.checks["rating_range"] == [0.5, 5.0]


def test_out_of_range_skip(tmp_path):
  result = _load(tmp_path, RATED, checks=LogChecks(rating_range=(0.5, 5.0),
                                                   on_out_of_range="skip"))
  assert [e[1] for e in _events(result)] == ["a", "a"]
  assert result.report.skipped == {"log.csv: rating outside [0.5, 5]": 2}


def test_out_of_range_error_names_the_line_value_and_range(tmp_path):
  with pytest.raises(LogCheckError, match=r"log.csv, line 3: rating 7 outside "
                     r"LogChecks.rating_range = \(0.5, 5\); 2 row\(s\)"):
    _load(tmp_path, RATED, checks=LogChecks(rating_range=(0.5, 5.0)))


def test_rating_range_needs_a_rating_column(tmp_path):
  with pytest.raises(LogCheckError, match="engagement_column"):
    _load(tmp_path, RATED, engagement_column=None, checks=LogChecks(rating_range=(1, 5)))


@pytest.mark.parametrize("bad", [dict(on_duplicates="drop"), dict(on_out_of_range="nan"),
                                 dict(same_timestamp="time"), dict(rating_range=(5, 1)),
                                 dict(rating_range=(1,))])
def test_bad_policies_are_named(bad):
  with pytest.raises(LogCheckError, match=f"LogChecks.{next(iter(bad))}"):
    LogChecks(**bad)


# --- Several rows of one user at one timestamp. ---

BASKETS = """user,item,ts,rating
u1,c,5,5
u1,a,5,5
u1,b,5,5
u1,d,9,5
u2,b,5,5
u2,a,5,5
"""


def test_baskets_keep_file_order_by_default_and_are_counted(tmp_path):
  result = _load(tmp_path, BASKETS)
  assert [e[1] for e in _events(result)] == ["c", "a", "b", "d", "b", "a"]
  checks = result.report.checks
  assert (checks["baskets"], checks["basket_rows"], checks["largest_basket"]) == (2, 5, 3)


def test_baskets_in_item_order(tmp_path):
  result = _load(tmp_path, BASKETS, checks=LogChecks(same_timestamp="item"))
  assert [e[1] for e in _events(result)] == ["a", "b", "c", "d", "a", "b"]


def test_baskets_collapse_into_their_first_row(tmp_path):
  result = _load(tmp_path, BASKETS, checks=LogChecks(same_timestamp="collapse"))
  assert [(e[0], e[1]) for e in _events(result)] == [("u1", "c"), ("u1", "d"), ("u2", "b")]
  assert result.report.skipped == {"log.csv: same-timestamp basket collapsed": 3}


def test_checks_warn_with_counts(tmp_path, caplog):
  _load(tmp_path, DUPLICATED)
  assert any("2 duplicate (user, item, timestamp) row(s)" in r.getMessage()
             for r in caplog.records)
  assert any("basket(s)" in r.getMessage() for r in caplog.records)


def test_first_of_group():
  user = np.array([1, 0, 1, 1, 0])
  time = np.array([5, 5, 5, 6, 5])
  assert list(first_of_group(user, time)) == [0, 1, 0, 3, 1]


@pytest.mark.parametrize("span", [3, 10**17])  # 10**17: keys too wide to combine as they are
def test_first_of_group_matches_a_dictionary(span):
  rng = np.random.default_rng(0)
  keys = [rng.choice(rng.integers(-span, span, 4), 500) for _ in range(3)]
  seen = {}
  expected = [seen.setdefault(key, row) for row, key in enumerate(zip(*keys))]
  assert list(first_of_group(*keys)) == expected


def test_parquet_log_with_title_column_and_checks(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  path = tmp_path / "log.parquet"
  pq.write_table(pa.table({"user": ["u1", "u1", "u1", "u2"], "item": [2, 1, 1, 1],
                           "ts": [5, 5, 5, 1], "rating": [5.0, 4.0, 4.0, 9.0],
                           "title": ["Two", "One", "one", "One"]}), path)
  result = load_csv_logs(path, **COLUMNS, log_title_column="title",
                         checks=LogChecks(on_duplicates="skip", rating_range=(1, 5),
                                          on_out_of_range="clip", same_timestamp="item"))
  assert _events(result) == [("u1", "1", 5, 4.0), ("u1", "2", 5, 5.0), ("u2", "1", 1, 5.0)]
  assert list(result.catalog.title) == ["One", "Two"]
  assert result.report.checks["duplicate_rows"] == 1 and result.report.checks["baskets"] == 1
