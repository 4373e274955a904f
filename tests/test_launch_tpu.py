"""launch/tpu.sh: flags, topology, gcloud commands (--dry_run) and a run against a local fake gcloud."""

from __future__ import annotations

import os
import pathlib
import shlex
import shutil
import stat
import subprocess

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = REPO_ROOT / "launch" / "tpu.sh"
BASH = shutil.which("bash") or "/bin/bash"

# Arguments that a shell would split or expand unless the script quotes them.
TRICKY_ARGS = [
    "run",
    "--gin_file=configs/quickstart.gin",
    "--gin.RUN_DIR=\"'/tmp/x'\"",
    "--gin.NAME='a b'",
    "two words",
    "$HOME;echo pwned",
    "*",
]


def launch(*flags: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
  return subprocess.run([BASH, str(SCRIPT), *flags], capture_output=True, text=True, timeout=60,
                        env=env, check=False)


def dry_run(*flags: str, explore_args: list[str] | None = None) -> list[list[str]]:
  """Runs the launcher with --dry_run and returns each printed command, split as a shell would."""
  args = ["run", "--gin_file=configs/quickstart.gin"] if explore_args is None else explore_args
  result = launch(*flags, "--dry_run", "--", *args)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  assert all(line.startswith("+ ") for line in lines), lines
  return [shlex.split(line[2:]) for line in lines]


def gcloud_calls(commands: list[list[str]], group: str, verb: str) -> list[list[str]]:
  return [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", group, verb]]


def flag(command: list[str], name: str) -> str:
  values = [a.split("=", 1)[1] for a in command if a.startswith(f"--{name}=")]
  assert len(values) == 1, (name, command)
  return values[0]


def run_commands(commands: list[list[str]]) -> list[list[str]]:
  return [c for c in gcloud_calls(commands, "tpu-vm", "ssh") if "explore.main" in flag(c, "command")]


def remote_explore_args(command: list[str]) -> list[str]:
  """The arguments the worker's shell passes to `python -m explore.main`."""
  remote = shlex.split(flag(command, "command"))
  return remote[remote.index("explore.main") + 1:]


def test_single_host_v4_8_creates_a_tpu_vm_and_runs_on_one_worker():
  commands = dry_run("--tpu=t1", "--zone=us-central2-b", "--accelerator=v4-8", "--create")
  creates = gcloud_calls(commands, "tpu-vm", "create")
  assert len(creates) == 1
  assert flag(creates[0], "accelerator-type") == "v4-8"
  assert flag(creates[0], "version") == "tpu-ubuntu2204-base"
  assert not gcloud_calls(commands, "queued-resources", "create")
  runs = run_commands(commands)
  assert [flag(c, "worker") for c in runs] == ["0"]


def test_single_host_v5litepod_8_reuses_the_existing_vm():
  commands = dry_run("--tpu=t1", "--zone=us-west4-a", "--accelerator=v5litepod-8")
  assert gcloud_calls(commands, "tpu-vm", "describe")
  assert not gcloud_calls(commands, "tpu-vm", "create")
  assert not gcloud_calls(commands, "queued-resources", "create")
  assert [flag(c, "worker") for c in run_commands(commands)] == ["0"]


@pytest.mark.parametrize("accelerator, workers", [("v5litepod-16", 4), ("v4-32", 4), ("v5p-128", 16)])
def test_pod_slice_is_queued_and_runs_once_per_worker(accelerator, workers):
  commands = dry_run("--tpu=pod", "--zone=us-east5-a", f"--accelerator={accelerator}", "--create")
  queued = gcloud_calls(commands, "queued-resources", "create")
  assert len(queued) == 1
  assert queued[0][5] == "pod"
  assert flag(queued[0], "node-id") == "pod"
  assert flag(queued[0], "accelerator-type") == accelerator
  assert not gcloud_calls(commands, "tpu-vm", "create")
  runs = run_commands(commands)
  assert [flag(c, "worker") for c in runs] == [str(w) for w in range(workers)]


def test_pod_creation_checks_the_state_once_in_dry_run():
  commands = dry_run("--tpu=pod", "--zone=us-east5-a", "--accelerator=v4-16", "--create")
  describes = gcloud_calls(commands, "queued-resources", "describe")
  assert [flag(c, "format") for c in describes] == ["value(name)", "value(state.state)"]


@pytest.mark.parametrize("accelerator, workers", [
    ("v6e-8", 1), ("v6e-16", 4), ("v5litepod-1", 1), ("v5litepod-4", 1), ("v5p-8", 1), ("v4-16", 2),
    ("v3-32", 4), ("v5litepod-256", 64)])
def test_worker_count_follows_the_hosts_of_the_accelerator(accelerator, workers):
  commands = dry_run("--tpu=t1", "--zone=z-a", f"--accelerator={accelerator}")
  assert len(run_commands(commands)) == workers


@pytest.mark.parametrize("accelerator, runtime", [
    ("v4-8", "tpu-ubuntu2204-base"), ("v5litepod-16", "v2-alpha-tpuv5-lite"), ("v5p-8", "v2-alpha-tpuv5"),
    ("v6e-16", "v2-alpha-tpuv6e")])
def test_default_runtime_version_per_generation(accelerator, runtime):
  commands = dry_run("--tpu=t1", "--zone=z-a", f"--accelerator={accelerator}", "--create")
  (create,) = gcloud_calls(commands, "tpu-vm", "create") + gcloud_calls(commands, "queued-resources", "create")
  assert flag(create, "version" if "tpu-vm" in create else "runtime-version") == runtime


def test_version_flag_overrides_the_runtime():
  commands = dry_run("--tpu=t1", "--zone=z-a", "--accelerator=v4-8", "--create", "--version=v2-alpha-tpuv4")
  assert flag(gcloud_calls(commands, "tpu-vm", "create")[0], "version") == "v2-alpha-tpuv4"


def test_explore_arguments_reach_every_worker_intact():
  commands = dry_run("--tpu=pod", "--zone=z-a", "--accelerator=v4-16", explore_args=TRICKY_ARGS)
  runs = run_commands(commands)
  assert len(runs) == 2
  for command in runs:
    assert remote_explore_args(command) == TRICKY_ARGS


def test_working_tree_is_copied_to_all_workers_before_install():
  commands = dry_run("--tpu=pod", "--zone=z-a", "--accelerator=v4-16")
  (tar,) = [c for c in commands if c[0] == "tar"]
  assert tar[tar.index("-C") + 1] == str(REPO_ROOT)
  assert {"--exclude=./.git", "--exclude=./runs", "--exclude=__pycache__"} <= set(tar)
  (scp,) = gcloud_calls(commands, "tpu-vm", "scp")
  assert flag(scp, "worker") == "all"
  setup = [c for c in gcloud_calls(commands, "tpu-vm", "ssh") if flag(c, "worker") == "all"]
  assert len(setup) == 1
  assert "pip install --quiet -e '.[tpu]'" in flag(setup[0], "command")
  assert commands.index(scp) < commands.index(setup[0]) < commands.index(run_commands(commands)[0])


def test_project_is_passed_to_every_gcloud_call():
  commands = dry_run("--tpu=pod", "--zone=z-a", "--project=my-proj", "--accelerator=v5litepod-16", "--create",
                     "--delete")
  gcloud = [c for c in commands if c[0] == "gcloud"]
  assert len(gcloud) >= 8
  for command in gcloud:
    assert flag(command, "project") == "my-proj", command
    assert flag(command, "zone") == "z-a", command


def test_delete_after_the_run_is_the_last_command():
  commands = dry_run("--tpu=pod", "--zone=z-a", "--accelerator=v4-32", "--delete")
  assert commands[-1][:6] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "pod"]
  assert "--force" in commands[-1]


def test_delete_alone_deletes_a_single_host_vm_without_running():
  result = launch("--tpu=t1", "--zone=z-a", "--accelerator=v4-8", "--delete", "--dry_run")
  assert result.returncode == 0, result.stderr
  commands = [shlex.split(line[2:]) for line in result.stdout.splitlines()]
  assert commands[-1][:6] == ["gcloud", "compute", "tpus", "tpu-vm", "delete", "t1"]
  assert not gcloud_calls(commands, "tpu-vm", "ssh")


@pytest.mark.parametrize("flags, message", [
    (["--zone=z-a", "--", "run"], "missing --tpu"),
    (["--tpu=t1", "--", "run"], "missing --zone"),
    (["--tpu=t1", "--zone=z-a", "--bogus", "--", "run"], "unknown flag '--bogus'"),
    (["--tpu=t1", "--zone=z-a", "run"], "unknown flag 'run'"),
    (["--tpu=t1", "--zone=z-a"], "no explore arguments"),
    (["--tpu=t1", "--zone=z-a", "--create", "--"], "no explore arguments"),
    (["--tpu=t1", "--zone=z-a", "--accelerator=v4-9", "--", "run"], "'v4-9'"),
    (["--tpu=t1", "--zone=z-a", "--accelerator=tpu7", "--", "run"], "'tpu7' is not a known TPU type"),
    (["--tpu=My_TPU", "--zone=z-a", "--", "run"], "--tpu='My_TPU' is not a valid TPU name"),
    (["--tpu", "--zone=z-a", "--", "run"], "flag --tpu needs a value"),
])
def test_bad_flags_exit_2_with_a_message_and_usage(flags, message):
  result = launch("--dry_run", *flags)
  assert result.returncode == 2
  assert message in result.stderr
  assert "Usage: launch/tpu.sh" in result.stderr
  assert result.stdout == ""


def test_without_gcloud_only_dry_run_works(tmp_path):
  env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
  result = launch("--tpu=t1", "--zone=z-a", "--", "run", env=env)
  assert result.returncode == 1
  assert "gcloud not found" in result.stderr
  assert launch("--tpu=t1", "--zone=z-a", "--dry_run", "--", "run", env=env).returncode == 0


def test_shellcheck_is_clean():
  shellcheck = shutil.which("shellcheck")
  if shellcheck is None:
    pytest.skip("shellcheck is not installed (apt-get install -y shellcheck); CI installs it")
  scripts = sorted(str(p) for p in (REPO_ROOT / "launch").glob("*.sh"))
  result = subprocess.run([shellcheck, *scripts], capture_output=True, text=True, timeout=60, check=False)
  assert result.returncode == 0, result.stdout + result.stderr


# A stand-in for gcloud that keeps each worker in a folder and runs ssh commands there with bash.
FAKE_GCLOUD = r"""#!/usr/bin/env bash
set -euo pipefail
echo "$*" >> "$FAKE_ROOT/calls.log"
name="$5" worker="" command="" format=""
for arg in "$@"; do
  case "$arg" in
    --worker=*) worker="${arg#--worker=}" ;;
    --command=*) command="${arg#--command=}" ;;
    --format=*) format="${arg#--format=}" ;;
  esac
done
workers() { if [[ "$worker" == all ]]; then seq 0 $((FAKE_WORKERS - 1)); else echo "$worker"; fi; }
case "$3 $4" in
  "tpu-vm describe") [[ -n "${FAKE_ACCELERATOR:-}" ]] || exit 1; echo "$FAKE_ACCELERATOR" ;;
  "queued-resources describe")
    [[ -e "$FAKE_ROOT/queued" ]] || exit 1
    if [[ "$format" == "value(state.state)" ]]; then echo "${FAKE_QUEUED_STATE:-ACTIVE}"; else echo "$name"; fi ;;
  "queued-resources create" | "tpu-vm create") touch "$FAKE_ROOT/queued" ;;
  "queued-resources delete" | "tpu-vm delete") ;;
  "tpu-vm scp") for w in $(workers); do cp "$5" "$FAKE_ROOT/worker$w/${6#*:}"; done ;;
  "tpu-vm ssh")
    for w in $(workers); do (cd "$FAKE_ROOT/worker$w" && HOME="$PWD" FAKE_WORKER="$w" bash -c "$command"); done ;;
  *) echo "fake gcloud: unexpected call: $*" >&2; exit 3 ;;
esac
"""

# Stands in for the worker's venv python: pip succeeds; explore.main prints its arguments.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [[ "$1 $2" == "-m pip" ]]; then exit 0; fi
[[ "$1 $2" == "-m explore.main" ]] || exit 3
shift 2
for arg in "$@"; do printf 'ARG %s\n' "$arg"; done
[[ "$FAKE_WORKER" != "${FAKE_FAIL_WORKER:-}" ]]
"""


def write_executable(path: pathlib.Path, text: str) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_cloud(tmp_path):
  """Environment whose gcloud is the fake, with two workers that each hold a fake venv python."""
  write_executable(tmp_path / "bin" / "gcloud", FAKE_GCLOUD)
  for worker in range(2):
    write_executable(tmp_path / f"worker{worker}" / "explore" / ".venv" / "bin" / "python", FAKE_PYTHON)
  env = dict(os.environ, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}", FAKE_ROOT=str(tmp_path),
             FAKE_WORKERS="2", TMPDIR=str(tmp_path))
  return tmp_path, env


def test_run_prefixes_each_worker_and_keeps_arguments(fake_cloud):
  root, env = fake_cloud
  env["FAKE_ACCELERATOR"] = "v4-16"
  result = launch("--tpu=pod", "--zone=z-a", "--", *TRICKY_ARGS, env=env)
  assert result.returncode == 0, result.stderr
  for worker in range(2):
    assert [line for line in result.stdout.splitlines() if line.startswith(f"[worker {worker}] ")] == [
        f"[worker {worker}] ARG {arg}" for arg in TRICKY_ARGS]
    assert (root / f"worker{worker}" / "explore" / "launch" / "tpu.sh").exists()
    assert not (root / f"worker{worker}" / "explore" / ".git").exists()
  assert not list(root.glob("explore-launch.*")), "the local tarball folder is removed"


def test_run_fails_naming_the_failed_worker(fake_cloud):
  _, env = fake_cloud
  env.update(FAKE_ACCELERATOR="v4-16", FAKE_FAIL_WORKER="1")
  result = launch("--tpu=pod", "--zone=z-a", "--", "status", env=env)
  assert result.returncode == 1
  assert "failed on worker(s) 1 of 2" in result.stderr


def test_missing_vm_without_create_fails_clearly(fake_cloud):
  root, env = fake_cloud
  result = launch("--tpu=gone", "--zone=z-a", "--project=p1", "--", "status", env=env)
  assert result.returncode == 1
  assert "TPU 'gone' not found in zone z-a, project p1; pass --create" in result.stderr
  assert "ssh" not in (root / "calls.log").read_text()


def test_accelerator_that_disagrees_with_the_vm_fails(fake_cloud):
  _, env = fake_cloud
  env["FAKE_ACCELERATOR"] = "v4-16"
  result = launch("--tpu=pod", "--zone=z-a", "--accelerator=v4-32", "--", "status", env=env)
  assert result.returncode == 1
  assert "is a v4-16, not the requested --accelerator=v4-32" in result.stderr


def test_create_waits_for_the_queued_resource_then_runs(fake_cloud):
  root, env = fake_cloud
  result = launch("--tpu=pod", "--zone=z-a", "--accelerator=v4-16", "--create", "--", "status", env=env)
  assert result.returncode == 0, result.stderr
  calls = (root / "calls.log").read_text()
  assert "queued-resources create pod" in calls
  assert "is ACTIVE" in result.stderr
  assert "[worker 1] ARG status" in result.stdout


def test_failed_queued_resource_stops_and_is_deleted(fake_cloud):
  root, env = fake_cloud
  env["FAKE_QUEUED_STATE"] = "FAILED"
  result = launch("--tpu=pod", "--zone=z-a", "--accelerator=v4-16", "--create", "--delete", "--", "status",
                  env=env)
  assert result.returncode == 1
  assert "queued resource 'pod' in zone z-a is FAILED" in result.stderr
  calls = (root / "calls.log").read_text().splitlines()
  assert calls[-1].startswith("compute tpus queued-resources delete pod")
  assert not any("ssh" in call for call in calls)
