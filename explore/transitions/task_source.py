"""The LLM fine-tuning data as tab-separated text files that seqio (and plain Python) can read.

`export_task_source(directory, ...)` writes `train.tsv` and `test.tsv`, one row
per (history tuple, next cluster) pair after a header line, with the columns

  history_ids  the K cluster ids, oldest first, separated by spaces ("12 7")
  next_id      the next novel cluster's id
  count        examples of the pair
  weight       its curated training weight
  inputs       the prompt: the K descriptions in `format_history_prompt`
  targets      the next cluster's description

and `task_source.json` (columns, K, row counts, header lines to skip). A seqio
Task reads a file with `seqio.TextLineDataSource({...}, skip_header_lines=1)`
and splits each line on tabs; `read_task_source` reads it without TensorFlow.
No field may hold a tab or a line break: writing one raises an error.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import gin
import numpy as np

from explore import artifacts
from explore.transitions.counts import TupleCounts

COLUMNS = ("history_ids", "next_id", "count", "weight", "inputs", "targets")
SOURCE_FILE = "task_source.json"
SPLIT_FILES = {"train": "train.tsv", "test": "test.tsv"}


class TaskSourceError(ValueError):
  """A field that cannot be written to, or a file that cannot be read as, a task source."""


@gin.configurable
def format_history_prompt(history_texts: Sequence[str], template: str = "history: {history}",
                          separator: str = " | ") -> str:
  """The LLM input for a history tuple: its descriptions, oldest first, in `template`."""
  return template.format(history=separator.join(history_texts))


def _field(value: str, column: str, where: str) -> str:
  if any(ch in value for ch in "\t\n\r"):
    raise TaskSourceError(
        f"task source {where}: column {column!r} value {value!r} contains a tab or line break")
  return value


def _rows(counts: TupleCounts, texts: Sequence[str], split: str) -> list[str]:
  lines = ["\t".join(COLUMNS)]
  for history, next_id, count, weight in zip(counts.history.tolist(), counts.next_cluster.tolist(),
                                             counts.count.tolist(), counts.weight.tolist()):
    for c in history + [next_id]:
      if not 0 <= c < len(texts):
        raise TaskSourceError(
            f"task source {split}: cluster id {c} has no description ({len(texts)} clusters)")
    where = f"{split} pair {history} -> {next_id}"
    fields = (" ".join(map(str, history)), str(next_id), str(count), f"{weight:.6g}",
              format_history_prompt([texts[c] for c in history]), texts[next_id])
    lines.append("\t".join(_field(v, col, where) for col, v in zip(COLUMNS, fields)))
  return lines


def export_task_source(directory: str | os.PathLike, train: TupleCounts, test: TupleCounts,
                       descriptions: Any) -> dict[str, Path]:
  """Writes train.tsv, test.tsv and task_source.json into `directory`; returns the TSV paths.

  Args:
    directory: output folder (created if needed).
    train: the curated training pairs.
    test: the held-out pairs (usually uncurated counts).
    descriptions: a `ClusterDescriptions` or a sequence of description texts,
      indexed by cluster id.
  """
  texts = [str(t) for t in getattr(descriptions, "texts", descriptions)]
  directory = Path(directory)
  paths = {}
  num_rows = {}
  for split, counts in (("train", train), ("test", test)):
    lines = _rows(counts, texts, split)
    paths[split] = directory / SPLIT_FILES[split]
    artifacts.atomic_write_text(paths[split], "\n".join(lines) + "\n")
    num_rows[split] = len(lines) - 1
  artifacts.atomic_write_json(directory / SOURCE_FILE, {
      "columns": list(COLUMNS), "k": int(train.k), "num_rows": num_rows,
      "skip_header_lines": 1, "files": SPLIT_FILES})
  return paths


def read_task_source(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads one TSV file back into columns (history_ids [n, K] int32, next_id, ..., targets)."""
  path = Path(path)
  try:
    lines = path.read_text().split("\n")
  except FileNotFoundError:
    raise TaskSourceError(f"{path}: task source file not found") from None
  if lines and lines[-1] == "":
    lines.pop()
  if not lines or tuple(lines[0].split("\t")) != COLUMNS:
    raise TaskSourceError(f"{path}: header must be {chr(9).join(COLUMNS)!r}")
  rows = []
  for number, line in enumerate(lines[1:], start=2):
    fields = line.split("\t")
    if len(fields) != len(COLUMNS):
      raise TaskSourceError(
          f"{path}:{number}: expected {len(COLUMNS)} tab-separated fields, found {len(fields)}")
    rows.append(fields)
  try:
    history = [[int(c) for c in r[0].split()] for r in rows]
    k = len(history[0]) if history else 0
    if any(len(h) != k for h in history):
      raise ValueError("rows have different history lengths")
    return {
        "history_ids": np.asarray(history, np.int32).reshape(len(rows), k),
        "next_id": np.asarray([int(r[1]) for r in rows], np.int32),
        "count": np.asarray([int(r[2]) for r in rows], np.int64),
        "weight": np.asarray([float(r[3]) for r in rows], np.float64),
        "inputs": np.asarray([r[4] for r in rows], dtype=str),
        "targets": np.asarray([r[5] for r in rows], dtype=str),
    }
  except ValueError as e:
    raise TaskSourceError(f"{path}: malformed numeric column ({e})") from None
