"""One slate as a JSON-ready dict (what `explore recommend --json` and the HTTP API return).

  {"user": 3 | null, "history": {"items": 41, "recent_clusters": [...]},
   "plan_source": "table" | "table_suffix" | "popular" | "table+popular" ...,
   "clusters": [{"cluster", "description", "score", "source", "items": [...]}],
   "exploration": [item], "regular": [item], "slate": [item + "kind"]}
  item = {"item": original id, "title", "cluster", "description", "score"}

Scores are floats rounded to 4 decimals; padding (-1 ids) is left out.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from explore.serving import plan as plan_lib
from explore.serving import slate as slate_lib


def _score(value) -> float | None:
  value = float(value)
  return round(value, 4) if np.isfinite(value) else None


def _cluster(explorer, cluster: int) -> dict[str, Any]:
  return {"cluster": int(cluster), "description": explorer.descriptions[int(cluster)]}


def _item(explorer, item: int, score) -> dict[str, Any]:
  cluster = int(explorer.item_to_cluster[item])
  return {"item": explorer.items.original([item])[0], "title": str(explorer.titles[item]),
          **_cluster(explorer, cluster), "score": _score(score)}


def _items(explorer, ids: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
  return [_item(explorer, int(i), s) for i, s in zip(ids, scores) if i >= 0]


def plan_source(sources: np.ndarray) -> str:
  """The fallbacks a row's plan used, in plan order, joined by '+' (e.g. "table+popular")."""
  names = []
  for code in sources:
    if code >= 0 and plan_lib.SOURCES[code] not in names:
      names.append(plan_lib.SOURCES[code])
  return "+".join(names) or "none"


def describe_row(explorer, batch, row: int) -> dict[str, Any]:
  """Row `row` of a `SlateBatch` as a dict (see the module docstring)."""
  plan = batch.plan
  clusters = []
  for slot, cluster in enumerate(plan.clusters[row]):
    if cluster < 0:
      continue
    clusters.append({**_cluster(explorer, cluster), "score": _score(plan.scores[row, slot]),
                     "source": plan_lib.SOURCES[plan.source[row, slot]],
                     "items": _items(explorer, batch.cluster_items[row, slot],
                                     batch.cluster_scores[row, slot])})
  explore_scores = dict(zip(batch.explore_items[row].tolist(), batch.explore_scores[row]))
  regular_scores = dict(zip(batch.mixed.regular[row].tolist(), batch.mixed.regular_scores[row]))
  slate = []
  for item, kind in zip(batch.mixed.items[row], batch.mixed.kind[row]):
    if item >= 0:
      scores = explore_scores if kind == slate_lib.EXPLORE else regular_scores
      slate.append({**_item(explorer, int(item), scores[int(item)]),
                    "kind": slate_lib.KINDS[kind]})
  user = int(batch.users[row])
  return {
      "user": explorer.users.original([user])[0] if user >= 0 else None,
      "history": {"items": int(batch.history_lengths[row]),
                  "recent_clusters": [_cluster(explorer, c) for c in batch.recent[row] if c >= 0]},
      "plan_source": plan_source(plan.source[row]),
      "clusters": clusters,
      "exploration": _items(explorer, batch.explore_items[row], batch.explore_scores[row]),
      "regular": _items(explorer, batch.mixed.regular[row], batch.mixed.regular_scores[row]),
      "slate": slate,
  }
