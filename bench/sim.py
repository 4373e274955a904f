r"""Simulator throughput: user-rounds per second, and where a round's time goes.

  PYTHONPATH=. python3 bench/sim.py --users=2000 --replicas=2 --rounds=20 --json=/tmp/sim.json

Builds the synthetic default world (5,000 users, 20,000 items, 256 topics used as the
clusters) with random 64-d recommender vectors (the time does not depend on their
values), then times, at the simulation's shapes (P policies x B users):
  simulate      the whole compiled scan (compile excluded), user-rounds / s
  exploit       the full-catalog ranking of one round (matmul + top-k, chunked)
  ground        the restricted retrieval of one round's exploration slots
  respond       choice probabilities, realisation and state update of one round
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from explore.data import synthetic
from explore.sim import choice as choice_lib
from explore.sim import experiment as experiment_lib
from explore.sim import policies as policies_lib
from explore.sim import population as population_lib
from explore.sim import simulator as sim_lib


def _seconds(fn, repeats: int) -> float:
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def build(users: int, replicas: int, dim: int):
  world, interactions, _ = synthetic.generate(synthetic.SyntheticConfig())
  rng = np.random.default_rng(0)
  item_vectors = rng.normal(size=(world.num_items, dim)).astype(np.float32)
  user_vectors = rng.normal(size=(world.num_users, dim)).astype(np.float32)
  m = world.num_topics
  catalog, population = population_lib.build_population(
      world, interactions, world.item_topic, m, item_vectors, user_vectors, np.arange(users), 2)
  c = world.config
  engagement = choice_lib.Engagement(c.base_enjoyment, c.engagement_concentration,
                                     c.positive_threshold)
  env = experiment_lib.make_environment(
      catalog, experiment_lib.replicate(population, replicas), user_vectors,
      np.log1p(rng.poisson(5.0, world.num_items)).astype(np.float32), 1.0, engagement, m)
  popular = np.bincount(world.item_topic, minlength=m).astype(float)
  policies = [policies_lib.ExploitOnly(), policies_lib.RandomExploration(),
              policies_lib.TablePolicy("popular_novel", None, popular),
              policies_lib.TablePolicy("transition", None, popular),
              policies_lib.TablePolicy("last_cluster", None, popular),
              policies_lib.UcbBandit(popular),
              policies_lib.Oracle(np.arange(m), m)]
  return env, policies


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--users", type=int, default=2000)
  parser.add_argument("--replicas", type=int, default=2)
  parser.add_argument("--rounds", type=int, default=20)
  parser.add_argument("--dim", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--json", default="")
  args = parser.parse_args()
  env, policies = build(args.users, args.replicas, args.dim)
  config = sim_lib.SimConfig(rounds=args.rounds)
  model = choice_lib.ChoiceModel()
  p, b = len(policies), args.users * args.replicas

  run = jax.jit(lambda key: sim_lib.simulate(env, policies, config, model, key)[1])
  start = time.perf_counter()
  jax.block_until_ready(run(jax.random.key(0)))
  first = time.perf_counter() - start
  whole = _seconds(lambda: run(jax.random.key(1)), 1)

  state = sim_lib.initial_state(policies, env.users, config.rounds)
  clusters = jax.jit(lambda s: sim_lib.explore_clusters(
      policies, s, env.users, env.num_clusters, config.explore_slots, 0, jax.random.key(0)))
  picked = clusters(state)
  exploit = jax.jit(lambda s: sim_lib.exploit_top_k(
      s.taste.reshape(p * b, -1), s.consumed.reshape(p * b, -1), env.catalog.vectors,
      config.slate_size, config.exploit_chunk))
  slates = jax.jit(lambda s, c: sim_lib.build_slates(env, s, c, config))
  rows = {"simulate (one scan)": whole, "  exploit top-k, per round": _seconds(
      lambda: exploit(state), args.repeats)}
  rows["  slates (exploit + ground), per round"] = _seconds(lambda: slates(state, picked),
                                                            args.repeats)
  rows["  policies' cluster choice, per round"] = _seconds(lambda: clusters(state), args.repeats)
  user_rounds = p * b * args.rounds
  result = {"device": jax.devices()[0].device_kind, "platform": platform.platform(),
            "policies": p, "users": args.users, "replicas": args.replicas,
            "rounds": args.rounds, "compile_and_first_run_s": first, "simulate_s": whole,
            "user_rounds_per_s": user_rounds / whole, "seconds": rows}
  print(f"{p} policies x {b} users x {args.rounds} rounds = {user_rounds} user-rounds on "
        f"{result['device']}")
  print(f"compile + first run {first:.1f} s; simulate {whole:.2f} s: "
        f"{user_rounds / whole:,.0f} user-rounds/s")
  for name, seconds in rows.items():
    print(f"{name:42s} {seconds:8.3f} s")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(result, f, indent=1)


if __name__ == "__main__":
  main()
