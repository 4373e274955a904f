"""What serving reads from a run directory, through each stage's loader, checked once.

  data       interactions (users' logs) and the catalog (titles)
  clusters   item -> cluster at the exploration level and the descriptions
  seqrec     item / user vectors with the tuned popularity prior, and the best
             checkpoint (to encode histories that are not a logged user's)
  precompute the planner's `TupleTable` (or a table folder given explicitly)

A table must fit the run's clusters: the same M and, for every fingerprint it
records that serving can recompute, the same value. Fingerprint names:
  "cluster_assignment", "cluster_descriptions"  as the `precompute` stage
                    records them (`precompute.stage.table_fingerprints`)
  "stage:<name>"    the run's manifest fingerprint of stage <name> (e.g.
                    "stage:transitions" for a table of transition counts)
The `precompute` stage's own table is also checked through the run: the
fingerprints of the stages it was built from (clusters, transitions, llm: the
checkpoint) must still be those of the run's stages.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from absl import logging
import numpy as np

from explore import rundir
from explore.precompute.table import TupleTable
from explore.serving.histories import ServingError

STAGE_PREFIX = "stage:"
REQUIRED_STAGES = ("data", "clusters", "seqrec")


@dataclasses.dataclass(frozen=True)
class ServingInputs:
  interactions: Any  # explore.data.schema.Interactions
  catalog: Any  # explore.data.schema.ItemCatalog
  clusters: Any  # explore.clusters.stage.ExplorationClusters
  vectors: Any  # explore.seqrec.vectors.SeqRecVectors
  seqrec_config: Any  # explore.seqrec.model.SeqRecConfig
  seqrec_path: Path
  table: TupleTable
  table_path: Path


def _complete_path(run: rundir.RunDir, stage: str) -> Path:
  state = run.state(stage)
  if state != "complete":
    raise ServingError(f"run directory {run.root}: stage {stage!r} is {state}; run "
                       f"`explore {stage}` with this RUN_DIR first")
  return run.complete_path(stage)


def expected_fingerprints(run: rundir.RunDir, clusters) -> dict[str, str]:
  """Every fingerprint name serving can recompute for this run (see the module docstring)."""
  from explore.precompute import stage as precompute_stage  # pylint: disable=g-import-not-at-top
  expected = {name: value for name, value in precompute_stage.table_fingerprints(
      clusters, checkpoint="").items() if name != "checkpoint"}  # the checkpoint: by the manifest
  for path in sorted(run.root.iterdir()) if run.root.is_dir() else ():
    manifest = run.manifest(path.name) if path.is_dir() else None
    if manifest is not None:
      expected[STAGE_PREFIX + path.name] = manifest.fingerprint
  return expected


def check_stage_inputs(run: rundir.RunDir, stage: str) -> None:
  """Raises `TableError` when a stage the table was built from has been remade since."""
  from explore.precompute.table import TableError  # pylint: disable=g-import-not-at-top
  manifest = run.manifest(stage)
  changed = [dep for dep, value in manifest.inputs.items()
             if run.manifest(dep) is not None and run.manifest(dep).fingerprint != value]
  if changed:
    raise TableError(f"{run.complete_path(stage)}: built from other inputs: stage(s) "
                     f"{', '.join(changed)} were remade since; rerun `explore {stage}`")


def check_table(table: TupleTable, run: rundir.RunDir, clusters, where: Path) -> None:
  """Raises `TableError` when the table was built from another cluster set or checkpoint."""
  from explore.precompute.table import TableError  # pylint: disable=g-import-not-at-top
  if table.num_clusters != clusters.num_clusters:
    raise TableError(f"{where}: the table plans over {table.num_clusters} clusters, the run's "
                     f"clusters stage has {clusters.num_clusters}; rebuild the table")
  expected = expected_fingerprints(run, clusters)
  known = {name: value for name, value in expected.items() if name in table.fingerprints}
  table.check_fingerprints(known, where)
  unchecked = sorted(set(table.fingerprints) - set(known))
  if unchecked:
    logging.warning("%s: fingerprints %s name nothing this run has; not checked", where,
                    unchecked)


def _stage_table(run: rundir.RunDir) -> tuple[TupleTable, Path]:
  """The `precompute` stage's table, read through that stage's loader."""
  from explore.precompute import stage as precompute_stage  # pylint: disable=g-import-not-at-top
  path = _complete_path(run, "precompute")
  check_stage_inputs(run, "precompute")
  return precompute_stage.load_table(path), path / precompute_stage.TABLE


def load_inputs(run_dir: str | os.PathLike, table: str | os.PathLike | None = None
                ) -> ServingInputs:
  """Reads and checks everything serving needs (see the module docstring)."""
  from explore.clusters import stage as clusters_stage  # pylint: disable=g-import-not-at-top
  from explore.data import stage as data_stage  # pylint: disable=g-import-not-at-top
  from explore.seqrec import stage as seqrec_stage  # pylint: disable=g-import-not-at-top
  from explore.serving import encoder  # pylint: disable=g-import-not-at-top
  run = rundir.RunDir(run_dir)
  if not run.root.is_dir():
    raise ServingError(f"run directory {run.root} does not exist")
  paths = {stage: _complete_path(run, stage) for stage in REQUIRED_STAGES}
  interactions = data_stage.load_interactions(paths["data"])
  catalog = data_stage.load_catalog(paths["data"])
  clusters = clusters_stage.load_exploration_clusters(paths["clusters"])
  vectors = seqrec_stage.load_vectors(paths["seqrec"])
  if len(vectors.item_vectors) != interactions.num_items or len(
      clusters.item_to_cluster) != interactions.num_items:
    raise ServingError(f"run directory {run.root}: the seqrec vectors ({len(vectors.item_vectors)}"
                       f" items) or clusters ({len(clusters.item_to_cluster)}) do not cover the "
                       f"catalog ({interactions.num_items} items); rerun those stages")
  config = encoder.seqrec_config(run.manifest("seqrec").config, interactions.num_items,
                                 clusters.num_clusters)
  if table is None:
    loaded, table_path = _stage_table(run)
  else:
    table_path = Path(table)
    loaded = TupleTable.load(table_path)
  check_table(loaded, run, clusters, table_path)
  return ServingInputs(interactions, catalog, clusters, vectors, config, paths["seqrec"],
                       loaded, table_path)


def cluster_popularity(interactions, item_to_cluster: np.ndarray, num_clusters: int
                       ) -> np.ndarray:
  """[M] positive engagements per cluster in the log (the "popular" fallback's order)."""
  items = interactions.item[interactions.positive]
  return np.bincount(item_to_cluster[items], minlength=num_clusters).astype(np.float64)
