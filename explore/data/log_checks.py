"""Checks real logs need: duplicate events, ratings out of range, same-timestamp baskets.

`LogChecks` (gin: `LogChecks.x`) sets one policy per check; `apply_log_checks`
runs them on the rows `load_csv_logs` read, in this order, logging a warning
with the count for every check that finds something and recording the counts in
`LoadReport.checks` (dropped rows also in `LoadReport.skipped`):

1. Duplicate events: rows with the same (user, item, timestamp).
   `on_duplicates`: 'keep' (default) keeps them all; 'skip' keeps the first in
   file order and drops the rest; 'error' raises at the first repeat, naming its
   line and the line it repeats.
2. Ratings outside `rating_range` (inclusive (low, high); None: no check).
   `on_out_of_range`: 'error' (default) raises at the first one; 'clip' clips
   the value to the range; 'skip' drops the row.
3. Baskets: two or more rows of one user with the same timestamp (a cart, a
   session logged at once). Their order decides the transitions between their
   items, so `same_timestamp` says which order they get: 'file' (default; file
   order), 'item' (by item id, so the result does not depend on how the file was
   written), or 'collapse' (the basket becomes one event: its first row in file
   order is kept, the others dropped).

Without a timestamp column the file order is the time, so checks 1 and 3 find
nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from absl import logging
import gin
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from explore.data.tables import BadInputError, RawTable

ON_DUPLICATES = ("keep", "skip", "error")
ON_OUT_OF_RANGE = ("error", "clip", "skip")
SAME_TIMESTAMP = ("file", "item", "collapse")


class LogCheckError(BadInputError):
  """A duplicate event or an out-of-range rating under policy 'error', or a bad policy."""


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
  if value not in choices:
    raise LogCheckError(f"LogChecks.{name} must be one of {choices}, got {value!r}")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LogChecks:
  """Policies for the checks of the module docstring (gin: `LogChecks.on_duplicates = 'skip'`)."""

  on_duplicates: str = "keep"
  rating_range: tuple[float, float] | None = None
  on_out_of_range: str = "error"
  same_timestamp: str = "file"

  def __post_init__(self):
    _check_choice("on_duplicates", self.on_duplicates, ON_DUPLICATES)
    _check_choice("on_out_of_range", self.on_out_of_range, ON_OUT_OF_RANGE)
    _check_choice("same_timestamp", self.same_timestamp, SAME_TIMESTAMP)
    if self.rating_range is not None:
      bounds = tuple(self.rating_range)
      if (len(bounds) != 2 or not all(isinstance(b, (int, float)) for b in bounds)
          or not np.all(np.isfinite(bounds)) or bounds[0] > bounds[1]):
        raise LogCheckError(f"LogChecks.rating_range must be (low, high) with finite "
                            f"low <= high, got {self.rating_range!r}")
      object.__setattr__(self, "rating_range", (float(bounds[0]), float(bounds[1])))


def _key_column(values: pa.Array) -> np.ndarray:
  """[rows] int64 per value: integers as they are, strings as dictionary codes."""
  if pa.types.is_integer(values.type):
    return np.asarray(values.to_numpy(zero_copy_only=False), np.int64)
  return pc.dictionary_encode(values).indices.to_numpy(zero_copy_only=False).astype(np.int64)


def _combined_key(keys: list[np.ndarray]) -> np.ndarray | None:
  """[rows] one int64 ordered like the key tuple, or None when it would overflow.

  A key whose value range is too wide (e.g. raw epoch seconds) is replaced by
  dense codes first, widest first, until the product of the ranges fits.
  """
  keys = [k - k.min() for k in keys]
  spans = [int(k.max()) + 1 for k in keys]
  while math.prod(spans) >= 2**62:
    widest = int(np.argmax(spans))
    if spans[widest] <= len(keys[widest]):  # already dense: no narrower form
      return None
    keys[widest] = pc.dictionary_encode(pa.array(keys[widest])).indices.to_numpy().astype(np.int64)
    spans[widest] = int(keys[widest].max()) + 1
  combined = np.zeros(len(keys[0]), np.int64)
  for k, span in zip(keys, spans):
    combined = combined * span + k
  return combined


def first_of_group(*keys: np.ndarray) -> np.ndarray:
  """[rows] index of the first row (in row order) with the same keys as each row."""
  n = len(keys[0])
  if n == 0:
    return np.zeros(0, np.int64)
  combined = _combined_key([np.asarray(k, np.int64) for k in keys])
  if combined is not None:  # one stable int64 sort is several times faster than lexsort
    order = np.argsort(combined, kind="stable")
    ordered = combined[order]
    starts = np.concatenate([[True], ordered[1:] != ordered[:-1]])  # [n] a new group begins
  else:
    order = np.lexsort(keys[::-1])  # stable: rows of one group stay in row order
    ordered_keys = [k[order] for k in keys]
    starts = np.concatenate([[True], np.any([k[1:] != k[:-1] for k in ordered_keys], axis=0)])
  group_start = np.maximum.accumulate(np.where(starts, np.arange(n), 0))  # [n]
  first = np.empty(n, np.int64)
  first[order] = order[group_start]
  return first


def _drop(raw: RawTable, bad: np.ndarray, reason: str, report) -> RawTable:
  key = f"{raw.path.name}: {reason}"
  report.skipped[key] = report.skipped.get(key, 0) + int(bad.sum())
  return raw.take(~bad)


def _duplicates(raw: RawTable, user: str, item: str, timestamp: str, policy: str,
                report) -> RawTable:
  keys = [_key_column(raw.columns[user]), _key_column(raw.columns[item]),
          raw.columns[timestamp].to_numpy(zero_copy_only=False)]
  first = first_of_group(*keys)  # [rows]
  repeat = first != np.arange(len(raw))  # [rows]
  count = int(repeat.sum())
  report.checks["duplicate_rows"] = count
  report.checks["on_duplicates"] = policy
  if not count:
    return raw
  row = int(np.argmax(repeat))
  line, original = raw.where([int(raw.record[row]), int(raw.record[first[row]])])
  event = (f"user {raw.columns[user][row].as_py()!r}, item {raw.columns[item][row].as_py()!r}, "
           f"timestamp {raw.columns[timestamp][row].as_py()}")
  if policy == "error":
    raise LogCheckError(
        f"{raw.path}, {line}: repeats {original} ({event}); {count} duplicate (user, item, "
        "timestamp) row(s) in the file. Set LogChecks.on_duplicates = 'skip' to keep the first "
        "of each, or 'keep' to keep them all")
  logging.warning("%s: %d duplicate (user, item, timestamp) row(s), first at %s (repeats %s: %s); "
                  "LogChecks.on_duplicates = %r", raw.path, count, line, original, event, policy)
  return _drop(raw, repeat, "duplicate (user, item, timestamp)", report) if policy == "skip" else raw


def _out_of_range(raw: RawTable, engagement: str, bounds: tuple[float, float], policy: str,
                  report) -> RawTable:
  low, high = bounds
  values = np.asarray(raw.columns[engagement].to_numpy(zero_copy_only=False), np.float64)
  outside = (values < low) | (values > high)  # [rows]
  count = int(outside.sum())
  report.checks["out_of_range_rows"] = count
  report.checks["rating_range"] = [low, high]
  report.checks["on_out_of_range"] = policy
  if not count:
    return raw
  row = int(np.argmax(outside))
  (line,) = raw.where([int(raw.record[row])])
  what = f"{engagement} {values[row]:g} outside LogChecks.rating_range = ({low:g}, {high:g})"
  if policy == "error":
    raise LogCheckError(
        f"{raw.path}, {line}: {what}; {count} row(s) out of range in the file. Fix the range, or "
        "set LogChecks.on_out_of_range = 'clip' or 'skip'")
  logging.warning("%s: %d row(s) with %s outside [%g, %g], first at %s (%g); "
                  "LogChecks.on_out_of_range = %r", raw.path, count, engagement, low, high, line,
                  values[row], policy)
  if policy == "skip":
    return _drop(raw, outside, f"{engagement} outside [{low:g}, {high:g}]", report)
  raw.columns[engagement] = pa.array(np.clip(values, low, high))
  return raw


def _baskets(raw: RawTable, user: str, item: str, timestamp: str, policy: str,
             report) -> RawTable:
  first = first_of_group(_key_column(raw.columns[user]),
                         raw.columns[timestamp].to_numpy(zero_copy_only=False))  # [rows]
  sizes = np.bincount(first, minlength=len(raw))  # [rows] rows per group, at its first row
  baskets = sizes >= 2
  count, rows = int(baskets.sum()), int(sizes[baskets].sum())
  report.checks.update(baskets=count, basket_rows=rows, largest_basket=int(sizes.max(initial=0)),
                       same_timestamp=policy)
  if not count:
    return raw
  logging.warning("%s: %d basket(s) of rows of one user with one timestamp (%d rows, the largest "
                  "%d); ordered by LogChecks.same_timestamp = %r", raw.path, count, rows,
                  report.checks["largest_basket"], policy)
  if policy == "collapse":
    return _drop(raw, first != np.arange(len(raw)), "same-timestamp basket collapsed", report)
  if policy == "item":  # a stable sort by (user, time) later leaves ties in item order
    return raw.take(pc.sort_indices(raw.columns[item]).to_numpy())
  return raw


def apply_log_checks(raw: RawTable, checks: LogChecks, *, user: str, item: str,
                     timestamp: str | None, engagement: str | None, report) -> RawTable:
  """Runs the checks on the rows read (columns named as in `raw`); see the module docstring."""
  if checks.rating_range is not None and not engagement:
    raise LogCheckError("LogChecks.rating_range is set, but the log has no rating column: set "
                        "load_csv_logs.engagement_column, or LogChecks.rating_range = None")
  if timestamp:
    raw = _duplicates(raw, user, item, timestamp, checks.on_duplicates, report)
  if checks.rating_range is not None:
    raw = _out_of_range(raw, engagement, checks.rating_range, checks.on_out_of_range, report)
  if timestamp:
    raw = _baskets(raw, user, item, timestamp, checks.same_timestamp, report)
  return raw
