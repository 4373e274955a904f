"""Shards of the precompute: which tuples each process plans, and the record of finished ones.

The distinct K-tuples (in table row order, `table.distinct_tuples`) are cut
into shards of `tuples_per_shard` consecutive tuples. Process p of P owns the
shards s with s % P == p (`ShardPlan.owned`), so hosts share the work evenly
and each writes only its own shard files. A finished shard is one file,
`shards/shard_<s>.npz` (its tuples, top-n clusters and scores), written
atomically: present means complete, so a restart after a kill plans only the
shards without a file and nothing is done twice. Assembling the table reads
every shard and checks that together they hold each tuple exactly once.
"""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path
import re

import numpy as np

from explore import artifacts

SHARDS_DIR = "shards"
_SHARD_FILE = re.compile(r"^shard_(\d+)\.npz$")


class ShardError(ValueError):
  """A shard plan with bad sizes, or shard files that do not make up the planned tuples."""


@dataclasses.dataclass(frozen=True)
class Shard:
  """Shard `index`: the distinct tuples [start, stop) in table row order."""

  index: int
  start: int
  stop: int

  @property
  def size(self) -> int:
    return self.stop - self.start


@dataclasses.dataclass(frozen=True)
class ShardPlan:
  """`num_tuples` tuples in shards of `tuples_per_shard`, dealt round-robin to processes."""

  num_tuples: int
  tuples_per_shard: int
  num_processes: int = 1

  def __post_init__(self):
    if self.num_tuples < 1 or self.tuples_per_shard < 1 or self.num_processes < 1:
      raise ShardError(f"a shard plan needs num_tuples, tuples_per_shard and num_processes >= 1,"
                       f" got {self.num_tuples}, {self.tuples_per_shard}, {self.num_processes}")

  @property
  def num_shards(self) -> int:
    return -(-self.num_tuples // self.tuples_per_shard)

  def shard(self, index: int) -> Shard:
    start = index * self.tuples_per_shard
    return Shard(index, start, min(start + self.tuples_per_shard, self.num_tuples))

  def shards(self) -> list[Shard]:
    return [self.shard(i) for i in range(self.num_shards)]

  def owned(self, process_index: int) -> list[Shard]:
    """The shards process `process_index` plans and writes."""
    if not 0 <= process_index < self.num_processes:
      raise ShardError(f"process_index {process_index} is outside [0, {self.num_processes})")
    return [self.shard(i) for i in range(process_index, self.num_shards, self.num_processes)]


def shard_path(folder: Path, index: int) -> Path:
  return Path(folder) / SHARDS_DIR / f"shard_{index:06d}.npz"


def finished_shards(folder: Path) -> set[int]:
  """Indices of the shard files present under `folder/shards/`."""
  directory = Path(folder) / SHARDS_DIR
  if not directory.is_dir():
    return set()
  return {int(m.group(1)) for p in directory.iterdir() if (m := _SHARD_FILE.match(p.name))}


def pending(plan: ShardPlan, process_index: int, folder: Path) -> list[Shard]:
  """The shards this process owns that have no file yet (all of them on a fresh start)."""
  done = finished_shards(folder)
  return [s for s in plan.owned(process_index) if s.index not in done]


def save_shard(folder: Path, shard: Shard, history: np.ndarray, clusters: np.ndarray,
               scores: np.ndarray) -> Path:
  """Writes one finished shard atomically ([s, K] tuples, [s, n] clusters and scores)."""
  if not len(history) == len(clusters) == len(scores) == shard.size:
    raise ShardError(f"shard {shard.index}: {len(history)} tuples, {len(clusters)} cluster rows "
                     f"and {len(scores)} score rows, expected {shard.size} of each")
  buffer = io.BytesIO()
  np.savez(buffer, history=np.asarray(history, np.int32), clusters=np.asarray(clusters, np.int32),
           scores=np.asarray(scores, np.float32))
  path = shard_path(folder, shard.index)
  artifacts.atomic_write_bytes(path, buffer.getvalue())
  return path


def load_shards(folder: Path, plan: ShardPlan, tuples: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """([T, K] tuples, [T, n] clusters, [T, n] scores) of every shard, checked against `tuples`.

  Raises ShardError naming the first shard that is missing, unreadable or
  holds other tuples than planned (so no tuple is missing or duplicated).
  """
  parts = []
  for shard in plan.shards():
    path = shard_path(folder, shard.index)
    try:
      with np.load(path, allow_pickle=False) as npz:
        part = (npz["history"], npz["clusters"], npz["scores"])
    except FileNotFoundError:
      raise ShardError(f"{path}: shard {shard.index} of {plan.num_shards} is missing; rerun "
                       "the precompute stage to finish it") from None
    except (ValueError, OSError, KeyError, EOFError) as e:
      raise ShardError(f"{path}: unreadable shard ({e}); delete it and rerun the stage") from None
    if not np.array_equal(part[0], tuples[shard.start:shard.stop]):
      raise ShardError(f"{path}: holds other tuples than shard {shard.index} of the plan; delete "
                       "the stage folder's shards/ and rerun")
    parts.append(part)
  return tuple(np.concatenate(p) for p in zip(*parts))
