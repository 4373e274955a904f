"""config.gin reproduces the run: per-stage operative configs and their union in RUN_DIR."""

import gin
import pytest

from explore import gin_config
from explore import main
from explore import stages
import toy_stages  # noqa: F401  (registers the toy stages)
from test_cli import explore

stages.load_builtin_stages()

pytestmark = pytest.mark.usefixtures("clean_gin")


@pytest.mark.parametrize("gin_files", [["quickstart.gin", "tpu/v4-8.gin"], ["movielens.gin"],
                                       ["csv.gin"], ["llm/import_quickstart.gin"]])
def test_stage_config_text_reproduces_every_stage_config(gin_files):
  gin_config.parse_gin(gin_files, ["RUN_DIR = '/tmp/x'", "MOVIELENS_DIR = '/tmp/ml'",
                                    "PRETRAINED_CHECKPOINT = '/tmp/ckpt'",
                                    "CSV_LOGS = '/tmp/logs.csv'"])
  registered = stages.registered_stages().values()
  before = {s.name: stages.stage_config(s, 0) for s in registered}
  texts = [gin_config.configurables_config_str(main.RUN_LEVEL_CONFIGURABLES)]
  texts += [gin_config.configurables_config_str(s.configurables) for s in registered]
  gin.clear_config()
  gin.parse_config("\n".join(texts))
  after = {s.name: stages.stage_config(s, 0) for s in registered}
  assert after == before
  assert main.RunConfig().run_dir == "/tmp/x"


def test_config_gin_survives_noop_rerun_and_failed_force_and_reproduces(tmp_path):
  toy_gin = tmp_path / "toy.gin"
  toy_gin.write_text("import toy_stages\ninclude 'quickstart.gin'\n")
  run_dir = tmp_path / "run"
  common = ["--cpu_devices=1", f"--gin.RUN_DIR='{run_dir}'"]
  assert explore("toy_beta", f"--gin_file={toy_gin}", *common,
                 "--gin.toy_beta_scale.scale=7").returncode == 0
  config = (run_dir / "config.gin").read_text()
  assert "toy_alpha_values.size = 3" in config and "toy_beta_scale.scale = 7" in config
  assert "toy_beta_scale.scale = 7" in (run_dir / "toy_beta" / "config.gin").read_text()
  assert list((run_dir / "toy_beta").glob("events.out.tfevents.*"))  # for TensorBoard's text tab

  noop = explore("toy_alpha", f"--gin_file={toy_gin}", *common)  # runs toy_alpha only
  assert noop.returncode == 0, noop.stderr
  assert (run_dir / "config.gin").read_text() == config
  failed = explore("toy_alpha", f"--gin_file={toy_gin}", *common, "--force",
                   "--gin.toy_alpha_values.fail=True", "--gin.toy_alpha_values.size=4")
  assert failed.returncode != 0
  assert (run_dir / "config.gin").read_text() == config

  again = explore("toy_beta", f"--gin_file={run_dir / 'config.gin'}")
  assert again.returncode == 0, again.stderr
  assert "== toy_alpha: up to date" in again.stdout and "== toy_beta: up to date" in again.stdout


def test_summary_numbers_become_tensorboard_scalars():
  summary = {"hit@5": {"llm": 0.25, "transition": 0.5}, "model": {"test": {"hr@10": 0.3}},
             "evaluated_examples": 500, "pretrained": None, "stopped_reason": "done",
             "levels": [8, 64], "resumed": True}
  assert stages.summary_scalars(summary) == {
      "hit@5/llm": 0.25, "hit@5/transition": 0.5, "model/test/hr@10": 0.3,
      "evaluated_examples": 500.0}


def test_stage_writes_config_text_and_summary_scalars_for_tensorboard(tmp_path):
  tf = pytest.importorskip("tensorflow")
  from explore import rundir  # pylint: disable=g-import-not-at-top
  run_dir = rundir.RunDir(tmp_path / "run")
  stages.run_stages(["toy_beta"], run_dir, seed=0)
  (events,) = (tmp_path / "run" / "toy_beta").glob("events.out.tfevents.*")
  values = {v.tag: v for record in tf.data.TFRecordDataset(str(events))
            for v in tf.compat.v1.Event.FromString(record.numpy()).summary.value}
  assert values["sum"].simple_value == 30.0  # toy_beta's summary: sum of [0, 10, 20]
  text = tf.make_ndarray(values["gin/operative_config"].tensor).item().decode()
  assert "    toy_beta_scale.scale = 10" in text
  assert run_dir.verify("toy_beta") == []  # the event file is part of the verified payload
