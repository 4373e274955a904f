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

from typing import Callable, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from explore import partitioning
from explore import progress
from explore.llm import features
from explore.llm.decoder import Decoder
from explore.llm.decoder import KVCache


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


def prefill(model: Decoder, prompts: jax.Array, prompt_lengths: jax.Array, extra_slots: int,
            bos_id: int = features.BOS_ID) -> tuple[jax.Array, KVCache]:
  """Encodes right-padded prompts into a fresh cache with `extra_slots` free slots.

  Decoder inputs are the targets shifted right: BOS, then prompt + EOS, so
  the logits at the prompt's EOS predict the first output token. Returns
  ([b, V] float32 log-probabilities of that token, the cache, whose slots
  P + 1 .. P + extra_slots hold the outputs; output token i of row r sits at
  position prompt_lengths[r] + 1 + i).
  """
  b, p = prompts.shape
  inputs = jnp.concatenate([jnp.full((b, 1), bos_id, prompts.dtype), prompts], 1)  # [b, P + 1]
  real = jnp.arange(p + 1)[None, :] <= prompt_lengths[:, None]  # [b, P + 1]
  cache = model.init_cache(b, p + 1 + extra_slots, dtype=jnp.float32)
  positions = jnp.broadcast_to(jnp.arange(p + 1), (b, p + 1))
  logits, cache = model.decode(inputs, cache, positions, padding_mask=real,
                               logits_at=prompt_lengths)  # [b, 1, V]
  return jax.nn.log_softmax(logits[:, 0]), cache


def _score_chunk(model: Decoder, prompts: jax.Array, prompt_lengths: jax.Array,
                 candidates: jax.Array, candidate_lengths: jax.Array,
                 length_normalize: bool, bos_id: int = features.BOS_ID) -> jax.Array:
  """[b, M] log P(candidate + EOS | prompt) for a chunk of prompts (see `CandidateScorer`)."""
  b, _ = prompts.shape
  m, t = candidates.shape
  first, prompt_cache = prefill(model, prompts, prompt_lengths, 0, bos_id)  # [b, V]
  scores = first[:, candidates[:, 0]]  # [b, M]
  if t > 1:
    rows = jnp.repeat(jnp.arange(b), m)  # [b * M], prompt of each (prompt, candidate) row
    # The b * M rows hold their candidate's slots only and read their prompt's
    # keys as a shared prefix: the prompt cache is never copied M times.
    cache = model.init_cache(b * m, t - 1, dtype=jnp.float32)
    cand_inputs = jnp.tile(candidates[:, :-1], (b, 1))  # [b * M, T - 1]
    cand_targets = jnp.tile(candidates[:, 1:], (b, 1))  # [b * M, T - 1]
    lengths = jnp.tile(candidate_lengths, b)  # [b * M]
    steps = jnp.arange(t - 1)[None, :]  # [1, T - 1]
    weights = steps + 1 < lengths[:, None]  # [b * M, T - 1] on real target tokens
    cand_positions = prompt_lengths[rows][:, None] + 1 + steps  # [b * M, T - 1]
    logits, _ = model.decode(cand_inputs, cache, cand_positions, padding_mask=weights,
                             prefix=prompt_cache)
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

    def score(state, prompts, prompt_lengths, cands, cand_lengths):
      return _score_chunk(nnx.merge(graphdef, state), prompts, prompt_lengths, cands,
                          cand_lengths, length_normalize, int(bos_id))

    # [chunk, ...] inputs and the [chunk, M] output split over the batch axes.
    self._score, shards = data_parallel_jit(score, state, in_ndims=(2, 1, None, None),
                                            out_ndims=2)
    chunk = prompts_per_chunk or max(1, 2048 // m)
    self.prompts_per_chunk = -(-chunk // shards) * shards

  def __call__(self, prompts: np.ndarray, prompt_lengths: np.ndarray) -> np.ndarray:
    """[n, M] float32 scores of every candidate after each of n prompts ([n, P], [n])."""
    prompts, prompt_lengths = check_prompts(prompts, prompt_lengths)
    if not len(prompts):
      return np.zeros((0, len(self.candidates)), np.float32)
    (out,) = run_in_chunks(
        lambda chunk, lengths: (self._score(self._state, chunk, lengths, self.candidates,
                                            self.candidate_lengths),),
        (prompts, prompt_lengths), self.prompts_per_chunk,
        description="hit@k scoring")
    return out


def check_prompts(prompts: np.ndarray, prompt_lengths: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
  """int32 ([n, P] prompts, [n] lengths in [1, P]); ScoringError naming what is wrong."""
  prompts = np.asarray(prompts, np.int32)
  prompt_lengths = np.asarray(prompt_lengths, np.int32)
  n = len(prompts)
  if prompts.ndim != 2 or prompt_lengths.shape != (n,):
    raise ScoringError(f"prompts must be [n, P] with lengths [n], got {prompts.shape} "
                       f"and {prompt_lengths.shape}")
  if n and (prompt_lengths.min() < 1 or prompt_lengths.max() > prompts.shape[1]):
    raise ScoringError(f"prompt lengths must be in [1, {prompts.shape[1]}]")
  return prompts, prompt_lengths


def data_parallel_jit(fn, state, in_ndims: Sequence[int | None], out_ndims
                      ) -> tuple[Callable, int]:
  """`jax.jit(fn)` data parallel over the mesh `state` (fn's first argument) lives on.

  `in_ndims[i]` is the rank of the (i + 1)-th argument when its leading
  dimension is the batch (split over the mesh's batch axes), None for an
  argument replicated on every device (a pytree is allowed); `out_ndims` is
  the same for the output (an int or a tuple of ints). The state keeps the
  shardings it has. Returns (jitted fn, how many pieces the batch is split in:
  chunk sizes must be a multiple of it); a plain jit and 1 off a mesh.
  """
  mesh = state_mesh(state)
  if mesh is None or mesh.size <= 1:
    return jax.jit(fn), 1
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  rows = lambda ndim: (replicated if ndim is None
                       else partitioning.batch_sharding(mesh, ndim=ndim))
  state_shardings = jax.tree.map(lambda x: getattr(x, "sharding", replicated), state)
  out = (rows(out_ndims) if isinstance(out_ndims, int) else tuple(map(rows, out_ndims)))
  jitted = jax.jit(fn, in_shardings=(state_shardings,) + tuple(map(rows, in_ndims)),
                   out_shardings=out)
  return jitted, batch_shards(partitioning.batch_sharding(mesh, ndim=1))


def run_in_chunks(call: Callable[..., tuple], arrays: Sequence[np.ndarray], chunk: int,
                  description: str | None = None) -> list[np.ndarray]:
  """Runs `call` on `chunk` rows of `arrays` at a time (one compiled shape) and joins the rows.

  The last chunk is padded with copies of its first row; `call` returns a
  tuple of [chunk, ...] arrays, whose real rows are concatenated. With a
  `description`, the rows done are reported through `explore.progress`.
  """
  n = len(arrays[0])
  parts: list[list[np.ndarray]] = []
  bar = progress.Progress(description, total=n, unit="rows") if description else None
  for start in range(0, n, chunk):
    pieces = [a[start:start + chunk] for a in arrays]
    real = len(pieces[0])
    if real < chunk:
      pieces = [np.concatenate([p, np.repeat(p[:1], chunk - real, 0)]) for p in pieces]
    parts.append([np.asarray(out)[:real] for out in call(*pieces)])
    if bar is not None:
      bar.update(real)
  if bar is not None:
    bar.close()
  if not parts:
    raise ScoringError("run_in_chunks: no rows given")
  return [np.concatenate(column) for column in zip(*parts)]


def state_mesh(state) -> jax.sharding.Mesh | None:
  """The mesh a model state is placed on, None for single-device or host state."""
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return sharding.mesh
  return None


def batch_shards(sharding: jax.sharding.NamedSharding) -> int:
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
