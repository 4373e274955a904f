"""Faults of the operating system are one `explore: error:` line with the path and the cause."""

import errno
import os

import pytest

from explore import main
from test_cli import explore


def _last_line(result):
  lines = result.stderr.strip().splitlines()
  return lines[-1] if lines else ""


def test_run_dir_below_a_file_is_one_line_naming_it(tmp_path):
  (tmp_path / "file").write_text("x")
  result = explore("data", "--gin_file=quickstart.gin", "--cpu_devices=1",
                   f"--gin.RUN_DIR='{tmp_path / 'file' / 'run'}'")
  assert result.returncode == 1
  assert _last_line(result).startswith(f"explore: error: {tmp_path / 'file'}")
  assert "Not a directory" in _last_line(result) and "Traceback" not in result.stderr


def test_run_dir_without_permission_is_one_line(tmp_path):
  target = "/sys/explore_run"  # not creatable even by root
  result = explore("data", "--gin_file=quickstart.gin", "--cpu_devices=1",
                   f"--gin.RUN_DIR='{target}'")
  assert result.returncode == 1
  assert _last_line(result).startswith(f"explore: error: {target}: ")
  assert "permission" in _last_line(result) and "Traceback" not in result.stderr
  with_traceback = explore("data", "--gin_file=quickstart.gin", "--cpu_devices=1",
                           f"--gin.RUN_DIR='{target}'", "--traceback")
  assert "Traceback" in with_traceback.stderr


def test_full_disk_is_one_line_with_path_cause_and_fix(monkeypatch, capsys):
  def full_disk(command):
    del command
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/x/data.partial/arrays.npz")

  monkeypatch.setattr(main, "run_command", full_disk)
  if not main.FLAGS.is_parsed():
    main.FLAGS(["explore"])
  with pytest.raises(SystemExit) as exit_info:
    main.main(["explore", "data"])
  assert exit_info.value.code == 1
  err = capsys.readouterr().err
  assert err == ("explore: error: /runs/x/data.partial/arrays.npz: No space left on device: the "
                 "disk is full: free space or choose a RUN_DIR on another disk\n")
