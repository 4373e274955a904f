"""How good a clustering is: agreement with ground truth, coherence against chance.

- `adjusted_mutual_info`: AMI with the arithmetic-mean normaliser (as scikit-learn's
  default), exact expected MI under the hypergeometric model, in numpy.
- `coherence`: mean intra-cluster cosine similarity of the embeddings, and the
  share of co-engagement that stays inside one cluster, each next to the same
  number for a random assignment with the same cluster sizes (a permutation of
  the labels), so "better than chance" is one comparison.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.special import gammaln


class QualityError(ValueError):
  """Labels or embeddings that cannot be compared."""


def _as_labels(name: str, labels) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.ndim != 1:
    raise QualityError(f"{name} must be 1-D, got shape {labels.shape}")
  return np.unique(labels, return_inverse=True)[1].ravel()


def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def _expected_mutual_info(a: np.ndarray, b: np.ndarray, n: int) -> float:
  """E[MI] of two random labellings with class sizes a and b (hypergeometric model).

  Cell counts further than 12 standard deviations from their mean have
  probability below 1e-30 and are skipped, which keeps large labellings cheap.
  """
  log_fact = lambda v: gammaln(np.asarray(v, np.float64) + 1)
  emi = 0.0
  for ai in a:  # vectorised over the clusters of b and the cell counts
    mean = ai * b / n  # [J]
    std = np.sqrt(mean * (n - ai) * (n - b) / (n * max(n - 1, 1)))  # [J]
    lo = np.maximum(np.maximum(1, ai + b - n), np.floor(mean - 12 * std - 1)).astype(np.int64)
    hi = np.minimum(np.minimum(ai, b), np.ceil(mean + 12 * std + 1)).astype(np.int64)
    width = np.maximum(hi - lo + 1, 0)
    if width.sum() == 0:
      continue
    bj = np.repeat(b, width)  # [cells]
    nij = np.repeat(lo, width) + np.arange(width.sum()) - np.repeat(np.cumsum(width) - width, width)
    log_p = (log_fact(ai) + log_fact(bj) + log_fact(n - ai) + log_fact(n - bj) - log_fact(n)
             - log_fact(nij) - log_fact(ai - nij) - log_fact(bj - nij)
             - log_fact(n - ai - bj + nij))
    emi += float(np.sum(nij / n * np.log(n * nij / (ai * bj)) * np.exp(log_p)))
  return emi


def adjusted_mutual_info(labels_true, labels_pred) -> float:
  """Adjusted mutual information of two labellings of the same items (1 = identical partitions)."""
  true = _as_labels("labels_true", labels_true)
  pred = _as_labels("labels_pred", labels_pred)
  if true.shape != pred.shape:
    raise QualityError(f"adjusted_mutual_info: labels_true has {true.size} items, "
                       f"labels_pred has {pred.size}")
  n = true.size
  kt, kp = true.max(initial=-1) + 1, pred.max(initial=-1) + 1
  if kt == kp and kt <= 1:
    return 1.0
  contingency = sp.coo_matrix((np.ones(n), (true, pred)), shape=(kt, kp)).tocsr()
  contingency.sum_duplicates()
  a = np.bincount(true).astype(np.int64)
  b = np.bincount(pred).astype(np.int64)
  rows = np.repeat(np.arange(kt), np.diff(contingency.indptr))
  nij = contingency.data
  mi = float(np.sum(nij / n * (np.log(nij) + np.log(n) - np.log(a[rows])
                               - np.log(b[contingency.indices]))))
  emi = _expected_mutual_info(a, b, n)
  normaliser = (_entropy(a) + _entropy(b)) / 2
  denominator = normaliser - emi
  eps = np.finfo(np.float64).eps
  denominator = min(denominator, -eps) if denominator < 0 else max(denominator, eps)
  return float((mi - emi) / denominator)


def intra_cluster_cosine(embeddings: np.ndarray, labels: np.ndarray) -> float:
  """Mean over items of the mean cosine similarity to the other items of its cluster.

  O(items x dim): sum_{j != i in c} x_i . x_j = x_i . S_c - |x_i|^2 with S_c the cluster sum.
  """
  x = np.asarray(embeddings, np.float64)
  norms = np.linalg.norm(x, axis=1, keepdims=True)
  x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)  # zero rows stay zero
  labels = np.asarray(labels)
  num_clusters = labels.max() + 1
  sizes = np.bincount(labels, minlength=num_clusters)  # [c]
  sums = np.zeros((num_clusters, x.shape[1]))
  np.add.at(sums, labels, x)  # [c, d]
  others = sizes[labels] - 1  # [n]
  to_others = (x * sums[labels]).sum(1) - (x * x).sum(1)  # [n]
  mean = np.divide(to_others, others, out=np.zeros_like(to_others), where=others > 0)
  return float(mean.mean())


def pairs_inside(co_counts: sp.spmatrix, labels: np.ndarray) -> float:
  """Share of co-engagement weight whose two items fall in the same cluster."""
  coo = sp.coo_matrix(co_counts)
  total = coo.data.sum()
  if total <= 0:
    return 0.0
  labels = np.asarray(labels)
  return float(coo.data[labels[coo.row] == labels[coo.col]].sum() / total)


def coherence(embeddings: np.ndarray, labels: np.ndarray, co_counts: sp.spmatrix | None = None,
              seed: int = 0) -> dict[str, float]:
  """Coherence of `labels` and of a random assignment with the same cluster sizes."""
  labels = np.asarray(labels)
  if len(labels) != len(embeddings):
    raise QualityError(f"coherence: {len(labels)} labels for {len(embeddings)} embeddings")
  shuffled = np.random.default_rng(seed).permutation(labels)
  report = {"intra_cosine": intra_cluster_cosine(embeddings, labels),
            "random_intra_cosine": intra_cluster_cosine(embeddings, shuffled)}
  if co_counts is not None:
    report["pairs_inside"] = pairs_inside(co_counts, labels)
    report["random_pairs_inside"] = pairs_inside(co_counts, shuffled)
  return report


def tree_quality(tree, embeddings: np.ndarray, co_counts: sp.spmatrix | None = None,
                 labels_true: dict[int, np.ndarray] | None = None,
                 seed: int = 0) -> list[dict[str, Any]]:
  """One report per level of a `ClusterTree`: sizes, balance, coherence (and AMI if given truth).

  `labels_true` maps a level to ground-truth labels to compare that level with.
  """
  vectors = np.asarray(getattr(embeddings, "embeddings", embeddings))
  reports = []
  for level in range(tree.num_levels):
    labels = tree.item_to_cluster(level)
    sizes = tree.sizes(level)
    report = {"level": level, "num_clusters": tree.levels[level], "min_size": int(sizes.min()),
              "max_size": int(sizes.max()), "balance": tree.balance(level)}
    report.update(coherence(vectors, labels, co_counts, seed))
    if labels_true is not None and level in labels_true:
      report["ami"] = adjusted_mutual_info(labels_true[level], labels)
    reports.append(report)
  return reports
