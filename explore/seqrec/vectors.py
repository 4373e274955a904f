"""`SeqRecVectors`: the trained recommender's item and user vectors, for retrieval.

Scoring item i for user u is the dot product user_vectors[u] . item_vectors[i]
(the model's output layer), so these two tables are all that restricted top-k
retrieval (`explore.seqrec.retrieval`) needs. User vectors read each user's
newest `max_len` items of the *whole* log (validation and test items included):
the state a served recommender would be in after the log ends.
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
VERSION = 1


@dataclasses.dataclass(frozen=True)
class SeqRecVectors:
  item_vectors: np.ndarray  # [num_items, D] float32, row i = dense item i
  user_vectors: np.ndarray  # [num_users, D] float32, row u = dense user u
  meta: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # step, epoch, ...

  def save(self, directory: str | os.PathLike) -> None:
    artifacts.save_artifact(directory, KIND, VERSION,
                            {"item_vectors": self.item_vectors, "user_vectors": self.user_vectors},
                            dict(self.meta))

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "SeqRecVectors":
    arrays, meta, _ = artifacts.load_artifact(directory, KIND, VERSION)
    return cls(item_vectors=arrays["item_vectors"], user_vectors=arrays["user_vectors"],
               meta=meta)


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
