"""The pieces every trie-constrained decoder shares: cache rows, one model step, the level loop.

A decoder (beam search in `decoding`, sampling in `sampling`) encodes each
prompt once into a prompt cache of b rows and keeps k rows per prompt in a
cache of b * k rows that holds only their output tokens, each row with its
trie node; every row attends to its prompt's keys through the shared prefix
(`Decoder.decode(prefix=...)`), so following the beams copies output slots
only, never the prompt's. Its
step function runs once per trie level: the dense levels (and level 0) as
unrolled steps with their own static level, the CSR levels in one
`lax.while_loop` (`run_levels`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from explore.llm import features
from explore.llm import scoring
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


def prefill_rows(model: Decoder, prompts: jax.Array, prompt_lengths: jax.Array,
                 rows_per_prompt: int, num_slots: int, bos_id: int = features.BOS_ID
                 ) -> tuple[jax.Array, KVCache, KVCache]:
  """([b, V] first-token log-probs, the [b, P + 1] prompt cache, an empty [b * k, slots] cache).

  The row cache holds output tokens 0 .. num_slots - 1 of k rows per prompt;
  pass the prompt cache as `decode_tokens`' `prompt`.
  """
  first, prompt = scoring.prefill(model, prompts, prompt_lengths, 0, bos_id)
  rows = model.init_cache(prompts.shape[0] * rows_per_prompt, num_slots, dtype=jnp.float32)
  return first, prompt, rows


def decode_tokens(model: Decoder, cache: KVCache, tokens: jax.Array, prompt_lengths: jax.Array,
                  step: jax.Array, prompt: KVCache | None = None) -> tuple[jax.Array, KVCache]:
  """Feeds output token `step` of k rows per prompt: [b, k] ids -> ([b, k, V] log-probs, cache).

  With `prompt` (from `prefill_rows`) the rows attend to their prompt's cache
  as a shared prefix and `cache` holds only their output slots.
  """
  b, k = tokens.shape
  positions = jnp.repeat(prompt_lengths + 1 + step, k)[:, None]  # [b * k, 1]
  logits, cache = model.decode_step(tokens.reshape(b * k, 1), cache, positions, prompt)
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
