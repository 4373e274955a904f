"""SASRec-style causal transformer over a user's item history (Flax NNX).

Kang & McAuley (2018): items (and optionally their interest clusters) are
embedded, learned positions added, and N causal self-attention blocks read the
history left to right. Two block layouts (`SeqRecConfig.norm`): "pre" (this
project's default: LayerNorm before each sublayer, a final LayerNorm) and
"post" (RecBole's SASRec: LayerNorm of the input embeddings, then
x = LN(x + dropout(sublayer(x))) after each sublayer, no dropout inside the
MLP). Two initialisations (`SeqRecConfig.init`): "scaled" (std 1/sqrt(fan-in),
item embeddings times sqrt(d) on input) and "normal" (every weight
N(0, init_stddev), biases 0, inputs unscaled: RecBole's 0.02). The hidden state at position t is the
user's vector after t; scoring an item is a dot product with the same item
table that embeds the inputs (shared input/output embedding). Histories are
left-padded, so the last position always holds the most recent item and its
hidden state is the user's vector.

Token ids: 0 is padding, item i of the dense catalog is token i + 1. The table
has `vocab_size` rows (num_items + 1 rounded up to `item_rows_multiple`, so
the 'items' axis splits evenly over the mesh); rows past num_items are never
scored.
"""

from __future__ import annotations

import dataclasses
import math

from flax import nnx
import gin
import jax
import jax.numpy as jnp

PAD = 0
NORMS = ("pre", "post")
POSITIONS = ("from_end", "from_start")
INITS = ("scaled", "normal")
GELUS = ("tanh", "erf")
_MASKED = -1e9  # attention logit of a masked key: exp() underflows to 0, never NaN


class SeqRecConfigError(ValueError):
  """A `SeqRecConfig` field the model cannot be built with."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SeqRecConfig:
  """Shape of the sequence recommender (defaults: SASRec on MovieLens).

  `num_items` is the catalog size; the `seqrec` stage fills it from the data.
  `num_clusters` > 0 adds a learned embedding of each input item's interest
  cluster (cluster ids 1..num_clusters, 0 padding) to the item embedding.

  `norm`: "pre" (LayerNorm before each sublayer, final LayerNorm, inputs not
  normalised) or "post" (RecBole's SASRec: LayerNorm(items + positions), then
  LayerNorm after each residual; the MLP has no inner dropout).
  `init`: "scaled" (weights N(0, 1/fan-in), item embeddings times sqrt(d) on
  input) or "normal" (every weight and embedding N(0, init_stddev), biases 0,
  no input scaling: RecBole's SASRec with 0.02).
  `positions`: which learned position an input item gets. "from_end": counted
  back from the row's last slot, so the newest item of every input has the last
  embedding; "from_start": counted from the oldest item of the row (RecBole's
  SASRec: the oldest of the newest `max_len` items is position 0). In training
  rows scored at several positions (`SeqRecTraining.window_stride` < max_len),
  "from_start" gives a scored position the state its prefix (as far as the row
  holds it) would get as a user history; "from_end" gives the newest item of
  a prefix the embedding of its slot in the row, not the last one.
  `attention_bias`: add biases (initialised to 0) to the query, key, value and
  output projections of the attention, as RecBole's SASRec (`nn.Linear`) does.
  `gelu`: the MLP's activation, "tanh" (`jax.nn.gelu`'s tanh approximation)
  or "erf" (the exact form, RecBole's).
  """

  num_items: int = 0
  max_len: int = 50
  embed_dim: int = 64
  num_blocks: int = 2
  num_heads: int = 1
  mlp_dim: int | None = None  # None: embed_dim, as in SASRec
  dropout: float = 0.2
  num_clusters: int = 0
  item_rows_multiple: int = 128
  layer_norm_epsilon: float = 1e-6
  norm: str = "pre"  # "pre" | "post"
  init: str = "scaled"  # "scaled" | "normal"
  init_stddev: float = 0.02  # init="normal" only
  positions: str = "from_end"  # "from_end" | "from_start"
  attention_bias: bool = False
  gelu: str = "tanh"  # "tanh" | "erf"

  def __post_init__(self):
    def check(ok: bool, message: str):
      if not ok:
        raise SeqRecConfigError(f"SeqRecConfig: {message}")

    for name in ("num_items", "max_len", "embed_dim", "num_blocks", "num_heads",
                 "item_rows_multiple"):
      value = getattr(self, name)
      check(isinstance(value, int) and value >= 1, f"{name}={value!r} must be a positive integer"
            + (" (the catalog size; the seqrec stage sets it from the data)"
               if name == "num_items" else ""))
    check(self.embed_dim % self.num_heads == 0,
          f"embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}")
    check(self.mlp_dim is None or (isinstance(self.mlp_dim, int) and self.mlp_dim >= 1),
          f"mlp_dim={self.mlp_dim!r} must be None or a positive integer")
    check(0.0 <= self.dropout < 1.0, f"dropout={self.dropout!r} must be in [0, 1)")
    check(isinstance(self.num_clusters, int) and self.num_clusters >= 0,
          f"num_clusters={self.num_clusters!r} must be a non-negative integer")
    check(self.norm in NORMS, f"norm={self.norm!r} is not one of {NORMS}")
    check(self.init in INITS, f"init={self.init!r} is not one of {INITS}")
    check(self.positions in POSITIONS, f"positions={self.positions!r} is not one of {POSITIONS}")
    check(isinstance(self.attention_bias, bool),
          f"attention_bias={self.attention_bias!r} must be True or False")
    check(self.gelu in GELUS, f"gelu={self.gelu!r} is not one of {GELUS}")
    check(isinstance(self.init_stddev, (int, float)) and self.init_stddev > 0,
          f"init_stddev={self.init_stddev!r} must be a positive number")
    check(isinstance(self.layer_norm_epsilon, (int, float)) and self.layer_norm_epsilon > 0,
          f"layer_norm_epsilon={self.layer_norm_epsilon!r} must be a positive number")

  @property
  def vocab_size(self) -> int:
    """Rows of the item table: padding + items, rounded up for an even split."""
    return self.item_rows_multiple * math.ceil((self.num_items + 1) / self.item_rows_multiple)

  @property
  def head_dim(self) -> int:
    return self.embed_dim // self.num_heads

  @property
  def hidden_dim(self) -> int:
    return self.mlp_dim or self.embed_dim

  def stddev(self, fan_in: int) -> float:
    """Initial std of a weight (or embedding) read with `fan_in` inputs."""
    return self.init_stddev if self.init == "normal" else 1.0 / math.sqrt(fan_in)

  @property
  def input_scale(self) -> float:
    """Factor of the item embeddings on input: sqrt(d) for "scaled", 1 for "normal"."""
    return math.sqrt(self.embed_dim) if self.init == "scaled" else 1.0


def _init(stddev: float, axes: tuple[str | None, ...]):
  return nnx.with_partitioning(nnx.initializers.normal(stddev), axes)


def _zeros(shape: tuple[int, ...], axes: tuple[str | None, ...],
           rngs: nnx.Rngs | None = None) -> nnx.Param:
  """A bias parameter initialised to 0, with logical axes `axes`.

  With `rngs`, one parameter key is drawn (and ignored), as the MLP's biases
  always did; without, none is, so adding the bias leaves every other
  parameter's initial value unchanged.
  """
  key = rngs.params() if rngs is not None else jax.random.key(0)
  return nnx.Param(nnx.with_partitioning(nnx.initializers.zeros, axes)(key, shape))


class ItemEmbedder(nnx.Module):
  """The item table, used to embed inputs and to score items (shared weights)."""

  def __init__(self, config: SeqRecConfig, *, rngs: nnx.Rngs):
    self.num_items = config.num_items
    self.input_scale = config.input_scale
    init = _init(config.stddev(config.embed_dim), ("items", "embed"))
    self.table = nnx.Param(init(rngs.params(), (config.vocab_size, config.embed_dim)))

  def encode(self, tokens: jax.Array) -> jax.Array:
    """[..., L] token ids -> [..., L, D]; the padding row is used but reads as zeros."""
    x = jnp.take(self.table[...], tokens, axis=0)  # [B, L, D]
    return x * jnp.float32(self.input_scale) * (tokens != PAD)[..., None]

  def decode(self, hidden: jax.Array) -> jax.Array:
    """[..., D] user vectors -> [..., V] scores of every table row (mask with `valid_rows`)."""
    return jnp.einsum("...D,VD->...V", hidden, self.table[...])

  def score(self, hidden: jax.Array, tokens: jax.Array) -> jax.Array:
    """[N, D] user vectors, [C] candidate tokens -> [N, C] scores."""
    candidates = jnp.take(self.table[...], tokens, axis=0)  # [C, D]
    return jnp.einsum("ND,CD->NC", hidden, candidates)

  def valid_rows(self) -> jax.Array:
    """[V] bool: rows that are real items (not padding, not the round-up tail)."""
    rows = jnp.arange(self.table.shape[0])
    return (rows > PAD) & (rows <= self.num_items)


class CausalSelfAttention(nnx.Module):
  """Multi-head self-attention where position t sees positions <= t that hold items."""

  def __init__(self, config: SeqRecConfig, *, rngs: nnx.Rngs):
    d, h, k = config.embed_dim, config.num_heads, config.head_dim
    std = config.stddev(d)
    self.q = nnx.Param(_init(std, ("embed", "heads", "kv"))(rngs.params(), (d, h, k)))
    self.k = nnx.Param(_init(std, ("embed", "heads", "kv"))(rngs.params(), (d, h, k)))
    self.v = nnx.Param(_init(std, ("embed", "heads", "kv"))(rngs.params(), (d, h, k)))
    self.out = nnx.Param(_init(config.stddev(h * k), ("heads", "kv", "embed"))(
        rngs.params(), (h, k, d)))
    if config.attention_bias:
      # Zeros drawn without a key: the other parameters start as without biases.
      self.q_bias = _zeros((h, k), ("heads", "kv"))
      self.k_bias = _zeros((h, k), ("heads", "kv"))
      self.v_bias = _zeros((h, k), ("heads", "kv"))
      self.out_bias = _zeros((d,), ("embed",))
    else:
      self.q_bias = nnx.data(None)
      self.k_bias = nnx.data(None)
      self.v_bias = nnx.data(None)
      self.out_bias = nnx.data(None)
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
    self.scale = 1.0 / math.sqrt(k)

  @staticmethod
  def _add(x: jax.Array, bias: nnx.Param | None) -> jax.Array:
    return x if bias is None else x + bias[...]

  def __call__(self, x: jax.Array, key_valid: jax.Array, train: bool,
               queries: int | None = None) -> jax.Array:
    """[B, S, D] -> [B, T, D]: the newest T = `queries` positions (default all S) attend."""
    length = x.shape[1]
    x_q = x if queries is None else x[:, length - queries:]  # [B, T, D]
    q = self._add(jnp.einsum("BTD,DHK->BTHK", x_q, self.q[...]), self.q_bias)  # [B, T, H, K]
    k = self._add(jnp.einsum("BSD,DHK->BSHK", x, self.k[...]), self.k_bias)  # [B, S, H, K]
    v = self._add(jnp.einsum("BSD,DHK->BSHK", x, self.v[...]), self.v_bias)  # [B, S, H, K]
    logits = jnp.einsum("BTHK,BSHK->BHTS", q, k) * self.scale  # [B, H, T, S]
    # Query t is position S - T + t: it sees keys s <= S - T + t.
    causal = jnp.tril(jnp.ones((length, length), bool))[length - x_q.shape[1]:]  # [T, S]
    allowed = causal[None, None] & key_valid[:, None, None, :]  # [B, 1, T, S]
    logits = jnp.where(allowed, logits, _MASKED)
    weights = jax.nn.softmax(logits, axis=-1)  # [B, H, T, S]
    weights = self.dropout(weights, deterministic=not train)
    attended = jnp.einsum("BHTS,BSHK->BTHK", weights, v)  # [B, T, H, K]
    return self._add(jnp.einsum("BTHK,HKD->BTD", attended, self.out[...]),
                     self.out_bias)  # [B, T, D]


class FeedForward(nnx.Module):
  """Position-wise two-layer MLP with a GELU (and dropout after it for norm="pre").

  `SeqRecConfig.gelu` picks the tanh approximation or the exact (erf) GELU.
  """

  def __init__(self, config: SeqRecConfig, *, rngs: nnx.Rngs):
    d, f = config.embed_dim, config.hidden_dim
    self.inner_dropout = config.norm == "pre"
    self.approximate_gelu = config.gelu == "tanh"
    self.up = nnx.Param(_init(config.stddev(d), ("embed", "mlp"))(rngs.params(), (d, f)))
    self.up_bias = _zeros((f,), ("mlp",), rngs)
    self.down = nnx.Param(_init(config.stddev(f), ("mlp", "embed"))(rngs.params(), (f, d)))
    self.down_bias = _zeros((d,), ("embed",), rngs)
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    h = jnp.einsum("BTD,DF->BTF", x, self.up[...]) + self.up_bias[...]  # [B, T, F]
    h = jax.nn.gelu(h, approximate=self.approximate_gelu)
    if self.inner_dropout:
      h = self.dropout(h, deterministic=not train)
    return jnp.einsum("BTF,FD->BTD", h, self.down[...]) + self.down_bias[...]  # [B, T, D]


def _layer_norm(config: SeqRecConfig, rngs: nnx.Rngs) -> nnx.LayerNorm:
  return nnx.LayerNorm(
      config.embed_dim, epsilon=config.layer_norm_epsilon, rngs=rngs,
      scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
      bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)))


class Block(nnx.Module):
  """A transformer block with dropout on each sublayer's output.

  norm="pre": x + attn(ln(x)), then x + ffn(ln(x)).
  norm="post": ln(x + attn(x)), then ln(x + ffn(x)) (RecBole's SASRec).
  """

  def __init__(self, config: SeqRecConfig, *, rngs: nnx.Rngs):
    self.post_norm = config.norm == "post"
    self.attention_norm = _layer_norm(config, rngs)
    self.attention = CausalSelfAttention(config, rngs=rngs)
    self.mlp_norm = _layer_norm(config, rngs)
    self.mlp = FeedForward(config, rngs=rngs)
    self.dropout = nnx.Dropout(config.dropout, rngs=rngs)

  def __call__(self, x: jax.Array, valid: jax.Array, train: bool,
               outputs: int | None = None) -> jax.Array:
    """[B, L, D] -> [B, n, D], the newest n = `outputs` positions (default all L).

    Keys and values read every position; the queries, residuals and MLP run
    on the n outputs only, so a last block that feeds n < L scored positions
    skips the rest of its work.
    """
    rows = slice(None) if outputs is None else slice(x.shape[1] - outputs, None)
    if self.post_norm:
      attended = self.attention(x, valid, train, outputs)
      x = self.attention_norm(x[:, rows] + self.dropout(attended, deterministic=not train))
      x = self.mlp_norm(x + self.dropout(self.mlp(x, train), deterministic=not train))
    else:
      attended = self.attention(self.attention_norm(x), valid, train, outputs)
      x = x[:, rows] + self.dropout(attended, deterministic=not train)
      x = x + self.dropout(self.mlp(self.mlp_norm(x), train), deterministic=not train)
    return x * valid[:, rows, None]  # padding positions stay zero


class SeqRecModel(nnx.Module):
  """The causal sequence recommender: item history -> a hidden state per position."""

  def __init__(self, config: SeqRecConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.items = ItemEmbedder(config, rngs=rngs)
    self.positions = nnx.Param(_init(config.stddev(config.embed_dim), ("length", "embed"))(
        rngs.params(), (config.max_len, config.embed_dim)))
    if config.num_clusters:
      init = _init(config.stddev(config.embed_dim), ("clusters", "embed"))
      self.clusters = nnx.Param(init(rngs.params(), (config.num_clusters + 1, config.embed_dim)))
    else:
      self.clusters = nnx.data(None)
    self.input_dropout = nnx.Dropout(config.dropout, rngs=rngs)
    # "post": the input embeddings are normalised and every block ends with a LayerNorm;
    # "pre": the residual stream is normalised once, after the last block.
    post = config.norm == "post"
    self.input_norm = _layer_norm(config, rngs) if post else nnx.data(None)
    self.blocks = nnx.List([Block(config, rngs=rngs) for _ in range(config.num_blocks)])
    self.final_norm = nnx.data(None) if post else _layer_norm(config, rngs)

  def __call__(self, tokens: jax.Array, clusters: jax.Array | None = None,
               train: bool = False, outputs: int | None = None) -> jax.Array:
    """[B, L] left-padded token ids (+ [B, L] cluster ids) -> [B, n, D] hidden states.

    n = `outputs`: the newest positions whose states are wanted (default all
    L); the last block computes only those (the same values as the full
    pass's [:, -n:], at a fraction of that block's cost).
    """
    length = tokens.shape[-1]
    if length > self.config.max_len:
      raise SeqRecConfigError(f"SeqRecModel: input length {length} exceeds "
                              f"SeqRecConfig.max_len={self.config.max_len}")
    if outputs is not None and not (isinstance(outputs, int) and 1 <= outputs <= length):
      raise SeqRecConfigError(f"SeqRecModel: outputs={outputs!r} must be an integer in "
                              f"[1, {length}] (the input length)")
    if outputs == length:
      outputs = None  # every position: the full pass
    valid = tokens != PAD  # [B, L]
    x = self.items.encode(tokens)  # [B, L, D]
    if self.clusters is not None:
      if clusters is None:
        raise SeqRecConfigError("SeqRecModel: num_clusters > 0 but no cluster ids were given")
      x = x + jnp.take(self.clusters[...], clusters, axis=0) * (clusters != PAD)[..., None]
    if self.config.positions == "from_end":
      # Positions count back from the end, so the newest item always has the last embedding.
      x = x + self.positions[...][self.config.max_len - length:]  # [B, L, D]
    else:
      # Positions count from the oldest item of the (left-padded) row.
      index = jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0)  # [B, L]
      x = x + jnp.take(self.positions[...], index, axis=0)  # [B, L, D]
    if self.input_norm is not None:
      x = self.input_norm(x)
    x = self.input_dropout(x, deterministic=not train) * valid[..., None]
    last = len(self.blocks) - 1
    for i, block in enumerate(self.blocks):
      x = block(x, valid, train, outputs if i == last else None)
    return x if self.final_norm is None else self.final_norm(x)  # [B, n, D]

  def user_vectors(self, tokens: jax.Array, clusters: jax.Array | None = None) -> jax.Array:
    """[B, L] left-padded histories -> [B, D] user vectors (the last position's state)."""
    return self(tokens, clusters, train=False, outputs=1)[:, -1]

  def item_vectors(self) -> jax.Array:
    """[num_items, D] output embeddings of the catalog in dense item order (row i = item i)."""
    return self.items.table[...][1:self.config.num_items + 1]


def build_model(config: SeqRecConfig, seed: int = 0) -> SeqRecModel:
  """A freshly initialised model (parameters and dropout streams from `seed`).

  Logical axes are kept as metadata only (eager sharding off); place the model
  on a mesh with `explore.partitioning` (the trainer does).
  """
  with nnx.use_eager_sharding(False):
    return SeqRecModel(config, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def forward_flops_per_example(config: SeqRecConfig, scored_items: int,
                              scored_positions: int | None = None) -> float:
  """Forward FLOPs of one length-`max_len` example, MaxText counting.

  2 FLOPs per multiply-add of every matmul: Q/K/V/output projections and the
  MLP per token, attention scores and mixing over the full (not halved causal)
  length, and the output layer over `scored_items` candidates at each of the
  `scored_positions` positions that have targets (default: every position).
  The last block computes only the scored positions (`SeqRecModel(outputs=)`):
  its K/V projections read every token, its queries, output projection, MLP
  and attention only the scored ones. Embedding lookups, norms and softmax are
  not counted.
  """
  d, f, length = config.embed_dim, config.hidden_dim, config.max_len
  scored_positions = length if scored_positions is None else scored_positions
  heads_dim = config.num_heads * config.head_dim
  key_value = 2 * 2 * d * heads_dim  # per token: the K and V projections
  per_query = 2 * (2 * d * heads_dim + 2 * d * f) + 2 * 2 * length * heads_dim  # Q, O, MLP, attn
  full_block = (key_value + per_query) * length
  last_block = key_value * length + per_query * scored_positions
  return float((config.num_blocks - 1) * full_block + last_block
               + 2 * d * scored_items * scored_positions)
