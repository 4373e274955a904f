"""The `precompute` stage: the trained planner over every K-tuple of clusters, into a table.

Reads the `clusters` (descriptions, item -> cluster), `transitions` (test
examples) and `llm` (the trained planner, through `llm_stage.load_planner`)
stages; writes into the stage folder:
  shards/         shard_<s>.npz per finished shard (see `shards.py`), kept
                  while the stage runs so a restart redoes no finished shard
  table/          the `TupleTable`: every ordered K-tuple of distinct clusters
                  -> its top-n novel clusters and scores, with the fingerprints
                  of the cluster set and the checkpoint it was built from
  metrics.json    validity (valid outputs, history outputs) over every tuple,
                  top-1 agreement with the exact scorer, the novel-cluster
                  hit@k table of the table next to the exact scorer's on the
                  llm stage's test examples (overall and unseen / rare /
                  frequent), seconds per phase
The stage folder of an interrupted run is kept (same config), so a rerun
plans only the shards that have no file. With several processes each plans
and writes its own shards (`ShardPlan.owned`) on its local devices; process 0
assembles the table after all have finished (the run directory must be
shared).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import shutil
from typing import Any

from absl import logging
import gin
import numpy as np

from explore import artifacts
from explore import progress as progress_lib
from explore import stages
from explore.clusters import stage as clusters_stage
from explore.eval import hit_rate
from explore.llm import stage as llm_stage
from explore.precompute import generators
from explore.precompute import quality
from explore.precompute import shards as shards_lib
from explore.precompute.table import TableError, TupleTable, distinct_tuples, text_fingerprint
from explore.transitions import stage as transitions_stage
from explore.transitions.examples import clusters_fingerprint

TABLE = "table"
METRICS = "metrics.json"
GENERATORS = ("beam", "exact")


class PrecomputeError(ValueError):
  """Settings or inputs the `precompute` stage cannot use."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PrecomputeOptions:
  """Knobs of the `precompute` stage.

  Attributes:
    top_n: clusters kept per tuple.
    generator: 'beam' (trie-constrained beam search) or 'exact' (the decoder
      scores all M clusters per tuple: the reference, O(M) per tuple).
    num_beams: beams per tuple (>= top_n) for 'beam'.
    prompts_per_chunk: tuples decoded per compiled call (rounded up to a
      multiple of the mesh's data-parallel size).
    tuples_per_shard: tuples per shard file (the unit of resume and of the
      split between processes).
    agreement_sample: table tuples, drawn uniformly with the run's seed, on
      which the table's top-1 is compared with the exact scorer's (besides
      every distinct evaluated test tuple); 0: the test tuples only.
  """

  top_n: int = 10
  generator: str = "beam"
  num_beams: int = 10
  prompts_per_chunk: int = 256
  tuples_per_shard: int = 8192
  agreement_sample: int = 500

  def __post_init__(self):
    if self.generator not in GENERATORS:
      raise PrecomputeError(f"PrecomputeOptions.generator={self.generator!r} must be one of "
                            f"{GENERATORS}")
    for name in ("top_n", "num_beams", "prompts_per_chunk", "tuples_per_shard"):
      if getattr(self, name) < 1:
        raise PrecomputeError(f"PrecomputeOptions.{name}={getattr(self, name)} must be >= 1")
    if self.generator == "beam" and self.num_beams < self.top_n:
      raise PrecomputeError(f"PrecomputeOptions.num_beams={self.num_beams} must be >= top_n="
                            f"{self.top_n}")
    if self.agreement_sample < 0:
      raise PrecomputeError(
          f"PrecomputeOptions.agreement_sample={self.agreement_sample} must be >= 0")


def load_table(stage_path: Path, mmap: bool = True) -> TupleTable:
  """The stage's table, memory-mapped (rows are read from disk as they are looked up)."""
  return TupleTable.load(Path(stage_path) / TABLE, mmap=mmap)


def load_metrics(stage_path: Path) -> dict[str, Any]:
  return artifacts.read_json(Path(stage_path) / METRICS)


def table_fingerprints(clusters: clusters_stage.ExplorationClusters, checkpoint: str
                       ) -> dict[str, str]:
  """What a table is tied to: the cluster assignment, their descriptions, the checkpoint."""
  return {"cluster_assignment": clusters_fingerprint(clusters.item_to_cluster),
          "cluster_descriptions": text_fingerprint(list(clusters.texts)),
          "checkpoint": checkpoint}


def make_generator(planner, options: PrecomputeOptions) -> generators.TopN:
  """The configured top-n generator over `planner`."""
  if options.generator == "exact":
    return generators.exact_top_n(planner, options.top_n)
  from explore.precompute import beam  # pylint: disable=g-import-not-at-top
  return beam.beam_top_n(planner, options.top_n, options.num_beams, options.prompts_per_chunk)


def _local_mesh(mesh):
  """The mesh this process decodes its own shards on: its local devices under multi-host."""
  import jax  # pylint: disable=g-import-not-at-top
  from explore import partitioning  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    return partitioning.create_mesh(partitioning.MeshConfig(), devices=jax.local_devices())
  return mesh if mesh is not None else partitioning.create_mesh(partitioning.MeshConfig())


def run_shards(folder: Path, plan: shards_lib.ShardPlan, process_index: int, tuples: np.ndarray,
               generate: generators.TopN, top_n: int, num_clusters: int) -> int:
  """Plans this process's unfinished shards, writing each as it finishes; returns how many."""
  todo = shards_lib.pending(plan, process_index, folder)
  progress = progress_lib.Progress("precompute: tuples", total=sum(s.size for s in todo),
                                   unit="tuples")
  for shard in todo:
    history = tuples[shard.start:shard.stop]  # [s, K]
    clusters, scores = generate(history)
    generators.check_rows(history, clusters, scores, top_n, num_clusters)
    shards_lib.save_shard(folder, shard, history, clusters, scores)
    progress.update(shard.size)
  progress.close()
  return len(todo)


def assemble(folder: Path, plan: shards_lib.ShardPlan, tuples: np.ndarray, num_clusters: int,
             k: int, top_n: int, fingerprints: dict[str, str], meta: dict[str, Any]
             ) -> TupleTable:
  """Reads every shard into one table and saves it in `folder/table`."""
  history, clusters, scores = shards_lib.load_shards(folder, plan, tuples)
  table = TupleTable.empty(num_clusters, k, top_n, fingerprints=fingerprints, meta=meta)
  table.set_rows(history, clusters, scores)
  table.save(folder / TABLE)
  return table


def _finished_table(folder: Path, fingerprints: dict[str, str]) -> TupleTable | None:
  """A table an interrupted run already assembled from the same inputs, if any."""
  if not (folder / TABLE).exists():
    return None
  try:
    table = TupleTable.load(folder / TABLE)
    table.check_fingerprints(fingerprints, folder / TABLE)
    return table
  except (TableError, artifacts.ArtifactError):
    return None


def exact_scores(planner, union: np.ndarray, history: np.ndarray,
                 history_scores: np.ndarray | None) -> tuple[np.ndarray, int]:
  """([u, M] exact scores of the `union` tuples, how many were scored here).

  Tuples of `history` whose scores the `llm` stage kept (`history_scores`,
  [n, M], the same planner's) are read from them; the rest are scored.
  """
  known = {}
  if history_scores is not None:
    known = {row: i for i, row in enumerate(map(tuple, history.tolist()))}
  source = [known.get(row) for row in map(tuple, union.tolist())]  # kept row, or None
  kept = [i for i, row in enumerate(source) if row is not None]
  todo = [i for i, row in enumerate(source) if row is None]
  exact = np.empty((len(union), planner.num_clusters), np.float32)
  if kept:
    exact[kept] = history_scores[[source[i] for i in kept]]
  if todo:
    exact[todo] = planner.scores(union[todo])
  return exact, len(todo)


def evaluate(table: TupleTable, planner, transitions, examples: np.ndarray, rare_max: int,
             tuples: np.ndarray, options: PrecomputeOptions, seed: int,
             history_scores: np.ndarray | None = None) -> dict[str, Any]:
  """Validity over every tuple, top-1 agreement and hit@k of the table vs the exact scorer.

  The exact scorer (O(M) candidates per tuple) runs once on the union of the
  evaluated test tuples and the agreement sample, except for the test tuples
  whose scores the `llm` stage kept (`history_scores`); both measures read it.
  """
  history = transitions.history[examples]  # [n, K]
  union = quality.agreement_tuples(tuples, history, options.agreement_sample, seed)  # [u, K]
  exact, scored = exact_scores(planner, union, history, history_scores)  # [u, M]
  row_of = {row: i for i, row in enumerate(map(tuple, union.tolist()))}
  scores = {"table": table.planner_scores(history),
            "exact": exact[[row_of[row] for row in map(tuple, history.tolist())]]}
  evaluation = hit_rate.evaluate_planners(transitions, scores, examples=examples,
                                          rare_max=rare_max)
  hit5 = {name: evaluation["planners"][name]["all"]["hit@5"] for name in scores}
  exact_top1, _ = generators.top_n_novel(exact, union, 1)  # [u, 1]
  return {
      **evaluation,
      "evaluated_examples": int(len(examples)),
      "validity": quality.output_validity(table, tuples),
      "agreement": quality.top1_agreement(table, union, exact_top1[:, 0]),
      "exact_tuples_scored": scored,
      "hit@5_table_minus_exact": hit5["table"] - hit5["exact"],
  }


@stages.register_stage("precompute", deps=("clusters", "transitions", "llm"),
                       configurables=("PrecomputeOptions",))
def precompute_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Runs the trained planner over every K-tuple of clusters into a lookup table."""
  import jax  # pylint: disable=g-import-not-at-top
  options = PrecomputeOptions()
  clock = progress_lib.PhaseClock()
  clock.start()
  clusters = clusters_stage.load_exploration_clusters(ctx.input_path("clusters"))
  transitions = transitions_stage.load_transitions(ctx.input_path("transitions"))
  # The exact scorer (the reference in the metrics) keeps its own chunk size:
  # its rows are prompts x M candidates, far more than the beam generator's.
  planner = llm_stage.load_planner(ctx.input_path("llm"), _local_mesh(ctx.mesh))
  descriptions = list(clusters.texts)
  if planner.descriptions != descriptions or planner.k != transitions.k:
    raise PrecomputeError(f"{ctx.input_path('llm')}: the planner was trained on other clusters "
                          "or another K than the clusters / transitions stages hold; rerun llm")
  m, k = len(descriptions), transitions.k
  tuples = distinct_tuples(m, k)  # [T, K] in table row order
  plan = shards_lib.ShardPlan(len(tuples), options.tuples_per_shard, jax.process_count())
  fingerprints = table_fingerprints(clusters, planner.checkpoint_fingerprint)
  clock.stop("load")

  clock.start()
  resumed = len(shards_lib.finished_shards(ctx.path))
  table = _finished_table(ctx.path, fingerprints)
  ran = 0
  if table is None:
    ran = run_shards(ctx.path, plan, jax.process_index(), tuples,
                     make_generator(planner, options), options.top_n, m)
  clock.stop("generate")
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("precompute: every shard written")
  if jax.process_index() != 0:
    return {"shards_planned_here": ran}

  clock.start()
  if table is None:
    meta = {"generator": options.generator, "num_beams": options.num_beams}
    table = assemble(ctx.path, plan, tuples, m, k, options.top_n, fingerprints, meta)
  clock.stop("assemble")

  clock.start()
  examples, rare_max = llm_stage.load_eval_examples(ctx.input_path("llm"))
  metrics = evaluate(table, planner, transitions, examples, rare_max, tuples, options, ctx.seed,
                     llm_stage.load_eval_scores(ctx.input_path("llm")))
  clock.stop("evaluate")
  seconds = clock.seconds
  metrics.update({"num_clusters": m, "k": k, "top_n": options.top_n,
                  "generator": options.generator, "num_beams": options.num_beams,
                  "tuples": int(len(tuples)), "shards": plan.num_shards,
                  "shards_found_on_start": resumed, "shards_planned": ran,
                  "fingerprints": fingerprints, "seconds": seconds})
  artifacts.atomic_write_json(ctx.path / METRICS, metrics)
  shutil.rmtree(ctx.path / shards_lib.SHARDS_DIR, ignore_errors=True)
  summary = {"tuples": int(len(tuples)), "generator": options.generator,
             "fraction_valid": metrics["validity"]["fraction_valid"],
             "fraction_history": metrics["validity"]["fraction_history"],
             "top1_agreement": metrics["agreement"]["top1_agreement"],
             "hit@5": {n: metrics["planners"][n]["all"]["hit@5"] for n in ("table", "exact")},
             "seconds": seconds}
  logging.info("precompute: %s", summary)
  return summary
