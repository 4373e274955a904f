"""`DecoderConfig`: the decoder's hyperparameters, its parameter count and its training FLOPs.

Presets live in `configs/models/*.gin` (tiny, 100m, 300m, 1b, 2b). `family`
picks the Llama or Gemma conventions:

  llama  RMSNorm x * w, SwiGLU, untied output layer
  gemma  RMSNorm x * (1 + w), GeGLU (tanh gelu), tied embeddings scaled by sqrt(d_model)

`tie_embeddings` and `activation` default to the family's choice and can be
set explicitly (e.g. Llama 3.2 1B ties its embeddings).

`lora_rank > 0` adds LoRA adapters to the projections named in `lora_targets`
(see `explore.llm.lora`); the base weights keep their names, so a checkpoint
made without LoRA restores into the base of a LoRA model.
"""

from __future__ import annotations

import dataclasses
import math

import gin
import jax.numpy as jnp
import numpy as np

FAMILIES = ("llama", "gemma")
_FAMILY_ACTIVATION = {"llama": "silu", "gemma": "gelu_tanh"}
_FAMILY_TIED = {"llama": False, "gemma": True}
_ACTIVATIONS = ("silu", "gelu_tanh", "gelu")
_DTYPES = ("float32", "bfloat16", "float16")
ROPE_SCALINGS = (None, "llama3")
# Projections that can carry a LoRA adapter: attention q/k/v/o, MLP gate/up/down.
LORA_TARGETS = ("query", "key", "value", "out", "gate", "up", "down")


class DecoderConfigError(ValueError):
  """A DecoderConfig field has an invalid value."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Shape and conventions of a decoder-only transformer (defaults: a tiny CPU model)."""

  family: str = "llama"  # "llama" | "gemma"
  vocab_size: int = 256
  d_model: int = 64
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 2  # grouped-query attention: num_heads must be a multiple
  head_dim: int = 16
  mlp_dim: int = 256
  rope_theta: float = 10_000.0
  # Llama 3.1+ long-context frequency scaling ("llama3"), as in HF's rope_parameters.
  rope_scaling: str | None = None
  rope_scaling_factor: float = 8.0
  rope_low_freq_factor: float = 1.0
  rope_high_freq_factor: float = 4.0
  rope_original_max_length: int = 8192
  norm_eps: float = 1e-6
  tie_embeddings: bool | None = None  # None: the family's default
  activation: str | None = None  # "silu" | "gelu_tanh" | "gelu"; None: the family's default
  dtype: str = "float32"  # compute dtype, e.g. "bfloat16" on accelerators
  param_dtype: str = "float32"  # stored parameters (and optimizer state)
  remat: bool = False  # recompute each block's activations in the backward pass
  lora_rank: int = 0  # LoRA adapter rank; 0 = no adapters
  lora_alpha: float = 16.0  # adapters are scaled by lora_alpha / lora_rank
  lora_targets: tuple[str, ...] = LORA_TARGETS  # projections that get an adapter

  def __post_init__(self):
    if self.family not in FAMILIES:
      raise DecoderConfigError(f"DecoderConfig.family={self.family!r} must be one of {FAMILIES}")
    for name in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads",
                 "head_dim", "mlp_dim"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DecoderConfigError(f"DecoderConfig.{name}={value!r} must be a positive integer")
    if self.num_heads % self.num_kv_heads:
      raise DecoderConfigError(
          f"DecoderConfig.num_heads={self.num_heads} is not a multiple of"
          f" num_kv_heads={self.num_kv_heads}")
    if self.head_dim % 2:
      raise DecoderConfigError(
          f"DecoderConfig.head_dim={self.head_dim} must be even (rotary positions rotate pairs)")
    if not self.rope_theta > 0 or not self.norm_eps > 0:
      raise DecoderConfigError(
          f"DecoderConfig.rope_theta={self.rope_theta} and norm_eps={self.norm_eps} must be > 0")
    if self.rope_scaling not in ROPE_SCALINGS:
      raise DecoderConfigError(
          f"DecoderConfig.rope_scaling={self.rope_scaling!r} must be one of {ROPE_SCALINGS}")
    if self.rope_scaling and not (self.rope_scaling_factor > 0
                                  and self.rope_high_freq_factor > self.rope_low_freq_factor > 0
                                  and self.rope_original_max_length > 0):
      raise DecoderConfigError(
          "DecoderConfig rope_scaling='llama3' needs rope_scaling_factor > 0,"
          " rope_high_freq_factor > rope_low_freq_factor > 0 and rope_original_max_length > 0;"
          f" got {self.rope_scaling_factor}, {self.rope_high_freq_factor},"
          f" {self.rope_low_freq_factor}, {self.rope_original_max_length}")
    if self.activation is not None and self.activation not in _ACTIVATIONS:
      raise DecoderConfigError(
          f"DecoderConfig.activation={self.activation!r} must be one of {_ACTIVATIONS} or None")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise DecoderConfigError(
            f"DecoderConfig.{name}={getattr(self, name)!r} must be one of {_DTYPES}")
    self._validate_lora()

  def _validate_lora(self) -> None:
    rank = self.lora_rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
      raise DecoderConfigError(f"DecoderConfig.lora_rank={rank!r} must be an integer >= 0")
    if not self.lora_alpha > 0:
      raise DecoderConfigError(f"DecoderConfig.lora_alpha={self.lora_alpha!r} must be > 0")
    targets = self.lora_targets
    if isinstance(targets, str) or not isinstance(targets, (tuple, list)):
      raise DecoderConfigError(
          f"DecoderConfig.lora_targets={targets!r} must be a tuple of names from {LORA_TARGETS}")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
      raise DecoderConfigError(
          f"DecoderConfig.lora_targets has unknown projections {unknown}; choose from"
          f" {LORA_TARGETS}")
    if rank and not targets:
      raise DecoderConfigError(
          f"DecoderConfig.lora_rank={rank} but lora_targets is empty: no adapter to train")
    # Gin passes lists; keep the (frozen, hashable) config a tuple.
    object.__setattr__(self, "lora_targets", tuple(targets))

  # Family conventions -------------------------------------------------------

  @property
  def tied(self) -> bool:
    return _FAMILY_TIED[self.family] if self.tie_embeddings is None else self.tie_embeddings

  @property
  def mlp_activation(self) -> str:
    return self.activation or _FAMILY_ACTIVATION[self.family]

  @property
  def scale_embeddings(self) -> bool:
    return self.family == "gemma"

  @property
  def norm_unit_offset(self) -> bool:
    return self.family == "gemma"

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def parameter_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def rope_inverse_frequencies(self) -> np.ndarray:
    """[head_dim / 2] float32 rotation frequencies theta^(-2i / head_dim), scaled if asked."""
    exponents = np.arange(0, self.head_dim, 2, dtype=np.float32) / np.float32(self.head_dim)
    inv_freq = (1.0 / (np.float32(self.rope_theta) ** exponents)).astype(np.float32)
    if self.rope_scaling != "llama3":
      return inv_freq
    # Long wavelengths are slowed by `factor`, short ones kept, the band between
    # interpolated (Llama 3.1).
    factor, low, high = (self.rope_scaling_factor, self.rope_low_freq_factor,
                         self.rope_high_freq_factor)
    original = self.rope_original_max_length
    wavelength = 2 * math.pi / inv_freq
    scaled = np.where(wavelength > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)

  # Counting -----------------------------------------------------------------

  def block_matmul_params(self) -> int:
    """Weights of one block's matmuls: q, k, v, o projections and the gated MLP."""
    d, n, k, h, f = self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
    return d * n * h + 2 * d * k * h + n * h * d + 3 * d * f

  def num_params(self) -> int:
    """Every parameter: embeddings (+ output layer if untied), blocks, norms, LoRA adapters."""
    embeddings = self.vocab_size * self.d_model * (1 if self.tied else 2)
    blocks = self.num_layers * (self.block_matmul_params() + 2 * self.d_model)
    return embeddings + blocks + self.d_model + self.num_lora_params()

  def num_lora_params(self) -> int:
    """Weights of the LoRA adapters: rank * (fan_in + fan_out) per targeted projection."""
    if not self.lora_rank:
      return 0
    d, n, k, h, f = self.d_model, self.num_heads, self.num_kv_heads, self.head_dim, self.mlp_dim
    sides = {"query": d + n * h, "key": d + k * h, "value": d + k * h, "out": n * h + d,
             "gate": d + f, "up": d + f, "down": f + d}
    return self.num_layers * self.lora_rank * sum(sides[t] for t in self.lora_targets)

  def flops_per_example(self, length: int) -> float:
    """Training FLOPs of one length-`length` sequence, MaxText counting.

    A matmul of an [m, k] by a [k, n] matrix is 2*m*k*n FLOPs; per sequence of
    T tokens, forward:
      blocks:     2 * T * L * (D*N*H + 2*D*K*H + N*H*D + 3*D*F)
      attention:  L * 2 * T^2 * N * H   (QK^T and PV, 4*T^2*N*H, halved for causality)
      unembed:    2 * T * D * V         (the output projection to the vocabulary)
    and training is 3 x forward (forward + two backward matmuls). Embedding
    lookups, norms, softmax and rotary positions are not counted; packed
    sequences are counted at the full length. LoRA adapters are not counted
    either, and a LoRA run is still counted at 3 x the base forward (the
    usual model-FLOPs convention) although frozen kernels need no weight
    gradients.
    """
    t = length
    blocks = 2 * t * self.num_layers * self.block_matmul_params()
    attention = self.num_layers * 2 * t * t * self.num_heads * self.head_dim
    unembed = 2 * t * self.d_model * self.vocab_size
    return 3.0 * (blocks + attention + unembed)
