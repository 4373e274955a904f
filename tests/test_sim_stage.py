"""The `sim` stage end to end on a tiny synthetic run, and its refusals."""

import json
import shutil

import pytest

from explore import artifacts
from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages
from explore.sim import stage as sim_stage

stages.load_builtin_stages()



TINY_RUN = [
    "SyntheticConfig.num_users = 120", "SyntheticConfig.num_items = 300",
    "SyntheticConfig.branching = (2, 2, 2)", "SyntheticConfig.events_per_user = (20, 40)",
    "SeqRecConfig.max_len = 10", "SeqRecConfig.embed_dim = 16", "SeqRecConfig.num_blocks = 1",
    "SeqRecTraining.train_epochs = 1", "SeqRecTraining.eval_every_epochs = 1",
    "SeqRecTraining.batch_size = 16", "SoftmaxConfig.kind = 'sampled'",
    "SoftmaxConfig.negatives_per_example = 4", "build_cluster_tree.levels = (4, 16)",
    "SeqRecStageOptions.prior_weights = (0.0, 1.0)", "SimOptions.users = 60",
    "SimConfig.rounds = 3",
]


def test_sim_stage_writes_paired_intervals_and_names_a_missing_artifact(tmp_path, clean_gin):
  gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{tmp_path}'", *TINY_RUN])
  run_dir = rundir.RunDir(tmp_path)
  stages.run_stages(["sim"], run_dir, seed=0)
  metrics = json.loads((run_dir.complete_path("sim") / "metrics.json").read_text())
  names = metrics["settings"]["policies"]
  assert names == ["exploit_only", "random", "popular_novel", "transition", "last_cluster",
                   "ucb_bandit", "oracle"]
  assert metrics["versus"] == "exploit_only"
  for name in names:
    for metric, d in metrics["differences"][name].items():
      assert d["low"] <= d["mean"] <= d["high"], (name, metric)
    assert len(metrics["per_round"][name]["clicks"]["mean"]) == 3
  assert metrics["differences"]["exploit_only"]["clicks"]["mean"] == 0.0
  assert metrics["calibration"]["users"] == 60
  assert (run_dir.complete_path("sim") / "table.md").read_text().startswith("| policy |")
  shutil.rmtree(run_dir.complete_path("seqrec") / "vectors")
  # The run directory's manifest check names the corrupt stage before the sim stage reads it.
  with pytest.raises(artifacts.CorruptArtifactError, match=r"stage 'seqrec' is corrupt: .*vectors.*explore seqrec --force"):
    stages.run_stages(["sim"], run_dir, seed=0, force=True)
