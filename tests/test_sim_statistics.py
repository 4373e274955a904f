"""Paired confidence intervals against reference formulas."""

import math

import numpy as np
import pytest
from scipy import stats

from explore.sim import statistics as stats_lib


def test_paired_difference_matches_the_textbook_interval():
  rng = np.random.default_rng(0)
  baseline = rng.normal(1.0, 1.0, 500)
  treatment = baseline + rng.normal(0.2, 0.1, 500)
  interval = stats_lib.paired_difference(treatment, baseline)
  d = treatment - baseline
  half = stats.norm.ppf(0.975) * d.std(ddof=1) / math.sqrt(len(d))
  assert interval.mean == pytest.approx(d.mean())
  assert (interval.low, interval.high) == pytest.approx((d.mean() - half, d.mean() + half))
  # Pairing removes the shared per-user noise: far narrower than unpaired.
  unpaired = stats.norm.ppf(0.975) * math.sqrt(treatment.var(ddof=1) / 500
                                               + baseline.var(ddof=1) / 500)
  assert interval.high - interval.low < 0.5 * unpaired


def test_ratio_interval_is_the_delta_method():
  rng = np.random.default_rng(1)
  clicks = rng.poisson(5.0, 400).astype(float) + 1
  positives = rng.binomial(clicks.astype(int), 0.6).astype(float)
  interval = stats_lib.ratio_interval(positives, clicks)
  r = positives.sum() / clicks.sum()
  # Var(R) ~ (var(y) - 2 R cov(y, c) + R^2 var(c)) / (n mean(c)^2)
  cov = np.cov(positives, clicks, ddof=1)
  variance = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (400 * clicks.mean() ** 2)
  half = stats.norm.ppf(0.975) * math.sqrt(variance)
  assert interval.mean == pytest.approx(r)
  assert (interval.low, interval.high) == pytest.approx((r - half, r + half), rel=1e-9)
  ones = np.ones(400)
  plain = stats_lib.mean_interval(positives)
  assert tuple(stats_lib.ratio_interval(positives, ones))[:3] == pytest.approx(tuple(plain)[:3])


def test_paired_ratio_difference_covers_the_truth_about_95_percent_of_the_time():
  rng = np.random.default_rng(2)
  covered, trials = 0, 400
  for _ in range(trials):
    clicks = rng.poisson(4.0, 300).astype(float) + 1
    base = rng.binomial(clicks.astype(int), 0.5).astype(float)
    treat = rng.binomial(clicks.astype(int), 0.55).astype(float)
    interval = stats_lib.paired_ratio_difference((treat, clicks), (base, clicks))
    covered += interval.low <= 0.05 <= interval.high
  assert 0.92 <= covered / trials <= 0.98


def test_too_few_users_or_mismatched_shapes_are_named():
  with pytest.raises(stats_lib.StatisticsError, match="at least 2 users"):
    stats_lib.mean_interval(np.array([1.0]))
  with pytest.raises(stats_lib.StatisticsError, match="one length"):
    stats_lib.paired_difference(np.ones(3), np.ones(4))
