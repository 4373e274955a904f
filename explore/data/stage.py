"""The `data` stage: raw logs (or the synthetic platform) -> interactions and catalog.

Writes into the stage folder:
  interactions/   `Interactions`
  catalog/        `ItemCatalog`
  world/          the synthetic platform's ground truth (synthetic source only)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from absl import logging
import gin
import numpy as np

from explore import stages
from explore.data import csv_logs
from explore.data import movielens
from explore.data import positive  # noqa: F401  (registers positive_rule for gin)
from explore.data import synthetic
from explore.data.schema import Interactions, ItemCatalog

SOURCES = ("synthetic", "movielens", "csv")
INTERACTIONS = "interactions"
CATALOG = "catalog"
WORLD = "world"


class DataSourceError(ValueError):
  """An unknown data source."""


@gin.configurable
def data_source(kind: str = "synthetic") -> str:
  """Which logs the run uses: the synthetic platform, MovieLens, or generic CSV/Parquet.

  The loaders take their own settings from gin: `SyntheticConfig.*`,
  `load_movielens.path`, `load_csv_logs.interactions_path`, `LogChecks.*` and so on
  (configs/csv.gin maps a generic CSV's columns).
  """
  if kind not in SOURCES:
    raise DataSourceError(f"data_source.kind must be one of {SOURCES}, got {kind!r}")
  return kind


def load_interactions(stage_path: Path) -> Interactions:
  return Interactions.load(stage_path / INTERACTIONS)


def load_catalog(stage_path: Path) -> ItemCatalog:
  return ItemCatalog.load(stage_path / CATALOG)


def load_world(stage_path: Path):
  """The synthetic world written by the data stage, or None for real logs."""
  return synthetic.SyntheticWorld.load(stage_path / WORLD) if (stage_path / WORLD).exists() else None


def summarize(interactions: Interactions, catalog: ItemCatalog) -> dict[str, Any]:
  per_user = np.diff(interactions.user_offsets())
  return {
      "users": interactions.num_users,
      "items": interactions.num_items,
      "interactions": len(interactions),
      "positive_fraction": round(float(interactions.positive.mean()), 4) if len(interactions) else 0,
      "events_per_user_median": float(np.median(per_user)) if len(per_user) else 0,
      "first_timestamp": int(interactions.timestamp.min()) if len(interactions) else None,
      "last_timestamp": int(interactions.timestamp.max()) if len(interactions) else None,
      "sample_items": [catalog.item_text(i) for i in range(min(3, catalog.num_items))],
  }


@stages.register_stage(
    "data",
    configurables=("data_source", "SyntheticConfig", "load_movielens", "load_csv_logs",
                   "LogChecks", "positive_rule"))
def data_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Loads or generates the interaction logs and the item catalog."""
  kind = data_source()
  summary: dict[str, Any] = {"source": kind}
  if kind == "synthetic":
    world, interactions, catalog = synthetic.generate()
    world.save(ctx.path / WORLD)
  else:
    loader = movielens.load_movielens if kind == "movielens" else csv_logs.load_csv_logs
    result = loader()
    interactions, catalog = result.interactions, result.catalog
    summary["load_report"] = result.report.to_dict()
  interactions.save(ctx.path / INTERACTIONS)
  catalog.save(ctx.path / CATALOG)
  summary.update(summarize(interactions, catalog))
  logging.info("data: %d users, %d items, %d interactions (%.1f%% positive)", summary["users"],
               summary["items"], summary["interactions"], 100 * summary["positive_fraction"])
  return summary
