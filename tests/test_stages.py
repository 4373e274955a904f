"""Make-like stage execution: order, skip, rebuild, conflicts, --force, failures."""

import json

import gin
import pytest

from explore import rundir
from explore import stages
import toy_stages  # noqa: F401  (registers toy_alpha, toy_beta)


pytestmark = pytest.mark.usefixtures("clean_gin")


def _run(tmp_path, targets, force=False):
  return stages.run_stages(targets, rundir.RunDir(tmp_path), seed=0, force=force)


def test_target_runs_after_its_dependencies(tmp_path):
  assert _run(tmp_path, ["toy_beta"]) == [("toy_alpha", "run"), ("toy_beta", "run")]
  assert json.loads((tmp_path / "toy_beta" / "scaled.json").read_text()) == [0, 10, 20]


def test_complete_stages_with_same_config_are_skipped(tmp_path):
  _run(tmp_path, ["toy_beta"])
  assert _run(tmp_path, ["toy_beta"]) == [("toy_alpha", "skip"), ("toy_beta", "skip")]


def test_changed_config_is_an_error_naming_the_stage_and_value(tmp_path):
  _run(tmp_path, ["toy_alpha"])
  before = (tmp_path / "toy_alpha" / "values.json").read_text()
  gin.parse_config("toy_alpha_values.size = 5")
  with pytest.raises(stages.StageError, match=r"(?s)toy_alpha.*toy_alpha_values.size: 3 on disk, 5 now"):
    _run(tmp_path, ["toy_beta"])
  assert (tmp_path / "toy_alpha" / "values.json").read_text() == before
  assert not (tmp_path / "toy_beta").exists()


def test_force_redoes_the_stage_and_rebuilds_stages_after_it(tmp_path):
  _run(tmp_path, ["toy_beta"])
  gin.parse_config("toy_alpha_values.size = 2")
  assert _run(tmp_path, ["toy_alpha"], force=True) == [("toy_alpha", "run")]
  assert _run(tmp_path, ["toy_beta"]) == [("toy_alpha", "skip"), ("toy_beta", "rebuild")]
  assert json.loads((tmp_path / "toy_beta" / "scaled.json").read_text()) == [0, 10]


def test_failed_stage_leaves_previous_complete_version_intact(tmp_path):
  _run(tmp_path, ["toy_alpha"])
  gin.parse_config("toy_alpha_values.fail = True")
  with pytest.raises(RuntimeError, match="on purpose"):
    _run(tmp_path, ["toy_alpha"], force=True)
  run_dir = rundir.RunDir(tmp_path)
  # The failed redo's partial folder stays for a resume; the complete version is what counts.
  assert run_dir.partial_path("toy_alpha").exists() and run_dir.state("toy_alpha") == "complete"
  assert json.loads((tmp_path / "toy_alpha" / "values.json").read_text()) == [0, 1, 2]
  assert run_dir.manifest("toy_alpha").status == "complete"


def test_macro_and_literal_spellings_give_the_same_config(tmp_path):
  gin.parse_config("toy_alpha_values.size = 4")
  config_literal = stages.stage_config(stages.registered_stages()["toy_alpha"], seed=0)
  gin.clear_config()
  gin.parse_config("SIZE = 4\ntoy_alpha_values.size = %SIZE")
  config_macro = stages.stage_config(stages.registered_stages()["toy_alpha"], seed=0)
  assert config_literal == config_macro == {
      "seed": 0, "toy_alpha_values.fail": False, "toy_alpha_values.size": 4}


def test_seed_is_part_of_every_stage_config(tmp_path):
  _run(tmp_path, ["toy_alpha"])
  with pytest.raises(stages.StageError, match="seed: 0 on disk, 1 now"):
    stages.run_stages(["toy_alpha"], rundir.RunDir(tmp_path), seed=1)


def test_unknown_stage_and_cycle_are_errors():
  with pytest.raises(stages.StageError, match="unknown stage 'nope'"):
    stages.execution_order(["nope"])
  stages.register_stage("toy_cycle_a", deps=("toy_cycle_b",))(lambda ctx: None)
  stages.register_stage("toy_cycle_b", deps=("toy_cycle_a",))(lambda ctx: None)
  try:
    with pytest.raises(stages.StageError, match="cycle"):
      stages.execution_order(["toy_cycle_a"])
  finally:
    stages.unregister_stage("toy_cycle_a")
    stages.unregister_stage("toy_cycle_b")


def test_changed_external_input_rebuilds_the_stage(tmp_path):
  source = tmp_path / "outside.txt"
  source.write_text("v1")
  runs = []
  stages.register_stage("toy_external", external_inputs=lambda: {"outside": source.read_text()})(
      lambda ctx: runs.append(source.read_text()))
  try:
    run_dir = tmp_path / "run"
    assert _run(run_dir, ["toy_external"]) == [("toy_external", "run")]
    assert _run(run_dir, ["toy_external"]) == [("toy_external", "skip")]
    source.write_text("v2")
    assert _run(run_dir, ["toy_external"]) == [("toy_external", "rebuild")]
    assert runs == ["v1", "v2"]
    manifest = rundir.RunDir(run_dir).manifest("toy_external")
    assert manifest.inputs == {"external:outside": "v2"}
  finally:
    stages.unregister_stage("toy_external")


def test_ignored_bindings_do_not_change_the_stage_config(tmp_path):
  @gin.configurable
  def toy_ignored_options(size: int = 3, adapter_rank: int = 0):
    return size, adapter_rank

  @gin.configurable
  def toy_ignored_holder(options=None):
    return options

  stages.register_stage(
      "toy_ignored", configurables=("toy_ignored_options", "toy_ignored_holder"),
      ignored_bindings=("toy_ignored_options.adapter_rank",))(lambda ctx: None)
  try:
    gin.parse_config("toy_ignored_holder.options = @toy_ignored_options()")
    config = stages.stage_config(stages.registered_stages()["toy_ignored"], seed=0)
    assert "toy_ignored_options.adapter_rank" not in config
    assert config["toy_ignored_holder.options"] == {"@toy_ignored_options()": {"size": 3}}
    assert _run(tmp_path, ["toy_ignored"]) == [("toy_ignored", "run")]
    gin.parse_config("toy_ignored_options.adapter_rank = 4")  # ignored, also inside the reference
    assert _run(tmp_path, ["toy_ignored"]) == [("toy_ignored", "skip")]
    # A manifest written before the binding was ignored (it holds it) is still up to date.
    run_dir = rundir.RunDir(tmp_path)
    manifest = run_dir.manifest("toy_ignored")
    old = {**manifest.config, "toy_ignored_options.adapter_rank": 0,
           "toy_ignored_holder.options": {"@toy_ignored_options()": {"size": 3,
                                                                     "adapter_rank": 0}}}
    manifest.config, manifest.config_hash = old, rundir.fingerprint(old)
    manifest.write(run_dir.complete_path("toy_ignored") / rundir.MANIFEST)
    assert _run(tmp_path, ["toy_ignored"]) == [("toy_ignored", "skip")]
    gin.parse_config("toy_ignored_options.size = 5")  # not ignored
    with pytest.raises(stages.StageError, match="toy_ignored_options.size: 3 on disk, 5 now"):
      _run(tmp_path, ["toy_ignored"])
  finally:
    stages.unregister_stage("toy_ignored")


def test_status_table_reports_states_and_staleness(tmp_path):
  _run(tmp_path, ["toy_alpha"])
  gin.parse_config("toy_alpha_values.size = 7")
  rows = {r["stage"]: r for r in stages.status_table(rundir.RunDir(tmp_path), seed=0)}
  assert rows["toy_alpha"]["state"] == "complete"
  assert rows["toy_alpha"]["current"] == "no (config differs)"
  assert rows["toy_alpha"]["bytes"] > 0
  assert rows["toy_beta"]["state"] == "missing"
