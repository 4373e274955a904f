"""Building blocks of the decoder: RMSNorm, embedder, rotary positions, attention, gated MLP.

Each module builds its parameters in `__init__` with their logical axes
(`nnx.with_partitioning`, T5X names: vocab, embed, mlp, heads, kv) and
computes in `__call__` with named einsum dimensions:

  B batch, T query length, S key length, D d_model, V vocab, F mlp,
  N query heads, K kv heads, G query heads per kv head (N = K * G), H head_dim.

Parameters are stored in `param_dtype` and cast to the compute `dtype` where
used; norms, softmax and logits run in float32.

LoRA (`LoraAdapter`): a projection named in `lora_targets` adds a low-rank
update (alpha / rank) * (x A) B whose weights are `nnx.LoRAParam`s, so the
trainer can train them alone (see `explore.llm.lora`).

Rotary positions use the "rotate half" layout of Hugging Face's Llama and
Gemma (the first and second half of each head dimension form the rotated
pairs), so their q/k weights import without any permutation.
"""

from __future__ import annotations

import math
from typing import Callable, Collection, Sequence

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp

from explore import partitioning

# Large finite negative for masked attention scores: a fully masked row (a
# padding query) softmaxes to uniform weights instead of NaN.
MASK_VALUE = -0.7 * float(jnp.finfo(jnp.float32).max)

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
}


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """Constrains an activation's sharding by logical axes under the current mesh.

  A no-op outside a mesh context (`jax.set_mesh`), e.g. in eager CPU tests;
  the trainer's jitted steps shard activations this way when run under one.
  A dimension whose size its mesh axes do not divide (e.g. 2 kv heads over
  model=4) is left replicated rather than sharded unevenly.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return partitioning.with_logical_constraint(x, logical_axes, mesh)


def logical_param(rngs: nnx.Rngs, init: nnx.Initializer, shape: tuple[int, ...],
                  axes: tuple[str | None, ...], param_dtype: jnp.dtype,
                  variable_type: type[nnx.Param] = nnx.Param) -> nnx.Param:
  """A parameter (of `variable_type`) carrying its logical axes as sharding metadata."""
  init = nnx.with_partitioning(init, axes)
  return variable_type(init(rngs.params(), shape, param_dtype))


def _fan_in_init(fan_in: int) -> nnx.Initializer:
  """Normal(0, 1/fan_in) over the given shape (LeCun), for multi-axis kernels."""
  stddev = fan_in ** -0.5

  def init(key: jax.Array, shape: Sequence[int], dtype: jnp.dtype = jnp.float32) -> jax.Array:
    return stddev * jax.random.normal(key, shape, dtype)

  return init


class LoraAdapter(nnx.Module):
  """The low-rank update (alpha / rank) * (x A) B of one projection kernel.

  For a kernel of shape in_shape + out_shape (e.g. query [D] + [N, H]),
  A is [*in_shape, rank] (fan-in scaled normal) and B [rank, *out_shape]
  (zeros), so a fresh adapter adds exactly 0. Their logical axes mirror the
  kernel's on the in / out side; the rank axis is replicated.
  """

  def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int],
               in_axes: Sequence[str | None], out_axes: Sequence[str | None], *,
               rank: int, alpha: float, dtype: jnp.dtype, param_dtype: jnp.dtype,
               rngs: nnx.Rngs):
    self.num_in = len(in_shape)
    self.scale = float(alpha) / rank
    self.dtype = dtype
    self.a = logical_param(rngs, _fan_in_init(math.prod(in_shape)), (*in_shape, rank),
                           (*in_axes, None), param_dtype, nnx.LoRAParam)
    self.b = logical_param(rngs, nnx.initializers.zeros, (rank, *out_shape),
                           (None, *out_axes), param_dtype, nnx.LoRAParam)

  def __call__(self, x: jax.Array) -> jax.Array:
    """[..., *in_shape] -> [..., *out_shape] in the compute dtype."""
    low = jnp.tensordot(x, self.a[...].astype(self.dtype), axes=self.num_in)  # [..., rank]
    update = jnp.tensordot(low, self.b[...].astype(self.dtype), axes=1)  # [..., *out_shape]
    return update * jnp.asarray(self.scale, self.dtype)

  def delta(self) -> jax.Array:
    """The dense update of the kernel, [*in_shape, *out_shape] in float32."""
    a = self.a[...].astype(jnp.float32)
    b = self.b[...].astype(jnp.float32)
    return self.scale * jnp.tensordot(a, b, axes=1)


def add_lora_adapters(layer: nnx.Module, targets: Collection[str], *, rank: int,
                      alpha: float, dtype: jnp.dtype, param_dtype: jnp.dtype,
                      rngs: nnx.Rngs) -> None:
  """Sets `layer.<kernel>_lora` to a fresh adapter for each of its kernels in `targets`.

  `layer.LORA_KERNELS` maps a kernel attribute to its number of input dims;
  the adapter takes the kernel's own logical axes. Kernels not targeted keep
  `<kernel>_lora = None`.
  """
  for name, num_in in layer.LORA_KERNELS.items():
    if name in targets:
      kernel = getattr(layer, name)
      shape, axes = kernel.get_value().shape, partitioning.variable_logical_axes(kernel)
      setattr(layer, f"{name}_lora", LoraAdapter(
          shape[:num_in], shape[num_in:], axes[:num_in], axes[num_in:], rank=rank,
          alpha=alpha, dtype=dtype, param_dtype=param_dtype, rngs=rngs))


def project(owner: nnx.Module, name: str, spec: str, x: jax.Array, dtype: jnp.dtype
            ) -> jax.Array:
  """einsum(spec, x, kernel `name`) plus the kernel's LoRA update when it has one."""
  out = jnp.einsum(spec, x, getattr(owner, name)[...].astype(dtype))
  adapter = getattr(owner, f"{name}_lora")
  return out if adapter is None else out + adapter(x)


class RMSNorm(nnx.Module):
  """Root-mean-square norm: Llama scales by w, Gemma by (1 + w) with w initialised at 0."""

  def __init__(self, dim: int, *, eps: float, add_unit_offset: bool, param_dtype: jnp.dtype,
               rngs: nnx.Rngs):
    self.eps = eps
    self.add_unit_offset = add_unit_offset
    init = nnx.initializers.zeros if add_unit_offset else nnx.initializers.ones
    self.scale = logical_param(rngs, init, (dim,), ("embed",), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    dtype = x.dtype
    x = x.astype(jnp.float32)  # [..., D]
    x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].astype(jnp.float32)
    if self.add_unit_offset:
      return (x * (1.0 + scale)).astype(dtype)
    # Llama normalises in float32, casts back, then scales in the input dtype.
    return x.astype(dtype) * scale.astype(dtype)


class Embedder(nnx.Module):
  """Token embedding table; also the output projection when embeddings are tied."""

  def __init__(self, vocab_size: int, dim: int, *, scale_by_sqrt_dim: bool,
               dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.dim = dim
    self.scale_by_sqrt_dim = scale_by_sqrt_dim
    self.dtype = dtype
    # Std 1/sqrt(D): tied logits of a unit-RMS state start near N(0, 1).
    self.table = logical_param(rngs, nnx.initializers.normal(dim ** -0.5), (vocab_size, dim),
                               ("vocab", "embed"), param_dtype)

  def encode(self, tokens: jax.Array) -> jax.Array:
    """[B, T] int -> [B, T, D]."""
    x = jnp.take(self.table[...], tokens, axis=0).astype(self.dtype)  # [B, T, D]
    if self.scale_by_sqrt_dim:
      # Gemma multiplies by sqrt(D) rounded to the compute dtype.
      x = x * jnp.asarray(self.dim ** 0.5, self.dtype)
    return x

  def decode(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, V] float32 logits through the transposed table."""
    table = self.table[...].astype(self.dtype)
    return jnp.einsum("BTD,VD->BTV", x, table).astype(jnp.float32)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotates [B, T, heads, H] by [B, T] positions at [H / 2] frequencies, rotate-half layout.

  Dimension i is paired with i + H/2 (Hugging Face Llama/Gemma), not with i + 1
  (Meta's original interleaved layout, which HF's conversion permutes away).
  """
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, H / 2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, T, 1, H]
  cos = jnp.cos(angles).astype(x.dtype)
  sin = jnp.sin(angles).astype(x.dtype)
  first, second = jnp.split(x, 2, axis=-1)  # [B, T, heads, H / 2] each
  rotated = jnp.concatenate([-second, first], axis=-1)  # [B, T, heads, H]
  return x * cos + rotated * sin


@struct.dataclass
class SharedPrefix:
  """One layer's prompt keys and values, shared by groups of decoding rows (see above)."""

  keys: jax.Array  # [b, P, K, H]
  values: jax.Array  # [b, P, K, H]
  valid: jax.Array  # [b, P] bool: the slot holds a real token


def dot_product_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                          mask: jax.Array, prefix: SharedPrefix | None = None) -> jax.Array:
  """Grouped-query attention, optionally also over a prefix shared by groups of rows.

  Args:
    query: [B, T, N, H], already scaled.
    key, value: [B, S, K, H] with N a multiple of K.
    mask: [B, T, S] bool, True where query t may attend to key s.
    prefix: keys and values [b, P, K, H] that every query of rows
      i * B / b .. (i + 1) * B / b - 1 also attends to (all P slots precede the
      rows' own, so only `prefix.valid` masks them): beams of one prompt read
      the prompt's keys once instead of each holding a copy.
  Returns:
    [B, T, N, H] in the query's dtype.
  """
  batch, length, num_heads, head_dim = query.shape
  num_kv_heads = key.shape[2]
  query = query.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  scores = jnp.einsum("BTKGH,BSKH->BKGTS", query, key).astype(jnp.float32)
  scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)  # [B, K, G, T, S]
  if prefix is None:
    probs = jax.nn.softmax(scores, axis=-1).astype(value.dtype)
    out = jnp.einsum("BKGTS,BSKH->BTKGH", probs, value)  # [B, T, K, G, H]
    return out.reshape(batch, length, num_heads, head_dim)
  rows = prefix.keys.shape[0]  # b
  grouped = query.reshape((rows, batch // rows) + query.shape[1:])  # [b, g, T, K, G, H]
  prefix_scores = jnp.einsum("bgTKGH,bPKH->bgKGTP", grouped,
                             prefix.keys.astype(query.dtype)).astype(jnp.float32)
  prefix_scores = jnp.where(prefix.valid[:, None, None, None, None, :], prefix_scores, MASK_VALUE)
  own = scores.reshape((rows, batch // rows) + scores.shape[1:])  # [b, g, K, G, T, S]
  probs = jax.nn.softmax(jnp.concatenate([prefix_scores, own], -1), axis=-1).astype(value.dtype)
  width = prefix.keys.shape[1]
  out = (jnp.einsum("bgKGTP,bPKH->bgTKGH", probs[..., :width], prefix.values.astype(value.dtype))
         + jnp.einsum("bgKGTS,bgSKH->bgTKGH", probs[..., width:],
                      value.reshape((rows, batch // rows) + value.shape[1:])))
  return out.reshape(batch, length, num_heads, head_dim)


class Attention(nnx.Module):
  """Multi-head attention with grouped key/value heads and rotary positions."""

  # Kernels that can carry a LoRA adapter: their number of input dims.
  LORA_KERNELS = {"query": 1, "key": 1, "value": 1, "out": 2}

  def __init__(self, dim: int, num_heads: int, num_kv_heads: int, head_dim: int, *,
               rope_inv_freq: Sequence[float], dtype: jnp.dtype, param_dtype: jnp.dtype,
               rngs: nnx.Rngs):
    if num_heads % num_kv_heads:
      raise ValueError(f"num_heads={num_heads} is not a multiple of num_kv_heads={num_kv_heads}")
    self.num_heads = num_heads
    self.head_dim = head_dim
    self.rope_inv_freq = tuple(float(f) for f in rope_inv_freq)  # static, [H / 2]
    self.dtype = dtype
    self.query = logical_param(rngs, _fan_in_init(dim), (dim, num_heads, head_dim),
                               ("embed", "heads", "kv"), param_dtype)
    # Key/value heads are few (often fewer than the model-parallel devices):
    # 'kv_heads' splits them over `model` where they divide, else replicates
    # them (partitioning.SHARD_WHERE_DIVISIBLE).
    self.key = logical_param(rngs, _fan_in_init(dim), (dim, num_kv_heads, head_dim),
                             ("embed", "kv_heads", "kv"), param_dtype)
    self.value = logical_param(rngs, _fan_in_init(dim), (dim, num_kv_heads, head_dim),
                               ("embed", "kv_heads", "kv"), param_dtype)
    self.out = logical_param(rngs, _fan_in_init(num_heads * head_dim),
                             (num_heads, head_dim, dim), ("heads", "kv", "embed"), param_dtype)
    # Data attributes (not static), so `add_lora_adapters` may set adapters later.
    self.query_lora = self.key_lora = self.value_lora = self.out_lora = nnx.data(None)

  def project_kv(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, jax.Array]:
    """[B, T, D] -> rotated keys and values, [B, T, K, H] each."""
    key = project(self, "key", "BTD,DKH->BTKH", x, self.dtype)
    value = project(self, "value", "BTD,DKH->BTKH", x, self.dtype)
    # Shards the kv heads over `model` where their number divides it (see `constrain`).
    value = constrain(value, ("batch", "length", "kv_heads", "kv"))
    key = apply_rope(key, positions, self._inv_freq())
    return constrain(key, ("batch", "length", "kv_heads", "kv")), value

  def _inv_freq(self) -> jax.Array:
    return jnp.asarray(self.rope_inv_freq, jnp.float32)  # [H / 2]

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
               cache: tuple[jax.Array, jax.Array, jax.Array] | None = None,
               prefix: SharedPrefix | None = None
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array] | None]:
    """Attends [B, T, D] queries to their own keys, or to a KV cache.

    Args:
      x: [B, T, D] inputs.
      positions: [B, T] rotary positions.
      mask: [B, T, S] bool; S = T without a cache, the cache length with one.
      cache: optional (keys [B, S, K, H], values [B, S, K, H], index int32
        scalar): this call's keys and values are written at slots
        index .. index + T - 1 before attending.
      prefix: optional keys and values shared by groups of rows, attended
        before the cache's (see `dot_product_attention`).
    Returns:
      [B, T, D] outputs and the updated (keys, values), or None without a cache.
    """
    query = project(self, "query", "BTD,DNH->BTNH", x, self.dtype)
    query = apply_rope(query, positions, self._inv_freq()) * jnp.asarray(
        self.head_dim ** -0.5, self.dtype)
    query = constrain(query, ("batch", "length", "heads", "kv"))
    key, value = self.project_kv(x, positions)  # [B, T, K, H]
    new_cache = None
    if cache is not None:
      cached_keys, cached_values, index = cache
      start = (0, index, 0, 0)
      key = jax.lax.dynamic_update_slice(cached_keys, key.astype(cached_keys.dtype), start)
      value = jax.lax.dynamic_update_slice(cached_values, value.astype(cached_values.dtype),
                                           start)
      new_cache = (key, value)
      key, value = key.astype(self.dtype), value.astype(self.dtype)  # [B, S, K, H]
    out = dot_product_attention(query, key, value, mask, prefix)  # [B, T, N, H]
    return project(self, "out", "BTNH,NHD->BTD", out, self.dtype), new_cache


class GatedMLP(nnx.Module):
  """act(x W_gate) * (x W_up) W_down: SwiGLU (Llama) or GeGLU (Gemma)."""

  LORA_KERNELS = {"gate": 1, "up": 1, "down": 1}

  def __init__(self, dim: int, mlp_dim: int, *, activation: str, dtype: jnp.dtype,
               param_dtype: jnp.dtype, rngs: nnx.Rngs):
    if activation not in ACTIVATIONS:
      raise ValueError(f"activation={activation!r} is not one of {sorted(ACTIVATIONS)}")
    self.activation = activation
    self.dtype = dtype
    self.gate = logical_param(rngs, _fan_in_init(dim), (dim, mlp_dim), ("embed", "mlp"),
                              param_dtype)
    self.up = logical_param(rngs, _fan_in_init(dim), (dim, mlp_dim), ("embed", "mlp"),
                            param_dtype)
    self.down = logical_param(rngs, _fan_in_init(mlp_dim), (mlp_dim, dim), ("mlp", "embed"),
                              param_dtype)
    self.gate_lora = self.up_lora = self.down_lora = nnx.data(None)

  def __call__(self, x: jax.Array) -> jax.Array:
    gate = project(self, "gate", "BTD,DF->BTF", x, self.dtype)
    up = project(self, "up", "BTD,DF->BTF", x, self.dtype)
    hidden = constrain(ACTIVATIONS[self.activation](gate) * up, ("batch", "length", "mlp"))
    return project(self, "down", "BTF,FD->BTD", hidden, self.dtype)
