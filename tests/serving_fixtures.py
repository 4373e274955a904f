"""A tiny run (data, clusters, seqrec, transitions) and a transition-count table, built once.

Shared by the serving tests: each pytest process builds it once under its base
temporary folder (about a minute on a busy 2-core machine) and reuses it.
"""

from __future__ import annotations

import pathlib
import sys

import gin

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import rundir
from explore import stages

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "bench"))
import serving as serving_bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from pipeline_fixtures import TINY_BASE  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY_RUN = TINY_BASE


def serving_run(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path]:
  """(run directory, count-table folder) of the tiny run; built on first use."""
  root = tmp_path_factory.getbasetemp() / "serving_run"
  run_dir, table = root / "run", root / "table"
  if not (table / "meta.json").exists():
    stages.load_builtin_stages()
    gin.clear_config()
    try:
      gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{run_dir}'", *TINY_RUN])
      stages.run_stages(["seqrec", "transitions"], rundir.RunDir(run_dir), seed=0)
    finally:
      gin.clear_config()
    serving_bench.write_count_table(run_dir, table, top_n=6)
  return run_dir, table
