"""`SeqRecVectors`: the trained recommender's item and user vectors, for retrieval.

Scoring item i for user u is the dot product user_vectors[u] . item_vectors[i]
(the model's output layer), so these two tables are all that restricted top-k
retrieval (`explore.retrieval.restricted`) needs. User vectors read each user's
newest `max_len` items of the *whole* log (validation and test items included):
the state a served recommender would be in after the log ends.

Inside a planned cluster the `seqrec` stage also ranks with a popularity prior,
score(u, i) = user_vectors[u] . item_vectors[i] + prior_weight * item_prior[i]
with item_prior = log(1 + training interactions of i) and the weight tuned on
validation (`grounding.tune_prior_weight`). `with_prior` folds the prior into
one more vector coordinate, so every retrieval implementation serves it as a
plain dot product; `SeqRecVectors.retrieval_tables()` gives those tables.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable, Mapping

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from explore import artifacts
from explore.seqrec.data import UserSequences, left_padded_histories
from explore.seqrec.model import SeqRecModel

KIND = "seqrec_vectors"
VERSION = 2
VERSIONS = {1: "item and user vectors only", 2: "current: optional item prior and its weight"}


class VectorsError(ValueError):
  """Vectors and priors whose shapes or values do not fit together."""


def popularity_prior(item_counts: np.ndarray) -> np.ndarray:
  """[N] float32 log(1 + count) of each item's training interactions."""
  counts = np.asarray(item_counts)
  if counts.ndim != 1 or (counts.size and counts.min() < 0):
    raise VectorsError(f"item_counts must be a 1-d array of counts >= 0, got shape "
                       f"{counts.shape}" + (f" with minimum {counts.min()}" if counts.size else ""))
  return np.log1p(counts.astype(np.float64)).astype(np.float32)


def check_prior(num_items: int, item_prior: np.ndarray, weight: float) -> np.ndarray:
  """`item_prior` as float32 after checking it has one finite value per item, and `weight`."""
  item_prior = np.asarray(item_prior, np.float32)
  if item_prior.shape != (num_items,):
    raise VectorsError(f"item_prior has shape {item_prior.shape}, expected ({num_items},): "
                       "one value per item vector")
  if not np.all(np.isfinite(item_prior)):
    raise VectorsError("item_prior holds inf or nan; the prior must be finite")
  if not isinstance(weight, (int, float, np.floating)) or not np.isfinite(weight):
    raise VectorsError(f"prior weight {weight!r} must be a finite number")
  return item_prior


def with_prior(user_vectors: np.ndarray, item_vectors: np.ndarray, item_prior: np.ndarray,
               weight: float) -> tuple[np.ndarray, np.ndarray]:
  """([U, D + 1] users, [N, D + 1] items) whose dot products are u . v + weight * prior.

  The users get `weight` as their last coordinate and the items their prior, so
  the blend is exact and any retrieval implementation can rank by it.
  """
  user_vectors = np.asarray(user_vectors, np.float32)
  item_vectors = np.asarray(item_vectors, np.float32)
  item_prior = check_prior(len(item_vectors), item_prior, weight)
  users = np.concatenate([user_vectors, np.full((len(user_vectors), 1), weight, np.float32)], 1)
  return users, np.concatenate([item_vectors, item_prior[:, None]], 1)


@dataclasses.dataclass(frozen=True)
class SeqRecVectors:
  item_vectors: np.ndarray  # [num_items, D] float32, row i = dense item i
  user_vectors: np.ndarray  # [num_users, D] float32, row u = dense user u
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # step, epoch, ...
  item_prior: np.ndarray | None = None  # [num_items] float32 popularity prior, or None
  prior_weight: float = 0.0  # its weight in retrieval scores

  def __post_init__(self):
    if self.item_prior is not None:
      check_prior(len(self.item_vectors), self.item_prior, self.prior_weight)

  def retrieval_tables(self) -> tuple[np.ndarray, np.ndarray]:
    """(user table, item table) to rank by: with the prior folded in when there is one."""
    if self.item_prior is None:
      return self.user_vectors, self.item_vectors
    return with_prior(self.user_vectors, self.item_vectors, self.item_prior, self.prior_weight)

  def save(self, directory: str | os.PathLike) -> None:
    arrays = {"item_vectors": self.item_vectors, "user_vectors": self.user_vectors}
    if self.item_prior is not None:
      arrays["item_prior"] = self.item_prior
    artifacts.save_artifact(directory, KIND, VERSION, arrays,
                            {**self.meta, "prior_weight": float(self.prior_weight)})

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "SeqRecVectors":
    arrays, meta, _ = artifacts.load_artifact(directory, KIND, VERSIONS)
    meta = dict(meta)
    weight = float(meta.pop("prior_weight", 0.0))
    return cls(item_vectors=arrays["item_vectors"], user_vectors=arrays["user_vectors"],
               meta=meta, item_prior=arrays.get("item_prior"), prior_weight=weight)


def encode_rows(model: SeqRecModel, num_rows: int,
                histories: Callable[[np.ndarray], np.ndarray], batch_size: int = 512,
                token_clusters: np.ndarray | None = None) -> np.ndarray:
  """[num_rows, D] user vectors of left-padded histories, `batch_size` rows at a time.

  `histories(rows)` gives the [len(rows), max_len] token histories of those rows;
  `token_clusters`: [num_items + 1] cluster id per token, for a model built with clusters.
  """
  graphdef, state = nnx.split(model)
  clusters = None if token_clusters is None else jnp.asarray(token_clusters, jnp.int32)

  @jax.jit
  def encode(state, inputs):
    input_clusters = None if clusters is None else clusters[inputs]
    return nnx.merge(graphdef, state).user_vectors(inputs, input_clusters)  # [B, D]

  out = []
  for begin in range(0, num_rows, batch_size):
    rows = np.arange(begin, min(begin + batch_size, num_rows))
    padded = np.concatenate([rows, np.full(batch_size - len(rows), rows[-1])])  # static shape
    out.append(np.asarray(encode(state, jnp.asarray(histories(padded))))[:len(rows)])
  return np.concatenate(out).astype(np.float32)


def user_vectors(model: SeqRecModel, sequences: UserSequences, batch_size: int = 512,
                 token_clusters: np.ndarray | None = None) -> np.ndarray:
  """[num_users, D] vectors from each user's newest `max_len` items (see `encode_rows`)."""
  max_len = model.config.max_len
  return encode_rows(
      model, sequences.num_users,
      lambda rows: left_padded_histories(sequences, rows, sequences.lengths[rows], max_len),
      batch_size, token_clusters)


def model_vectors(model: SeqRecModel, sequences: UserSequences,
                  meta: Mapping[str, Any] | None = None,
                  token_clusters: np.ndarray | None = None) -> SeqRecVectors:
  return SeqRecVectors(item_vectors=np.asarray(model.item_vectors(), np.float32),
                       user_vectors=user_vectors(model, sequences, token_clusters=token_clusters),
                       meta=dict(meta or {}))
