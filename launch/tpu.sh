#!/usr/bin/env bash
# Runs `python -m explore.main <args>` on every host of a Cloud TPU VM (single host or pod slice).
#
# Copies this working tree to ~/explore on each worker, installs it with the [tpu] extra into
# ~/explore/.venv, and starts the program on all workers at once; each log line is prefixed with its
# worker. Multi-host programs call jax.distributed.initialize() themselves. See launch/README.md.
set -euo pipefail

readonly DEFAULT_ACCELERATOR="v5litepod-16"
readonly POLL_SECONDS=30

usage() {
  cat <<'EOF'
Usage: launch/tpu.sh --tpu=NAME --zone=ZONE [--project=P] [--accelerator=TYPE] [--version=RUNTIME]
                     [--create] [--delete] [--dry_run] [--wait_minutes=M] [--python=BIN]
                     -- <explore arguments>

  --tpu=NAME           TPU VM (and queued resource) name: lowercase letters, digits, '-'.
  --zone=ZONE          Cloud zone, e.g. us-central2-b, europe-west4-a.
  --project=P          Cloud project, passed to every gcloud call (default: gcloud's configured project).
  --accelerator=TYPE   Accelerator type, e.g. v4-8, v4-32, v5litepod-8, v5litepod-16, v5p-128, v6e-8
                       (default: the existing VM's type, else v5litepod-16).
  --version=RUNTIME    TPU VM runtime version (default per generation: tpu-ubuntu2204-base for v2/v3/v4,
                       v2-alpha-tpuv5-lite for v5litepod, v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e).
  --create             Create the TPU VM if it does not exist (pod slices through a queued resource,
                       waiting until it is ACTIVE). Without it, an existing VM is required.
  --delete             Delete the VM (or its queued resource) after the run, or alone without arguments.
  --dry_run            Print every command (prefixed with '+ ') instead of running it; needs no gcloud.
  --wait_minutes=M     How long --create waits for a queued resource to become ACTIVE (default 60).
  --python=BIN         Python (>= 3.11) on the workers for ~/explore/.venv (default auto: the newest
                       python3.1x found, else python3.11 installed with apt).

Everything after '--' is passed to `python -m explore.main` on every worker, e.g.
  launch/tpu.sh --tpu=my-tpu --zone=us-central2-b --accelerator=v4-32 --create -- \
      run --gin_file=configs/quickstart.gin --gin.RUN_DIR="'runs/q1'"
EOF
}

usage_error() {
  echo "launch/tpu.sh: error: $*" >&2
  echo >&2
  usage >&2
  exit 2
}

die() {
  echo "launch/tpu.sh: error: $*" >&2
  exit 1
}

log() {
  echo "launch/tpu.sh: $*" >&2
}

# --- flags -----------------------------------------------------------------------------------------

tpu=""
zone=""
project=""
accelerator=""
runtime_version=""
create=0
delete=0
dry_run=0
wait_minutes=60
python="auto"
explore_args=()

# Value of `--flag=value` or `--flag value`; sets `shift_by` to the number of words consumed.
flag_value() {
  local flag="$1" word="$2" next="${3-}" has_next="$4"
  if [[ "$word" == "$flag="* ]]; then
    value="${word#"$flag="}"
    shift_by=1
  elif [[ "$has_next" == 1 && "$next" != --* ]]; then
    value="$next"
    shift_by=2
  else
    usage_error "flag $flag needs a value ($flag=VALUE)"
  fi
  [[ -n "$value" ]] || usage_error "flag $flag has an empty value"
}

while (($# > 0)); do
  word="$1"
  has_next=0
  (($# > 1)) && has_next=1
  case "$word" in
    --)
      shift
      explore_args=("$@")
      break
      ;;
    -h | --help)
      usage
      exit 0
      ;;
    --create) create=1; shift ;;
    --delete) delete=1; shift ;;
    --dry_run) dry_run=1; shift ;;
    --tpu | --tpu=*) flag_value --tpu "$word" "${2-}" "$has_next"; tpu="$value"; shift "$shift_by" ;;
    --zone | --zone=*) flag_value --zone "$word" "${2-}" "$has_next"; zone="$value"; shift "$shift_by" ;;
    --project | --project=*)
      flag_value --project "$word" "${2-}" "$has_next"; project="$value"; shift "$shift_by" ;;
    --accelerator | --accelerator=*)
      flag_value --accelerator "$word" "${2-}" "$has_next"; accelerator="$value"; shift "$shift_by" ;;
    --version | --version=*)
      flag_value --version "$word" "${2-}" "$has_next"; runtime_version="$value"; shift "$shift_by" ;;
    --python | --python=*)
      flag_value --python "$word" "${2-}" "$has_next"; python="$value"; shift "$shift_by" ;;
    --wait_minutes | --wait_minutes=*)
      flag_value --wait_minutes "$word" "${2-}" "$has_next"; wait_minutes="$value"; shift "$shift_by" ;;
    *)
      usage_error "unknown flag '$word' (explore arguments go after '--')"
      ;;
  esac
done

[[ -n "$tpu" ]] || usage_error "missing --tpu=NAME"
[[ -n "$zone" ]] || usage_error "missing --zone=ZONE"
[[ "$tpu" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
  usage_error "--tpu='$tpu' is not a valid TPU name (lowercase letters, digits and '-', starting with a letter)"
[[ "$zone" =~ ^[a-z0-9-]+$ ]] || usage_error "--zone='$zone' is not a valid zone (e.g. us-central2-b)"
[[ -z "$project" || "$project" =~ ^[a-z0-9:.-]+$ ]] || usage_error "--project='$project' is not a valid project id"
[[ "$wait_minutes" =~ ^[0-9]+$ && "$wait_minutes" -gt 0 ]] ||
  usage_error "--wait_minutes='$wait_minutes' must be a positive integer"

delete_only=0
if ((${#explore_args[@]} == 0)); then
  if ((delete && !create)); then
    delete_only=1
  else
    usage_error "no explore arguments after '--' (e.g. -- run --gin_file=configs/quickstart.gin)"
  fi
fi

# --- accelerator topology --------------------------------------------------------------------------

# Sets `generation` and `num_workers` (hosts) for an accelerator type such as v4-32 or v5litepod-16.
# v2/v3/v4/v5p names count TensorCores (2 per chip); v5litepod/v6e names count chips. Every generation
# has 4 chips per host, except that v5litepod-8 and v6e-8 put 8 chips on one host.
parse_accelerator() {
  local type="$1" count chips
  if [[ ! "$type" =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$ ]]; then
    usage_error "accelerator type '$type' is not a known TPU type (v2-N, v3-N, v4-N, v5p-N, v5litepod-N, v6e-N)"
  fi
  generation="${BASH_REMATCH[1]}"
  count="${BASH_REMATCH[2]}"
  case "$generation" in
    v2 | v3 | v4 | v5p)
      ((count % 8 == 0)) || usage_error "--accelerator='$type': $generation counts TensorCores, a multiple of 8"
      chips=$((count / 2))
      num_workers=$((chips / 4))
      ;;
    v5litepod | v6e)
      case "$count" in
        1 | 4 | 8) num_workers=1 ;;
        *)
          ((count % 4 == 0)) || usage_error "--accelerator='$type': $generation counts chips, 1, 4, 8 or a multiple of 4"
          num_workers=$((count / 4))
          ;;
      esac
      ;;
  esac
}

default_runtime_version() {
  case "$1" in
    v2 | v3 | v4) echo "tpu-ubuntu2204-base" ;;
    v5litepod) echo "v2-alpha-tpuv5-lite" ;;
    v5p) echo "v2-alpha-tpuv5" ;;
    v6e) echo "v2-alpha-tpuv6e" ;;
  esac
}

if [[ -n "$accelerator" ]]; then
  parse_accelerator "$accelerator"
fi

# --- gcloud ----------------------------------------------------------------------------------------

if ((!dry_run)) && ! command -v gcloud >/dev/null 2>&1; then
  die "gcloud not found on PATH; install the Google Cloud SDK (or use --dry_run to see the commands)"
fi

# Flags every gcloud call gets.
gcloud_scope=("--zone=$zone")
if [[ -n "$project" ]]; then
  gcloud_scope+=("--project=$project")
fi

# Prints a command the way a shell would read it back.
show() {
  local line="+" arg
  for arg in "$@"; do
    line+=" $(printf '%q' "$arg")"
  done
  echo "$line"
}

# Runs a command, or prints it under --dry_run.
run() {
  if ((dry_run)); then
    show "$@"
  else
    "$@"
  fi
}

# Read-only probe: under --dry_run prints it and answers `dry_answer` (0 exists, 1 not), else runs it
# and answers whether it succeeded.
probe() {
  local dry_answer="$1"
  shift
  if ((dry_run)); then
    show "$@"
    return "$dry_answer"
  fi
  "$@" >/dev/null 2>&1
}

# Sets `vm_accelerator` to the accelerator type of the existing VM; fails when there is none.
describe_vm() {
  local dry_answer="$1"
  vm_accelerator=""
  if ((dry_run)); then
    show gcloud compute tpus tpu-vm describe "$tpu" "${gcloud_scope[@]}" "--format=value(acceleratorType)"
    return "$dry_answer"
  fi
  vm_accelerator="$(gcloud compute tpus tpu-vm describe "$tpu" "${gcloud_scope[@]}" \
    "--format=value(acceleratorType)" 2>/dev/null)" || return 1
  vm_accelerator="${vm_accelerator##*/}"
}

queued_resource_exists() {
  probe "$1" gcloud compute tpus queued-resources describe "$tpu" "${gcloud_scope[@]}" "--format=value(name)"
}

# Polls the queued resource until ACTIVE; fails on FAILED/SUSPENDED or after --wait_minutes.
wait_until_active() {
  local describe=(gcloud compute tpus queued-resources describe "$tpu" "${gcloud_scope[@]}" "--format=value(state.state)")
  if ((dry_run)); then
    show "${describe[@]}"
    return 0
  fi
  local deadline=$((SECONDS + wait_minutes * 60)) state
  while true; do
    state="$("${describe[@]}")" || die "could not describe queued resource '$tpu' in zone $zone"
    case "$state" in
      ACTIVE) log "queued resource '$tpu' is ACTIVE"; return 0 ;;
      FAILED | SUSPENDING | SUSPENDED) die "queued resource '$tpu' in zone $zone is $state" ;;
    esac
    ((SECONDS < deadline)) ||
      die "queued resource '$tpu' is still $state after $wait_minutes minutes; it is kept (delete it with --delete)"
    log "queued resource '$tpu' is $state; checking again in ${POLL_SECONDS}s"
    sleep "$POLL_SECONDS"
  done
}

# --- delete ----------------------------------------------------------------------------------------

delete_resources() {
  # A pod slice made here lives in a queued resource; deleting it with --force removes its node too.
  local dry_answer=0
  ((num_workers > 1)) || dry_answer=1
  if queued_resource_exists "$dry_answer"; then
    run gcloud compute tpus queued-resources delete "$tpu" "${gcloud_scope[@]}" --force --quiet
  else
    run gcloud compute tpus tpu-vm delete "$tpu" "${gcloud_scope[@]}" --quiet
  fi
}

on_exit() {
  local status=$?
  trap - EXIT
  if ((delete)); then
    log "deleting TPU '$tpu' in zone $zone"
    delete_resources || { log "deleting TPU '$tpu' failed; delete it by hand"; status=1; }
  fi
  if ((!dry_run)) && [[ -n "${workdir-}" ]]; then
    rm -rf "$workdir"
  fi
  exit "$status"
}

if ((delete_only)); then
  [[ -n "$accelerator" ]] || parse_accelerator "$DEFAULT_ACCELERATOR"
  on_exit
fi

# --- create or reuse -------------------------------------------------------------------------------

# In --dry_run an existing VM is assumed unless --create is given.
if describe_vm "$((create ? 1 : 0))"; then
  if [[ -n "$vm_accelerator" ]]; then
    if [[ -n "$accelerator" && "$accelerator" != "$vm_accelerator" ]]; then
      die "TPU '$tpu' in zone $zone is a $vm_accelerator, not the requested --accelerator=$accelerator"
    fi
    accelerator="$vm_accelerator"
  fi
  accelerator="${accelerator:-$DEFAULT_ACCELERATOR}"
  parse_accelerator "$accelerator"
  trap on_exit EXIT
  log "using existing TPU '$tpu' ($accelerator, $num_workers worker(s)) in zone $zone"
elif ((create)); then
  accelerator="${accelerator:-$DEFAULT_ACCELERATOR}"
  parse_accelerator "$accelerator"
  runtime_version="${runtime_version:-$(default_runtime_version "$generation")}"
  trap on_exit EXIT
  if ((num_workers == 1)); then
    log "creating TPU VM '$tpu' ($accelerator, runtime $runtime_version) in zone $zone"
    run gcloud compute tpus tpu-vm create "$tpu" "${gcloud_scope[@]}" \
      "--accelerator-type=$accelerator" "--version=$runtime_version"
  else
    if queued_resource_exists 1; then
      log "queued resource '$tpu' already exists; waiting for it"
    else
      log "requesting pod slice '$tpu' ($accelerator, $num_workers workers, runtime $runtime_version) in zone $zone"
      run gcloud compute tpus queued-resources create "$tpu" "${gcloud_scope[@]}" "--node-id=$tpu" \
        "--accelerator-type=$accelerator" "--runtime-version=$runtime_version"
    fi
    wait_until_active
  fi
else
  where="zone $zone${project:+, project $project}"
  die "TPU '$tpu' not found in $where; pass --create to create it"
fi

# --- copy and install ------------------------------------------------------------------------------

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if ((dry_run)); then
  workdir="${TMPDIR:-/tmp}/explore-launch.XXXXXX"
else
  workdir="$(mktemp -d "${TMPDIR:-/tmp}/explore-launch.XXXXXX")"
fi
tarball="$workdir/explore.tar.gz"

log "copying $repo_root to ~/explore on $num_workers worker(s)"
run tar -C "$repo_root" -czf "$tarball" --exclude=./.git --exclude=./runs --exclude=__pycache__ \
  --exclude=.pytest_cache --exclude=./.venv --exclude='*.egg-info' .
run gcloud compute tpus tpu-vm scp "$tarball" "$tpu:explore.tar.gz" "${gcloud_scope[@]}" --worker=all

# The setup each worker runs: unpack, pick a Python >= 3.11 (installing python3.11 from the distribution
# where the image has none, as on Ubuntu 22.04 runtimes), and install the package into ~/explore/.venv.
# shellcheck disable=SC2016  # $py and $c expand on the worker, not here.
setup_steps=(
  "set -e"
  "mkdir -p ~/explore"
  "tar -xzf ~/explore.tar.gz -C ~/explore"
  "rm ~/explore.tar.gz"
  "cd ~/explore"
  'recent() { command -v "$1" >/dev/null && "$1" -c "import sys; sys.exit(sys.version_info < (3, 11))"; }'
  "py=$(printf '%q' "$python")"
  'if [ "$py" = auto ]; then py=; for c in python3.13 python3.12 python3.11 python3; do if recent "$c"; then py=$c; break; fi; done; fi'
  'if [ -z "$py" ]; then sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3.11 python3.11-venv >/dev/null; py=python3.11; fi'
  'recent "$py" || { echo "explore needs Python >= 3.11; $py is missing or older (see --python)" >&2; exit 1; }'
  'if [ ! -x .venv/bin/python ]; then "$py" -m venv .venv; fi'
  ".venv/bin/python -m pip install --quiet --upgrade pip"
  ".venv/bin/python -m pip install --quiet -e '.[tpu]'"
)
setup_command="${setup_steps[0]}"
for step in "${setup_steps[@]:1}"; do
  setup_command+="; $step"
done
run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_scope[@]}" --worker=all "--command=$setup_command"

# --- run -------------------------------------------------------------------------------------------

remote_args="$(printf ' %q' "${explore_args[@]}")"
remote_command="cd ~/explore && PYTHONUNBUFFERED=1 .venv/bin/python -m explore.main${remote_args}"

prefix_lines() {
  local line
  while IFS= read -r line || [[ -n "$line" ]]; do
    printf '[worker %s] %s\n' "$1" "$line"
  done
}

log "running on $num_workers worker(s): python -m explore.main${remote_args}"
pids=()
for ((worker = 0; worker < num_workers; worker++)); do
  ssh_command=(gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_scope[@]}" "--worker=$worker"
    "--command=$remote_command")
  if ((dry_run)); then
    show "${ssh_command[@]}"
  else
    ("${ssh_command[@]}" </dev/null 2>&1 | prefix_lines "$worker") &
    pids+=("$!")
  fi
done

failed=()
if ((!dry_run)); then
  for ((worker = 0; worker < num_workers; worker++)); do
    if wait "${pids[$worker]}"; then
      :
    else
      failed+=("$worker")
    fi
  done
fi

if ((${#failed[@]} > 0)); then
  die "the run failed on worker(s) ${failed[*]} of $num_workers on TPU '$tpu'"
fi
if ((dry_run)); then
  log "dry run: nothing was run"
else
  log "the run finished on all $num_workers worker(s)"
fi
