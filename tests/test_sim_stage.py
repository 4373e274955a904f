"""The `sim` stage end to end on a tiny synthetic run, and its refusals."""

import json
import shutil

import pytest

from explore import artifacts
from explore import stages
from explore.precompute import stage as precompute_stage
from pipeline_fixtures import copy_run, parse_tiny, tiny_pipeline


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
  return tiny_pipeline(tmp_path_factory)


def test_sim_stage_writes_paired_intervals_and_names_a_missing_artifact(pipeline, tmp_path,
                                                                        clean_gin):
  run_dir = copy_run(pipeline, tmp_path / "run")
  metrics = json.loads((run_dir.complete_path("sim") / "metrics.json").read_text())
  names = metrics["settings"]["policies"]
  assert names == ["exploit_only", "random", "popular_novel", "transition", "last_cluster",
                   "ucb_bandit", "llm", "oracle"]
  assert metrics["versus"] == "exploit_only"
  for name in names:
    for metric, d in metrics["differences"][name].items():
      assert d["low"] <= d["mean"] <= d["high"], (name, metric)
    assert len(metrics["per_round"][name]["clicks"]["mean"]) == 3
  assert metrics["differences"]["exploit_only"]["clicks"]["mean"] == 0.0
  assert metrics["calibration"]["users"] == 60
  assert (run_dir.complete_path("sim") / "table.md").read_text().startswith("| policy |")
  # The llm policy played the precompute stage's table.
  table = precompute_stage.load_table(run_dir.complete_path("precompute"))
  assert table.top_n == 6 and metrics["settings"]["policies"].index("llm") == 6
  parse_tiny(run_dir.root)
  shutil.rmtree(run_dir.complete_path("seqrec") / "vectors")
  # The run directory's manifest check names the corrupt stage before the sim stage reads it.
  with pytest.raises(artifacts.CorruptArtifactError, match=r"stage 'seqrec' is corrupt: .*vectors.*explore seqrec --force"):
    stages.run_stages(["sim"], run_dir, seed=0, force=True)
