"""The `explore` command line, run as users run it (a subprocess per case)."""

import os
import pathlib
import subprocess
import sys

import pytest

TESTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent


def explore(*args, cwd=None, timeout=180):
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(TESTS_DIR), env.get("PYTHONPATH", "")])
  env.pop("XLA_FLAGS", None)  # the CLI's --cpu_devices decides
  return subprocess.run([sys.executable, "-m", "explore.main", *args], cwd=cwd or REPO_ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def toy_gin(tmp_path):
  """A run file that imports the toy stages and includes the quickstart."""
  path = tmp_path / "toy.gin"
  path.write_text("import toy_stages\ninclude 'quickstart.gin'\n")
  return path


def modules_imported_by(code, packages):
  """The modules of `packages` that running `code` in a fresh interpreter imports."""
  probe = (f"{code}; import sys; "
           f"print(sorted(m for m in sys.modules if m.split('.')[0] in {packages!r}))")
  result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, check=True,
                          capture_output=True, text=True)
  return result.stdout.strip().splitlines()[-1]


def test_help_is_fast_and_imports_no_tensorflow():
  assert modules_imported_by("from explore import main", ("tensorflow", "seqio", "jax")) == "[]"
  result = explore("--help")
  assert result.returncode == 0, result.stderr
  assert "--gin_file" in result.stdout and "--force" in result.stdout


def test_help_lists_commands_and_stages_with_one_line_each():
  result = explore("status", "-h")
  assert result.returncode == 0, result.stderr
  for command in ("run", "status", "help", "recommend", "serve"):
    assert f"\n  {command} " in result.stdout
  assert ("\n  clusters     Embeds items, clusters them into a balanced tree and describes the "
          "exploration level. [after data]\n") in result.stdout


def test_help_stage_prints_its_configurables_with_defaults_and_bindings(tmp_path, toy_gin):
  result = explore("help", "toy_alpha", f"--gin_file={toy_gin}", "--gin.toy_alpha_values.size=5")
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("stage toy_alpha: Writes a list of integers.")
  assert "toy_alpha_values.size = 5" in result.stdout  # the binding given
  assert "toy_alpha_values.fail = False" in result.stdout  # the code default
  assert not (tmp_path / "run").exists()


def test_run_logs_eight_devices_and_mesh_and_writes_config(tmp_path):
  # The first stage only: tests/test_pipeline.py runs every stage of the quickstart.
  run_dir = tmp_path / "run"
  result = explore("data", "--gin_file=configs/quickstart.gin", "--cpu_devices=8",
                   f"--gin.RUN_DIR='{run_dir}'", "--gin.SyntheticConfig.num_users=200",
                   "--gin.SyntheticConfig.num_items=1000")
  assert result.returncode == 0, result.stderr
  assert "8 cpu devices" in result.stderr
  assert "mesh data=8 fsdp=1 model=1" in result.stderr
  assert "RunConfig.run_dir" in (run_dir / "config.gin").read_text()


def test_stage_command_runs_dependencies_then_status_reports(tmp_path, toy_gin):
  run_dir = tmp_path / "run"
  common = [f"--gin_file={toy_gin}", "--cpu_devices=2", f"--gin.RUN_DIR='{run_dir}'"]
  result = explore("toy_beta", *common)
  assert result.returncode == 0, result.stderr
  assert (run_dir / "toy_alpha" / "values.json").exists()
  assert (run_dir / "toy_beta" / "scaled.json").exists()
  config = (run_dir / "config.gin").read_text()
  assert "toy_alpha_values.size = 3" in config  # operative config, defaults included
  status = explore("status", *common)
  assert status.returncode == 0, status.stderr
  assert "toy_alpha" in status.stdout and "complete" in status.stdout


def test_dry_run_prints_config_and_writes_nothing(tmp_path, toy_gin):
  run_dir = tmp_path / "run"
  result = explore("run", f"--gin_file={toy_gin}", f"--gin.RUN_DIR='{run_dir}'", "--dry_run",
                   "--gin.toy_alpha_values.size=4")
  assert result.returncode == 0, result.stderr
  assert "toy_alpha_values.size = 4" in result.stdout
  assert not run_dir.exists()


def test_unknown_gin_binding_is_one_clear_error(tmp_path):
  result = explore("run", "--gin_file=quickstart.gin", f"--gin.RUN_DIR='{tmp_path}'",
                   "--gin.NoSuchThing.x=1")
  assert result.returncode == 1
  assert "explore: error: gin binding 'NoSuchThing.x = 1'" in result.stderr
  assert "Traceback" not in result.stderr


def test_missing_required_macro_names_file(tmp_path):
  result = explore("run", "--gin_file=quickstart.gin")
  assert result.returncode == 1
  assert "required gin macro RUN_DIR is not set" in result.stderr
  assert "base.gin" in result.stderr


def test_malformed_flag_exits_2():
  result = explore("run", "--gin.RUN_DIR")
  assert result.returncode == 2
  assert "malformed flag '--gin.RUN_DIR'" in result.stderr
  result = explore("run", "--cpu_devices=many")
  assert result.returncode == 2
  assert "cpu_devices" in result.stderr


def test_mesh_not_dividing_devices_is_named(tmp_path):
  result = explore("run", "--gin_file=quickstart.gin", "--cpu_devices=8",
                   f"--gin.RUN_DIR='{tmp_path / 'run'}'", "--gin.MeshConfig.data=3")
  assert result.returncode == 1
  assert "explore: error:" in result.stderr and "3" in result.stderr and "8" in result.stderr
  assert not (tmp_path / "run").exists()


def test_run_dir_with_another_config_is_refused_and_kept(tmp_path, toy_gin):
  run_dir = tmp_path / "run"
  common = [f"--gin_file={toy_gin}", "--cpu_devices=1", f"--gin.RUN_DIR='{run_dir}'"]
  assert explore("toy_alpha", *common).returncode == 0
  before = (run_dir / "toy_alpha" / "values.json").read_text()
  result = explore("toy_alpha", *common, "--gin.toy_alpha_values.size=5")
  assert result.returncode == 1
  assert "stage 'toy_alpha' was made with another config" in result.stderr
  assert "toy_alpha_values.size: 3 on disk, 5 now" in result.stderr
  assert (run_dir / "toy_alpha" / "values.json").read_text() == before
  forced = explore("toy_alpha", *common, "--gin.toy_alpha_values.size=5", "--force")
  assert forced.returncode == 0, forced.stderr
  assert (run_dir / "toy_alpha" / "values.json").read_text() == "[0, 1, 2, 3, 4]"


def test_unknown_stage_is_named(tmp_path):
  result = explore("nonsense", "--gin_file=quickstart.gin", f"--gin.RUN_DIR='{tmp_path}'")
  assert result.returncode == 1
  assert "unknown stage 'nonsense'" in result.stderr
