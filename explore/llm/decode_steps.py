"""The pieces every trie-constrained decoder shares: cache rows, one model step, the level loop.

A decoder (beam search in `decoding`, sampling in `sampling`) keeps k rows
per prompt in one KV cache of b * k rows, each row with its trie node. Its
step function runs once per trie level: the dense levels (and level 0) as
unrolled steps with their own static level, the CSR levels in one
`lax.while_loop` (`run_levels`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from explore.llm.decoder import Decoder
from explore.llm.decoder import KVCache
from explore.llm.trie import TrieArrays


class DecodingError(ValueError):
  """Decoding settings or inputs that cannot be used (beams, exclusions, shapes)."""


def gather_rows(cache: KVCache, parents: jax.Array) -> KVCache:
  """Cache rows [b * r] -> [b * k]: row (i, j) is old row (i, parents[i, j]); parents [b, k]."""
  b, k = parents.shape

  def take(x):
    grouped = x.reshape((b, -1) + x.shape[1:])  # [b, r, ...]
    index = parents.reshape((b, k) + (1,) * (x.ndim - 1))
    return jnp.take_along_axis(grouped, index, axis=1).reshape((b * k,) + x.shape[1:])

  return KVCache(keys=tuple(map(take, cache.keys)), values=tuple(map(take, cache.values)),
                 valid=take(cache.valid), index=cache.index)


def decode_tokens(model: Decoder, cache: KVCache, tokens: jax.Array, prompt_lengths: jax.Array,
                  step: jax.Array) -> tuple[jax.Array, KVCache]:
  """Feeds output token `step` of k rows per prompt: [b, k] ids -> ([b, k, V] log-probs, cache)."""
  b, k = tokens.shape
  positions = jnp.repeat(prompt_lengths + 1 + step, k)[:, None]  # [b * k, 1]
  logits, cache = model.decode_step(tokens.reshape(b * k, 1), cache, positions)
  return jax.nn.log_softmax(logits[:, 0]).reshape(b, k, -1), cache


def run_levels(trie: TrieArrays, state, step_fn, keep_going=None):
  """Runs step_fn(level, step, state) over the trie's levels: unrolled, then one while_loop.

  The dense levels (and level 0) are unrolled with their own static level;
  the rest run in a `lax.while_loop` with the first CSR level as the static
  level (its candidate width covers every level below), while `keep_going(state)`.
  """
  first_loop = min(max(trie.dense_levels, 1), trie.depth)
  for level in range(first_loop):
    state = step_fn(level, jnp.int32(level), state)
  if trie.depth > first_loop:
    keep_going = keep_going or (lambda state: jnp.bool_(True))
    cond = lambda carry: (carry[0] < trie.depth) & keep_going(carry[1])
    body = lambda carry: (carry[0] + 1, step_fn(first_loop, carry[0], carry[1]))
    _, state = jax.lax.while_loop(cond, body, (jnp.int32(first_loop), state))
  return state


def check_exclude(exclude: np.ndarray | None, n: int, num_clusters: int) -> np.ndarray:
  """[n, E] int32 excluded cluster ids (-1 padding; None: none); DecodingError if out of range."""
  if exclude is None:
    return np.full((n, 1), -1, np.int32)
  exclude = np.asarray(exclude, np.int32)
  if exclude.ndim != 2 or len(exclude) != n:
    raise DecodingError(f"exclude must be [n={n}, E] cluster ids, got shape {exclude.shape}")
  bad = exclude[(exclude < -1) | (exclude >= num_clusters)]
  if bad.size:
    raise DecodingError(f"exclude holds ids outside [-1, {num_clusters}): "
                        f"{sorted(set(bad.tolist()))[:5]}")
  if exclude.shape[1] == 0:
    exclude = np.full((n, 1), -1, np.int32)
  return exclude
