"""The `sim` stage: the closed-loop A/B test of every exploration policy on the synthetic world.

Reads the `data` stage's world and logs, the `clusters` map, the `transitions`
training examples (to fit the count planners), the `seqrec` vectors and the
`precompute` stage's table (the LLM planner's top-n novel clusters of every
K-tuple, through `precompute_stage.load_table`: the `llm` policy); writes
  metrics.json   calibration (value of a hidden interest), per-policy totals with
                 95% intervals, paired differences against exploit-only, per-round
                 curves (mean and interval per policy), settings and seconds
  table.md       the comparison as a markdown table
On real logs (no world) the stage records that it was skipped and why.
Any other planner table enters through `SimOptions.planner_table`, a `TupleTable`
folder (e.g. another run's precompute output, or any planner tabulated with
`policies.plan_table`); without it the `planner` policy is left out and the stage says so.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

from absl import logging
import gin
import numpy as np

from explore import artifacts
from explore import stages
from explore.clusters import stage as clusters_stage
from explore.data import stage as data_stage
from explore.eval import planners as planners_lib
from explore.precompute import stage as precompute_stage
from explore.precompute import table as table_lib
from explore.seqrec import stage as seqrec_stage
from explore.sim import calibration as calibration_lib
from explore.sim import choice as choice_lib
from explore.sim import experiment as experiment_lib
from explore.sim import policies as policies_lib
from explore.sim import population as population_lib
from explore.sim import simulator as sim_lib
from explore.transitions import stage as transitions_stage
from explore.transitions.examples import NovelTransitions, TRAIN

METRICS = "metrics.json"
TABLE = "table.md"
POLICIES = ("exploit_only", "random", "popular_novel", "transition", "last_cluster",
            "ucb_bandit", "llm", "planner", "oracle")


class SimStageError(ValueError):
  """Missing or mismatched inputs, or settings the `sim` stage cannot use."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SimOptions:
  """Who is simulated and which policies play (gin: `SimOptions.x`).

  users: world users simulated (a seeded sample; None: all of them).
  replicas: seeds per user, on the batch axis (paired within a user).
  policies: which of POLICIES to run; `llm` reads the precompute stage's table,
    `planner` needs `planner_table`.
  planner_table: a `TupleTable` folder to plan with (e.g. the LLM's precomputed table).
  table_top_n: clusters kept per tuple when a count planner is tabulated.
  bandit_exploration: UCB's exploration constant.
  """

  users: int | None = 2000
  replicas: int = 2
  policies: tuple[str, ...] = POLICIES
  planner_table: str | None = None
  table_top_n: int = 32
  bandit_exploration: float = 1.0

  def __post_init__(self):
    unknown = sorted(set(self.policies) - set(POLICIES))
    if unknown or not self.policies:
      raise SimStageError(f"SimOptions.policies={self.policies!r}: unknown {unknown}; "
                          f"choose from {POLICIES}")
    if self.users is not None and (not isinstance(self.users, int) or self.users < 2):
      raise SimStageError(f"SimOptions.users={self.users!r} must be an integer >= 2 or None")
    if not isinstance(self.replicas, int) or self.replicas < 1:
      raise SimStageError(f"SimOptions.replicas={self.replicas!r} must be an integer >= 1")


def _load(what: str, stage: str, loader: Callable[[], Any]) -> Any:
  """`loader()`, or an error naming the stage whose artifact is missing or unreadable."""
  try:
    return loader()
  except (FileNotFoundError, artifacts.ArtifactError) as e:
    raise SimStageError(f"the sim stage needs {what} from the {stage!r} stage, which is missing "
                        f"or unreadable ({e}); run `explore {stage} --force`") from None


def build_policies(options: SimOptions, transitions: NovelTransitions, num_clusters: int,
                   topic_cluster: np.ndarray, llm_table: table_lib.TupleTable | None = None
                   ) -> list[policies_lib.Policy]:
  """The chosen policies, count planners fitted on the training transitions.

  `llm_table` (the precompute stage's table) is what the `llm` policy plays; the
  policy is required to have it when it is chosen.
  """
  train = transitions.indices(TRAIN)
  history, target = transitions.history[train], transitions.next_cluster[train]
  k = transitions.k
  popular = planners_lib.PopularNovel(history, target, num_clusters).popularity  # [M]
  top_n = options.table_top_n

  def table(planner):
    return policies_lib.plan_table(planner, num_clusters, k, top_n)

  makers = {
      "exploit_only": lambda: policies_lib.ExploitOnly(),
      "random": lambda: policies_lib.RandomExploration(),
      "popular_novel": lambda: policies_lib.TablePolicy("popular_novel", None, popular),
      "transition": lambda: policies_lib.TablePolicy(
          "transition", table(planners_lib.TransitionCounts(history, target, num_clusters)),
          popular),
      "last_cluster": lambda: policies_lib.TablePolicy(
          "last_cluster", table(planners_lib.LastClusterCounts(history, target, num_clusters)),
          popular),
      "ucb_bandit": lambda: policies_lib.UcbBandit(popular, options.bandit_exploration),
      "llm": lambda: policies_lib.TablePolicy("llm", table(llm_table), popular),
      "planner": lambda: policies_lib.TablePolicy(
          "planner", table(table_lib.TupleTable.load(options.planner_table)), popular),
      "oracle": lambda: policies_lib.Oracle(topic_cluster, num_clusters),
  }
  chosen = [name for name in options.policies
            if name != "planner" or options.planner_table is not None]
  if "planner" in options.policies and options.planner_table is None:
    logging.info("sim: no SimOptions.planner_table given; the planner policy is left out")
  if "llm" in chosen and llm_table is None:
    raise SimStageError("SimOptions.policies has 'llm' but no LLM table was given (the "
                        "precompute stage's table); run `explore precompute` or drop 'llm'")
  return [makers[name]() for name in chosen]


def _sample_users(num_users: int, wanted: int | None, seed: int) -> np.ndarray:
  if wanted is None or wanted >= num_users:
    return np.arange(num_users)
  return np.sort(np.random.default_rng([seed, 12]).choice(num_users, wanted, replace=False))


@stages.register_stage("sim", deps=("data", "clusters", "transitions", "seqrec", "precompute"),
                       configurables=("SimOptions", "SimConfig", "ChoiceModel"))
def sim_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Plays every exploration policy against the same simulated users; paired 95% CIs."""
  start = time.perf_counter()
  options, config, model = SimOptions(), sim_lib.SimConfig(), choice_lib.ChoiceModel()
  data_path = ctx.input_path("data")
  world = _load("the synthetic world", "data", lambda: data_stage.load_world(data_path))
  if world is None:  # real logs: nothing to simulate, so `explore run` goes on without it
    reason = (f"{data_path} has no synthetic world (data_source.kind is not 'synthetic'); the "
              "simulator needs a world's hidden truth, so it is skipped")
    logging.warning("sim: %s", reason)
    artifacts.atomic_write_json(ctx.path / METRICS, {"skipped": reason})
    return {"skipped": reason}
  interactions = _load("the interactions", "data", lambda: data_stage.load_interactions(data_path))
  population_lib.check_world_matches(world, interactions)
  clusters = _load("the cluster map", "clusters", lambda: clusters_stage.load_exploration_clusters(
      ctx.input_path("clusters")))
  transitions = _load("the transitions", "transitions", lambda: NovelTransitions.load(
      ctx.input_path("transitions") / transitions_stage.TRANSITIONS))
  vectors = _load("the recommender's vectors", "seqrec",
                  lambda: seqrec_stage.load_vectors(ctx.input_path("seqrec")))
  m = clusters.num_clusters
  users = _sample_users(world.num_users, options.users, ctx.seed)
  catalog, population = population_lib.build_population(
      world, interactions, clusters.item_to_cluster, m, vectors.item_vectors,
      vectors.user_vectors, users, transitions.k)
  calibration = calibration_lib.discovery_value(
      world, np.asarray(population.known),
      np.asarray(population_lib.unpack_bits(population.engaged, m)), users, model)
  logging.info("sim calibration:\n%s", calibration_lib.format_calibration(calibration))
  topic_cluster = population_lib.topic_clusters(world.item_topic, clusters.item_to_cluster,
                                                world.num_topics, m)
  llm_table = None
  if "llm" in options.policies:
    llm_table = _load("the LLM planner's table", "precompute",
                      lambda: precompute_stage.load_table(ctx.input_path("precompute")))
  policies = build_policies(options, transitions, m, topic_cluster, llm_table)
  engagement = choice_lib.Engagement(world.config.base_enjoyment,
                                     world.config.engagement_concentration,
                                     world.config.positive_threshold)
  env = experiment_lib.make_environment(
      catalog, experiment_lib.replicate(population, options.replicas), vectors.user_vectors,
      vectors.item_prior, vectors.prior_weight, engagement, m)
  prepared = time.perf_counter()
  metrics = experiment_lib.run_experiment(env, policies, config, model, ctx.seed)
  simulated = time.perf_counter()
  names = [p.name for p in policies]
  summary = experiment_lib.summarise(metrics, names, options.replicas)
  user_rounds = len(users) * options.replicas * config.rounds * len(policies)
  result = {
      "calibration": calibration, **summary,
      "settings": {"users": int(len(users)), "replicas": options.replicas,
                   "rounds": config.rounds, "slate_size": config.slate_size,
                   "explore_slots": config.explore_slots, "policies": names,
                   "planner_table": options.planner_table},
      "seconds": {"prepare": round(prepared - start, 2),
                  "simulate": round(simulated - prepared, 2),
                  "user_rounds_per_second": round(user_rounds / (simulated - prepared), 1)},
  }
  artifacts.atomic_write_json(ctx.path / METRICS, result)
  table = experiment_lib.format_table(summary)
  (ctx.path / TABLE).write_text(table + "\n")
  logging.info("sim: %d users x %d replicas x %d rounds, %d policies in %.1f s\n%s", len(users),
               options.replicas, config.rounds, len(names), simulated - prepared, table)
  return {"policies": names, "ueuc": {n: summary["policies"][n]["ueuc"]["mean"] for n in names},
          "discoveries": {n: summary["policies"][n]["discoveries"]["mean"] for n in names},
          "seconds": result["seconds"]}


def load_metrics(stage_path: Path) -> dict[str, Any]:
  return artifacts.read_json(Path(stage_path) / METRICS)
