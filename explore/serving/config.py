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
  """

  n_explore: int = 3
  n_regular: int = 7
  plan_clusters: int = 3
  implementation: str = "contiguous"
  max_batch: int = 1024

  def __post_init__(self):
    check_sizes(self.n_explore, self.n_regular)
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
