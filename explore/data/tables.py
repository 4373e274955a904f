"""Reading CSV/text and Parquet tables column by column, with a bad-row policy.

`read_table` reads the mapped `Column`s of one file into a `RawTable`,
validating every value; the loaders (`csv_logs`, `movielens`) build on it.
A missing file or column, an empty file and (`check_unique`) a repeated id are
always errors. Malformed rows and (`drop_unknown_items`) rows naming an item
the items file lacks follow `on_bad_rows` (`apply_policy`): 'error' raises at
the file's first bad one, naming the file and line; 'skip' drops them and
counts them per reason in the loader's `LoadReport.skipped`.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from absl import logging
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

if TYPE_CHECKING:  # csv_logs imports this module; the report is only annotated here
  from explore.data.csv_logs import LoadReport

ON_BAD_ROWS = ("error", "skip")
PARQUET_SUFFIXES = (".parquet", ".pq")
LOCATE_BLOCK_BYTES = 1 << 26  # read size when counting lines to locate a bad row
_INT = r"^-?\d{1,18}$"
_CANONICAL_INT = r"^-?(0|[1-9]\d{0,17})$"  # ids like "007" stay strings
_FLOAT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"


class BadInputError(ValueError):
  """A raw log or item file that cannot be loaded as given."""


class MissingFileError(BadInputError, FileNotFoundError):
  """An input file does not exist."""


class MissingColumnError(BadInputError):
  """A mapped column is not in the file's header."""


class EmptyFileError(BadInputError):
  """A file with no data rows (zero bytes or a header only), or none left after skipping."""


class BadRowError(BadInputError):
  """A malformed row, or a row naming an unknown item, under on_bad_rows='error'."""


class DuplicateIdError(BadInputError):
  """An items file lists the same item id twice."""


@dataclasses.dataclass(frozen=True)
class Column:
  """A column to read: its name in the file, what it holds, and how to parse it.

  kind: "id" (integers if every value is one, else strings), "int_id",
  "float", "time" (integer seconds >= 0, or `TextFormat.timestamp_format`
  strings, or a Parquet timestamp), "text" (may be empty).
  """

  name: str
  role: str  # for messages: "user id", "rating", ...
  kind: str
  setting: str | None = None  # the gin setting that names the column, for messages


@dataclasses.dataclass(frozen=True)
class TextFormat:
  """How a delimited text file is laid out."""

  delimiter: str = ","  # "::" (MovieLens 1M) is rewritten to one character before parsing
  encoding: str = "utf-8"
  quoting: bool = True  # '"' quotes fields (CSV); False for MovieLens .dat files
  header: tuple[str, ...] | None = None  # column names of a headerless file
  multiline: bool = False  # quoted values may span lines (slower; item tables)
  timestamp_format: str | None = None  # strptime format of "time" columns, else integers


@dataclasses.dataclass
class RawTable:
  """Validated columns of one file; `record` locates each row for messages."""

  path: Path
  fmt: TextFormat
  columns: dict[str, pa.Array]
  record: np.ndarray  # [rows] int64 index of the row among the file's data records
  num_records: int  # data records in the file, bad ones included

  def __len__(self) -> int:
    return len(self.record)

  def take(self, keep: np.ndarray) -> "RawTable":
    """The rows of a [rows] bool mask, or of an index array in its order."""
    keep = np.asarray(keep)
    indices = np.flatnonzero(keep) if keep.dtype == bool else keep.astype(np.int64)
    rows = pa.array(indices)
    return RawTable(self.path, self.fmt, {k: v.take(rows) for k, v in self.columns.items()},
                    self.record[indices], self.num_records)

  def where(self, records: Sequence[int]) -> list[str]:
    """'line N' (text, first line of the record) or 'row N' (Parquet) per record."""
    if self.path.suffix.lower() in PARQUET_SUFFIXES:
      return [f"row {r + 1}" for r in records]
    lines = _record_lines(self.path, self.fmt, records)
    return [f"line {lines.get(r, '?')}" for r in records]


def check_on_bad_rows(on_bad_rows: str) -> None:
  if on_bad_rows not in ON_BAD_ROWS:
    raise ValueError(f"on_bad_rows must be one of {ON_BAD_ROWS}, got {on_bad_rows!r}")


def _open_text(path: Path, encoding: str) -> io.TextIOWrapper:
  return io.TextIOWrapper(pa.input_stream(str(path)), encoding=encoding, newline="")


def _records(path: Path, fmt: TextFormat) -> Iterator[tuple[int, list[str] | None]]:
  """Yields (first line number, fields or None) per non-blank record, header included."""
  with _open_text(path, fmt.encoding) as f:
    if fmt.quoting and len(fmt.delimiter) == 1:
      reader = csv.reader(f, delimiter=fmt.delimiter, strict=False)
      previous = 0
      for row in reader:
        start, previous = previous + 1, reader.line_num
        if row:
          yield start, row
    else:
      for number, line in enumerate(f, 1):
        if line.rstrip("\r\n"):
          yield number, None


def _nonblank_lines(path: Path, wanted: np.ndarray) -> dict[int, int]:
  """Maps wanted non-blank line indices (0-based) to line numbers, counting newlines in numpy."""
  lines, lines_before, nonblank_before, tail = {}, 0, 0, b""
  with pa.input_stream(str(path)) as f:
    while True:
      block = f.read(LOCATE_BLOCK_BYTES)
      data = tail + block if block else (tail + b"\n" if tail else b"")  # last line may lack \n
      if not data:
        break
      buf = np.frombuffer(data, np.uint8)
      ends = np.flatnonzero(buf == 10)  # [lines] newline offsets
      if len(ends):
        starts = np.concatenate([[0], ends[:-1] + 1])
        has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
        nonblank = nonblank_before + np.cumsum(ends - starts - has_cr > 0)  # [lines]
        for w in wanted[(wanted >= nonblank_before) & (wanted < nonblank[-1])]:
          lines[int(w)] = lines_before + int(np.searchsorted(nonblank, w + 1)) + 1
        lines_before, nonblank_before = lines_before + len(ends), int(nonblank[-1])
      tail = data[ends[-1] + 1:] if len(ends) else data
      if not block or len(lines) == len(wanted):
        break
  return lines


def _record_lines(path: Path, fmt: TextFormat, records: Sequence[int]) -> dict[int, int]:
  """Maps data-record indices to line numbers by re-reading the file up to the last one."""
  wanted, lines = set(int(r) for r in records), {}
  offset = 0 if fmt.header else 1
  if not fmt.multiline and "\r\n".encode(fmt.encoding) == b"\r\n":  # a record is a line
    found = _nonblank_lines(path, np.array(sorted(wanted), np.int64) + offset)
    return {k - offset: v for k, v in found.items()}
  for index, (line, _) in enumerate(_records(path, fmt)):
    if index - offset in wanted:
      lines[index - offset] = line
      if len(lines) == len(wanted):
        break
  return lines


def _header(path: Path, fmt: TextFormat) -> list[str]:
  if fmt.header:
    return list(fmt.header)
  if fmt.quoting and len(fmt.delimiter) == 1:
    row = next((row for _, row in _records(path, fmt)), [])
  else:
    with _open_text(path, fmt.encoding) as f:
      row = next((l.rstrip("\r\n") for l in f if l.rstrip("\r\n")), "").split(fmt.delimiter)
  return [name.lstrip("\ufeff") for name in row]


def _check_columns(path: Path, found: Sequence[str], columns: Sequence[Column]) -> None:
  for column in columns:
    if column.name not in found:
      named_by = f", named by {column.setting}" if column.setting else ""
      raise MissingColumnError(f"{path}: no column {column.name!r} (the {column.role}{named_by}); "
                               f"columns found: {list(found)}")


def _parse_text(path: Path, fmt: TextFormat, columns: Sequence[Column], typed: bool
                ) -> tuple[pa.Table, list[tuple[int | None, str]]]:
  """Parses with pyarrow; returns the table and the (record, text) of wrong-width rows."""
  invalid = []

  def on_invalid(row) -> str:
    invalid.append((None if row.number is None else row.number - (1 if fmt.header else 2),
                    row.text.replace("\x1f", fmt.delimiter)))
    return "skip"

  source, delimiter, encoding = str(path), fmt.delimiter, fmt.encoding
  if len(delimiter) > 1:  # pyarrow takes one character; rewrite e.g. "::" in memory
    with _open_text(path, fmt.encoding) as f:
      source = io.BytesIO(f.read().replace(delimiter, "\x1f").encode("utf-8"))
    delimiter, encoding = "\x1f", "utf-8"
  types = {c.name: pa.string() for c in columns}
  if typed:
    numeric = {"int_id": pa.int64(), "float": pa.float64(),
               "time": None if fmt.timestamp_format else pa.int64()}
    types.update({c.name: numeric[c.kind] for c in columns if numeric.get(c.kind)})
  table = pa_csv.read_csv(
      source,
      read_options=pa_csv.ReadOptions(use_threads=typed, encoding=encoding,
                                      column_names=list(fmt.header) if fmt.header else None),
      parse_options=pa_csv.ParseOptions(
          delimiter=delimiter, quote_char='"' if fmt.quoting else False,
          newlines_in_values=fmt.multiline, invalid_row_handler=on_invalid),
      convert_options=pa_csv.ConvertOptions(column_types=types, null_values=[""],
                                            include_columns=[c.name for c in columns]))
  return table, invalid


def _bad_masks(path: Path, values: pa.Array, column: Column, fmt: TextFormat
               ) -> list[tuple[str, np.ndarray]]:
  """(reason, [rows] bool) for each way the values of one column can be bad."""
  def np_mask(mask) -> np.ndarray:
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), bool)

  role, kind, t = column.role, column.kind, values.type
  wrong_type = BadInputError(f"{path}: column {column.name!r} (the {role}) has type {t}; "
                             f"expected {'integers or strings' if 'id' in kind else 'numbers'}")
  if kind == "text":
    return []
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    text = pc.utf8_trim_whitespace(values)
    missing = np_mask(pc.or_kleene(pc.is_null(text), pc.equal(text, "")))
    out = [(f"missing {role}", missing)]
    if kind == "time" and fmt.timestamp_format:
      parsed = pc.strptime(text, format=fmt.timestamp_format, unit="s", error_is_null=True)
      return out + [(f"{role} not in format {fmt.timestamp_format!r}",
                     ~missing & np_mask(pc.is_null(parsed)))]
    if kind == "id":
      return out
    pattern = _FLOAT if kind == "float" else _INT
    bad = ~missing & ~np_mask(pc.match_substring_regex(text, pattern))
    out.append((f"non-{'numeric' if kind == 'float' else 'integer'} {role}", bad))
    if kind == "time":
      out.append((f"negative {role}", ~missing & ~bad & np_mask(pc.starts_with(text, "-"))))
    return out
  missing = np_mask(pc.is_null(values))
  if kind == "id" or kind == "int_id":
    if not pa.types.is_integer(t):
      raise wrong_type
    return [(f"missing {role}", missing)]
  if pa.types.is_timestamp(t) or pa.types.is_date(t):
    if kind != "time":
      raise wrong_type
    seconds = pc.cast(pc.cast(values, pa.timestamp("s")), pa.int64())
    return [(f"missing {role}", missing), (f"negative {role}", np_mask(pc.less(seconds, 0)))]
  if not (pa.types.is_integer(t) or pa.types.is_floating(t)):
    raise wrong_type
  number = np.asarray(pc.fill_null(pc.cast(values, pa.float64()), 0.0).to_numpy(), np.float64)
  if kind == "float":
    return [(f"missing {role}", missing), (f"non-numeric {role}", ~np.isfinite(number))]
  non_integer = ~np.isfinite(number) | (number != np.floor(number))
  return [(f"missing {role}", missing), (f"non-integer {role}", non_integer),
          (f"negative {role}", ~non_integer & (number < 0))]


def convert(values: pa.Array, column: Column, fmt: TextFormat) -> pa.Array:
  """Typed values of a validated column: int64 or string ids, float64, int64 seconds, string."""
  t = values.type
  if column.kind == "text":
    return pc.fill_null(pc.cast(values, pa.string()), "")
  if pa.types.is_string(t) or pa.types.is_large_string(t):
    values = pc.utf8_trim_whitespace(values)
    if column.kind == "id" and not pc.all(pc.match_substring_regex(values, _CANONICAL_INT)).as_py():
      return pc.cast(values, pa.string())
    if column.kind == "time" and fmt.timestamp_format:
      values = pc.strptime(values, format=fmt.timestamp_format, unit="s")
  if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
    values = pc.cast(values, pa.timestamp("s"))
  return pc.cast(values, pa.float64() if column.kind == "float" else pa.int64())


@dataclasses.dataclass(frozen=True)
class BadRows:
  """Rows of one file that are bad for one reason: how many, and the first one."""

  reason: str
  count: int
  first_record: int  # data-record index of the first bad row
  first_value: object  # its offending value (or the row's text)


def apply_policy(raw: RawTable, checks: Sequence[tuple[str, np.ndarray, pa.Array | None]],
                 on_bad_rows: str, report: LoadReport, found: Sequence[BadRows] = ()
                 ) -> RawTable:
  """Raises at the file's first bad row ('error') or drops and counts bad rows ('skip').

  Args:
    raw: the rows read so far.
    checks: (reason, [rows] bool bad mask, the values to quote) per check, in order;
      a row that fails several checks counts once, under the first.
    found: bad rows already taken out of `raw` (wrong field counts).
  """
  claimed = np.zeros(len(raw), bool)
  found = list(found)
  for reason, bad, values in checks:
    bad = bad & ~claimed
    if bad.any():
      row = int(np.argmax(bad))
      value = None if values is None else values[row].as_py()
      found.append(BadRows(reason, int(bad.sum()), int(raw.record[row]), value))
      claimed |= bad
  if not found:
    return raw
  wheres = raw.where([b.first_record for b in found])
  if on_bad_rows == "error":
    i = min(range(len(found)), key=lambda i: found[i].first_record)
    raise BadRowError(
        f"{raw.path}, {wheres[i]}: {found[i].reason} ({found[i].first_value!r}); "
        f"{sum(b.count for b in found)} bad row(s) in the file. Fix the file or set "
        "on_bad_rows='skip' to drop them")
  for bad, where in zip(found, wheres):
    key = f"{raw.path.name}: {bad.reason}"
    report.skipped[key] = report.skipped.get(key, 0) + bad.count
    logging.warning("%s: skipped %d row(s): %s (first at %s: %r)", raw.path, bad.count,
                    bad.reason, where, bad.first_value)
  return raw.take(~claimed)


def read_table(path: str | Path, columns: Sequence[Column], fmt: TextFormat | None = None, *,
               on_bad_rows: str, report: LoadReport) -> RawTable:
  """Reads `columns` of a CSV/text or Parquet file and applies the bad-row policy.

  A clean text file is parsed once, typed and multithreaded; a file with bad rows
  is re-read as strings so every bad row can be found, counted and located.
  """
  path, fmt = Path(path), fmt or TextFormat()
  if not path.is_file():
    raise MissingFileError(f"{path}: file not found")
  if path.stat().st_size == 0:
    raise EmptyFileError(f"{path}: file is empty (0 bytes)")
  invalid = []
  try:
    if path.suffix.lower() in PARQUET_SUFFIXES:
      _check_columns(path, pq.read_schema(path).names, columns)
      table = pq.read_table(path, columns=[c.name for c in columns])
    else:
      _check_columns(path, _header(path, fmt), columns)
      try:
        table, invalid = _parse_text(path, fmt, columns, typed=True)
      except pa.ArrowInvalid:
        invalid = [None]
      if invalid:  # re-read single-threaded as strings: numbers every bad row
        table, invalid = _parse_text(path, fmt, columns, typed=False)
  except (pa.ArrowInvalid, UnicodeDecodeError) as e:
    raise BadInputError(
        f"{path}: cannot be parsed ({e}); check the delimiter and encoding") from None
  num_records = table.num_rows + len(invalid)
  if num_records == 0:
    raise EmptyFileError(f"{path}: no data rows (a header only)")
  bad_records = np.array(sorted(r for r, _ in invalid), np.int64)
  valid = np.ones(num_records, bool)
  valid[bad_records] = False
  raw = RawTable(path, fmt, {c.name: _plain(table.column(c.name)) for c in columns},
                 np.flatnonzero(valid), num_records)
  wrong_width = [BadRows("wrong number of fields", len(invalid), invalid[0][0], invalid[0][1])
                 ] if invalid else []
  checks = [(reason, bad, raw.columns[c.name]) for c in columns
            for reason, bad in _bad_masks(path, raw.columns[c.name], c, fmt)]
  raw = apply_policy(raw, checks, on_bad_rows, report, wrong_width)
  raw.columns = {c.name: convert(raw.columns[c.name], c, fmt) for c in columns}
  return raw


def _plain(values: pa.ChunkedArray) -> pa.Array:
  values = values.combine_chunks()
  return values.dictionary_decode() if pa.types.is_dictionary(values.type) else values


def check_unique(raw: RawTable, column: Column) -> None:
  """Raises DuplicateIdError naming the first id that appears twice, and where."""
  counts = pc.value_counts(raw.columns[column.name])
  repeated = counts.filter(pc.greater(counts.field("counts"), 1))
  if len(repeated):
    value = repeated.field("values")[0]
    rows = np.flatnonzero(pc.equal(raw.columns[column.name], value).to_numpy(zero_copy_only=False))
    where = raw.where([int(r) for r in raw.record[rows[:2]]])
    raise DuplicateIdError(f"{raw.path}: {column.role} {value.as_py()!r} appears {len(rows)} times "
                           f"({where[0]} and {where[1]}); {column.role}s must be unique")


def unify_ids(a: pa.Array, b: pa.Array) -> tuple[pa.Array, pa.Array]:
  """Casts two id columns to strings when one is integer and the other is not."""
  if a.type == b.type:
    return a, b
  return pc.cast(a, pa.string()), pc.cast(b, pa.string())


def drop_unknown_items(raw: RawTable, item_column: str, known: pa.Array, items_path: Path,
                       on_bad_rows: str, report: LoadReport) -> RawTable:
  """Applies the bad-row policy to rows whose item id is not in the items file."""
  bad = ~np.asarray(pc.is_in(raw.columns[item_column], value_set=known).to_numpy(
      zero_copy_only=False), bool)
  return apply_policy(raw, [(f"unknown item id (not in {items_path.name})", bad,
                             raw.columns[item_column])], on_bad_rows, report)
