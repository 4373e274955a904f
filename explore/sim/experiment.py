"""The simulated A/B test: build the environment and policies, run, summarise with CIs.

`run_experiment` plays every policy against the same users and random numbers
(`simulator.simulate`) and `summarise` turns the [rounds, P, B] expected metrics into
per-user totals (averaged over each user's seed replicas) and paired differences
against exploit-only with 95% intervals (`statistics`):

  ueuc             new (user, cluster) pairs engaged positively, per user
  discoveries      hidden interests discovered, per user
  clicks           total engagement: expected clicks per user
  watch            expected watch fractions consumed, per user (enjoyment summed)
  positive_rate    positive engagements per click (a ratio, delta-method interval)
  satisfaction     satisfaction after the last round
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from explore.retrieval import RestrictedRetriever
from explore.sim import choice as choice_lib
from explore.sim import population as population_lib
from explore.sim import simulator as sim_lib
from explore.sim import statistics as stats_lib
from explore.sim.policies import Policy

BASELINE = "exploit_only"
TOTALS = ("ueuc", "discoveries", "clicks", "watch")
PER_ROUND = ("new_clusters", "discoveries", "clicks", "positives", "satisfaction")


def make_environment(catalog: population_lib.Catalog, users: population_lib.Users,
                     user_vectors: np.ndarray, item_prior: np.ndarray | None,
                     prior_weight: float, engagement: choice_lib.Engagement,
                     num_clusters: int) -> sim_lib.Environment:
  """The fixed part of a simulation: retrieval over [item vector, prior] and the taste scale."""
  vectors = np.asarray(catalog.vectors)
  prior = np.zeros(len(vectors), np.float32) if item_prior is None else item_prior
  table = np.concatenate([vectors, np.asarray(prior, np.float32)[:, None]], 1)  # [N, D + 1]
  retriever = RestrictedRetriever(table, np.asarray(catalog.cluster), implementation="contiguous",
                                  num_clusters=num_clusters)
  scale = float(np.linalg.norm(user_vectors, axis=1).mean()
                / max(np.linalg.norm(vectors, axis=1).mean(), 1e-12))
  return sim_lib.Environment(catalog=catalog, users=users, retriever=retriever,
                             prior_weight=float(prior_weight if item_prior is not None else 0.0),
                             taste_scale=scale, engagement=engagement, num_clusters=num_clusters)


def replicate(users: population_lib.Users, replicas: int) -> population_lib.Users:
  """The users repeated `replicas` times on the batch axis (replica-major)."""
  return population_lib.Users(*(jnp.concatenate([x] * replicas) for x in users))


def run_experiment(env: sim_lib.Environment, policies: Sequence[Policy],
                   config: sim_lib.SimConfig, model: choice_lib.ChoiceModel, seed: int
                   ) -> sim_lib.RoundMetrics:
  """[rounds, P, B] numpy metrics of every policy (one compiled scan)."""
  run = jax.jit(lambda key: sim_lib.simulate(env, policies, config, model, key)[1])
  metrics = run(jax.random.key(seed))
  return sim_lib.RoundMetrics(*(np.asarray(m, np.float64) for m in metrics))


def per_user(metrics: sim_lib.RoundMetrics, replicas: int) -> dict[str, np.ndarray]:
  """{name: [P, U]} per-user totals (or final values), averaged over replicas."""
  def users(x):  # [P, B] -> [P, U]
    return x.reshape(x.shape[0], replicas, -1).mean(1)

  return {"ueuc": users(metrics.new_clusters.sum(0)),
          "discoveries": users(metrics.discoveries.sum(0)),
          "clicks": users(metrics.clicks.sum(0)), "watch": users(metrics.watch.sum(0)),
          "positives": users(metrics.positives.sum(0)),
          "satisfaction": users(metrics.satisfaction[-1])}


def summarise(metrics: sim_lib.RoundMetrics, names: Sequence[str], replicas: int
              ) -> dict[str, Any]:
  """Per-policy intervals, paired differences against exploit-only, and per-round curves."""
  totals = per_user(metrics, replicas)
  base = list(names).index(BASELINE) if BASELINE in names else 0
  summary: dict[str, Any] = {"policies": {}, "versus": names[base], "differences": {},
                             "per_round": {}}
  for p, name in enumerate(names):
    row = {m: stats_lib.mean_interval(totals[m][p]).to_json()
           for m in (*TOTALS, "satisfaction")}
    row["positive_rate"] = stats_lib.ratio_interval(
        totals["positives"][p], totals["clicks"][p]).to_json()
    summary["policies"][name] = row
    diff = {m: stats_lib.paired_difference(totals[m][p], totals[m][base]).to_json()
            for m in (*TOTALS, "satisfaction")}
    diff["positive_rate"] = stats_lib.paired_ratio_difference(
        (totals["positives"][p], totals["clicks"][p]),
        (totals["positives"][base], totals["clicks"][base])).to_json()
    summary["differences"][name] = diff
    summary["per_round"][name] = {
        m: _round_curve(getattr(metrics, m)[:, p], replicas) for m in PER_ROUND}
  return summary


def _round_curve(values: np.ndarray, replicas: int) -> dict[str, list[float]]:
  """{mean, low, high} per round of a [rounds, B] metric (users as units)."""
  per_user_round = values.reshape(values.shape[0], replicas, -1).mean(1)  # [rounds, U]
  intervals = [stats_lib.mean_interval(row) for row in per_user_round]
  return {"mean": [i.mean for i in intervals], "low": [i.low for i in intervals],
          "high": [i.high for i in intervals]}


def format_table(summary: Mapping[str, Any]) -> str:
  """A markdown table: each policy's totals and its paired difference with the baseline."""
  columns = ("ueuc", "discoveries", "clicks", "watch", "positive_rate", "satisfaction")
  lines = ["| policy | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
  for name, row in summary["policies"].items():
    diff = summary["differences"][name]
    cells = []
    for m in columns:
      d = diff[m]
      cells.append(f"{row[m]['mean']:.3f} ({d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}])"
                   if name != summary["versus"] else f"{row[m]['mean']:.3f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  return "\n".join(lines)
