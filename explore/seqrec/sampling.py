"""Negative candidates for sampled softmax, and the resumable training batches.

For large catalogs the full softmax over every item is too costly; the loss
then scores the positive against a pool of negatives: the other targets of the
batch (in-batch negatives, distributed like the training targets) and items
drawn from a proposal (uniform or popularity). `ProposalSampler` draws those
items on the host, so batches stay a pure function of the iterator position
(a restart resumes with the same negatives), and it gives the task the
probabilities it needs for the log-Q correction.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from explore.seqrec.model import PAD
from explore.train.data import ArrayBatches

SAMPLERS = ("uniform", "popularity")


class SamplerError(ValueError):
  """A proposal or batch setting that cannot be used."""


class ProposalSampler:
  """Draws item tokens from a fixed distribution over [1, num_items] (never padding)."""

  def __init__(self, probabilities: np.ndarray):
    probabilities = np.asarray(probabilities, np.float64)  # [num_items + 1]
    if probabilities.ndim != 1 or len(probabilities) < 2:
      raise SamplerError(f"ProposalSampler: probabilities must be a 1-D array over padding + "
                         f"items, got shape {probabilities.shape}")
    if probabilities[PAD] != 0 or (probabilities < 0).any() or probabilities.sum() <= 0:
      raise SamplerError("ProposalSampler: probabilities must be >= 0, 0 for padding (token 0), "
                         "and not all 0")
    self.probabilities = probabilities / probabilities.sum()
    self._cdf = np.cumsum(self.probabilities)  # [num_items + 1]

  @classmethod
  def create(cls, kind: str, target_counts: np.ndarray, power: float = 1.0
             ) -> "ProposalSampler":
    """'uniform' over items, or 'popularity': training counts ** power (+1 smoothing)."""
    counts = np.asarray(target_counts, np.float64)  # [num_items + 1]
    if kind == "uniform":
      probabilities = np.ones_like(counts)
    elif kind == "popularity":
      probabilities = (counts + 1.0) ** power
    else:
      raise SamplerError(f"negative sampler {kind!r} is not one of {SAMPLERS}")
    probabilities[PAD] = 0.0
    return cls(probabilities)

  def sample(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Tokens of `shape`, i.i.d. from the proposal (inverse CDF)."""
    u = rng.random(shape) * self._cdf[-1]
    tokens = np.searchsorted(self._cdf, u, side="right")
    return np.clip(tokens, 1, len(self._cdf) - 1).astype(np.int32)


class SequenceBatches:
  """Epochs of training windows (`ArrayBatches`), plus sampled negatives per example.

  With `negatives_per_example` > 0 every batch gets a "negatives" feature of
  shape [batch, negatives_per_example] drawn from `sampler` with a generator
  seeded by (seed, epoch, position), so the negatives of a batch depend only on
  where the iterator is: resuming from a saved state gives the same batches.
  With `token_clusters` ([num_items + 1] cluster id per token, 0 for padding)
  every batch also gets "input_clusters", the cluster of each input item.
  """

  def __init__(self, windows: Mapping[str, np.ndarray], batch_size: int, seed: int,
               negatives_per_example: int = 0, sampler: ProposalSampler | None = None,
               token_clusters: np.ndarray | None = None):
    if negatives_per_example < 0:
      raise SamplerError(f"negatives_per_example={negatives_per_example} must be >= 0")
    if negatives_per_example and sampler is None:
      raise SamplerError("negatives_per_example > 0 needs a ProposalSampler")
    self.batches = ArrayBatches(windows, batch_size=batch_size, seed=seed, shuffle=True,
                                drop_remainder=True)
    self.seed = seed
    self.negatives_per_example = negatives_per_example
    self.sampler = sampler
    self.token_clusters = None if token_clusters is None else np.asarray(token_clusters, np.int32)

  @property
  def batches_per_epoch(self) -> int:
    return self.batches.batches_per_epoch

  def __iter__(self) -> "SequenceBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    position = self.batches.get_state()
    batch = self.batches.__next__()
    if self.negatives_per_example:
      rng = np.random.default_rng([self.seed, position["epoch"], position["index"], 7])
      size = len(next(iter(batch.values())))
      batch["negatives"] = self.sampler.sample(rng, (size, self.negatives_per_example))
    if self.token_clusters is not None:
      batch["input_clusters"] = self.token_clusters[batch["inputs"]]  # [B, L]
    return batch

  def get_state(self) -> dict[str, Any]:
    return self.batches.get_state()

  def set_state(self, state: Mapping[str, Any]) -> None:
    self.batches.set_state(state)
