"""Full-catalog next-item ranking: HR@k and NDCG@k, for the model and baselines.

The protocol of the sequential-recommendation literature (see `data.py` for
the split): for each evaluated user, every catalog item is scored, the items
already in that user's history (training items; for test also the
validation item) are removed, and the target's rank among the rest is taken.
The target itself is never removed, even if the user had seen it before
(repeat consumption). Ties go to the lower item id, as in retrieval, so a
constant scorer is not rewarded. HR@k = P(rank < k); NDCG@k = mean of
1 / log2(rank + 2) over hits; MRR@k = mean of 1 / (rank + 1) over hits (one
relevant item per case).

`mask_history=False` leaves the history among the candidates: the protocol of
RecBole's full-sort evaluation of sequential models (its
`FullSortEvalDataLoader` gathers history items only for the other model
types), so that numbers can be compared with RecBole's like for like.

Scoring is batched over users in jitted JAX: [batch, items] scores, a scatter
of the seen items, one comparison against the target's score.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Sequence

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from explore import progress
from explore.seqrec.data import LeaveLastOutSplit, RankingExamples
from explore.seqrec.model import PAD, SeqRecModel

DEFAULT_KS = (10,)
METRICS = ("hr", "ndcg", "mrr")  # the names `ranking_metrics` reports at each cutoff

# (inputs [B, L] int32) -> scores [B, V] of every token (V >= num_items + 1).
Scorer = Callable[[jax.Array], jax.Array]


class EvaluationError(ValueError):
  """Bad ranking inputs (cutoffs, batch size, shapes)."""


@jax.jit
def target_ranks(scores: jax.Array, targets: jax.Array, seen: jax.Array,
                 num_items: int | jax.Array) -> jax.Array:
  """Rank (0 = best) of each target among the unseen items.

  Args:
    scores: [B, V] score of every token (column 0 padding, columns > num_items ignored).
    targets: [B] target tokens in [1, num_items].
    seen: [B, H] tokens to exclude (PAD entries ignored); the target is kept.
    num_items: catalog size.
  """
  batch, vocab = scores.shape
  token = jnp.arange(vocab)  # [V]
  target_score = jnp.take_along_axis(scores, targets[:, None], axis=1)  # [B, 1]
  rows = jnp.arange(batch)[:, None]  # [B, 1]
  excluded = jnp.zeros((batch, vocab), bool).at[rows, seen].set(True)  # [B, V]
  candidate = ~excluded & (token > PAD) & (token <= num_items)  # [B, V]
  ahead = (scores > target_score) | ((scores == target_score) & (token < targets[:, None]))
  return jnp.sum(candidate & ahead, axis=1).astype(jnp.int32)  # [B]


def ranking_metrics(ranks: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
  """{'hr@k', 'ndcg@k', 'mrr@k'} for each cutoff, averaged over the cases."""
  ranks = np.asarray(ranks)
  if not len(ranks):
    raise EvaluationError("ranking_metrics: no ranks (no users to evaluate)")
  out = {}
  for k in ks:
    if not isinstance(k, int) or k < 1:
      raise EvaluationError(f"ranking cutoff k={k!r} must be a positive integer")
    hit = ranks < k
    out[f"hr@{k}"] = float(hit.mean())
    out[f"ndcg@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
    out[f"mrr@{k}"] = float(np.where(hit, 1.0 / (ranks + 1.0), 0.0).mean())
  return out


def _history_width(longest: int) -> int:
  """Seen-item matrix width: a power of two (>= 16), so few shapes get compiled."""
  return max(16, 1 << max(0, math.ceil(math.log2(max(longest, 1)))))


def rank_examples(scorer: Scorer, examples: RankingExamples, num_items: int,
                  batch_size: int = 256, mask_history: bool = True) -> np.ndarray:
  """[E] target ranks of all cases, scored `batch_size` users at a time.

  `mask_history`: remove each user's history from the candidates (False keeps it).
  The last batch is padded to `batch_size` (static shapes); padded rows are dropped.
  """
  if not isinstance(batch_size, int) or batch_size < 1:
    raise EvaluationError(f"batch_size={batch_size!r} must be a positive integer")
  ranks = []
  bar = progress.Progress("seqrec: ranking", total=len(examples), unit="cases")
  for begin in range(0, len(examples), batch_size):
    rows = np.arange(begin, min(begin + batch_size, len(examples)))
    padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])  # [B]
    if mask_history:
      width = _history_width(int(examples.history_length[padded].max()))
      seen = examples.history_matrix(padded, width)  # [B, H]
    else:
      seen = np.full((batch_size, 1), PAD, np.int32)  # [B, 1] nothing excluded
    scores = scorer(jnp.asarray(examples.inputs[padded]))  # [B, V]
    batch_ranks = target_ranks(scores, jnp.asarray(examples.targets[padded]), jnp.asarray(seen),
                               num_items)
    ranks.append(np.asarray(batch_ranks)[:len(rows)])
    bar.update(len(rows))
  bar.close()
  return np.concatenate(ranks)


def model_scorer(model: SeqRecModel, token_clusters: np.ndarray | None = None) -> Scorer:
  """Scores of every token from the model's user vector (last position, no dropout).

  `token_clusters`: [num_items + 1] cluster id (1-based, 0 padding) per token,
  for a model built with clusters.
  """
  graphdef, state = nnx.split(model)
  cluster_of = None if token_clusters is None else jnp.asarray(token_clusters, jnp.int32)

  @jax.jit
  def score(state, inputs):
    m = nnx.merge(graphdef, state)
    clusters = None if cluster_of is None else cluster_of[inputs]
    return m.items.decode(m.user_vectors(inputs, clusters))  # [B, V]

  return functools.partial(score, state)


def popularity_scorer(token_counts: np.ndarray) -> Scorer:
  """The most-popular baseline: every user gets the training counts as scores."""
  counts = jnp.asarray(token_counts, jnp.float32)  # [V]

  @jax.jit
  def score(inputs):
    return jnp.broadcast_to(counts[None, :], (inputs.shape[0], counts.shape[0]))

  return score


def evaluate(scorer: Scorer, examples: RankingExamples, num_items: int,
             ks: Sequence[int] = DEFAULT_KS, batch_size: int = 256,
             mask_history: bool = True) -> dict[str, float]:
  """HR@k and NDCG@k of a scorer on validation or test cases (`rank_examples`)."""
  return ranking_metrics(rank_examples(scorer, examples, num_items, batch_size, mask_history),
                         ks)


def most_popular_baseline(split: LeaveLastOutSplit, examples: RankingExamples,
                          ks: Sequence[int] = DEFAULT_KS, batch_size: int = 256
                          ) -> dict[str, float]:
  """HR@k / NDCG@k of ranking by popularity in the training interactions."""
  return evaluate(popularity_scorer(split.target_counts()), examples,
                  split.sequences.num_items, ks, batch_size)
