"""A run SIGKILLed after a checkpoint resumes and reproduces the uninterrupted losses."""

import json
import os
from pathlib import Path
import signal
import subprocess
import sys
import time

import numpy as np

from explore import train

FIXTURES = Path(__file__).with_name("trainer_fixtures.py")
ARGS = ["--train_steps=30", "--checkpoint_every=10"]


def _start(model_dir, *extra):
  return subprocess.Popen([sys.executable, str(FIXTURES), str(model_dir), *ARGS, *extra],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _losses(model_dir):
  lines = (Path(model_dir) / "train" / "metrics.jsonl").read_text().splitlines()
  return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_sigkill_after_a_checkpoint_then_restart_reproduces_the_losses(tmp_path):
  killed = tmp_path / "killed"
  run = _start(killed, "--sleep_per_step=0.15")
  deadline = time.monotonic() + 240
  while not train.checkpoint_steps(killed):  # committed (renamed) checkpoints only
    assert run.poll() is None, run.stderr.read()[-3000:]
    assert time.monotonic() < deadline, "no checkpoint within 240 s"
    time.sleep(0.05)
  os.kill(run.pid, signal.SIGKILL)
  run.wait()
  assert run.returncode == -signal.SIGKILL
  resumed_from = train.checkpoint_steps(killed)[-1]
  assert resumed_from < 30 and not (killed / "result.json").exists()

  # The restarted run and an uninterrupted reference run, side by side.
  restarted, reference = _start(killed), _start(tmp_path / "reference")
  logs = {}
  for name, proc in (("restarted", restarted), ("reference", reference)):
    _, logs[name] = proc.communicate(timeout=240)
    assert proc.returncode == 0, logs[name][-3000:]
  assert json.loads((killed / "result.json").read_text())["step"] == 30
  assert (f"resumed from {killed}/checkpoint_{resumed_from}: params, optimizer state and step"
          " and data position") in logs["restarted"]

  want = _losses(tmp_path / "reference")
  got = _losses(killed)  # the restart appended steps resumed_from + 1 .. 30
  steps = range(resumed_from + 1, 31)
  np.testing.assert_allclose([got[s] for s in steps], [want[s] for s in steps], rtol=1e-6)
  lines = (killed / "train" / "metrics.jsonl").read_text().splitlines()
  logged = [json.loads(line)["step"] for line in lines]
  assert logged == sorted(set(logged))  # the restart rewrote the steps after its checkpoint
