"""Ranking every cluster for a prompt by the decoder's likelihood of its description.

"Outputs mapped to clusters": each of the M cluster descriptions (+ EOS) is a
valid output, and the planner's score of cluster c after prompt p is the
teacher-forced log-likelihood log P(description_c + EOS | p), the same
quantity the model is trained to raise. The prompt is encoded once with the
KV cache, the cache is repeated for the M candidates and all candidates are
decoded in one batched call, so a chunk of prompts costs one jitted function
with static shapes ([prompts, P] and [M, T]).

A model whose state lives on a device mesh (a trained model from the
`Trainer`) is scored data parallel: each chunk of prompts is split over the
mesh's batch axes, so every device scores its own prompts against all
candidates instead of every device repeating the whole chunk.

Summed log-likelihood (the default) is the probability of generating exactly
that description, which is what a sampling planner would do; with
`length_normalize` the score is the mean per-token log-likelihood instead,
which stops long descriptions from being penalised for their length.
"""

from __future__ import annotations

from typing import Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from explore import partitioning
from explore import progress
from explore.llm import features
from explore.llm.decoder import Decoder


class ScoringError(ValueError):
  """Prompts or candidates that cannot be scored (shapes, lengths, empty inputs)."""


def pad_token_lists(token_lists: Sequence[Sequence[int]], name: str
                    ) -> tuple[np.ndarray, np.ndarray]:
  """([n, max_len] int32 right-padded with 0, [n] int32 lengths) of token lists."""
  if not len(token_lists):
    raise ScoringError(f"{name}: no token lists given")
  lengths = np.asarray([len(t) for t in token_lists], np.int32)  # [n]
  if lengths.min() < 1:
    raise ScoringError(f"{name}: entry {int(np.argmin(lengths))} has no tokens")
  tokens = np.zeros((len(token_lists), int(lengths.max())), np.int32)
  for i, ids in enumerate(token_lists):
    tokens[i, :len(ids)] = ids
  return tokens, lengths


def _score_chunk(model: Decoder, prompts: jax.Array, prompt_lengths: jax.Array,
                 candidates: jax.Array, candidate_lengths: jax.Array,
                 length_normalize: bool, bos_id: int = features.BOS_ID) -> jax.Array:
  """[b, M] log P(candidate + EOS | prompt) for a chunk of prompts (see `CandidateScorer`)."""
  b, p = prompts.shape
  m, t = candidates.shape
  # Decoder inputs are the targets shifted right: BOS, then prompt + EOS.
  inputs = jnp.concatenate([jnp.full((b, 1), bos_id, prompts.dtype), prompts], 1)
  real = jnp.arange(p + 1)[None, :] <= prompt_lengths[:, None]  # [b, P + 1]
  cache = model.init_cache(b, p + t, dtype=jnp.float32)
  positions = jnp.broadcast_to(jnp.arange(p + 1), (b, p + 1))
  logits, cache = model.decode(inputs, cache, positions, padding_mask=real)  # [b, P + 1, V]
  # The logits at the prompt's EOS predict the candidate's first token.
  first = jax.nn.log_softmax(logits[jnp.arange(b), prompt_lengths])  # [b, V]
  scores = first[:, candidates[:, 0]]  # [b, M]
  if t > 1:
    rows = jnp.repeat(jnp.arange(b), m)  # [b * M], prompt of each (prompt, candidate) row
    cache = cache.gather(rows)
    cand_inputs = jnp.tile(candidates[:, :-1], (b, 1))  # [b * M, T - 1]
    cand_targets = jnp.tile(candidates[:, 1:], (b, 1))  # [b * M, T - 1]
    lengths = jnp.tile(candidate_lengths, b)  # [b * M]
    steps = jnp.arange(t - 1)[None, :]  # [1, T - 1]
    weights = steps + 1 < lengths[:, None]  # [b * M, T - 1] on real target tokens
    cand_positions = prompt_lengths[rows][:, None] + 1 + steps  # [b * M, T - 1]
    logits, _ = model.decode(cand_inputs, cache, cand_positions, padding_mask=weights)
    logp = jax.nn.log_softmax(logits)  # [b * M, T - 1, V]
    token_logp = jnp.take_along_axis(logp, cand_targets[..., None], axis=-1)[..., 0]
    scores = scores + jnp.sum(jnp.where(weights, token_logp, 0.0), axis=1).reshape(b, m)
  if length_normalize:
    scores = scores / candidate_lengths[None, :].astype(jnp.float32)
  return scores


class CandidateScorer:
  """Scores all M candidates after each prompt with one compiled function per chunk shape.

  Args:
    model: the trained decoder.
    candidates: [M, T] int32 candidate ids (+ EOS), right-padded with 0.
    candidate_lengths: [M] int32, including EOS.
    length_normalize: mean instead of summed token log-likelihood.
    prompts_per_chunk: prompts scored per call (None: about 2048 candidate rows);
      rounded up to a multiple of the mesh's data-parallel size.
    bos_id: the first decoder input (seqio's 0, or a pretrained model's BOS).
  """

  def __init__(self, model: Decoder, candidates: np.ndarray, candidate_lengths: np.ndarray,
               length_normalize: bool = False, prompts_per_chunk: int | None = None,
               bos_id: int = features.BOS_ID):
    candidates = np.asarray(candidates, np.int32)
    candidate_lengths = np.asarray(candidate_lengths, np.int32)
    if candidates.ndim != 2 or candidate_lengths.shape != (candidates.shape[0],):
      raise ScoringError(f"candidates must be [M, T] with lengths [M], got {candidates.shape} "
                         f"and {candidate_lengths.shape}")
    if (candidate_lengths.min() < 1 or candidate_lengths.max() > candidates.shape[1]):
      raise ScoringError(f"candidate lengths must be in [1, {candidates.shape[1]}]")
    t = int(candidate_lengths.max())
    self.candidates = candidates[:, :max(t, 1)]
    self.candidate_lengths = candidate_lengths
    m = len(candidates)
    graphdef, state = nnx.split(model)
    self._state = state
    mesh = _state_mesh(state)
    shards = 1
    jit_kwargs = {}
    if mesh is not None and mesh.size > 1:
      # [chunk, ...] inputs and the [chunk, M] output split over the batch axes;
      # the model state keeps the shardings it already has.
      rows = partitioning.batch_sharding(mesh, ndim=2)
      lengths = partitioning.batch_sharding(mesh, ndim=1)
      replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
      shards = _batch_shards(rows)
      state_shardings = jax.tree.map(lambda x: getattr(x, "sharding", replicated), state)
      jit_kwargs = dict(in_shardings=(state_shardings, rows, lengths,
                                      replicated, replicated), out_shardings=rows)
    chunk = prompts_per_chunk or max(1, 2048 // m)
    self.prompts_per_chunk = -(-chunk // shards) * shards

    def score(state, prompts, prompt_lengths, cands, cand_lengths):
      return _score_chunk(nnx.merge(graphdef, state), prompts, prompt_lengths, cands,
                          cand_lengths, length_normalize, int(bos_id))

    self._score = jax.jit(score, **jit_kwargs)

  def __call__(self, prompts: np.ndarray, prompt_lengths: np.ndarray) -> np.ndarray:
    """[n, M] float32 scores of every candidate after each of n prompts ([n, P], [n])."""
    prompts = np.asarray(prompts, np.int32)
    prompt_lengths = np.asarray(prompt_lengths, np.int32)
    n = len(prompts)
    if prompts.ndim != 2 or prompt_lengths.shape != (n,):
      raise ScoringError(f"prompts must be [n, P] with lengths [n], got {prompts.shape} "
                         f"and {prompt_lengths.shape}")
    if n and (prompt_lengths.min() < 1 or prompt_lengths.max() > prompts.shape[1]):
      raise ScoringError(f"prompt lengths must be in [1, {prompts.shape[1]}]")
    c = self.prompts_per_chunk
    out = np.zeros((n, len(self.candidates)), np.float32)
    bar = progress.Progress("hit@k scoring", total=n, unit="prompts")
    for start in range(0, n, c):
      chunk = prompts[start:start + c]
      lengths = prompt_lengths[start:start + c]
      real = len(chunk)
      if real < c:  # pad the last chunk: one compiled shape
        chunk = np.concatenate([chunk, np.repeat(chunk[:1], c - real, 0)])
        lengths = np.concatenate([lengths, np.repeat(lengths[:1], c - real)])
      scores = self._score(self._state, chunk, lengths, self.candidates, self.candidate_lengths)
      out[start:start + real] = np.asarray(scores)[:real]
      bar.update(real)
    bar.close()
    return out


def _state_mesh(state) -> jax.sharding.Mesh | None:
  """The mesh a model state is placed on, None for single-device or host state."""
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return sharding.mesh
  return None


def _batch_shards(sharding: jax.sharding.NamedSharding) -> int:
  """How many pieces a sharding splits its leading (batch) dimension into."""
  axes = sharding.spec[0] if len(sharding.spec) else None
  if axes is None:
    return 1
  axes = (axes,) if isinstance(axes, str) else axes
  return int(np.prod([sharding.mesh.shape[a] for a in axes]))


def score_prompts(model: Decoder, prompt_tokens: Sequence[Sequence[int]],
                  candidate_tokens: Sequence[Sequence[int]], length_normalize: bool = False,
                  prompts_per_chunk: int | None = None,
                  bos_id: int = features.BOS_ID) -> np.ndarray:
  """[n, M] log-likelihood of each candidate (ids incl. EOS) after each prompt (ids incl. EOS)."""
  prompts, prompt_lengths = pad_token_lists(prompt_tokens, "score_prompts: prompts")
  candidates, lengths = pad_token_lists(candidate_tokens, "score_prompts: candidates")
  scorer = CandidateScorer(model, candidates, lengths, length_normalize, prompts_per_chunk,
                           bos_id)
  return scorer(prompts, prompt_lengths)
