"""Power-law and log-uniform draws used by the synthetic platform (numpy, O(1) per draw)."""

from __future__ import annotations

import math

import numpy as np


def zipf_weights(n: int, exponent: float) -> np.ndarray:
  """[n] float64 weights 1 / (rank + 1) ** exponent, normalised to sum to one."""
  w = 1.0 / np.arange(1, n + 1, dtype=np.float64) ** exponent
  return w / w.sum()


def zipf_rank(u: np.ndarray, n: np.ndarray, exponent: float) -> np.ndarray:
  """Ranks in [0, n) from uniforms `u`, by the inverse CDF of a continuous power law.

  x in [1, n + 1) has density proportional to x ** -exponent and rank = floor(x) - 1,
  so sampling is O(1) per draw with no per-topic table (what makes 10M items cheap).
  """
  n = np.asarray(n, np.float64)
  if abs(exponent - 1.0) < 1e-9:
    x = np.exp(u * np.log1p(n))
  else:
    e = 1.0 - exponent
    x = (1.0 + u * ((n + 1.0) ** e - 1.0)) ** (1.0 / e)
  return np.minimum(np.floor(x).astype(np.int64) - 1, n.astype(np.int64) - 1).clip(0)


def zipf_rank_probability(rank: np.ndarray, n: np.ndarray, exponent: float) -> np.ndarray:
  """P(rank) under `zipf_rank`: the power-law mass on [rank + 1, rank + 2)."""
  rank = np.asarray(rank, np.float64)
  n = np.asarray(n, np.float64)
  if abs(exponent - 1.0) < 1e-9:
    return np.log((rank + 2.0) / (rank + 1.0)) / np.log1p(n)
  e = 1.0 - exponent
  return ((rank + 2.0) ** e - (rank + 1.0) ** e) / ((n + 1.0) ** e - 1.0)


def log_uniform_int(rng: np.random.Generator, lo: int, hi: int, size: int) -> np.ndarray:
  """[size] int32 in [lo, hi], log-uniform: more light users than heavy ones."""
  x = np.exp(rng.uniform(math.log(lo), math.log(hi + 1), size))
  return np.clip(np.floor(x), lo, hi).astype(np.int32)
