"""Run directory: atomic artifacts, manifests, resume of partial stages."""

import numpy as np
import pytest

from explore import artifacts
from explore import rundir


def test_artifact_round_trip_without_pickle(tmp_path):
  arrays = {"a": np.arange(5), "s": np.array(["x", "yz"])}
  artifacts.save_artifact(tmp_path / "art", "thing", 2, arrays, {"note": 1})
  loaded, meta, version = artifacts.load_artifact(tmp_path / "art", "thing", 2)
  np.testing.assert_array_equal(loaded["a"], arrays["a"])
  np.testing.assert_array_equal(loaded["s"], arrays["s"])
  assert meta == {"note": 1} and version == 2


def test_object_arrays_are_refused(tmp_path):
  with pytest.raises(artifacts.ArtifactError, match="dtype object"):
    artifacts.save_artifact(tmp_path / "art", "thing", 1, {"o": np.array([{}, 1], dtype=object)})
  assert not (tmp_path / "art").exists()


def test_wrong_kind_and_unknown_version_are_named(tmp_path):
  artifacts.save_artifact(tmp_path / "art", "thing", 3, {"a": np.zeros(1)})
  with pytest.raises(artifacts.ArtifactError, match="expected a 'other' artifact, found 'thing'"):
    artifacts.load_artifact(tmp_path / "art", "other", 3)
  with pytest.raises(artifacts.ArtifactError, match="format version 3.*v4: adds"):
    artifacts.load_artifact(tmp_path / "art", "thing", {4: "adds field b"})


def test_failed_save_keeps_the_previous_artifact(tmp_path):
  artifacts.save_artifact(tmp_path / "art", "thing", 1, {"a": np.arange(3)})
  with pytest.raises(artifacts.ArtifactError):
    artifacts.save_artifact(tmp_path / "art", "thing", 1, {"o": np.array([None], dtype=object)})
  loaded, _, _ = artifacts.load_artifact(tmp_path / "art", "thing", 1)
  np.testing.assert_array_equal(loaded["a"], np.arange(3))


def test_partial_stage_resumes_with_same_settings_and_is_discarded_otherwise(tmp_path):
  run_dir = rundir.RunDir(tmp_path)
  path = run_dir.begin("s", {"x": 1}, {})
  (path / "checkpoint").write_text("step 10")
  assert run_dir.state("s") == "partial"
  path = run_dir.begin("s", {"x": 1}, {})
  assert (path / "checkpoint").read_text() == "step 10"
  path = run_dir.begin("s", {"x": 2}, {})
  assert not (path / "checkpoint").exists()


def test_finish_swaps_the_partial_folder_in(tmp_path):
  run_dir = rundir.RunDir(tmp_path)
  (run_dir.begin("s", {"x": 1}, {}) / "out").write_text("v1")
  run_dir.finish("s", {"n": 1})
  (run_dir.begin("s", {"x": 1}, {}) / "out").write_text("v2")
  assert (tmp_path / "s" / "out").read_text() == "v1"
  manifest = run_dir.finish("s", {"n": 2})
  assert (tmp_path / "s" / "out").read_text() == "v2"
  assert manifest.status == "complete" and manifest.summary == {"n": 2}
  assert run_dir.state("s") == "complete"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["s"]


def test_run_dir_that_is_a_file_is_an_error(tmp_path):
  (tmp_path / "f").write_text("")
  with pytest.raises(rundir.RunDirError, match="not a directory"):
    rundir.RunDir(tmp_path / "f")
