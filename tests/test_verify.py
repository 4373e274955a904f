"""Artifacts verify themselves: sizes and SHA-256 in the manifest, checked on load and by status."""

import numpy as np
import pytest

from explore import artifacts
from explore import rundir
from explore import stages


def _stage_with_artifact(tmp_path, values=np.arange(1000)):
  run_dir = rundir.RunDir(tmp_path / "run")
  path = run_dir.begin("s", {"x": 1}, {})
  artifacts.save_artifact(path / "art", "thing", 1, {"a": values})
  run_dir.finish("s", {})
  return run_dir, run_dir.complete_path("s") / "art"


def _flip_last_byte(path):
  data = bytearray(path.read_bytes())
  data[-1] ^= 0xFF
  path.write_bytes(bytes(data))


def test_manifest_records_size_and_hash_of_every_payload_file(tmp_path):
  run_dir, art = _stage_with_artifact(tmp_path)
  files = run_dir.manifest("s").files
  assert set(files) == {"art/arrays.npz", "art/meta.json"}
  assert files["art/arrays.npz"]["bytes"] == (art / "arrays.npz").stat().st_size
  assert files["art/arrays.npz"]["sha256"] == artifacts.file_sha256(art / "arrays.npz")
  assert run_dir.state("s") == "complete" and run_dir.verify("s") == []


def test_truncated_npz_is_corrupt_and_loading_names_file_stage_and_fix(tmp_path):
  run_dir, art = _stage_with_artifact(tmp_path)
  npz = art / "arrays.npz"
  npz.write_bytes(npz.read_bytes()[:100])
  assert run_dir.state("s") == "corrupt"
  with pytest.raises(artifacts.CorruptArtifactError) as e:
    artifacts.load_artifact(art, "thing", 1)
  message = str(e.value)
  assert str(npz) in message and "stage 's' is corrupt" in message
  assert "explore s --force" in message and "\n" not in message


def test_changed_byte_is_found_by_hash_not_by_size(tmp_path):
  run_dir, art = _stage_with_artifact(tmp_path)
  _flip_last_byte(art / "arrays.npz")
  assert run_dir.state("s") == "complete"  # the cheap check sees the same size
  problems = run_dir.verify("s", hashes=True)
  assert len(problems) == 1 and "arrays.npz" in problems[0] and "SHA-256" in problems[0]
  with pytest.raises(artifacts.CorruptArtifactError, match="arrays.npz.*explore s --force"):
    artifacts.load_artifact(art, "thing", 1)


def test_unreadable_npz_outside_a_run_dir_is_an_artifact_error_not_badzipfile(tmp_path):
  artifacts.save_artifact(tmp_path / "art", "thing", 1, {"a": np.arange(1000)})
  npz = tmp_path / "art" / "arrays.npz"
  npz.write_bytes(npz.read_bytes()[:100])
  with pytest.raises(artifacts.CorruptArtifactError, match="arrays.npz: unreadable"):
    artifacts.load_artifact(tmp_path / "art", "thing", 1)


def test_partial_folder_beside_complete_stage_leaves_it_complete(tmp_path):
  run_dir, _ = _stage_with_artifact(tmp_path)
  run_dir.begin("s", {"x": 1}, {})  # a --force redo started and was interrupted
  assert run_dir.partial_path("s").exists()
  assert run_dir.state("s") == "complete"


@pytest.fixture
def reader_stages():
  @stages.register_stage("verify_writer")
  def writer(ctx):
    artifacts.save_artifact(ctx.path / "art", "thing", 1, {"a": np.arange(1000)})

  @stages.register_stage("verify_reader", deps=("verify_writer",))
  def reader(ctx):
    artifacts.load_artifact(ctx.input_path("verify_writer") / "art", "thing", 1)

  yield
  stages.unregister_stage("verify_writer")
  stages.unregister_stage("verify_reader")


def test_stage_reading_a_corrupt_input_fails_naming_it(tmp_path, reader_stages):
  run_dir = rundir.RunDir(tmp_path / "run")
  stages.run_stages(["verify_writer"], run_dir, seed=0)
  npz = run_dir.complete_path("verify_writer") / "art" / "arrays.npz"
  _flip_last_byte(npz)  # same size: only the loader's hash check sees it
  with pytest.raises(artifacts.CorruptArtifactError, match="stage 'verify_writer' is corrupt"):
    stages.run_stages(["verify_reader"], run_dir, seed=0)
  rows = {r["stage"]: r for r in stages.status_table(run_dir, seed=0, verify=True)}
  assert rows["verify_writer"]["state"] == "corrupt"
  assert rows["verify_reader"]["state"] == "partial"  # it started, then failed on its input
  npz.write_bytes(npz.read_bytes()[:50])  # truncated: the size check refuses before any work
  with pytest.raises(artifacts.CorruptArtifactError, match="explore verify_writer --force"):
    stages.run_stages(["verify_reader"], run_dir, seed=0)
  stages.run_stages(["verify_writer"], run_dir, seed=0, force=True)
  assert [a for _, a in stages.run_stages(["verify_reader"], run_dir, seed=0)] == ["skip", "run"]


def test_status_checks_sizes_and_status_verify_checks_hashes(tmp_path):
  from test_cli import explore  # pylint: disable=g-import-not-at-top
  toy_gin = tmp_path / "toy.gin"
  toy_gin.write_text("import toy_stages\ninclude 'quickstart.gin'\n")
  run_dir = tmp_path / "run"
  common = [f"--gin_file={toy_gin}", "--cpu_devices=1", f"--gin.RUN_DIR='{run_dir}'"]
  assert explore("toy_alpha", *common).returncode == 0
  values = run_dir / "toy_alpha" / "values.json"
  values.write_text(values.read_text().replace("1", "7"))  # same size, other bytes
  status = explore("status", *common)
  assert status.returncode == 0, status.stderr
  assert "toy_alpha     complete" in status.stdout
  verified = explore("status", "--verify", *common)
  assert verified.returncode == 1
  assert "toy_alpha     corrupt" in verified.stdout and str(values) in verified.stdout
  assert "explore toy_alpha --force" in verified.stdout
  values.write_text("[")
  truncated = explore("status", *common)
  assert truncated.returncode == 1 and "toy_alpha     corrupt" in truncated.stdout
  rerun = explore("toy_beta", *common)
  assert rerun.returncode == 1
  assert rerun.stderr.strip().splitlines()[-1].startswith("explore: error: stage 'toy_alpha' is "
                                                          "corrupt")
