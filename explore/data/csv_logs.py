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
user, then time (ties keep file order).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import gin
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
  """
  check_on_bad_rows(on_bad_rows)
  fmt = TextFormat(delimiter=delimiter, encoding=encoding, timestamp_format=timestamp_format)
  report = LoadReport(source=str(interactions_path))
  columns = [Column(user_column, "user id", "id"), Column(item_column, "item id", "id")]
  if timestamp_column:
    columns.append(Column(timestamp_column, "timestamp", "time"))
  if engagement_column:
    columns.append(Column(engagement_column, "engagement", "float"))
  raw = read_table(interactions_path, columns, fmt, on_bad_rows=on_bad_rows, report=report)
  report.rows_read = raw.num_records
  catalog_ids = title = None
  text = {}
  if items_path is not None:
    items_path = Path(items_path)
    id_column = Column(items_item_column or item_column, "item id", "id")
    item_columns = [id_column] + [Column(c, "title", "text") for c in [title_column] if c] + [
        Column(c, c, "text") for c in text_columns]
    items = read_table(items_path, item_columns, dataclasses.replace(fmt, multiline=True),
                       on_bad_rows=on_bad_rows, report=report)
    check_unique(items, id_column)
    raw.columns[item_column], items.columns[id_column.name] = unify_ids(
        raw.columns[item_column], items.columns[id_column.name])
    catalog_ids = items.columns[id_column.name]
    raw = drop_unknown_items(raw, item_column, catalog_ids, items_path, on_bad_rows, report)
    title = items.columns[title_column] if title_column else None
    text = {c: items.columns[c] for c in text_columns}
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
