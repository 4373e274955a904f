"""Trie-constrained beam search: the top clusters the decoder would generate for a prompt.

Every prompt is encoded once into the KV cache (`scoring.prefill`), then k
beams per prompt advance one token per step, each carrying its trie node.
Each step the trie gives every beam's allowed next tokens
(`TrieArrays.candidates`: V on the dense first levels, the level's maximum
branching below), the b x (k * F) extended scores keep their top 2k, and:
- a candidate whose token is a leaf's EOS finishes a cluster: it enters the
  prompt's pool of the `top_n` best finished clusters;
- the best k of the others are the next beams (the cache rows follow them).
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
from explore.llm.decoder import Decoder
from explore.llm.decoder import KVCache
from explore.llm.trie import Candidates
from explore.llm.trie import ClusterTrie
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
  """Feeds output token `step` of k rows per prompt: tokens [b, k] -> ([b, k, V] log-probs, cache)."""
  b, k = tokens.shape
  positions = jnp.repeat(prompt_lengths + 1 + step, k)[:, None]  # [b * k, 1]
  logits, cache = model.decode_step(tokens.reshape(b * k, 1), cache, positions)
  return jax.nn.log_softmax(logits[:, 0]).reshape(b, k, -1), cache


@struct.dataclass
class _Beams:
  cache: KVCache  # b * k rows, following the beams
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


def select_beams(scores: jax.Array, cand: Candidates, clusters: jax.Array, num_beams: int,
                 pool_clusters: jax.Array, pool_scores: jax.Array, finish_scale: jax.Array
                 ) -> tuple[jax.Array, ...]:
  """One beam step: the next beams and the updated pool of finished clusters.

  Args:
    scores: [b, k] summed log-probs of the beams.
    cand: the beams' candidates, [b, k, F].
    clusters: [b, k, F] the cluster each candidate finishes, -1 if it does not.
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
  finished = pick(clusters)  # [b, 2k]
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
               prompt_lengths: jax.Array, allowed: jax.Array, length_normalize: bool) -> _Beams:
  """Advances every beam by one token at trie `level` (static; `step` is its index)."""
  cache, log_probs = beams.cache, beams.log_probs
  if level > 0:  # feed the tokens the last step chose; level 0 reads the prefill
    cache = gather_rows(cache, beams.parents)
    log_probs, cache = decode_tokens(model, cache, beams.tokens, prompt_lengths, step - 1)
  cand = trie.candidates(level, log_probs, beams.nodes, allowed)  # [b, k, F]
  scale = 1.0 / (step + 1).astype(jnp.float32) if length_normalize else jnp.float32(1.0)
  scores, parents, tokens, nodes, pool_clusters, pool_scores = select_beams(
      beams.scores, cand, trie.leaf_cluster[cand.nodes], beams.nodes.shape[1],
      beams.pool_clusters, beams.pool_scores, scale)
  return _Beams(cache=cache, log_probs=log_probs, nodes=nodes, scores=scores, parents=parents,
                tokens=tokens, pool_clusters=pool_clusters, pool_scores=pool_scores)


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
  first, cache = scoring.prefill(model, prompts, prompt_lengths, trie.depth - 1, bos_id)
  k = num_beams
  beams = _Beams(
      cache=gather_rows(cache, jnp.zeros((b, k), jnp.int32)),
      log_probs=jnp.broadcast_to(first[:, None], (b, k, first.shape[-1])),
      nodes=jnp.zeros((b, k), jnp.int32),
      scores=jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf) * jnp.ones((b, 1)),  # [b, k]
      parents=jnp.broadcast_to(jnp.arange(k), (b, k)), tokens=jnp.zeros((b, k), jnp.int32),
      pool_clusters=jnp.full((b, top_n), -1, jnp.int32),
      pool_scores=jnp.full((b, top_n), -jnp.inf, jnp.float32))
  allowed = trie.allowed_leaf_counts(exclude)  # [b, N]
  step = lambda level, i, state: _beam_step(model, trie, level, i, state, prompt_lengths,
                                            allowed, length_normalize)
  stop = _improvable if early_stop and not length_normalize else None
  beams = run_levels(trie, beams, step, stop)
  return beams.pool_clusters, beams.pool_scores


def check_exclude(exclude: np.ndarray | None, n: int, num_clusters: int) -> np.ndarray:
  """[n, E] int32 excluded cluster ids (-1 padding; None: none); DecodingError if out of range."""
  if exclude is None:
    return np.full((n, 1), -1, np.int32)
  exclude = np.asarray(exclude, np.int32)
  if exclude.ndim != 2 or len(exclude) != n:
    raise DecodingError(f"exclude must be [n={n}, E] cluster ids, got shape {exclude.shape}")
  if exclude.size and (exclude.min() < -1 or exclude.max() >= num_clusters):
    raise DecodingError(f"exclude holds ids outside [-1, {num_clusters}): "
                        f"{sorted(set(exclude[(exclude < -1) | (exclude >= num_clusters)].tolist()))[:5]}")
  if exclude.shape[1] == 0:
    exclude = np.full((n, 1), -1, np.int32)
  return exclude


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

  def __init__(self, model: Decoder, trie: ClusterTrie, num_beams: int = 8, top_n: int = 10,
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
                num_beams: int = 8, top_n: int = 10, bos_id: int = features.BOS_ID,
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


# Sampling ---------------------------------------------------------------------------


@struct.dataclass
class _Samples:
  cache: KVCache  # b * S rows
  log_probs: jax.Array  # [b, S, V] next-token log-probs of each sample
  nodes: jax.Array  # [b, S] trie node reached
  tokens: jax.Array  # [b, S] the token to feed next
  totals: jax.Array  # [b, S] summed model log-prob of the tokens so far
  clusters: jax.Array  # [b, S] the finished cluster, -1 while unfinished
  key: jax.Array


def _sample_step(model: Decoder, trie: TrieArrays, level: int, step: jax.Array, s: _Samples,
                 prompt_lengths: jax.Array, allowed: jax.Array, temperature: float) -> _Samples:
  """Draws every unfinished sample's next token among the allowed ones."""
  cache, log_probs = s.cache, s.log_probs
  if level > 0:
    log_probs, cache = decode_tokens(model, cache, s.tokens, prompt_lengths, step - 1)
  cand = trie.candidates(level, log_probs, s.nodes, allowed)  # [b, S, F]
  key, draw = jax.random.split(s.key)
  choice = jax.random.categorical(draw, cand.log_probs / temperature, axis=-1)  # [b, S]
  take = lambda x: jnp.take_along_axis(x, choice[..., None], axis=-1)[..., 0]  # [b, S]
  live = (s.clusters < 0) & jnp.any(jnp.isfinite(cand.log_probs), axis=-1)  # [b, S]
  nodes = jnp.where(live, take(cand.nodes), s.nodes)
  return _Samples(cache=cache, log_probs=log_probs, nodes=nodes,
                  tokens=jnp.where(live, take(cand.tokens), 0),
                  totals=jnp.where(live, s.totals + take(cand.log_probs), s.totals),
                  clusters=jnp.where(live, trie.leaf_cluster[nodes], s.clusters), key=key)


def sample_chunk(model: Decoder, trie: TrieArrays, prompts: jax.Array, prompt_lengths: jax.Array,
                 exclude: jax.Array, key: jax.Array, num_samples: int, temperature: float,
                 bos_id: int = features.BOS_ID) -> tuple[jax.Array, jax.Array]:
  """([b, S] clusters, [b, S] model log-probs) of a chunk of prompts; see `constrained_sample`."""
  b, n = prompts.shape[0], num_samples
  first, cache = scoring.prefill(model, prompts, prompt_lengths, trie.depth - 1, bos_id)
  samples = _Samples(
      cache=gather_rows(cache, jnp.zeros((b, n), jnp.int32)),
      log_probs=jnp.broadcast_to(first[:, None], (b, n, first.shape[-1])),
      nodes=jnp.zeros((b, n), jnp.int32), tokens=jnp.zeros((b, n), jnp.int32),
      totals=jnp.zeros((b, n), jnp.float32), clusters=jnp.full((b, n), -1, jnp.int32), key=key)
  allowed = trie.allowed_leaf_counts(exclude)  # [b, N]
  step = lambda level, i, state: _sample_step(model, trie, level, i, state, prompt_lengths,
                                              allowed, temperature)
  samples = run_levels(trie, samples, step, lambda state: jnp.any(state.clusters < 0))
  return samples.clusters, jnp.where(samples.clusters >= 0, samples.totals, -jnp.inf)


def constrained_sample(model: Decoder, trie: ClusterTrie, prompts: np.ndarray,
                       prompt_lengths: np.ndarray, exclude: np.ndarray | None = None,
                       num_samples: int = 8, temperature: float = 1.0,
                       rng: jax.Array | int = 0, bos_id: int = features.BOS_ID
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Samples clusters token by token from the decoder, restricted to allowed clusters.

  Each step draws from softmax(log P(token | prefix) / temperature) over the
  tokens that lead to an allowed cluster (the constrained distribution: the
  model's next-token distribution renormalised over the trie's allowed
  children), so every sample is a valid, non-excluded cluster.

  Args:
    prompts, prompt_lengths, exclude, bos_id: as in `beam_search`.
    num_samples: S samples per prompt (independent; repeats are possible).
    temperature: > 0; 1 samples the constrained model distribution.
    rng: a jax PRNG key or an int seed.
  Returns:
    ([b, S] int32 clusters, [b, S] float32 log P(description + EOS | prompt)
    under the unconstrained model, the exact scorer's score); -1 / -inf where
    a prompt has no allowed cluster.
  """
  if num_samples < 1 or not temperature > 0:
    raise DecodingError(f"need num_samples >= 1 and temperature > 0, got {num_samples} and "
                        f"{temperature}")
  prompts, prompt_lengths = scoring.check_prompts(prompts, prompt_lengths)
  exclude = check_exclude(exclude, len(prompts), trie.num_clusters)
  key = jax.random.key(rng) if isinstance(rng, int) else rng
  graphdef, state = nnx.split(model)

  @jax.jit
  def sample(state, prompts, prompt_lengths, exclude, key, trie_arrays):
    return sample_chunk(nnx.merge(graphdef, state), trie_arrays, prompts, prompt_lengths,
                        exclude, key, num_samples, float(temperature), int(bos_id))

  clusters, scores = sample(state, prompts, prompt_lengths, exclude, key, trie.arrays())
  return np.asarray(clusters), np.asarray(scores)


def best_of_n(model: Decoder, trie: ClusterTrie, prompts: np.ndarray,
              prompt_lengths: np.ndarray, exclude: np.ndarray | None = None, n: int = 8,
              scorer=None, temperature: float = 1.0, rng: jax.Array | int = 0,
              top_n: int = 1, bos_id: int = features.BOS_ID) -> tuple[np.ndarray, np.ndarray]:
  """The best of n constrained samples per prompt under `scorer`.

  Args:
    prompts, prompt_lengths, exclude, temperature, rng, bos_id: as in
      `constrained_sample`.
    n: samples drawn per prompt.
    scorer: None (the model's own log P(cluster | prompt)) or a callable
      `scorer(prompts [b, P], prompt_lengths [b], clusters [b, n]) -> [b, n]`
      (higher is better; clusters are valid ids, -1 only where a prompt has
      no allowed cluster). A planner that scores every cluster from the
      requests' histories (`scores(history) -> [b, M]`) plugs in through
      `per_cluster_scorer`.
    top_n: distinct clusters returned per prompt.
  Returns:
    ([b, top_n] int32 clusters, [b, top_n] float32 scores), best first; -1 /
    -inf where fewer than top_n distinct clusters were sampled.
  """
  clusters, model_scores = constrained_sample(model, trie, prompts, prompt_lengths, exclude, n,
                                              temperature, rng, bos_id)
  scores = model_scores if scorer is None else np.asarray(
      scorer(np.asarray(prompts), np.asarray(prompt_lengths), clusters), np.float32)
  if scores.shape != clusters.shape:
    raise DecodingError(f"best_of_n: the scorer returned shape {scores.shape}, expected "
                        f"{clusters.shape} (one score per sample)")
  scores = np.where(clusters >= 0, scores, -np.inf)
  order = np.argsort(-scores, axis=1, kind="stable")  # [b, n]
  clusters = np.take_along_axis(clusters, order, 1)
  scores = np.take_along_axis(scores, order, 1)
  repeat = np.zeros(clusters.shape, bool)  # a cluster already ranked higher in its row
  for j in range(1, clusters.shape[1]):
    repeat[:, j] = np.any(clusters[:, :j] == clusters[:, j:j + 1], axis=1)
  scores = np.where(repeat | (clusters < 0), -np.inf, scores)
  order = np.argsort(-scores, axis=1, kind="stable")[:, :top_n]
  scores = np.take_along_axis(scores, order, 1)
  clusters = np.where(np.isfinite(scores), np.take_along_axis(clusters, order, 1), -1)
  if top_n > clusters.shape[1]:
    pad = top_n - clusters.shape[1]
    clusters = np.pad(clusters, ((0, 0), (0, pad)), constant_values=-1)
    scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
  return clusters.astype(np.int32), scores.astype(np.float32)


def per_cluster_scorer(scores_fn):
  """A `best_of_n` scorer from `scores_fn(prompts, prompt_lengths) -> [b, M]` (every cluster).

  E.g. `per_cluster_scorer(lambda p, l: planner.scores(histories))` for a
  planner whose rows are the prompts' histories.
  """

  def scorer(prompts, prompt_lengths, clusters):
    table = np.asarray(scores_fn(prompts, prompt_lengths), np.float32)  # [b, M]
    return np.take_along_axis(table, np.maximum(clusters, 0), axis=1)  # [b, n]

  return scorer
