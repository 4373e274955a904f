"""Interaction logs and item tables from CSV or Parquet files, with a bad-row policy.

`load_csv_logs` reads a generic log (one row per user-item event) and an optional
items file; the column mapping is set in gin. Reading tables and the bad-row
policy live in `tables`; this module holds what both loaders (this one and
MovieLens) share after reading: `build_dataset` (dense id remapping into the
artifacts), `LoadResult` and `LoadReport`.

Bad input (see docs/data.md): a missing file or column, an empty file and
duplicate item ids are always errors. Malformed rows (wrong field count, a
missing or non-numeric value, a negative timestamp) and rows whose item is not in
the items file follow `on_bad_rows`: 'error' (default) raises at the first one,
naming the file and line; 'skip' drops them, logs a count per reason and records
it in `LoadReport.skipped`. Timestamps may come in any order: rows are sorted by
user, then time (ties keep file order unless `LogChecks.same_timestamp` says
otherwise). Duplicate events, ratings out of a declared range and same-timestamp
baskets follow `LogChecks` (`log_checks`). Item text may come from columns of the
log itself (`log_item_text`: one text per item), so no items file is needed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import gin
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from explore.data.log_checks import LogChecks, apply_log_checks
from explore.data.positive import positive_rule
from explore.data.schema import Interactions, ItemCatalog
from explore.data.tables import (Column, EmptyFileError, TextFormat, check_on_bad_rows,
                                 check_unique, drop_unknown_items, read_table, unify_ids)


@dataclasses.dataclass
class LoadReport:
  """What a loader read, kept and skipped; saved beside the data by the data stage."""

  source: str
  rows_read: int = 0  # data rows in the interactions file
  rows_kept: int = 0
  skipped: dict[str, int] = dataclasses.field(default_factory=dict)  # "file: reason" -> rows
  unrated_items_dropped: int = 0  # items-file entries without a kept interaction
  checks: dict[str, Any] = dataclasses.field(default_factory=dict)  # log_checks counts, policies

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class LoadResult:
  """A loader's output; unpacks as `interactions, catalog = load_...(...)`."""

  interactions: Interactions
  catalog: ItemCatalog
  report: LoadReport

  def __iter__(self) -> Iterator:
    return iter((self.interactions, self.catalog))

  def __getitem__(self, index: int):
    return (self.interactions, self.catalog)[index]

  def __len__(self) -> int:
    return 2


def _sorted_unique(values: pa.Array) -> pa.Array:
  unique = pc.unique(values)
  return unique.take(pc.sort_indices(unique))


def to_numpy(values: pa.Array) -> np.ndarray:
  """Ids or text as numpy: int64, or fixed-width unicode (never object arrays)."""
  if pa.types.is_string(values.type) or pa.types.is_large_string(values.type):
    return np.asarray(values.to_numpy(zero_copy_only=False), dtype=str)
  return values.to_numpy(zero_copy_only=False)


def build_dataset(user: pa.Array, item: pa.Array, timestamp: pa.Array, engagement: np.ndarray,
                  positive: np.ndarray, *, catalog_ids: pa.Array | None = None,
                  title: pa.Array | None = None, text: Mapping[str, pa.Array] | None = None,
                  keep_unrated_items: bool = False, report: LoadReport
                  ) -> tuple[Interactions, ItemCatalog]:
  """Remaps ids to dense indices (sorted original ids) and builds both artifacts.

  The catalog is indexed like `Interactions.item`: it holds the rated items, plus
  the items file's unrated ones when `keep_unrated_items`.
  """
  if len(user) == 0:
    raise EmptyFileError(f"{report.source}: no interactions left after skipping bad rows")
  users = _sorted_unique(user)
  if catalog_ids is not None and keep_unrated_items:
    items = _sorted_unique(catalog_ids)
  else:
    items = _sorted_unique(item)
  user_index = pc.index_in(user, value_set=users).to_numpy()  # [N]
  item_index = pc.index_in(item, value_set=items).to_numpy()  # [N]
  interactions = Interactions.from_columns(
      user_index, item_index, timestamp.to_numpy(), engagement, positive,
      to_numpy(users), to_numpy(items))
  id_titles = to_numpy(pc.cast(items, pa.string()))  # titles where the data has none
  if catalog_ids is None:
    catalog = ItemCatalog(item_ids=to_numpy(items), title=id_titles, text={})
  else:
    rows = pc.index_in(items, value_set=catalog_ids)  # [num_items] row of each item
    report.unrated_items_dropped = len(catalog_ids) - len(items)
    catalog = ItemCatalog(
        item_ids=to_numpy(items),
        title=id_titles if title is None else to_numpy(title.take(rows)),
        text={k: to_numpy(v.take(rows)) for k, v in (text or {}).items()})
  report.rows_kept = len(interactions)
  return interactions, catalog


def log_item_text(item: pa.Array, values: pa.Array, record: np.ndarray
                  ) -> tuple[pa.Array, pa.Array]:
  """One text per item from a column of the log itself.

  The rule: an item's text is its most frequent non-empty value (surrounding
  whitespace removed); ties go to the value that appears first in the file
  (lowest `record`); an item whose values are all empty gets "".

  Args:
    item: [rows] item ids.
    values: [rows] strings ("" where the file has none).
    record: [rows] data-record index of each row in the file (file order).

  Returns:
    The distinct item ids (sorted) and their texts.
  """
  table = pa.table({"item": item, "text": pc.utf8_trim_whitespace(values),
                    "record": pa.array(record, pa.int64())})
  counted = table.filter(pc.not_equal(table["text"], "")).group_by(["item", "text"]).aggregate(
      [("record", "count"), ("record", "min")]).sort_by(
          [("item", "ascending"), ("record_count", "descending"), ("record_min", "ascending")])
  ranked = counted["item"].combine_chunks() if counted.num_rows else pa.array([], item.type)
  best = np.ones(len(ranked), bool)  # [groups] the first (best) group of each item
  if len(ranked) > 1:
    best[1:] = pc.not_equal(ranked[1:], ranked[:-1]).to_numpy(zero_copy_only=False)
  chosen = counted.filter(pa.array(best))
  items = _sorted_unique(item)
  rows = pc.index_in(items, value_set=chosen["item"].combine_chunks())
  return items, pc.fill_null(chosen["text"].combine_chunks().take(rows), "")


def _titled(ids: pa.Array, title: pa.Array) -> pa.Array:
  """Titles, with the item id where an item has none."""
  return pc.if_else(pc.equal(title, ""), pc.cast(ids, pa.string()), title)


def _check_text_mapping(items_path, title_column, text_columns, log_title_column,
                        log_text_columns) -> None:
  if items_path is None and (title_column or text_columns):
    raise ValueError(
        "load_csv_logs: title_column / text_columns name columns of the items file, but "
        "items_path is None; for columns of the log itself use log_title_column / "
        "log_text_columns")
  if title_column and log_title_column:
    raise ValueError(f"load_csv_logs: set title_column ({title_column!r}, items file) or "
                     f"log_title_column ({log_title_column!r}, the log), not both")
  both = sorted(set(text_columns) & set(log_text_columns))
  if both:
    raise ValueError(f"load_csv_logs: text field(s) {both} are in both text_columns (items file) "
                     "and log_text_columns (the log); each catalog text field comes from one")


@gin.configurable
def load_csv_logs(
    interactions_path: str | Path,
    items_path: str | Path | None = None,
    user_column: str = "user_id",
    item_column: str = "item_id",
    timestamp_column: str | None = "timestamp",
    engagement_column: str | None = None,
    title_column: str | None = None,
    text_columns: Sequence[str] = (),
    delimiter: str = ",",
    encoding: str = "utf-8",
    timestamp_format: str | None = None,
    items_item_column: str | None = None,
    keep_unrated_items: bool = False,
    on_bad_rows: str = "error",
    log_title_column: str | None = None,
    log_text_columns: Sequence[str] = (),
    checks: LogChecks | None = None,
) -> LoadResult:
  """Loads an interaction log (CSV, or Parquet by extension) and an optional items file.

  Args:
    interactions_path: one row per event; `.parquet`/`.pq` files are Parquet.
    items_path: optional item table (CSV or Parquet) with titles and text.
    user_column, item_column: id columns (integers, or any strings).
    timestamp_column: integer seconds (any order), or strings in `timestamp_format`;
      None uses the file order as time.
    engagement_column: a number per event, made positive by `positive_rule`;
      None treats every event as a positive with engagement 1.
    title_column, text_columns: item-file columns for the title and text fields
      (each text field is named after its column); titles default to the item id.
    delimiter, encoding: of the CSV files.
    timestamp_format: strptime format (e.g. "%Y-%m-%d %H:%M:%S") for string timestamps.
    items_item_column: the item id column of the items file (default: item_column).
    keep_unrated_items: keep items-file entries that no interaction mentions.
    on_bad_rows: 'error' or 'skip' (see the module docstring).
    log_title_column, log_text_columns: columns of the log itself that hold item
      text, one text per item by the rule of `log_item_text`; no items file needed.
    checks: duplicate / rating-range / same-timestamp policies (default: `LogChecks()`
      as bound in gin; see `log_checks`).
  """
  check_on_bad_rows(on_bad_rows)
  _check_text_mapping(items_path, title_column, text_columns, log_title_column, log_text_columns)
  checks = LogChecks() if checks is None else checks
  fmt = TextFormat(delimiter=delimiter, encoding=encoding, timestamp_format=timestamp_format)
  report = LoadReport(source=str(interactions_path))
  setting = "load_csv_logs.{}".format
  columns = [Column(user_column, "user id", "id", setting("user_column")),
             Column(item_column, "item id", "id", setting("item_column"))]
  if timestamp_column:
    columns.append(Column(timestamp_column, "timestamp", "time", setting("timestamp_column")))
  if engagement_column:
    columns.append(Column(engagement_column, "engagement", "float", setting("engagement_column")))
  log_fields = ([("title", log_title_column, "log_title_column")] if log_title_column else []
                ) + [(c, c, "log_text_columns") for c in log_text_columns]  # (field, column, setting)
  for field, name, named_by in log_fields:
    if name not in [c.name for c in columns]:
      columns.append(Column(name, f"item {field}", "text", setting(named_by)))
  raw = read_table(interactions_path, columns, fmt, on_bad_rows=on_bad_rows, report=report)
  report.rows_read = raw.num_records
  catalog_ids = title = None
  text = {}
  if items_path is not None:
    items_path = Path(items_path)
    id_column = Column(items_item_column or item_column, "item id", "id",
                       setting("items_item_column" if items_item_column else "item_column"))
    item_columns = [id_column] + [
        Column(c, "title", "text", setting("title_column")) for c in [title_column] if c] + [
            Column(c, c, "text", setting("text_columns")) for c in text_columns]
    items = read_table(items_path, item_columns, dataclasses.replace(fmt, multiline=True),
                       on_bad_rows=on_bad_rows, report=report)
    check_unique(items, id_column)
    raw.columns[item_column], items.columns[id_column.name] = unify_ids(
        raw.columns[item_column], items.columns[id_column.name])
    catalog_ids = items.columns[id_column.name]
    raw = drop_unknown_items(raw, item_column, catalog_ids, items_path, on_bad_rows, report)
    title = items.columns[title_column] if title_column else None
    text = {c: items.columns[c] for c in text_columns}
  raw = apply_log_checks(raw, checks, user=user_column, item=item_column,
                         timestamp=timestamp_column, engagement=engagement_column, report=report)
  for field, name, named_by in log_fields if len(raw) else ():
    log_items, values = log_item_text(raw.columns[item_column], raw.columns[name], raw.record)
    if catalog_ids is None:
      catalog_ids = log_items
    else:  # items-file entries the log does not mention get ""
      values = pc.fill_null(values.take(pc.index_in(catalog_ids, value_set=log_items)), "")
    if named_by == "log_title_column":
      title = _titled(catalog_ids, values)
    else:
      text[field] = values
  if engagement_column:
    engagement = raw.columns[engagement_column].to_numpy()
    positive = positive_rule(engagement)
  else:
    engagement, positive = np.ones(len(raw), np.float32), np.ones(len(raw), bool)
  timestamp = raw.columns[timestamp_column] if timestamp_column else pa.array(raw.record)
  interactions, catalog = build_dataset(
      raw.columns[user_column], raw.columns[item_column], timestamp, engagement, positive,
      catalog_ids=catalog_ids, title=title, text=text, keep_unrated_items=keep_unrated_items,
      report=report)
  return LoadResult(interactions, catalog, report)
