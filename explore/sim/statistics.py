"""Paired comparisons with 95% confidence intervals (normal approximation).

The unit is a simulated user (averaged over the seeds it was replicated with):
users are independent draws of the world, while every policy meets the same user
with the same random numbers, so a policy's effect is estimated from the per-user
differences d_u = x_u(policy) - x_u(baseline) and its interval is
mean(d) +- z * sd(d) / sqrt(n), far narrower than comparing two independent means.

A rate (positive engagements per click) is a ratio of sums; its difference is
linearised per user by the delta method: for R = sum(y) / sum(c),
R's influence of user u is (y_u - R c_u) / mean(c), and the interval of
R_a - R_b uses the per-user differences of the influences.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

Z_95 = 1.959963984540054  # the standard normal's 97.5% quantile


class StatisticsError(ValueError):
  """Inputs that cannot give an interval (empty, mismatched shapes)."""


class Interval(NamedTuple):
  mean: float
  low: float
  high: float
  n: int

  def to_json(self) -> dict[str, float]:
    return {"mean": self.mean, "low": self.low, "high": self.high, "n": self.n}


def _check(name: str, *arrays: np.ndarray) -> list[np.ndarray]:
  arrays = [np.asarray(a, np.float64) for a in arrays]
  if any(a.ndim != 1 for a in arrays) or len({a.shape for a in arrays}) != 1:
    raise StatisticsError(f"{name}: needs 1-d per-user arrays of one length, got shapes "
                          f"{[a.shape for a in arrays]}")
  if len(arrays[0]) < 2:
    raise StatisticsError(f"{name}: needs at least 2 users, got {len(arrays[0])}")
  return arrays


def mean_interval(values: np.ndarray, z: float = Z_95) -> Interval:
  """The mean of per-user values with its normal-approximation interval."""
  (values,) = _check("mean_interval", values)
  mean = float(values.mean())
  half = z * float(values.std(ddof=1)) / math.sqrt(len(values))
  return Interval(mean, mean - half, mean + half, len(values))


def paired_difference(treatment: np.ndarray, baseline: np.ndarray, z: float = Z_95) -> Interval:
  """mean(treatment - baseline) over paired users, with its interval."""
  treatment, baseline = _check("paired_difference", treatment, baseline)
  return mean_interval(treatment - baseline, z)


def ratio_influence(numerator: np.ndarray, denominator: np.ndarray) -> tuple[float, np.ndarray]:
  """(R = sum(num) / sum(den), [n] each user's delta-method influence on R)."""
  numerator, denominator = _check("ratio", numerator, denominator)
  scale = denominator.mean()
  if scale <= 0:
    raise StatisticsError("ratio: the denominators sum to zero")
  ratio = numerator.sum() / denominator.sum()
  return float(ratio), (numerator - ratio * denominator) / scale


def ratio_interval(numerator: np.ndarray, denominator: np.ndarray, z: float = Z_95) -> Interval:
  """sum(num) / sum(den) with its delta-method interval."""
  ratio, influence = ratio_influence(numerator, denominator)
  half = z * float(influence.std(ddof=1)) / math.sqrt(len(influence))
  return Interval(ratio, ratio - half, ratio + half, len(influence))


def paired_ratio_difference(treatment: tuple[np.ndarray, np.ndarray],
                            baseline: tuple[np.ndarray, np.ndarray],
                            z: float = Z_95) -> Interval:
  """R(treatment) - R(baseline) for (numerator, denominator) per user, paired by user."""
  r_t, inf_t = ratio_influence(*treatment)
  r_b, inf_b = ratio_influence(*baseline)
  (difference,) = _check("paired_ratio_difference", inf_t - inf_b)
  half = z * float(difference.std(ddof=1)) / math.sqrt(len(difference))
  return Interval(r_t - r_b, r_t - r_b - half, r_t - r_b + half, len(difference))
