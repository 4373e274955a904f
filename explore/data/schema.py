"""Columnar interaction logs and item catalogs, with dense ids and their originals."""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import numpy as np

from explore import artifacts

INTERACTIONS_VERSION = 1
CATALOG_VERSION = 1


class SchemaError(ValueError):
  """Columns that do not fit together (lengths, ids out of range, bad values)."""


def _check_same_length(what: str, columns: Mapping[str, np.ndarray]) -> int:
  lengths = {name: len(col) for name, col in columns.items()}
  if len(set(lengths.values())) > 1:
    raise SchemaError(f"{what}: columns have different lengths {lengths}")
  return next(iter(lengths.values()), 0)


def _user_time_order(user: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
  """Stable order by (user, timestamp); ties keep input order.

  One stable argsort of a combined int64 key is several times faster than
  `np.lexsort` on tens of millions of rows; lexsort is the fallback when the
  key would overflow.
  """
  if len(user) == 0:
    return np.zeros(0, np.int64)
  t0 = int(timestamp.min())
  span = int(timestamp.max()) - t0 + 1
  if (int(user.max()) + 1) * span < 2**62:
    key = user.astype(np.int64) * span + (timestamp - t0)
    return np.argsort(key, kind="stable")
  return np.lexsort((timestamp, user))


@dataclasses.dataclass(frozen=True)
class Interactions:
  """One row per (user, item) event, sorted by user then time (ties keep input order).

  `user` and `item` are dense indices into `user_ids` / `item_ids`, which keep
  the original ids (integers or strings) of the source log.
  """

  user: np.ndarray  # [N] int32, in [0, num_users)
  item: np.ndarray  # [N] int32, in [0, num_items)
  timestamp: np.ndarray  # [N] int64, seconds
  engagement: np.ndarray  # [N] float32, e.g. a rating or a watch fraction
  positive: np.ndarray  # [N] bool, from the positive rule of the loader
  user_ids: np.ndarray  # [num_users] original user ids
  item_ids: np.ndarray  # [num_items] original item ids

  def __post_init__(self):
    n = _check_same_length("Interactions", {
        "user": self.user, "item": self.item, "timestamp": self.timestamp,
        "engagement": self.engagement, "positive": self.positive})
    if n and (self.user.min() < 0 or self.user.max() >= len(self.user_ids)):
      raise SchemaError(f"Interactions: user index out of range [0, {len(self.user_ids)})")
    if n and (self.item.min() < 0 or self.item.max() >= len(self.item_ids)):
      raise SchemaError(f"Interactions: item index out of range [0, {len(self.item_ids)})")

  @property
  def num_users(self) -> int:
    return len(self.user_ids)

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  def __len__(self) -> int:
    return len(self.user)

  @classmethod
  def from_columns(cls, user, item, timestamp, engagement, positive, user_ids, item_ids
                   ) -> "Interactions":
    """Builds sorted `Interactions` from unsorted dense columns (stable sort by user, time)."""
    user = np.asarray(user, np.int32)
    timestamp = np.asarray(timestamp, np.int64)
    order = _user_time_order(user, timestamp)
    return cls(
        user=user[order], item=np.asarray(item, np.int32)[order], timestamp=timestamp[order],
        engagement=np.asarray(engagement, np.float32)[order],
        positive=np.asarray(positive, bool)[order],
        user_ids=np.asarray(user_ids), item_ids=np.asarray(item_ids))

  def user_offsets(self) -> np.ndarray:
    """[num_users + 1] row offsets: user u's rows are offsets[u]:offsets[u+1]."""
    counts = np.bincount(self.user, minlength=self.num_users)
    return np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

  def save(self, directory: str | os.PathLike) -> None:
    artifacts.save_artifact(directory, "interactions", INTERACTIONS_VERSION,
                            dataclasses.asdict(self))

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "Interactions":
    arrays, _, _ = artifacts.load_artifact(directory, "interactions", INTERACTIONS_VERSION)
    return cls(**arrays)


@dataclasses.dataclass(frozen=True)
class ItemCatalog:
  """Item text, indexed by the same dense item index as `Interactions.item`."""

  item_ids: np.ndarray  # [num_items] original item ids
  title: np.ndarray  # [num_items] str
  text: Mapping[str, np.ndarray]  # field name (e.g. "genres", "tags") -> [num_items] str

  def __post_init__(self):
    _check_same_length("ItemCatalog", {"item_ids": self.item_ids, "title": self.title,
                                       **{f"text.{k}": v for k, v in self.text.items()}})

  @property
  def num_items(self) -> int:
    return len(self.item_ids)

  def item_text(self, index: int) -> str:
    """Title and every text field of one item, as one string."""
    parts = [str(self.title[index])] + [str(v[index]) for v in self.text.values()]
    return " ".join(p for p in parts if p)

  def save(self, directory: str | os.PathLike) -> None:
    arrays = {"item_ids": self.item_ids, "title": self.title}
    arrays.update({f"text.{k}": v for k, v in self.text.items()})
    artifacts.save_artifact(directory, "item_catalog", CATALOG_VERSION, arrays,
                            {"text_fields": list(self.text)})

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ItemCatalog":
    arrays, meta, _ = artifacts.load_artifact(directory, "item_catalog", CATALOG_VERSION)
    text = {k: arrays[f"text.{k}"] for k in meta["text_fields"]}
    return cls(item_ids=arrays["item_ids"], title=arrays["title"], text=text)
