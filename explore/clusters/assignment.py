"""Validation of item -> cluster maps, shared by every consumer of a cluster level."""

from __future__ import annotations

import numpy as np


def check_item_to_cluster(where: str, item_to_cluster: np.ndarray, num_items: int,
                          num_clusters: int, error: type[ValueError] = ValueError,
                          items_source: str = "the catalog") -> None:
  """Raises `error` unless `item_to_cluster` is one integer id in [0, num_clusters) per item.

  Args:
    where: the function name to start messages with (e.g. "describe_clusters").
    item_to_cluster: the map to check.
    num_items: how many items it must cover.
    num_clusters: the number of clusters of the level.
    error: the exception class of the caller's module.
    items_source: what `num_items` comes from, for the message.
  """
  if item_to_cluster.ndim != 1 or len(item_to_cluster) != num_items:
    raise error(f"{where}: item_to_cluster has shape {item_to_cluster.shape}, {items_source} "
                f"has {num_items} items (expected one cluster id per item)")
  if not np.issubdtype(item_to_cluster.dtype, np.integer):
    raise error(f"{where}: item_to_cluster must hold integer cluster ids, "
                f"got {item_to_cluster.dtype}")
  bad = np.flatnonzero((item_to_cluster < 0) | (item_to_cluster >= num_clusters))
  if len(bad):
    raise error(f"{where}: item_to_cluster[{bad[0]}] = {item_to_cluster[bad[0]]} is outside "
                f"[0, {num_clusters}) ({len(bad)} items out of range)")
