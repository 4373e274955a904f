"""How good a precomputed table is: validity, agreement with the exact scorer, hit@k.

Every check reads the table's rows of the distinct tuples it was built over:
  validity      each of the first min(n, M - K) entries of a row is a real
                cluster, distinct within the row (the trie guarantees it for
                the beam generator; counted, not assumed)
  history       the fraction of entries that are a cluster of the row's own
                tuple (excluded inside the search: must be 0)
  agreement     how often the table's top-1 equals the exact scorer's top-1
                on a set of tuples (the decoder's full-softmax ranking)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from explore.precompute import generators
from explore.precompute.table import NO_CLUSTER, TupleTable, tuple_index


def output_validity(table: TupleTable, tuples: np.ndarray, chunk: int = 65536
                    ) -> dict[str, Any]:
  """Counts over every row of `tuples` [T, K]: valid outputs, history outputs, duplicates."""
  expected = min(table.top_n, table.num_clusters - table.k)
  outputs = valid = history = rows_with_repeats = 0
  for start in range(0, len(tuples), chunk):
    rows = np.asarray(tuples[start:start + chunk], np.int64)  # [c, K]
    clusters = np.asarray(table.clusters[tuple_index(rows, table.num_clusters)])[:, :expected]
    real = (clusters >= 0) & (clusters < table.num_clusters)  # [c, e]
    in_history = np.any(clusters[:, :, None] == rows[:, None, :], axis=2) & real  # [c, e]
    ordered = np.sort(clusters, axis=1)
    repeats = np.any((ordered[:, 1:] == ordered[:, :-1]) & (ordered[:, 1:] != NO_CLUSTER), axis=1)
    outputs += clusters.size
    valid += int(real.sum())
    history += int(in_history.sum())
    rows_with_repeats += int(repeats.sum())
  return {"tuples": int(len(tuples)), "outputs_per_tuple": int(expected),
          "outputs": int(outputs),
          "fraction_valid": valid / outputs if outputs else None,
          "fraction_history": history / outputs if outputs else None,
          "tuples_with_repeated_cluster": int(rows_with_repeats)}


def top1_agreement(table: TupleTable, exact: generators.TopN, tuples: np.ndarray,
                   chunk: int = 1024) -> dict[str, Any]:
  """Fraction of `tuples` [T, K] whose table top-1 equals the exact generator's top-1."""
  same = 0
  for start in range(0, len(tuples), chunk):
    rows = np.asarray(tuples[start:start + chunk], np.int64)
    table_top, _ = table.lookup(rows)  # [c, n]
    exact_top, _ = exact(rows)  # [c, 1]
    same += int(np.sum(table_top[:, 0] == exact_top[:, 0]))
  return {"tuples": int(len(tuples)),
          "top1_agreement": same / len(tuples) if len(tuples) else None}


def agreement_tuples(table_tuples: np.ndarray, eval_tuples: np.ndarray, sample: int,
                     seed: int) -> np.ndarray:
  """The distinct evaluated test tuples plus a seeded uniform sample of the table's tuples."""
  rng = np.random.default_rng(seed)
  picked = table_tuples[rng.choice(len(table_tuples), size=min(sample, len(table_tuples)),
                                   replace=False)] if sample else table_tuples[:0]
  both = np.concatenate([np.asarray(eval_tuples, np.int32).reshape(-1, table_tuples.shape[1]),
                         picked.astype(np.int32)])
  return np.unique(both, axis=0)
