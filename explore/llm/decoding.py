"""Trie-constrained beam search: the top clusters the decoder would generate for a prompt.

Every prompt is encoded once into a prompt cache (`scoring.prefill`), then k
beams per prompt advance one token per step, each carrying its trie node and
attending to the prompt's cache as a shared prefix (`decode_steps`).
Each step the trie gives every beam's allowed next tokens
(`TrieArrays.candidates`: V on the dense first levels, the level's maximum
branching below), the b x (k * F) extended scores keep their top 2k, and:
- a candidate whose token is a leaf's EOS finishes a cluster: it enters the
  prompt's pool of the `top_n` best finished clusters;
- the best k of the others are the next beams (their output-slot cache rows follow).
A cluster's score is log P(description + EOS | prompt), the exact scorer's
summed score (`scoring.CandidateScorer`), or its mean per token with
`length_normalize`. Every finished cluster is distinct (a leaf has one path).
The loop stops after the trie's depth, or as soon as no live beam can still
beat a prompt's n-th finished score (summed log-probabilities only fall), so
with enough beams the pool is the exact top-n.

The first `dense_levels` levels (and level 0) run as unrolled steps (their
candidate width V differs from the CSR levels'); the CSR levels run in one
`lax.while_loop` with the largest branching of those levels as width.
"""

from __future__ import annotations

from flax import nnx
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from explore.llm import features
from explore.llm import scoring
from explore.llm.decode_steps import DecodingError
from explore.llm.decode_steps import check_exclude
from explore.llm.decode_steps import decode_tokens
from explore.llm.decode_steps import gather_rows
from explore.llm.decode_steps import prefill_rows
from explore.llm.decode_steps import run_levels
from explore.llm.decoder import Decoder
from explore.llm.decoder import KVCache
from explore.llm.sampling import best_of_n  # pylint: disable=unused-import
from explore.llm.sampling import constrained_sample  # pylint: disable=unused-import
from explore.llm.sampling import per_cluster_scorer  # pylint: disable=unused-import
from explore.llm.trie import Candidates
from explore.llm.trie import ClusterTrie
from explore.llm.trie import Exclusion
from explore.llm.trie import TrieArrays


@struct.dataclass
class _Beams:
  cache: KVCache  # b * k rows of output slots, following the beams
  log_probs: jax.Array  # [b, k, V] next-token log-probs of each beam
  nodes: jax.Array  # [b, k] trie node of each beam
  scores: jax.Array  # [b, k] summed log-prob, -inf on empty beams
  parents: jax.Array  # [b, k] the beam each beam extends (cache rows still to gather)
  tokens: jax.Array  # [b, k] the token each beam adds (still to feed)
  pool_clusters: jax.Array  # [b, n] best finished clusters, -1 where none
  pool_scores: jax.Array  # [b, n]


def _top(values: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """lax.top_k over the last axis, padded with -inf when it is shorter than k."""
  short = k - values.shape[-1]
  if short > 0:
    values = jnp.pad(values, [(0, 0)] * (values.ndim - 1) + [(0, short)],
                     constant_values=-jnp.inf)
  return jax.lax.top_k(values, k)


def select_beams(scores: jax.Array, cand: Candidates, leaf_cluster: jax.Array | None,
                 num_beams: int,
                 pool_clusters: jax.Array, pool_scores: jax.Array, finish_scale: jax.Array
                 ) -> tuple[jax.Array, ...]:
  """One beam step: the next beams and the updated pool of finished clusters.

  Args:
    scores: [b, k] summed log-probs of the beams.
    cand: the beams' candidates, [b, k, F].
    leaf_cluster: [N] the cluster a node ends, -1 on inner nodes (None: none ends).
    num_beams: beams kept per prompt.
    pool_clusters, pool_scores: [b, n] finished so far, best first.
    finish_scale: multiplies a finished summed score (1, or 1 / tokens).
  Returns:
    (scores, parents, tokens, nodes) of the new beams, each [b, num_beams],
    and the new (pool_clusters, pool_scores).
  """
  b, k, f = cand.log_probs.shape
  total = (scores[..., None] + cand.log_probs).reshape(b, k * f)  # [b, k * F]
  top_scores, index = _top(total, 2 * num_beams)  # [b, 2k]; at most k of them finish
  index = jnp.minimum(index, k * f - 1)
  pick = lambda x: jnp.take_along_axis(x.reshape(b, k * f), index, axis=1)  # [b, 2k]
  finished = (jnp.full(index.shape, -1, jnp.int32) if leaf_cluster is None
              else leaf_cluster[pick(cand.nodes)])  # [b, 2k]
  ends = (finished >= 0) & jnp.isfinite(top_scores)
  merged = jnp.concatenate([pool_scores, jnp.where(ends, top_scores * finish_scale, -jnp.inf)], 1)
  pool_scores, at = jax.lax.top_k(merged, pool_scores.shape[1])  # [b, n]
  pool_clusters = jnp.take_along_axis(
      jnp.concatenate([pool_clusters, jnp.where(ends, finished, -1)], 1), at, axis=1)
  pool_clusters = jnp.where(jnp.isfinite(pool_scores), pool_clusters, -1)
  live, keep = jax.lax.top_k(jnp.where(finished >= 0, -jnp.inf, top_scores), num_beams)
  chosen = lambda x: jnp.take_along_axis(x, keep, axis=1)  # [b, k']
  return (live, chosen(index // f), chosen(pick(cand.tokens)), chosen(pick(cand.nodes)),
          pool_clusters, pool_scores)


def _beam_step(model: Decoder, trie: TrieArrays, level: int, step: jax.Array, beams: _Beams,
               prompt: KVCache, prompt_lengths: jax.Array, exclusion: Exclusion,
               length_normalize: bool) -> _Beams:
  """Advances every beam by one token at trie `level` (static; `step` is its index)."""
  cache, log_probs = beams.cache, beams.log_probs
  if level > 0:  # feed the tokens the last step chose; level 0 reads the prefill
    cache = gather_rows(cache, beams.parents)
    log_probs, cache = decode_tokens(model, cache, beams.tokens, prompt_lengths, step - 1,
                                     prompt)
  cand = trie.candidates(level, log_probs, beams.nodes, exclusion)  # [b, k, F]
  scale = 1.0 / (step + 1).astype(jnp.float32) if length_normalize else jnp.float32(1.0)
  scores, parents, tokens, nodes, pool_clusters, pool_scores = select_beams(
      beams.scores, cand, trie.leaf_cluster, beams.nodes.shape[1],
      beams.pool_clusters, beams.pool_scores, scale)
  return _Beams(cache=cache, log_probs=log_probs, nodes=nodes, scores=scores, parents=parents,
                tokens=tokens, pool_clusters=pool_clusters, pool_scores=pool_scores)


def _improvable(beams: _Beams) -> jax.Array:
  """Whether some live beam can still beat its prompt's n-th finished score."""
  return jnp.any(jnp.max(beams.scores, axis=1) > beams.pool_scores[:, -1])


def beam_search_chunk(model: Decoder, trie: TrieArrays, prompts: jax.Array,
                      prompt_lengths: jax.Array, exclude: jax.Array, num_beams: int,
                      top_n: int, bos_id: int = features.BOS_ID,
                      length_normalize: bool = False, early_stop: bool = True
                      ) -> tuple[jax.Array, jax.Array]:
  """([b, top_n] clusters, [b, top_n] scores) of a chunk of prompts; see `beam_search`."""
  b = prompts.shape[0]
  k = num_beams
  first, prompt, cache = prefill_rows(model, prompts, prompt_lengths, k, trie.depth - 1, bos_id)
  beams = _Beams(
      cache=cache,
      log_probs=jnp.broadcast_to(first[:, None], (b, k, first.shape[-1])),
      nodes=jnp.zeros((b, k), jnp.int32),
      scores=jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf) * jnp.ones((b, 1)),  # [b, k]
      parents=jnp.broadcast_to(jnp.arange(k), (b, k)), tokens=jnp.zeros((b, k), jnp.int32),
      pool_clusters=jnp.full((b, top_n), -1, jnp.int32),
      pool_scores=jnp.full((b, top_n), -jnp.inf, jnp.float32))
  exclusion = trie.exclusion(exclude)
  step = lambda level, i, state: _beam_step(model, trie, level, i, state, prompt,
                                            prompt_lengths, exclusion, length_normalize)
  stop = _improvable if early_stop and not length_normalize else None
  beams = run_levels(trie, beams, step, stop)
  return beams.pool_clusters, beams.pool_scores


def full_vocab_beam_search_chunk(model: Decoder, prompts: jax.Array, prompt_lengths: jax.Array,
                                 num_beams: int, num_steps: int, bos_id: int = features.BOS_ID
                                 ) -> tuple[jax.Array, jax.Array]:
  """Unconstrained beam search of exactly `num_steps` tokens over the whole vocabulary.

  The baseline the trie is measured against (`bench/decode.py`): the same
  prefill, cache gathers and beam selection as `beam_search_chunk`, with
  every token a candidate at every step and nothing finishing early.
  Returns ([b, k, num_steps] int32 token ids, [b, k] summed log-probs), best first.
  """
  b, k = prompts.shape[0], num_beams
  first, prompt, cache = prefill_rows(model, prompts, prompt_lengths, k, num_steps - 1, bos_id)
  v = first.shape[-1]
  no_pool = (jnp.zeros((b, 1), jnp.int32), jnp.full((b, 1), -jnp.inf, jnp.float32))

  def select(scores, log_probs, history, step):
    cand = Candidates(tokens=jnp.broadcast_to(jnp.arange(v, dtype=jnp.int32), (b, k, v)),
                      log_probs=log_probs, nodes=jnp.zeros((b, k, v), jnp.int32))
    scores, parents, tokens, _, _, _ = select_beams(
        scores, cand, None, k, *no_pool, jnp.float32(1.0))
    history = jnp.take_along_axis(history, parents[..., None], axis=1)  # [b, k, T]
    return scores, parents, tokens, history.at[:, :, step].set(tokens)

  def body(step, carry):
    cache, scores, parents, tokens, history = carry
    cache = gather_rows(cache, parents)
    log_probs, cache = decode_tokens(model, cache, tokens, prompt_lengths, step - 1, prompt)
    return (cache,) + select(scores, log_probs, history, step)

  scores = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf) * jnp.ones((b, 1))  # [b, k]
  history = jnp.zeros((b, k, num_steps), jnp.int32)
  carry = (cache,) + select(
      scores, jnp.broadcast_to(first[:, None], (b, k, v)), history, 0)
  _, scores, _, _, history = jax.lax.fori_loop(1, num_steps, body, carry)
  return history, scores


class ConstrainedDecoder:
  """Trie-constrained beam search over chunks of prompts, one compiled function per chunk shape.

  A model whose state lives on a device mesh decodes data parallel: each chunk
  is split over the mesh's batch axes (as `scoring.CandidateScorer` scores).

  Args:
    model: the trained decoder.
    trie: the clusters' `ClusterTrie` (built with the model's tokenizer).
    num_beams: beams per prompt (>= top_n; more beams, closer to the exact top-n).
    top_n: clusters returned per prompt.
    bos_id: the first decoder input (seqio's 0, or a pretrained model's BOS).
    prompts_per_chunk: prompts per call, rounded up to a multiple of the
      mesh's data-parallel size.
    length_normalize: rank finished clusters by mean instead of summed token
      log-probability (as the exact scorer's `length_normalize`; the search is
      then no longer exact: beams are still pruned by their summed score).
    early_stop: stop once no live beam can still enter the top-n (exact for
      summed scores); False runs every level (for timing).
  """

  def __init__(self, model: Decoder, trie: ClusterTrie, num_beams: int = 16, top_n: int = 10,
               bos_id: int = features.BOS_ID, prompts_per_chunk: int = 64,
               length_normalize: bool = False, early_stop: bool = True):
    if top_n < 1 or num_beams < top_n:
      raise DecodingError(f"need 1 <= top_n <= num_beams, got top_n={top_n}, "
                          f"num_beams={num_beams}")
    if trie.vocab_size > model.config.vocab_size:
      raise DecodingError(f"the trie's vocabulary ({trie.vocab_size}) is larger than the "
                          f"model's ({model.config.vocab_size})")
    if prompts_per_chunk < 1:
      raise DecodingError(f"prompts_per_chunk={prompts_per_chunk} must be >= 1")
    self.trie = trie
    self.top_n = top_n
    graphdef, state = nnx.split(model)
    self._state = state
    self._trie_arrays = trie.arrays()

    def decode(state, prompts, prompt_lengths, exclude, trie_arrays):
      return beam_search_chunk(nnx.merge(graphdef, state), trie_arrays, prompts, prompt_lengths,
                               exclude, num_beams, top_n, int(bos_id), length_normalize,
                               early_stop)

    self._decode, shards = scoring.data_parallel_jit(decode, state, in_ndims=(2, 1, 2, None),
                                                     out_ndims=(2, 2))
    self.prompts_per_chunk = -(-prompts_per_chunk // shards) * shards

  def __call__(self, prompts: np.ndarray, prompt_lengths: np.ndarray,
               exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([n, top_n] int32 clusters, [n, top_n] float32 scores), best first, -1 / -inf padding.

    prompts [n, P] int32 right-padded with 0 (ids incl. the prompt's EOS),
    prompt_lengths [n], exclude [n, E] cluster ids never returned (-1 padding).
    """
    prompts, prompt_lengths = scoring.check_prompts(prompts, prompt_lengths)
    exclude = check_exclude(exclude, len(prompts), self.trie.num_clusters)
    if not len(prompts):
      return (np.zeros((0, self.top_n), np.int32), np.zeros((0, self.top_n), np.float32))
    clusters, scores = scoring.run_in_chunks(
        lambda p, l, e: self._decode(self._state, p, l, e, self._trie_arrays),
        (prompts, prompt_lengths, exclude), self.prompts_per_chunk)
    return clusters, scores


def beam_search(model: Decoder, trie: ClusterTrie, prompts: np.ndarray,
                prompt_lengths: np.ndarray, exclude: np.ndarray | None = None,
                num_beams: int = 16, top_n: int = 10, bos_id: int = features.BOS_ID,
                length_normalize: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """The top-n distinct clusters per prompt by log P(description + EOS | prompt).

  Args:
    prompts: [b, P] int32 right-padded with 0 (ids incl. the prompt's EOS).
    prompt_lengths: [b] int32.
    exclude: [b, E] int32 cluster ids never returned (-1 padding), e.g. the history.
    num_beams, top_n, bos_id, length_normalize: see `ConstrainedDecoder`.
  Returns:
    ([b, top_n] int32 clusters, [b, top_n] float32 log-probs), best first;
    -1 / -inf where fewer than top_n clusters are allowed.
  """
  decoder = ConstrainedDecoder(model, trie, num_beams, top_n, bos_id,
                               prompts_per_chunk=max(len(prompts), 1),
                               length_normalize=length_normalize)
  return decoder(prompts, prompt_lengths, exclude)
