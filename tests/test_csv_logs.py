"""The generic CSV/Parquet log loader: column mapping, dense ids, and the bad-input policy."""

from __future__ import annotations

import re

import gin
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from explore.data import tables
from explore.data.csv_logs import load_csv_logs
from explore.data.tables import (BadRowError, DuplicateIdError, EmptyFileError,
                                 MissingColumnError, MissingFileError)
from explore.data.positive import PositiveRuleError, positive_rule
from explore.data.schema import Interactions, ItemCatalog

LOG = """user_id,item_id,timestamp,watch
u2,b,30,0.9
u1,a,20,0.2
u1,b,10,0.7
u2,a,30,0.1
u1,c,20,1.0
"""
ITEMS = """item_id,name,description
a,"Alpha, the first","line one
line two"
b,Beta,second
c,Gamma,third
d,Delta,never watched
"""


def _write(tmp_path, name, text):
  path = tmp_path / name
  path.write_text(text)
  return path


@pytest.fixture(autouse=True)
def _clear_gin():
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def log_path(tmp_path):
  return _write(tmp_path, "log.csv", LOG)


@pytest.fixture
def items_path(tmp_path):
  return _write(tmp_path, "items.csv", ITEMS)


def _rows(interactions):
  """(original user, original item, timestamp) per row, in stored order."""
  return [(str(interactions.user_ids[u]), str(interactions.item_ids[i]), int(t)) for u, i, t in
          zip(interactions.user, interactions.item, interactions.timestamp)]


def test_ids_are_dense_sorted_and_keep_their_originals(log_path):
  interactions, catalog = load_csv_logs(log_path)
  assert interactions.user_ids.tolist() == ["u1", "u2"]
  assert interactions.item_ids.tolist() == ["a", "b", "c"]
  assert catalog.item_ids.tolist() == ["a", "b", "c"]


def test_rows_sorted_by_user_then_time_with_ties_in_file_order(log_path):
  interactions, _ = load_csv_logs(log_path)
  assert _rows(interactions) == [("u1", "b", 10), ("u1", "a", 20), ("u1", "c", 20),
                                 ("u2", "b", 30), ("u2", "a", 30)]


def test_engagement_column_goes_through_the_positive_rule(log_path):
  gin.parse_config("positive_rule.threshold = 0.5")
  interactions, _ = load_csv_logs(log_path, engagement_column="watch")
  np.testing.assert_allclose(interactions.engagement, [0.7, 0.2, 1.0, 0.9, 0.1])
  assert interactions.positive.tolist() == [True, False, True, True, False]


def test_without_engagement_every_event_is_a_positive(log_path):
  interactions, _ = load_csv_logs(log_path)
  assert interactions.positive.all() and (interactions.engagement == 1.0).all()


def test_positive_rule_rejects_a_non_finite_threshold():
  with pytest.raises(PositiveRuleError, match="threshold"):
    positive_rule(np.ones(3), threshold=float("nan"))


def test_parquet_log_loads_like_the_csv(tmp_path, log_path):
  pq.write_table(pa.table({"user_id": ["u2", "u1", "u1", "u2", "u1"],
                           "item_id": ["b", "a", "b", "a", "c"],
                           "timestamp": [30, 20, 10, 30, 20],
                           "watch": [0.9, 0.2, 0.7, 0.1, 1.0]}), tmp_path / "log.parquet")
  from_parquet, _ = load_csv_logs(tmp_path / "log.parquet", engagement_column="watch")
  from_csv, _ = load_csv_logs(log_path, engagement_column="watch")
  assert _rows(from_parquet) == _rows(from_csv)
  np.testing.assert_array_equal(from_parquet.engagement, from_csv.engagement)


def test_items_file_gives_titles_and_text_fields(log_path, items_path):
  _, catalog = load_csv_logs(log_path, items_path, title_column="name",
                             text_columns=("description",))
  assert catalog.title.tolist() == ["Alpha, the first", "Beta", "Gamma"]
  assert catalog.text["description"][0] == "line one\nline two"


def test_unrated_items_are_dropped_unless_kept(log_path, items_path):
  dropped = load_csv_logs(log_path, items_path, title_column="name")
  kept = load_csv_logs(log_path, items_path, title_column="name", keep_unrated_items=True)
  assert dropped.catalog.item_ids.tolist() == ["a", "b", "c"]
  assert dropped.report.unrated_items_dropped == 1
  assert kept.catalog.item_ids.tolist() == ["a", "b", "c", "d"]
  assert kept.interactions.num_items == 4 and kept.catalog.title[3] == "Delta"


def test_column_mapping_is_set_in_gin(tmp_path):
  path = _write(tmp_path, "events.csv", "who,what,when\n7,100,5\n7,200,1\n")
  gin.parse_config("""
      load_csv_logs.user_column = 'who'
      load_csv_logs.item_column = 'what'
      load_csv_logs.timestamp_column = 'when'
  """)
  interactions, _ = load_csv_logs(path)
  assert interactions.item_ids[interactions.item].tolist() == [200, 100]


def test_integer_ids_become_integers_but_zero_padded_ids_stay_strings(tmp_path):
  path = _write(tmp_path, "log.csv", "user_id,item_id,timestamp\n7,007,1\n8,12,2\n")
  interactions, _ = load_csv_logs(path)
  assert interactions.user_ids.dtype.kind == "i" and interactions.user_ids.tolist() == [7, 8]
  assert interactions.item_ids.tolist() == ["007", "12"]


def test_string_timestamps_are_parsed_with_a_format(tmp_path):
  path = _write(tmp_path, "log.csv", "user_id,item_id,timestamp\n"
                "1,1,2020-01-01 00:00:10\n1,2,2020-01-01 00:00:05\n")
  interactions, _ = load_csv_logs(path, timestamp_format="%Y-%m-%d %H:%M:%S")
  assert interactions.timestamp.tolist() == [1577836805, 1577836810]
  assert interactions.item_ids[interactions.item].tolist() == [2, 1]


def test_without_a_timestamp_column_file_order_is_time(tmp_path):
  path = _write(tmp_path, "log.csv", "user_id,item_id\n1,30\n2,10\n1,20\n")
  interactions, _ = load_csv_logs(path, timestamp_column=None)
  assert interactions.timestamp.tolist() == [0, 2, 1]
  assert interactions.item_ids[interactions.item].tolist() == [30, 20, 10]


def test_save_load_round_trip(tmp_path, log_path, items_path):
  interactions, catalog = load_csv_logs(log_path, items_path, title_column="name",
                                        text_columns=("description",))
  interactions.save(tmp_path / "interactions")
  catalog.save(tmp_path / "catalog")
  again, again_catalog = Interactions.load(tmp_path / "interactions"), ItemCatalog.load(
      tmp_path / "catalog")
  assert _rows(again) == _rows(interactions)
  assert again_catalog.item_text(0) == catalog.item_text(0)


# Bad input.

def test_missing_file_is_named(tmp_path):
  with pytest.raises(MissingFileError, match="nope.csv"):
    load_csv_logs(tmp_path / "nope.csv")


def test_missing_column_names_column_file_and_columns_found(log_path):
  with pytest.raises(MissingColumnError) as error:
    load_csv_logs(log_path, engagement_column="rating")
  message = str(error.value)
  assert "'rating'" in message and "log.csv" in message and "'watch'" in message


@pytest.mark.parametrize("on_bad_rows", ["error", "skip"])
@pytest.mark.parametrize("text", ["", "user_id,item_id,timestamp\r\n"])
def test_empty_file_is_always_an_error(tmp_path, text, on_bad_rows):
  path = _write(tmp_path, "log.csv", text)
  with pytest.raises(EmptyFileError, match="log.csv"):
    load_csv_logs(path, on_bad_rows=on_bad_rows)


def test_empty_parquet_file_is_an_error(tmp_path):
  pq.write_table(pa.table({"user_id": pa.array([], pa.int64()), "item_id": pa.array([], pa.int64()),
                           "timestamp": pa.array([], pa.int64())}), tmp_path / "log.parquet")
  with pytest.raises(EmptyFileError, match="log.parquet"):
    load_csv_logs(tmp_path / "log.parquet")


BAD_LOG = """user_id,item_id,timestamp,watch
1,10,5,0.5
1,11,x,0.5

1,12,7
2,,8,0.5
2,10,-3,0.5
2,11,9,abc
3,12,9,0.5
"""


def test_first_bad_row_is_reported_with_file_line_and_value(tmp_path):
  path = _write(tmp_path, "log.csv", BAD_LOG)
  with pytest.raises(BadRowError) as error:
    load_csv_logs(path, engagement_column="watch")
  message = str(error.value)
  assert "log.csv, line 3: non-integer timestamp ('x')" in message
  assert "5 bad row(s)" in message and "on_bad_rows='skip'" in message


@pytest.mark.parametrize("line, reason", [
    ("1,12,7", "line 2: wrong number of fields ('1,12,7')"),
    ("2,,8,0.5", "line 2: missing item id"),
    ("2,10,-3,0.5", "line 2: negative timestamp (-3)"),
    ("2,11,9,abc", "line 2: non-numeric engagement ('abc')"),
    ("2,11,,1", "line 2: missing timestamp"),
])
def test_each_kind_of_bad_row_is_an_error(tmp_path, line, reason):
  path = _write(tmp_path, "log.csv", f"user_id,item_id,timestamp,watch\n{line}\n1,10,5,0.5\n")
  with pytest.raises(BadRowError, match=re.escape(reason)):
    load_csv_logs(path, engagement_column="watch")


def test_skip_drops_bad_rows_and_counts_them_by_reason(tmp_path):
  path = _write(tmp_path, "log.csv", BAD_LOG)
  result = load_csv_logs(path, engagement_column="watch", on_bad_rows="skip")
  report = result.report
  assert report.skipped == {"log.csv: wrong number of fields": 1, "log.csv: missing item id": 1,
                            "log.csv: non-integer timestamp": 1,
                            "log.csv: negative timestamp": 1,
                            "log.csv: non-numeric engagement": 1}
  assert (report.rows_read, report.rows_kept) == (7, 2)
  assert _rows(result.interactions) == [("1", "10", 5), ("3", "12", 9)]


def test_skip_that_leaves_no_rows_is_an_error(tmp_path):
  path = _write(tmp_path, "log.csv", "user_id,item_id,timestamp\n1,2,x\n")
  with pytest.raises(EmptyFileError, match="no interactions left"):
    load_csv_logs(path, on_bad_rows="skip")


def test_unknown_item_ids_are_an_error_naming_the_id(log_path, items_path, tmp_path):
  path = _write(tmp_path, "log2.csv", LOG + "u3,zz,40,1.0\n")
  with pytest.raises(BadRowError, match=r"log2.csv, line 7: unknown item id \(not in items.csv\) "
                     r"\('zz'\)"):
    load_csv_logs(path, items_path)


def test_unknown_item_ids_are_skipped_and_counted(items_path, tmp_path):
  path = _write(tmp_path, "log2.csv", LOG + "u3,zz,40,1.0\nu3,yy,41,1.0\n")
  result = load_csv_logs(path, items_path, on_bad_rows="skip")
  assert result.report.skipped == {"log2.csv: unknown item id (not in items.csv)": 2}
  assert "u3" not in result.interactions.user_ids.tolist()


def test_duplicate_item_ids_name_the_id_and_lines(log_path, tmp_path):
  items = _write(tmp_path, "items.csv", "item_id,name\na,A\nb,B\n\"a\",again\n")
  with pytest.raises(DuplicateIdError, match=r"items.csv: item id 'a' appears 2 times \(line 2 "
                     r"and line 4\)"):
    load_csv_logs(log_path, items, on_bad_rows="skip")


def test_timestamps_out_of_order_are_accepted_and_sorted(tmp_path):
  path = _write(tmp_path, "log.csv", "user_id,item_id,timestamp\n1,1,300\n1,2,100\n1,3,200\n")
  interactions, _ = load_csv_logs(path)
  assert interactions.timestamp.tolist() == [100, 200, 300]


def test_parquet_bad_rows_are_located_by_row(tmp_path):
  pq.write_table(pa.table({"user_id": [1, 2, 3], "item_id": [1, 2, 3],
                           "timestamp": pa.array([1, None, 3], pa.int64())}), tmp_path / "log.pq")
  with pytest.raises(BadRowError, match=r"log.pq, row 2: missing timestamp"):
    load_csv_logs(tmp_path / "log.pq")


def test_unknown_on_bad_rows_value_is_rejected(log_path):
  with pytest.raises(ValueError, match="on_bad_rows must be one of"):
    load_csv_logs(log_path, on_bad_rows="ignore")


def test_unparseable_encoding_names_the_file(tmp_path):
  path = tmp_path / "log.csv"
  path.write_bytes(b"user_id,item_id,timestamp\n\xff\xfe,1,2\n")
  with pytest.raises(tables.BadInputError, match="log.csv"):
    load_csv_logs(path)


@pytest.mark.parametrize("block_bytes", [3, 1 << 26])
def test_bad_row_line_is_found_across_read_blocks_and_blank_lines(tmp_path, monkeypatch,
                                                                 block_bytes):
  monkeypatch.setattr(tables, "LOCATE_BLOCK_BYTES", block_bytes)
  path = tmp_path / "log.csv"
  path.write_bytes(b"user_id,item_id,timestamp\r\n1,1,1\r\n\r\n\r\n2,2,2\r\n3,3,x\r\n")
  with pytest.raises(BadRowError, match=r"log.csv, line 6: non-integer timestamp"):
    load_csv_logs(path)
