"""`ServingConfig`: slate sizes and the retrieval engine (gin), importable without JAX."""

from __future__ import annotations

import dataclasses

import gin
import numpy as np

from explore.serving.histories import ServingError

MAX_SLATE = 100  # items per part of a slate (each size compiles once)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ServingConfig:
  """Slate sizes and engine (gin: `ServingConfig.x`).

  n_explore / n_regular: default exploration and regular items of a slate.
  plan_clusters: novel clusters planned per history (each gets its own items).
  implementation: the `RestrictedRetriever` implementation.
  max_batch: rows per jitted call (batches are padded to powers of two up to it).
  regular_cache: regular candidates kept per logged user, computed once at load
    (the top-`regular_cache` by u . v over the catalog, the user's logged items
    excluded: exactly what a request would compute). A logged user's request that
    needs at most that many (n_regular + n_explore) reads them instead of
    scanning the catalog; explicit histories always scan. 0 turns it off (no
    load cost: about one full-slate batch per 1,024 logged users).
  """

  n_explore: int = 3
  n_regular: int = 7
  plan_clusters: int = 3
  implementation: str = "contiguous"
  max_batch: int = 1024
  regular_cache: int = 32

  def __post_init__(self):
    check_sizes(self.n_explore, self.n_regular)
    if (isinstance(self.regular_cache, bool) or not isinstance(self.regular_cache, int)
        or not 0 <= self.regular_cache <= 2 * MAX_SLATE):
      raise ServingError(f"ServingConfig.regular_cache={self.regular_cache!r} must be an "
                         f"integer in [0, {2 * MAX_SLATE}]")
    if not isinstance(self.plan_clusters, int) or not 1 <= self.plan_clusters <= MAX_SLATE:
      raise ServingError(f"ServingConfig.plan_clusters={self.plan_clusters!r} must be in "
                         f"[1, {MAX_SLATE}]")


def check_sizes(n_explore, n_regular) -> None:
  for name, value in (("n_explore", n_explore), ("n_regular", n_regular)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not (
        0 <= value <= MAX_SLATE):
      raise ServingError(f"{name}={value!r} must be an integer in [0, {MAX_SLATE}]")
  if n_explore + n_regular == 0:
    raise ServingError("n_explore + n_regular is 0: the slate would be empty")
