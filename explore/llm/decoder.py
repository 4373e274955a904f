"""The decoder-only transformer (Llama / Gemma family) in Flax NNX, with a KV cache.

Training and scoring run `Decoder.__call__` over whole (optionally packed)
sequences: attention is causal and stays within a segment
(`segment_ids`, 0 = padding), and rotary positions restart in each segment.

Generation runs `Decoder.decode` on a `KVCache` of static length: a prompt
of T tokens (prefill), then one token at a time (`decode_step`). Each call
writes its keys and values at the cache's `index` with
`jax.lax.dynamic_update_slice` and attends to every valid slot up to its own,
so prompts of different lengths can share a batch left-padded (padding slots
marked invalid) with positions counted from each row's first real token.
The caller keeps `index + T <= max_length`; slots past the end are not written.
"""

from __future__ import annotations

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp

from explore.llm import layers
from explore.llm.decoder_config import DecoderConfig

# Logical axes of the cache arrays, for sharding them like activations.
CACHE_KV_AXES = ("batch", "length", "kv_heads", "kv")
CACHE_VALID_AXES = ("batch", "length")


@struct.dataclass
class KVCache:
  """Keys and values of every layer for the slots decoded so far."""

  keys: tuple[jax.Array, ...]  # per layer [B, S, K, H]
  values: tuple[jax.Array, ...]  # per layer [B, S, K, H]
  valid: jax.Array  # [B, S] bool: the slot holds a real (non-padding) token
  index: jax.Array  # int32 scalar: the next slot to write

  @property
  def max_length(self) -> int:
    return self.valid.shape[1]

  def gather(self, rows: jax.Array) -> "KVCache":
    """The cache of rows `rows` ([B'] int), e.g. to follow the surviving beams."""
    take = lambda x: jnp.take(x, rows, axis=0)
    return KVCache(keys=tuple(map(take, self.keys)), values=tuple(map(take, self.values)),
                   valid=take(self.valid), index=self.index)


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
  """[B, T] positions counted from 0 at the start of each segment."""
  length = segment_ids.shape[1]
  steps = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), segment_ids.shape)  # [B, T]
  starts = jnp.concatenate(
      [jnp.ones_like(segment_ids[:, :1], bool), segment_ids[:, 1:] != segment_ids[:, :-1]],
      axis=1)  # [B, T]
  segment_start = jax.lax.cummax(jnp.where(starts, steps, 0), axis=1)  # [B, T]
  return steps - segment_start


def sequence_mask(length: int, segment_ids: jax.Array | None = None,
                  padding_mask: jax.Array | None = None) -> jax.Array:
  """[B or 1, T, T] bool: causal, within a segment, real keys only."""
  causal = jnp.tril(jnp.ones((length, length), bool))[None]  # [1, T, S]
  if segment_ids is not None:
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # [B, T, S]
    causal = causal & same & (segment_ids != 0)[:, None, :]
  if padding_mask is not None:
    causal = causal & padding_mask.astype(bool)[:, None, :]
  return causal


class DecoderBlock(nnx.Module):
  """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x))."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
    dtype, param_dtype = config.compute_dtype, config.parameter_dtype
    norm = dict(eps=config.norm_eps, add_unit_offset=config.norm_unit_offset,
                param_dtype=param_dtype, rngs=rngs)
    self.pre_attention_norm = layers.RMSNorm(config.d_model, **norm)
    self.attention = layers.Attention(
        config.d_model, config.num_heads, config.num_kv_heads, config.head_dim,
        rope_inv_freq=config.rope_inverse_frequencies(), dtype=dtype, param_dtype=param_dtype,
        rngs=rngs)
    self.pre_mlp_norm = layers.RMSNorm(config.d_model, **norm)
    self.mlp = layers.GatedMLP(config.d_model, config.mlp_dim,
                               activation=config.mlp_activation, dtype=dtype,
                               param_dtype=param_dtype, rngs=rngs)

  def add_lora(self, config: DecoderConfig, rngs: nnx.Rngs) -> None:
    """Adds LoRA adapters to the block's projections in `config.lora_targets`."""
    for layer in (self.attention, self.mlp):
      layers.add_lora_adapters(layer, config.lora_targets, rank=config.lora_rank,
                               alpha=config.lora_alpha, dtype=config.compute_dtype,
                               param_dtype=config.parameter_dtype, rngs=rngs)

  def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array,
               cache: tuple[jax.Array, jax.Array, jax.Array] | None = None,
               prefix: layers.SharedPrefix | None = None):
    """[B, T, D] -> [B, T, D] and the layer's updated (keys, values) or None."""
    attended, new_cache = self.attention(self.pre_attention_norm(x), positions, mask, cache,
                                         prefix)
    x = x + attended
    x = x + self.mlp(self.pre_mlp_norm(x))
    return layers.constrain(x, ("batch", "length", "embed")), new_cache


def _block_forward(block: DecoderBlock, x: jax.Array, positions: jax.Array,
                   mask: jax.Array) -> jax.Array:
  return block(x, positions, mask)[0]


class Decoder(nnx.Module):
  """Embedder, `num_layers` blocks, final norm and float32 logits."""

  def __init__(self, config: DecoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    # Logical axes are metadata only; `explore.partitioning` places the state.
    with nnx.use_eager_sharding(False):
      self.embedder = layers.Embedder(
          config.vocab_size, config.d_model, scale_by_sqrt_dim=config.scale_embeddings,
          dtype=config.compute_dtype, param_dtype=config.parameter_dtype, rngs=rngs)
      self.blocks = nnx.List([DecoderBlock(config, rngs=rngs) for _ in range(config.num_layers)])
      self.final_norm = layers.RMSNorm(
          config.d_model, eps=config.norm_eps, add_unit_offset=config.norm_unit_offset,
          param_dtype=config.parameter_dtype, rngs=rngs)
      if not config.tied:
        self.unembed = layers.logical_param(
            rngs, nnx.initializers.lecun_normal(), (config.d_model, config.vocab_size),
            ("embed", "vocab"), config.parameter_dtype)
      # Adapters draw their random A after every base weight, so the base of a
      # LoRA model equals the model built without LoRA from the same seed.
      if config.lora_rank:
        for block in self.blocks:
          block.add_lora(config, rngs)

  def _logits(self, x: jax.Array) -> jax.Array:
    """[B, T, D] -> [B, T, V] float32."""
    x = self.final_norm(x)
    if self.config.tied:
      logits = self.embedder.decode(x)
    else:
      kernel = self.unembed[...].astype(self.config.compute_dtype)
      logits = jnp.einsum("BTD,DV->BTV", x, kernel).astype(jnp.float32)
    return layers.constrain(logits, ("batch", "length", "vocab"))

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None,
               padding_mask: jax.Array | None = None) -> jax.Array:
    """Logits of whole sequences.

    Args:
      tokens: [B, T] int token ids.
      positions: [B, T] rotary positions; default 0.. per segment (or per row).
      segment_ids: [B, T] packed example ids, 0 on padding; tokens attend only
        within their segment.
      padding_mask: [B, T] True on real tokens; False keys are never attended.
    Returns:
      [B, T, V] float32 next-token logits.
    """
    tokens = jnp.asarray(tokens)
    if positions is None:
      positions = (positions_from_segments(segment_ids) if segment_ids is not None
                   else jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape))
    mask = sequence_mask(tokens.shape[1], segment_ids, padding_mask)  # [B or 1, T, T]
    mask = jnp.broadcast_to(mask, (tokens.shape[0],) + mask.shape[1:])
    x = layers.constrain(self.embedder.encode(tokens), ("batch", "length", "embed"))
    forward = nnx.remat(_block_forward) if self.config.remat else _block_forward
    for block in self.blocks:
      x = forward(block, x, positions, mask)
    return self._logits(x)

  # Decoding -----------------------------------------------------------------

  def init_cache(self, batch_size: int, max_length: int, dtype: jnp.dtype | None = None
                 ) -> KVCache:
    """An empty cache of `max_length` slots (keys and values in the compute dtype)."""
    cfg = self.config
    dtype = cfg.compute_dtype if dtype is None else dtype
    shape = (batch_size, max_length, cfg.num_kv_heads, cfg.head_dim)
    return KVCache(
        keys=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        values=tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers)),
        valid=jnp.zeros((batch_size, max_length), bool),
        index=jnp.zeros((), jnp.int32))

  def decode(self, tokens: jax.Array, cache: KVCache, positions: jax.Array,
             padding_mask: jax.Array | None = None, prefix: KVCache | None = None,
             logits_at: jax.Array | None = None) -> tuple[jax.Array, KVCache]:
    """Runs T new tokens per row against the cache (prefill when T > 1).

    Args:
      tokens: [B, T] int ids, written at slots cache.index .. index + T - 1.
      cache: from `init_cache` or an earlier call.
      positions: [B, T] rotary positions of the new tokens.
      padding_mask: [B, T] True on real tokens (default all); padding slots are
        never attended to later.
      prefix: a cache of b rows (b divides B; its index is ignored) that rows
        i * B / b .. (i + 1) * B / b - 1 also attend to, before their own slots:
        the prompt, encoded once, shared by the beams decoding from it.
      logits_at: [B] int, the one position per row whose logits are wanted
        (a prefill that reads only the prompt's last token): the unembedding
        then runs on B rows instead of B x T.
    Returns:
      [B, T, V] float32 logits ([B, 1, V] with `logits_at`) and the updated
      cache (index advanced by T).
    """
    tokens = jnp.asarray(tokens)
    batch, length = tokens.shape
    real = (jnp.ones((batch, length), bool) if padding_mask is None
            else jnp.asarray(padding_mask, bool))
    valid = jax.lax.dynamic_update_slice(cache.valid, real, (0, cache.index))  # [B, S]
    slots = jnp.arange(cache.max_length)  # [S]
    query_slots = cache.index + jnp.arange(length)  # [T]
    mask = valid[:, None, :] & (slots[None, :] <= query_slots[:, None])[None]  # [B, T, S]
    x = self.embedder.encode(tokens)  # [B, T, D]
    keys, values = [], []
    for layer, (block, k, v) in enumerate(zip(self.blocks, cache.keys, cache.values)):
      shared = None if prefix is None else layers.SharedPrefix(
          prefix.keys[layer], prefix.values[layer], prefix.valid)
      x, (k, v) = block(x, positions, mask, (k, v, cache.index), shared)
      keys.append(k)
      values.append(v)
    new_cache = KVCache(keys=tuple(keys), values=tuple(values), valid=valid,
                        index=cache.index + length)
    if logits_at is not None:
      x = x[jnp.arange(batch), logits_at][:, None]  # [B, 1, D]
    return self._logits(x), new_cache

  def decode_step(self, tokens: jax.Array, cache: KVCache, positions: jax.Array,
                  prefix: KVCache | None = None) -> tuple[jax.Array, KVCache]:
    """One token per row: [B, 1] ids at [B, 1] positions -> [B, 1, V] logits, cache."""
    return self.decode(tokens, cache, positions, prefix=prefix)


def build_decoder(config: DecoderConfig, seed: int = 0) -> Decoder:
  """A freshly initialised decoder with parameters from `seed`."""
  return Decoder(config, rngs=nnx.Rngs(params=seed))
