"""Small array operations shared by every restricted top-k implementation.

They pin down the semantics that must agree bit for bit across
implementations: zero scores are +0.0 (so -0.0 never outranks or trails +0.0),
invalid candidates carry score -inf and id -1, and candidates are ordered by
(score descending, item id ascending).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NO_ITEM = -1  # id of an invalid (padding) result
PRECISIONS = {
    "highest": jax.lax.Precision.HIGHEST,
    "high": jax.lax.Precision.HIGH,
    "default": jax.lax.Precision.DEFAULT,
}


def canonical_scores(scores: jax.Array) -> jax.Array:
  """Maps -0.0 to +0.0 so that every comparison treats zero scores as one value."""
  return jnp.where(scores == 0, jnp.zeros_like(scores), scores)


def mark_invalid(scores: jax.Array, ids: jax.Array) -> jax.Array:
  """Item ids with NO_ITEM where the score is -inf (masked out or padding)."""
  return jnp.where(scores == -jnp.inf, NO_ITEM, ids).astype(jnp.int32)


def pad_candidates(scores: jax.Array, ids: jax.Array, width: int
                   ) -> tuple[jax.Array, jax.Array]:
  """Pads [B, M] candidates with (-inf, NO_ITEM) columns up to `width`."""
  missing = width - scores.shape[1]
  if missing <= 0:
    return scores, ids
  pad = ((0, 0), (0, missing))
  return (jnp.pad(scores, pad, constant_values=-jnp.inf),
          jnp.pad(ids, pad, constant_values=NO_ITEM))


def merge_candidates(scores: jax.Array, ids: jax.Array, k: int
                     ) -> tuple[jax.Array, jax.Array]:
  """The k best of each row's candidates by (score desc, id asc).

  Args:
    scores: [B, M] float32 candidate scores, -inf for invalid ones.
    ids: [B, M] int32 item ids of the candidates (any value where invalid).
    k: number of results per row; rows with fewer valid candidates are padded
      with (-inf, NO_ITEM).

  Returns:
    ([B, k] scores, [B, k] ids).
  """
  scores, ids = pad_candidates(scores, ids, k)
  negated, ids = jax.lax.sort((-scores, ids), dimension=1, num_keys=2)  # [B, M]
  top = -negated[:, :k]
  return top, mark_invalid(top, ids[:, :k])


def mask_seen(scores: jax.Array, seen_columns: jax.Array) -> jax.Array:
  """Sets scores[b, seen_columns[b, j]] to -inf; columns outside the row are ignored.

  Args:
    scores: [B, M] scores.
    seen_columns: [B, S] column indices; negative or >= M entries are skipped.
  """
  num_rows, num_cols = scores.shape
  columns = jnp.where((seen_columns >= 0) & (seen_columns < num_cols), seen_columns, num_cols)
  rows = jnp.broadcast_to(jnp.arange(num_rows)[:, None], columns.shape)  # [B, S]
  return scores.at[rows, columns].set(-jnp.inf, mode="drop")


def brute_force_top_k(user_vectors: np.ndarray, item_table: np.ndarray,
                      chosen_clusters: np.ndarray, item_to_cluster: np.ndarray, k: int,
                      seen_items: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
  """numpy reference: per user, score its allowed items in float64, then lexsort.

  Scores are rounded to float32 at the end, so for data whose dot products are
  exact in float32 (e.g. small integers) the result is bit-exact.
  """
  users = np.asarray(user_vectors, np.float64)
  item_to_cluster = np.asarray(item_to_cluster)
  by_cluster = np.argsort(item_to_cluster, kind="stable")  # items grouped by cluster
  bounds = np.searchsorted(item_to_cluster[by_cluster],
                           np.arange(int(item_to_cluster.max()) + 2))
  num_users = users.shape[0]
  out_scores = np.full((num_users, k), -np.inf, np.float32)
  out_ids = np.full((num_users, k), NO_ITEM, np.int32)
  for b in range(num_users):
    clusters = np.unique(chosen_clusters[b][(chosen_clusters[b] >= 0)
                                            & (chosen_clusters[b] < len(bounds) - 1)])
    candidates = np.sort(np.concatenate(
        [by_cluster[bounds[c]:bounds[c + 1]] for c in clusters] + [np.zeros(0, np.int64)]))
    if seen_items is not None:
      candidates = candidates[~np.isin(candidates, seen_items[b][seen_items[b] >= 0])]
    scores = (np.asarray(item_table[candidates], np.float64) @ users[b]).astype(np.float32)
    best = np.lexsort((candidates, -scores))[:k]
    out_scores[b, :len(best)] = scores[best]
    out_ids[b, :len(best)] = candidates[best]
  return out_scores, out_ids
