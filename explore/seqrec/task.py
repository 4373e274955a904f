"""`SeqRecTask`: the sequence recommender's loss for the shared trainer.

SASRec training: every scored position of a row (its last S = targets.shape[1]
positions, `data.training_windows`) predicts the next item, padding masked;
only those positions reach the output layer. Two losses, selected by `SoftmaxConfig.kind`:

* "full": softmax over the whole catalog (exact; the default for small
  catalogs such as MovieLens).
* "sampled": softmax over the positive and a pool of negatives: the batch's
  other targets (in-batch) and items drawn from a proposal (the batch's
  "negatives" feature, see `sampling.SequenceBatches`). The partition function
  is estimated by importance sampling: each negative occurrence is weighted by
  1 / (its expected number of occurrences in the pool), i.e. its logit gets
  `- log Q(c)` with Q(c) = n_targets * p_target(c) + n_sampled * q(c) (log-Q
  correction, Yi et al. 2019; mixed negatives, Yang et al. 2020). The
  positive's logit is not corrected and copies of the positive in the pool are
  dropped, so E[Z_hat] = Z and the loss tends to the full softmax loss as the
  pool grows.
"""

from __future__ import annotations

import dataclasses

import gin
import jax
import jax.numpy as jnp
import numpy as np

from explore.seqrec import sampling
from explore.seqrec.model import PAD, SeqRecConfig, SeqRecModel, forward_flops_per_example

SOFTMAX_KINDS = ("full", "sampled")
_MASKED = -1e9


class SoftmaxConfigError(ValueError):
  """A `SoftmaxConfig` the task cannot train with."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SoftmaxConfig:
  """Which training loss: the full softmax, or a sampled one for large catalogs."""

  kind: str = "full"  # "full" | "sampled"
  in_batch_negatives: bool = True  # sampled: the batch's other targets are negatives
  negatives_per_example: int = 16  # sampled: proposal draws per window, pooled over the batch
  sampler: str = "uniform"  # sampled: "uniform" | "popularity"
  popularity_power: float = 0.75  # sampled + popularity: q(i) ~ (count_i + 1) ** power

  def __post_init__(self):
    if self.kind not in SOFTMAX_KINDS:
      raise SoftmaxConfigError(f"SoftmaxConfig.kind={self.kind!r} is not one of {SOFTMAX_KINDS}")
    if self.sampler not in sampling.SAMPLERS:
      raise SoftmaxConfigError(f"SoftmaxConfig.sampler={self.sampler!r} is not one of "
                               f"{sampling.SAMPLERS}")
    if not isinstance(self.negatives_per_example, int) or self.negatives_per_example < 0:
      raise SoftmaxConfigError(f"SoftmaxConfig.negatives_per_example="
                               f"{self.negatives_per_example!r} must be an integer >= 0")
    if self.kind == "sampled" and not (self.in_batch_negatives or self.negatives_per_example):
      raise SoftmaxConfigError("SoftmaxConfig: kind='sampled' needs in_batch_negatives=True or "
                               "negatives_per_example > 0 (there would be no negatives)")

  @property
  def sampled_negatives(self) -> int:
    """Proposal draws per example that the batches must carry (0 for the full softmax)."""
    return self.negatives_per_example if self.kind == "sampled" else 0


class SeqRecTask:
  """Next-item prediction at every position, for `explore.train.Trainer`."""

  def __init__(self, config: SeqRecConfig, softmax: SoftmaxConfig | None = None,
               target_counts: np.ndarray | None = None, batch_size: int | None = None,
               scored_positions: int | None = None):
    """`target_counts`: [num_items + 1] training counts per token (sampled softmax only).

    `batch_size` (global) sizes the sampled softmax's candidate pool for the
    FLOPs count; without it a sampled task reports no FLOPs. `scored_positions`:
    the targets per row (the windows' stride; default max_len), for the count.
    """
    self.config = config
    self.batch_size = batch_size
    self.scored_positions = scored_positions or config.max_len
    self.softmax = softmax or SoftmaxConfig()
    self.sampler = None
    if self.softmax.kind == "sampled":
      if target_counts is None or len(target_counts) != config.num_items + 1:
        raise SoftmaxConfigError(
            f"SeqRecTask: the sampled softmax needs target_counts of length num_items + 1 = "
            f"{config.num_items + 1}, got "
            f"{None if target_counts is None else len(target_counts)}")
      counts = np.asarray(target_counts, np.float64)
      self.sampler = sampling.ProposalSampler.create(self.softmax.sampler, counts,
                                                     self.softmax.popularity_power)
      target = counts.copy()
      target[PAD] = 0.0
      self._target_probability = np.float32(target / max(target.sum(), 1.0))  # [V_items]
      self._proposal_probability = np.float32(self.sampler.probabilities)  # [V_items]

  def batch_logical_axes(self) -> dict[str, tuple[str | None, ...]]:
    axes = {"inputs": ("batch", "length"), "targets": ("batch", "length")}
    if self.config.num_clusters:
      axes["input_clusters"] = ("batch", "length")
    if self.softmax.sampled_negatives:
      axes["negatives"] = ("batch", None)
    return axes

  def flops_per_example(self) -> float | None:
    """3 x forward FLOPs of a window; the output layer scores every candidate per position.

    Full softmax: every table row. Sampled: the pool shared by the batch,
    batch_size x (negatives_per_example + scored_positions in-batch targets).
    """
    if self.softmax.kind == "full":
      scored = self.config.vocab_size
    elif self.batch_size is None:
      return None
    else:
      per_example = self.softmax.negatives_per_example + (
          self.scored_positions if self.softmax.in_batch_negatives else 0)
      scored = self.batch_size * per_example
    return 3.0 * forward_flops_per_example(self.config, scored, self.scored_positions)

  def loss(self, model: SeqRecModel, batch: dict[str, jax.Array], train: bool
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    targets = batch["targets"]  # [B, S]: the next items of the last S positions (S <= L)
    hidden = model(batch["inputs"], batch.get("input_clusters"), train=train,
                   outputs=targets.shape[1])  # [B, S, D]
    hidden = hidden.reshape(-1, hidden.shape[-1])  # [N, D]
    targets = targets.reshape(-1)  # [N]
    weight = (targets != PAD).astype(jnp.float32)  # [N]
    if self.softmax.kind == "full":
      losses, correct = self._full_softmax(model, hidden, targets)
    else:
      losses, correct = self._sampled_softmax(model, hidden, targets, weight,
                                              batch.get("negatives"))
    total = jnp.sum(weight)
    loss_sum = jnp.sum(losses * weight)
    metrics = {"loss_sum": loss_sum, "weight": total,
               "correct": jnp.sum(correct.astype(jnp.float32) * weight)}
    return loss_sum / jnp.maximum(total, 1.0), metrics

  def _full_softmax(self, model: SeqRecModel, hidden: jax.Array, targets: jax.Array):
    mask = jnp.where(model.items.valid_rows(), 0.0, _MASKED)  # [V]
    logits = model.items.decode(hidden) + mask  # [N, V]
    best = jax.lax.stop_gradient(jnp.max(logits, axis=-1))  # [N]
    log_z = best + jnp.log(jnp.sum(jnp.exp(logits - best[:, None]), axis=-1))  # [N]
    # The positive's logit from its own row: its gradient is a [N, D] gather, not [N, V].
    positive = jnp.einsum("ND,ND->N", hidden, jnp.take(model.items.table[...], targets, axis=0))
    # Top-1 from the same logits as the max (the einsum may round differently).
    target_logit = jnp.take_along_axis(jax.lax.stop_gradient(logits), targets[:, None], axis=-1)
    return log_z - positive, target_logit[:, 0] >= best

  def _sampled_softmax(self, model: SeqRecModel, hidden: jax.Array, targets: jax.Array,
                       weight: jax.Array, negatives: jax.Array | None):
    pools = []
    n_targets = jnp.sum(weight)
    n_sampled = 0
    if self.softmax.negatives_per_example:
      if negatives is None:
        raise SoftmaxConfigError("SeqRecTask: the sampled softmax needs a 'negatives' batch "
                                 "feature (use sampling.SequenceBatches with the task's sampler)")
      negatives = negatives.reshape(-1)  # [S]
      n_sampled = negatives.shape[0]
      pools.append(negatives)
    if self.softmax.in_batch_negatives:
      pools.append(targets)
    pool = jnp.concatenate(pools)  # [C]
    expected = n_sampled * jnp.asarray(self._proposal_probability)[pool]  # [C]
    if self.softmax.in_batch_negatives:
      expected = expected + n_targets * jnp.asarray(self._target_probability)[pool]
    scores = model.items.score(hidden, pool)  # [N, C]
    corrected = scores - jnp.log(jnp.maximum(expected, 1e-30))[None, :]  # [N, C]
    # Padding entries and copies of the row's own positive are not negatives.
    is_negative = (pool[None, :] != PAD) & (pool[None, :] != targets[:, None])  # [N, C]
    corrected = jnp.where(is_negative, corrected, _MASKED)
    positive = jnp.einsum("ND,ND->N", hidden, jnp.take(model.items.table[...], targets, axis=0))
    log_z = jnp.logaddexp(positive, jax.nn.logsumexp(corrected, axis=-1))  # [N]
    best_negative = jnp.max(jnp.where(is_negative, scores, -jnp.inf), axis=-1)  # [N]
    return log_z - positive, positive > best_negative
