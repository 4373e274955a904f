"""Trie-constrained sampling and best-of-n: random valid clusters from the decoder.

Each sample walks the trie from the root, drawing its next token from the
model's next-token distribution (at a temperature) renormalised over the
children that still lead to an allowed cluster, so every sample is a real,
non-excluded cluster. Its score is the unconstrained model's
log P(description + EOS | prompt), the exact scorer's quantity, which
`best_of_n` ranks by unless it is given another scorer.
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
from explore.llm.decode_steps import prefill_rows
from explore.llm.decode_steps import run_levels
from explore.llm.decoder import Decoder
from explore.llm.decoder import KVCache
from explore.llm.trie import ClusterTrie
from explore.llm.trie import Exclusion
from explore.llm.trie import TrieArrays


@struct.dataclass
class _Samples:
  cache: KVCache  # b * S rows of output slots (the prompt is a shared prefix)
  log_probs: jax.Array  # [b, S, V] next-token log-probs of each sample
  nodes: jax.Array  # [b, S] trie node reached
  tokens: jax.Array  # [b, S] the token to feed next
  totals: jax.Array  # [b, S] summed model log-prob of the tokens so far
  clusters: jax.Array  # [b, S] the finished cluster, -1 while unfinished
  key: jax.Array


def _sample_step(model: Decoder, trie: TrieArrays, level: int, step: jax.Array, s: _Samples,
                 prompt: KVCache, prompt_lengths: jax.Array, exclusion: Exclusion,
                 temperature: float) -> _Samples:
  """Draws every unfinished sample's next token among the allowed ones."""
  cache, log_probs = s.cache, s.log_probs
  if level > 0:
    log_probs, cache = decode_tokens(model, cache, s.tokens, prompt_lengths, step - 1, prompt)
  cand = trie.candidates(level, log_probs, s.nodes, exclusion)  # [b, S, F]
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
  first, prompt, cache = prefill_rows(model, prompts, prompt_lengths, n, trie.depth - 1, bos_id)
  samples = _Samples(
      cache=cache,
      log_probs=jnp.broadcast_to(first[:, None], (b, n, first.shape[-1])),
      nodes=jnp.zeros((b, n), jnp.int32), tokens=jnp.zeros((b, n), jnp.int32),
      totals=jnp.zeros((b, n), jnp.float32), clusters=jnp.full((b, n), -1, jnp.int32), key=key)
  exclusion = trie.exclusion(exclude)
  step = lambda level, i, state: _sample_step(model, trie, level, i, state, prompt,
                                              prompt_lengths, exclusion, temperature)
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
