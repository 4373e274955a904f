"""One writer per run directory: the lock refuses a second writer and takes over a stale one."""

import json
import os
import socket
import subprocess
import sys

import pytest

from explore import rundir


def test_second_writer_is_refused_naming_the_holder(tmp_path):
  run_dir = rundir.RunDir(tmp_path / "run")
  with run_dir.lock() as holder:
    recorded = json.loads((tmp_path / "run" / rundir.LOCK_FILE).read_text())
    assert recorded["pid"] == os.getpid() == holder["pid"]
    assert recorded["host"] == socket.gethostname()
    with pytest.raises(rundir.RunDirLockedError,
                       match=f"another run is writing .*pid {os.getpid()} on "):
      with run_dir.lock():
        pass
  with run_dir.lock():  # released at the end of the block
    pass


def test_lock_held_by_another_process_is_refused(tmp_path):
  run_dir = rundir.RunDir(tmp_path / "run")
  code = ("import sys, time; from explore import rundir; "
          "l = rundir.RunDir(sys.argv[1]).lock(); l.__enter__(); print('locked', flush=True); "
          "time.sleep(60)")
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
  holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "run")],
                            stdout=subprocess.PIPE, text=True, env=env)
  try:
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(rundir.RunDirLockedError, match=f"pid {holder.pid}"):
      with run_dir.lock():
        pass
  finally:
    holder.kill()
    holder.wait()
  with run_dir.lock() as me:  # killed: its lock is stale and taken over
    assert me["pid"] == os.getpid()


def test_stale_lock_file_of_a_killed_process_is_taken_over(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "run" / rundir.LOCK_FILE).write_text(
      json.dumps({"pid": 999999999, "host": socket.gethostname(), "started": 0}))
  with rundir.RunDir(tmp_path / "run").lock():
    recorded = json.loads((tmp_path / "run" / rundir.LOCK_FILE).read_text())
    assert recorded["pid"] == os.getpid()


def test_cli_refuses_a_second_concurrent_run(tmp_path):
  from test_cli import explore  # pylint: disable=g-import-not-at-top
  toy_gin = tmp_path / "toy.gin"
  toy_gin.write_text("import toy_stages\ninclude 'quickstart.gin'\n")
  with rundir.RunDir(tmp_path / "run").lock():
    result = explore("toy_alpha", f"--gin_file={toy_gin}", "--cpu_devices=1",
                     f"--gin.RUN_DIR='{tmp_path / 'run'}'")
  assert result.returncode == 1
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith("explore: error: ") and f"pid {os.getpid()}" in last
  assert not (tmp_path / "run" / "toy_alpha.partial").exists()
