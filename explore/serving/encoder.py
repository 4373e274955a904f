"""User vectors for arbitrary histories: the `seqrec` stage's best model, jitted once.

The stage stores one vector per user of its log (`SeqRecVectors.user_vectors`,
each the model's state after the user's newest `max_len` items); a history
that is not a logged user's (an edited list of items, a new user) is encoded
by the same model. Batches are padded to a power of two, at most `max_batch`
rows, so the model compiles for a handful of shapes only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import numpy as np

from explore.serving.histories import Histories


def seqrec_config(manifest_config: Mapping[str, Any], num_items: int, num_clusters: int):
  """The `SeqRecConfig` the stage trained with, from its manifest's recorded bindings."""
  from explore.seqrec.model import SeqRecConfig  # pylint: disable=g-import-not-at-top
  prefix = "SeqRecConfig."
  fields = {key[len(prefix):]: value for key, value in manifest_config.items()
            if key.startswith(prefix)}
  fields.update(num_items=num_items,
                num_clusters=num_clusters if manifest_config.get(
                    "SeqRecStageOptions.cluster_embeddings") else 0)
  return SeqRecConfig(**fields)


class HistoryEncoder:
  """[B] histories -> [B, D] user vectors with the trained sequence recommender."""

  def __init__(self, model, token_clusters: np.ndarray | None, max_batch: int = 1024):
    import jax  # pylint: disable=g-import-not-at-top
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    from flax import nnx  # pylint: disable=g-import-not-at-top
    self.max_len = model.config.max_len
    self.max_batch = max_batch
    graphdef, state = nnx.split(model)
    clusters = None if token_clusters is None else jnp.asarray(token_clusters, jnp.int32)

    @jax.jit
    def encode(state, tokens):  # [B, L] left-padded tokens -> [B, D]
      input_clusters = None if clusters is None else clusters[tokens]
      return nnx.merge(graphdef, state).user_vectors(tokens, input_clusters)

    self._state = state
    self._encode = encode

  @classmethod
  def load(cls, seqrec_path: Path, config, step: int, item_to_cluster: np.ndarray,
           max_batch: int = 1024) -> "HistoryEncoder":
    """The model of the stage's best checkpoint (`restore_best_model`)."""
    from explore.seqrec import stage as seqrec_stage  # pylint: disable=g-import-not-at-top
    from explore.seqrec import training  # pylint: disable=g-import-not-at-top
    model = seqrec_stage.restore_best_model(config, seqrec_path, step)
    tokens = training.token_clusters(config, item_to_cluster if config.num_clusters else None,
                                     config.num_items)
    return cls(model, tokens, max_batch)

  def tokens(self, histories: Histories) -> np.ndarray:
    """[B, max_len] int32 tokens (item + 1) of each row's newest items, left-padded with 0."""
    from explore.seqrec import data as data_lib  # pylint: disable=g-import-not-at-top
    sequences = data_lib.UserSequences(histories.offsets, histories.items.astype(np.int32) + 1,
                                       num_items=0)
    rows = np.arange(histories.num_rows)
    return data_lib.left_padded_histories(sequences, rows, histories.lengths, self.max_len)

  def encode(self, histories: Histories) -> np.ndarray:
    """[B, D] float32 user vectors."""
    tokens = self.tokens(histories)
    out = []
    for begin in range(0, len(tokens), self.max_batch):
      chunk = tokens[begin:begin + self.max_batch]
      size = 1 << (len(chunk) - 1).bit_length()  # a power of two >= the rows
      padded = np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk), axis=0)])
      out.append(np.asarray(self._encode(self._state, padded))[:len(chunk)])
    return np.concatenate(out).astype(np.float32)
