"""A tiny synthetic run through every stage (the report included), built once per pytest process.

Shared by the sim and report stage tests: `tiny_pipeline` runs the stages up to
`report` under the process's base temporary folder on first use and returns the
run directory; a test that changes a run works on a copy (`copy_run`).
"""

from __future__ import annotations

import pathlib
import shutil

import gin

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages

# The quickstart's data, clusters and recommender shrunk: 120 users, 300 items, 16 clusters,
# one seqrec epoch (the serving tests' run).
TINY_BASE = [
    "SyntheticConfig.num_users = 120", "SyntheticConfig.num_items = 300",
    "SyntheticConfig.branching = (2, 2, 2)", "SyntheticConfig.events_per_user = (20, 40)",
    "SeqRecConfig.max_len = 10", "SeqRecConfig.embed_dim = 16", "SeqRecConfig.num_blocks = 1",
    "SeqRecTraining.train_epochs = 1", "SeqRecTraining.eval_every_epochs = 1",
    "SeqRecTraining.batch_size = 16", "SoftmaxConfig.kind = 'sampled'",
    "SoftmaxConfig.negatives_per_example = 4", "build_cluster_tree.levels = (4, 16)",
]
# Every stage: also 20 LLM steps, a 6-cluster table, 60 simulated users for 3 rounds.
TINY_RUN = [
    *TINY_BASE, "SeqRecStageOptions.prior_weights = (0.0, 1.0)",
    "TrainerConfig.train_steps = 20", "TrainerConfig.batch_size = 16",
    "TrainerConfig.checkpoint_every = 20", "TrainerConfig.log_every = 10",
    "novel_interest_arrays.max_length = 128", "LlmStageOptions.max_eval_examples = 40",
    "make_optimizer.warmup_steps = 5", "PrecomputeOptions.tuples_per_shard = 100",
    "PrecomputeOptions.top_n = 6", "PrecomputeOptions.agreement_sample = 20",
    "SimOptions.users = 60", "SimConfig.rounds = 3",
]


def parse_tiny(run_dir: pathlib.Path, *bindings: str) -> None:
  """Clears gin and parses the quickstart with TINY_RUN (and `bindings`) into `run_dir`."""
  stages.load_builtin_stages()
  gin.clear_config()
  gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{run_dir}'", *TINY_RUN, *bindings])


def tiny_pipeline(tmp_path_factory) -> pathlib.Path:
  """The run directory of the tiny run with every stage complete; built on first use."""
  run_dir = tmp_path_factory.getbasetemp() / "tiny_pipeline"
  if rundir.RunDir(run_dir).manifest("report") is None:
    try:
      parse_tiny(run_dir)
      stages.run_stages(["report"], rundir.RunDir(run_dir), seed=0)
    finally:
      gin.clear_config()
  return run_dir


def copy_run(run_dir: pathlib.Path, destination: pathlib.Path) -> rundir.RunDir:
  """A copy of a run directory to change freely."""
  shutil.copytree(run_dir, destination)
  return rundir.RunDir(destination)
