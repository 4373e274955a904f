"""The end of `explore run`: the summary block, and a terminal without third-party INFO lines."""

import json

import pytest

from explore import gin_config
from explore import logs
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import run_summary
from explore import stages
from test_cli import explore

stages.load_builtin_stages()


@pytest.fixture
def logs_gin(tmp_path):
  path = tmp_path / "logs.gin"
  path.write_text("import log_stages\nimport toy_stages\ninclude 'quickstart.gin'\n")
  return path


def _orbax_lines(stderr: str) -> list[str]:
  return [line for line in stderr.splitlines()
          if "checkpointer.py:" in line or "atomicity.py:" in line]


def test_third_party_info_lines_only_with_verbosity_1(tmp_path, logs_gin):
  common = [f"--gin_file={logs_gin}", "--cpu_devices=1"]
  quiet = explore("toy_logs", *common, f"--gin.RUN_DIR='{tmp_path / 'quiet'}'")
  assert quiet.returncode == 0, quiet.stderr
  assert "toy_logs: the project's own info line" in quiet.stderr
  assert "JAX " in quiet.stderr and "cpu devices" in quiet.stderr  # the CLI's own INFO line
  assert _orbax_lines(quiet.stderr) == []
  verbose = explore("toy_logs", *common, f"--gin.RUN_DIR='{tmp_path / 'verbose'}'",
                    "--verbosity=1")
  assert verbose.returncode == 0, verbose.stderr
  assert "toy_logs: the project's own info line" in verbose.stderr
  assert len(_orbax_lines(verbose.stderr)) >= 2


def test_stage_command_ends_with_the_summary_block(tmp_path, logs_gin):
  run = tmp_path / "run"
  result = explore("toy_beta", f"--gin_file={logs_gin}", "--cpu_devices=1",
                   f"--gin.RUN_DIR='{run}'")
  assert result.returncode == 0, result.stderr
  block = result.stdout[result.stdout.index(f"== summary of {run}"):].splitlines()
  assert block[1].split()[0] == "toy_alpha" and block[2].split()[0] == "toy_beta"
  assert block[1].split()[2] == "s"  # its time
  assert block[3] == "next:" and block[4].strip().startswith(f"tensorboard --logdir={run}")


def test_filter_keeps_project_and_user_records_and_drops_installed_libraries():
  import logging
  record = lambda name, path, level=logging.INFO: logging.LogRecord(
      name, level, path, 1, "m", None, None)
  keep = logs.ThirdPartyInfoFilter().filter
  site = "/usr/lib/python3/site-packages/orbax/checkpoint/atomicity.py"
  assert not keep(record("absl", site))
  assert keep(record("absl", site, logging.WARNING))
  assert not keep(record("jax._src.xla_bridge", "/opt/jax/_src/xla_bridge.py"))
  assert keep(record("absl", logs._PACKAGE_DIR + "train/trainer.py"))
  assert keep(record("absl", "/home/me/my_stages.py"))  # a user's gin-imported module


TINY = [
    "SyntheticConfig.num_users = 120", "SyntheticConfig.num_items = 300",
    "SyntheticConfig.branching = (2, 2, 2)", "SyntheticConfig.events_per_user = (20, 40)",
    "SeqRecConfig.max_len = 10", "SeqRecConfig.embed_dim = 16", "SeqRecConfig.num_blocks = 1",
    "SeqRecTraining.train_epochs = 1", "SeqRecTraining.eval_every_epochs = 1",
    "SeqRecTraining.batch_size = 16", "SoftmaxConfig.kind = 'sampled'",
    "SoftmaxConfig.negatives_per_example = 4", "NUM_CLUSTERS = 16",
    "build_cluster_tree.levels = (4, 16)", "co_engagement_embeddings.dim = 16",
    "TrainerConfig.train_steps = 6", "TrainerConfig.batch_size = 16",
    "TrainerConfig.checkpoint_every = 6", "TrainerConfig.log_every = 3",
    "novel_interest_arrays.max_length = 64", "LlmStageOptions.max_eval_examples = 20",
    "make_optimizer.warmup_steps = 2",
]


def test_summary_lists_each_stage_with_its_headline_numbers(tmp_path, clean_gin):
  gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{tmp_path}'", *TINY])
  run = rundir.RunDir(tmp_path)
  done = stages.run_stages(["llm", "seqrec"], run, seed=0)
  text = run_summary.format_run_summary(run, done)
  lines = {line.split()[0]: line for line in text.splitlines()[1:] if line.startswith("  ")}
  assert [name for name, _ in done] == [n for n in lines if n in dict(done)]
  for name in ("data", "clusters", "transitions", "pretrain", "llm", "seqrec"):
    assert name in lines, text
  metrics = json.loads((tmp_path / "llm" / "metrics.json").read_text())
  for planner, by_bucket in metrics["planners"].items():
    assert f"{planner} {by_bucket['all']['hit@5']:.3f}" in lines["llm"]
  seqrec = run.manifest("seqrec").summary
  assert (f"HR@10 (test) {seqrec['model']['test']['hr@10']:.3f} vs most popular"
          f" {seqrec['most_popular']['test']['hr@10']:.3f}") in lines["seqrec"]
  assert "120 users, 300 items" in lines["data"]
  assert f"explore export --format=hf --out=DIR --run_dir={tmp_path}" in text
  assert "explore serve" not in text  # no precompute table yet
  again = run_summary.format_run_summary(run, stages.run_stages(["llm"], run, seed=0))
  assert "(up to date) hit@5: llm" in again
  assert "explore report" not in text  # the report stage is not registered among `commands`
  with_report = run_summary.format_run_summary(run, done, ["report"])
  assert f"explore report --gin.RUN_DIR=\"'{tmp_path}'\"" in with_report
  assert "report.html" not in with_report  # not built yet: the command, not the file
