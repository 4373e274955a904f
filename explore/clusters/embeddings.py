"""Item embeddings from co-engagement: windowed co-occurrence, shifted PPMI, randomized SVD.

Two items are co-engaged when one user engages with both within `window`
steps of their chronological (positive) sequence. The symmetric co-occurrence
counts C are turned into shifted positive PMI (Levy & Goldberg's SPPMI, with
context-distribution smoothing):

  PMI(i, j) = log(C_ij * D / (C_i * P_j))   D = sum of C, C_i = row sum,
                                            P_j = D * C_j^a / sum(C^a)
  SPPMI     = max(PMI - log(shift), 0)

and factorised by a randomized truncated SVD (range finder with power
iterations, Halko et al. 2011): embeddings = U * sqrt(S), L2-normalised, so a
dot product is a cosine similarity. Everything is sparse or tall-and-skinny:
memory is O(nnz + items x dim). The dense QR/SVD run in jnp; the sparse
products use scipy.sparse on the host, or a chunked COO scatter-add on the
device when there is an accelerator (`sparse_backend`).
Items without any co-engagement get a zero vector and are counted as cold.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
from typing import Any, Mapping

import gin
import jax
import jax.numpy as jnp
import numpy as np
import scipy.sparse as sp

from explore import artifacts
from explore.data.schema import Interactions

EMBEDDINGS_KIND = "item_embeddings"
EMBEDDINGS_VERSION = 1


class EmbeddingError(ValueError):
  """Bad input or settings for item embeddings."""


@dataclasses.dataclass(frozen=True)
class ItemEmbeddings:
  """One L2-normalised vector per item (zero for cold items), indexed like `Interactions.item`."""

  embeddings: np.ndarray  # [num_items, dim] float32
  singular_values: np.ndarray  # [dim] float32, of the SPPMI matrix
  cold: np.ndarray  # [num_items] bool, items without co-engagement (zero vectors)
  stats: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if self.embeddings.ndim != 2:
      raise EmbeddingError(f"ItemEmbeddings: embeddings must be 2-D, got {self.embeddings.shape}")
    if self.cold.shape != (self.embeddings.shape[0],):
      raise EmbeddingError(f"ItemEmbeddings: cold has shape {self.cold.shape}, "
                           f"expected ({self.embeddings.shape[0]},)")

  @property
  def num_items(self) -> int:
    return self.embeddings.shape[0]

  @property
  def dim(self) -> int:
    return self.embeddings.shape[1]

  def save(self, directory: str | os.PathLike) -> None:
    artifacts.save_artifact(
        directory, EMBEDDINGS_KIND, EMBEDDINGS_VERSION,
        {"embeddings": self.embeddings, "singular_values": self.singular_values,
         "cold": self.cold}, dict(self.stats))

  @classmethod
  def load(cls, directory: str | os.PathLike) -> "ItemEmbeddings":
    arrays, meta, _ = artifacts.load_artifact(directory, EMBEDDINGS_KIND, EMBEDDINGS_VERSION)
    return cls(embeddings=arrays["embeddings"], singular_values=arrays["singular_values"],
               cold=arrays["cold"], stats=meta)


def co_engagement_counts(interactions: Interactions, window: int = 10,
                         positives_only: bool = True) -> sp.csr_matrix:
  """[num_items, num_items] symmetric co-occurrence counts within `window` steps, no diagonal.

  Built one offset at a time (each offset adds at most one pair per event), so
  memory stays O(nnz + events), never num_items^2.
  """
  if window < 1:
    raise EmbeddingError(f"co_engagement_counts: window must be >= 1, got {window}")
  keep = interactions.positive if positives_only else np.ones(len(interactions), bool)
  user = interactions.user[keep]  # [e], sorted by user then time
  item = interactions.item[keep]  # [e]
  n = interactions.num_items
  counts = sp.csr_matrix((n, n), dtype=np.float32)
  for offset in range(1, window + 1):
    same_user = user[offset:] == user[:-offset]  # [e - offset]
    a, b = item[:-offset][same_user], item[offset:][same_user]
    distinct = a != b
    a, b = a[distinct], b[distinct]
    if a.size == 0:
      continue
    counts = counts + sp.csr_matrix((np.ones(a.size, np.float32), (a, b)), shape=(n, n))
  counts = (counts + counts.T).tocsr()  # earlier -> later plus later -> earlier
  counts.sum_duplicates()
  return counts


def shifted_ppmi(counts: sp.csr_matrix, shift: float = 1.0,
                 context_smoothing: float = 0.75) -> sp.csr_matrix:
  """Shifted positive PMI of a co-occurrence matrix, computed on its nonzeros only."""
  counts = counts.tocsr()
  row_sum = np.asarray(counts.sum(axis=1)).ravel().astype(np.float64)  # [n]
  col_sum = np.asarray(counts.sum(axis=0)).ravel().astype(np.float64)  # [n]
  total = row_sum.sum()
  smoothed = col_sum ** context_smoothing
  context_p = smoothed / smoothed.sum()  # [n]
  rows = np.repeat(np.arange(counts.shape[0]), np.diff(counts.indptr))
  cols = counts.indices
  pmi = (np.log(counts.data.astype(np.float64)) + math.log(total) - np.log(row_sum[rows])
         - np.log(total * context_p[cols]))
  values = np.maximum(pmi - math.log(shift), 0.0).astype(np.float32)
  sppmi = sp.csr_matrix((values, cols, counts.indptr), shape=counts.shape)
  sppmi.eliminate_zeros()
  return sppmi


def _host_products(matrix):
  """(dense -> M @ dense, dense -> M^T @ dense) on the host (scipy or numpy), as jnp arrays."""
  transposed = matrix.T

  def times(m):
    return lambda dense: jnp.asarray(np.asarray(m @ np.asarray(dense)), jnp.float32)

  return times(matrix), times(transposed)


def _device_products(matrix, chunk: int = 1 << 24):
  """(dense -> M @ dense, dense -> M^T @ dense) on the device, as COO scatter-adds.

  The matrix lives on the device once, as int32 rows/cols and float32 values
  (12 bytes per nonzero), in fixed-size chunks of nonzeros so that a chunk's
  gathered rows bound the temporary memory.
  """
  coo = sp.coo_matrix(matrix)
  chunk = min(chunk, max(coo.nnz, 1))
  padded = -(-max(coo.nnz, 1) // chunk) * chunk

  def column(values, dtype):  # [nnz] -> [chunks, chunk], zero-padded
    out = np.zeros(padded, dtype)
    out[:coo.nnz] = values
    return jnp.asarray(out.reshape(-1, chunk))

  rows, cols = column(coo.row, np.int32), column(coo.col, np.int32)
  values = column(coo.data, np.float32)

  @functools.partial(jax.jit, static_argnames=("num_out",))
  def product(out_index, in_index, values, dense, num_out):
    def body(acc, part):
      o, i, v = part
      return acc.at[o].add(v[:, None] * dense[i]), None  # [num_out, w]

    acc = jnp.zeros((num_out, dense.shape[1]), jnp.float32)
    return jax.lax.scan(body, acc, (out_index, in_index, values))[0]

  n, p = matrix.shape
  return (lambda dense: product(rows, cols, values, jnp.asarray(dense, jnp.float32), num_out=n),
          lambda dense: product(cols, rows, values, jnp.asarray(dense, jnp.float32), num_out=p))


def randomized_svd(matrix, rank: int, oversample: int = 10, power_iters: int = 4,
                   seed: int = 0, sparse_backend: str = "scipy"
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Top-`rank` SVD of a sparse or dense [n, p] matrix: (U [n, r], S [r], V [p, r]).

  Range finder on a Gaussian sketch of rank + oversample columns, with
  `power_iters` QR-orthonormalised power iterations (which sharpen a slowly
  decaying spectrum). Signs are fixed so each column of U has a positive sum
  of cubes, which makes the result independent of the QR's sign conventions.
  `sparse_backend`: "scipy" multiplies on the host (single-threaded), "jax" on
  the default device (fast on an accelerator; its scatter-add may sum in a
  different order from run to run there).
  """
  n, p = matrix.shape
  if not 1 <= rank <= min(n, p):
    raise EmbeddingError(f"randomized_svd: rank must be in [1, {min(n, p)}] for a {n}x{p} "
                         f"matrix, got {rank}")
  if sparse_backend not in ("scipy", "jax"):
    raise EmbeddingError(f"randomized_svd: sparse_backend must be 'scipy' or 'jax', "
                         f"got {sparse_backend!r}")
  width = min(rank + oversample, n, p)
  make = _device_products if sparse_backend == "jax" else _host_products
  times, times_transposed = make(matrix)

  sketch = jax.random.normal(jax.random.PRNGKey(seed), (p, width), jnp.float32)
  q, _ = jnp.linalg.qr(times(sketch))  # [n, w]
  for _ in range(power_iters):
    z, _ = jnp.linalg.qr(times_transposed(q))  # [p, w]
    q, _ = jnp.linalg.qr(times(z))  # [n, w]
  # B = Q^T M is [w, p]; factor B^T = Qb Rb so that B = Rb^T Qb^T and only w x w is dense-SVD'd.
  qb, rb = jnp.linalg.qr(times_transposed(q))  # [p, w], [w, w]
  u_small, s, vt_small = jnp.linalg.svd(rb.T)  # [w, w], [w], [w, w]
  u = q @ u_small[:, :rank]  # [n, r]
  v = qb @ vt_small[:rank].T  # [p, r]
  signs = jnp.where(jnp.sum(u ** 3, axis=0) < 0, -1.0, 1.0)  # [r]
  return (np.asarray(u * signs), np.asarray(s[:rank]), np.asarray(v * signs))


@gin.configurable(denylist=["interactions"])
def co_engagement_embeddings(
    interactions: Interactions,
    dim: int = 64,
    window: int = 10,
    positives_only: bool = True,
    min_count: int = 1,
    shift: float = 1.0,
    context_smoothing: float = 0.75,
    oversample: int = 10,
    power_iters: int = 2,
    seed: int = 0,
    sparse_backend: str = "auto",
) -> ItemEmbeddings:
  """Item embeddings from co-engagement (see the module docstring).

  Args:
    interactions: the log; positives (or all events) in time order per user.
    dim: embedding size.
    window: co-occurrence window, in steps of a user's sequence.
    positives_only: count only positive engagements.
    min_count: drop item pairs co-engaged fewer times (noise; shrinks nnz).
    shift: SPPMI shift k (log k subtracted from PMI; 1 = plain PPMI).
    context_smoothing: exponent on context counts (0.75 damps popular items).
    oversample, power_iters: randomized SVD accuracy knobs.
    seed: PRNG seed of the SVD sketch.
    sparse_backend: where the SVD's sparse products run: "scipy" (host), "jax"
      (default device), or "auto" (jax on an accelerator, scipy on CPU).
  """
  n = interactions.num_items
  if not 1 <= dim < n:
    raise EmbeddingError(f"co_engagement_embeddings: dim must be in [1, {n}) for {n} items, "
                         f"got {dim}")
  if min_count < 1 or shift <= 0:
    raise EmbeddingError(f"co_engagement_embeddings: need min_count >= 1 and shift > 0, "
                         f"got min_count={min_count}, shift={shift}")
  num_events = int(interactions.positive.sum()) if positives_only else len(interactions)
  if num_events == 0:
    raise EmbeddingError("co_engagement_embeddings: interactions have no "
                         f"{'positive ' if positives_only else ''}events to learn from")
  counts = co_engagement_counts(interactions, window, positives_only)
  num_pairs = float(counts.sum()) / 2
  if min_count > 1:
    counts.data[counts.data < min_count] = 0
    counts.eliminate_zeros()
  if counts.nnz == 0:
    raise EmbeddingError(f"co_engagement_embeddings: no item pair is co-engaged >= {min_count} "
                         f"times within window {window}; nothing to embed")
  sppmi = shifted_ppmi(counts, shift, context_smoothing)
  if sparse_backend == "auto":
    sparse_backend = "scipy" if jax.default_backend() == "cpu" else "jax"
  u, s, _ = randomized_svd(sppmi, dim, oversample, power_iters, seed, sparse_backend)
  vectors = u * np.sqrt(s)[None, :]  # [n, dim]
  norms = np.linalg.norm(vectors, axis=1)  # [n]
  cold = (np.diff(sppmi.indptr) == 0) | (norms <= 1e-12)
  vectors = np.where(cold[:, None], 0.0, vectors / np.maximum(norms, 1e-12)[:, None])
  stats = {
      "dim": dim, "window": window, "positives_only": positives_only, "min_count": min_count,
      "shift": shift, "context_smoothing": context_smoothing, "oversample": oversample,
      "power_iters": power_iters, "seed": seed, "sparse_backend": sparse_backend,
      "num_items": n, "num_events": num_events,
      "co_engaged_pairs": num_pairs, "nnz": int(counts.nnz), "sppmi_nnz": int(sppmi.nnz),
      "num_cold_items": int(cold.sum()),
  }
  return ItemEmbeddings(embeddings=vectors.astype(np.float32),
                        singular_values=s.astype(np.float32), cold=cold, stats=stats)
