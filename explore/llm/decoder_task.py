"""`DecoderTask`: the decoder's loss, batch layout and FLOPs for the shared trainer.

Batches follow seqio's decoder-only feature convention (see
`explore.llm.features`): `decoder_input_tokens`, `decoder_target_tokens`,
`decoder_loss_weights` (non-zero on target tokens only) and, for packed rows,
`decoder_segment_ids` and `decoder_positions`. The loss is the weighted
token cross entropy, plus an optional z-loss (z_loss * logsumexp^2, as in
T5X/PaLM) that keeps the softmax normaliser near 1.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from flax import nnx
import gin
import jax
import jax.numpy as jnp

from explore.llm.decoder import Decoder
from explore.llm.decoder_config import DecoderConfig

INPUTS = "decoder_input_tokens"
TARGETS = "decoder_target_tokens"
WEIGHTS = "decoder_loss_weights"
SEGMENT_IDS = "decoder_segment_ids"
POSITIONS = "decoder_positions"


class DecoderTaskError(ValueError):
  """A DecoderTask setting or batch that the task cannot use."""


def token_cross_entropy(logits: jax.Array, targets: jax.Array, weights: jax.Array,
                        z_loss: float = 0.0) -> dict[str, jax.Array]:
  """Summed weighted cross entropy, z-loss and accuracy of [B, T, V] float32 logits.

  Returns {"loss_sum", "correct", "weight"} (+ "z_loss_sum" when z_loss > 0);
  loss_sum includes the z-loss term, so loss_sum / weight is the loss trained on.
  """
  weights = weights.astype(jnp.float32)  # [B, T]
  log_normalizer = jax.nn.logsumexp(logits, axis=-1)  # [B, T]
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]  # [B, T]
  token_loss = log_normalizer - target_logits  # [B, T]
  sums = {"weight": jnp.sum(weights)}
  if z_loss:
    z_term = z_loss * jnp.square(log_normalizer)  # [B, T]
    sums["z_loss_sum"] = jnp.sum(weights * z_term)
    token_loss = token_loss + z_term
  sums["loss_sum"] = jnp.sum(weights * token_loss)
  predicted = jnp.argmax(logits, axis=-1)  # [B, T]
  sums["correct"] = jnp.sum(weights * (predicted == targets))
  return sums


@gin.configurable
@dataclasses.dataclass
class DecoderTask:
  """Next-token training of a `Decoder` on seqio decoder-only features.

  Attributes:
    config: the model's shape (gin: bind DecoderConfig in configs/models/*.gin).
    sequence_length: length of the feature rows, for FLOPs/MFU (None: no MFU).
    packed: batches carry `decoder_segment_ids` and `decoder_positions`.
    z_loss: weight of the log-normaliser penalty (0 disables; T5X uses 1e-4).
  """

  config: DecoderConfig = dataclasses.field(default_factory=DecoderConfig)
  sequence_length: int | None = None
  packed: bool = True
  z_loss: float = 0.0

  def __post_init__(self):
    if self.sequence_length is not None and self.sequence_length < 1:
      raise DecoderTaskError(
          f"DecoderTask.sequence_length={self.sequence_length} must be >= 1 or None")
    if self.z_loss < 0:
      raise DecoderTaskError(f"DecoderTask.z_loss={self.z_loss} must be >= 0")

  def model_fn(self, seed: int = 0) -> Callable[[], Decoder]:
    """The `model_fn` for `Trainer`: builds a fresh decoder from `seed`."""
    config = self.config
    return lambda: Decoder(config, rngs=nnx.Rngs(params=seed))

  def batch_logical_axes(self) -> dict[str, tuple[str | None, ...]]:
    axes = {name: ("batch", "length") for name in (INPUTS, TARGETS, WEIGHTS)}
    if self.packed:
      axes.update({SEGMENT_IDS: ("batch", "length"), POSITIONS: ("batch", "length")})
    return axes

  def loss(self, model: Decoder, batch: dict[str, jax.Array], train: bool
           ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Mean weighted token loss and the summed metrics (see `token_cross_entropy`)."""
    del train  # no dropout in the decoder
    missing = [name for name in (INPUTS, TARGETS, WEIGHTS) if name not in batch]
    if missing:
      raise DecoderTaskError(f"batch lacks decoder features {missing}; it has {sorted(batch)}")
    logits = model(batch[INPUTS], positions=batch.get(POSITIONS),
                   segment_ids=batch.get(SEGMENT_IDS))  # [B, T, V]
    sums = token_cross_entropy(logits, batch[TARGETS], batch[WEIGHTS], self.z_loss)
    loss = sums["loss_sum"] / jnp.maximum(sums["weight"], 1e-8)
    return loss, sums

  def flops_per_example(self) -> float | None:
    """Training FLOPs per row (`DecoderConfig.flops_per_example`), None without a length."""
    if self.sequence_length is None:
      return None
    return self.config.flops_per_example(self.sequence_length)
