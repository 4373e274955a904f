r"""The `explore` command line (T5X conventions: gin files, --gin.NAME=VALUE).

  explore run --gin_file=quickstart.gin --gin.RUN_DIR="'/tmp/explore'"
  explore clusters --gin_file=quickstart.gin --gin.RUN_DIR="'/tmp/explore'"
  explore status --gin_file=quickstart.gin --gin.RUN_DIR="'/tmp/explore'"
  python -m explore.main run --gin_file=quickstart.gin --cpu_devices=8 ...

Commands: `run` (every stage), `status` (each stage's state), `help [STAGE]`,
or one or more stage names (each runs after the stages it needs that are not
complete yet). `explore --help` lists them with the stages and the main flags.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import gin

from explore import export_cli  # export and its flags
from explore import gin_config
from explore import logs
from explore.serving import cli as serving_cli  # recommend / serve and their flags

FLAGS = flags.FLAGS

flags.DEFINE_multi_string("gin_file", [], "Gin file(s), repeatable; later files win. "
                          "Resolved against --gin_search_paths and the package's configs/.")
flags.DEFINE_multi_string("gin_bindings", [], "Gin bindings applied after the files. "
                          "Shorthand: --gin.NAME=VALUE.")
flags.DEFINE_list("gin_search_paths", [], "Extra folders to look for gin files and includes in.")
flags.DEFINE_integer("cpu_devices", None, "Emulate this many CPU devices (set before JAX starts).")
flags.DEFINE_bool("force", False, "Redo the named stages even if complete (stages after them are "
                  "rebuilt).")
flags.DEFINE_bool("verify", False, "status: also check every file's SHA-256 against its stage's "
                  "manifest (sizes are always checked).")
flags.DEFINE_bool("dry_run", False, "Load, validate and print the config, then stop.")
flags.DEFINE_enum("multihost", "auto", ["auto", "true", "false"],
                  "Call jax.distributed.initialize(): auto = when a multi-host TPU slice or a "
                  "coordinator address is detected.")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0 (GPU clusters).")
flags.DEFINE_integer("num_processes", None, "Number of processes (with --coordinator_address).")
flags.DEFINE_integer("process_id", None, "This process's index (with --coordinator_address).")
flags.DEFINE_bool("log_all_processes", False, "Log from every process, not only process 0.")
flags.DEFINE_bool("traceback", False, "On an input or config error, show the full traceback "
                  "instead of the one-line message.")


@gin.configurable
@dataclasses.dataclass(frozen=True)
class RunConfig:
  """Settings every run has: where its artifacts live and the global seed."""

  run_dir: str = gin.REQUIRED
  seed: int = 0

  def __post_init__(self):
    if not isinstance(self.run_dir, (str, os.PathLike)) or not str(self.run_dir):
      raise gin_config.ConfigError(
          f"RunConfig.run_dir must be a non-empty path string, got {self.run_dir!r} "
          "(quote it in flags: --gin.RUN_DIR=\"'/tmp/run'\")")
    if not isinstance(self.seed, int):
      raise gin_config.ConfigError(f"RunConfig.seed must be an int, got {self.seed!r}")


# Settings of the whole run rather than of one stage, written at the top of RUN_DIR/config.gin.
RUN_LEVEL_CONFIGURABLES = ("RunConfig", "MeshConfig", "logical_axis_rules")


def _emulate_cpu_devices(n: int) -> None:
  if n < 1:
    raise gin_config.ConfigError(f"--cpu_devices must be >= 1, got {n}")
  if "jax" in sys.modules:
    logging.warning("--cpu_devices=%d set after JAX was imported; it may not take effect", n)
  os.environ["JAX_PLATFORMS"] = "cpu"
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={n}").strip()


def _multihost_requested() -> bool:
  if FLAGS.multihost != "auto":
    return FLAGS.multihost == "true"
  if FLAGS.coordinator_address:
    return True
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return "," in hosts or bool(os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"))


def _initialize_distributed() -> None:
  import jax  # pylint: disable=g-import-not-at-top
  if not _multihost_requested():
    return
  kwargs = {}
  if FLAGS.coordinator_address:
    kwargs = dict(coordinator_address=FLAGS.coordinator_address,
                  num_processes=FLAGS.num_processes, process_id=FLAGS.process_id)
  jax.distributed.initialize(**kwargs)
  if jax.process_index() != 0 and not FLAGS.log_all_processes:
    logging.set_verbosity(logging.WARNING)


# The CLI's commands besides stage names: name -> one line for `explore --help`.
COMMANDS: dict[str, str] = {
    "run": "run every stage (each skipped when up to date)",
    "status": "each stage's state, size and config (--verify also checks file hashes)",
    "help": "help STAGE: a stage's description and its gin configurables with their defaults",
    "recommend": "recommend --user=ID | --items=A,B,..: one user's exploration and regular slates",
    "serve": "serve --port=N: the recommend API over HTTP (JSON) with a page (extra `serve`)",
    "export": "export --format=hf --out=DIR: the llm stage's decoder as a Hugging Face folder",
    "STAGE ...": "the named stages, after the stages they need that are not complete",
}
_HELP_FLAGS = ("--help", "-h", "-?", "--helpshort")
# Flags `explore --help` shows (--helpfull lists every flag, JAX's and absl's included).
MAIN_FLAGS = ("gin_file", "gin_bindings", "gin_search_paths", "cpu_devices", "force", "verify",
              "dry_run", "traceback", "verbosity")
_FLAG_HELP_OVERRIDES = {
    "verbosity": "Logging verbosity: 0 info (the default; third-party libraries only warn), "
                 "1 debug (every library's info too), -1 warning."}


def _first_line(text: str) -> str:
  return text.strip().splitlines()[0].rstrip(";") if text.strip() else ""


def usage() -> str:
  """`explore --help`: the commands, each registered stage in one line, and the main flags."""
  from explore import stages  # pylint: disable=g-import-not-at-top
  stages.load_builtin_stages()
  lines = ["usage: explore COMMAND [--gin_file=FILE ...] [--gin.NAME=VALUE ...] [flags]", "",
           "commands:"]
  lines += [f"  {name:<13}{text}" for name, text in COMMANDS.items()]
  lines += ["", "stages (in dependency order):"]
  for stage in stages.execution_order(sorted(stages.registered_stages())):
    after = f" [after {', '.join(stage.deps)}]" if stage.deps else ""
    lines.append(f"  {stage.name:<13}{_first_line(stage.doc)}{after}")
  lines += ["", "main flags:"]
  for name in MAIN_FLAGS:
    flag = FLAGS[name]
    text = _FLAG_HELP_OVERRIDES.get(name) or _first_line(flag.help)
    default = "" if flag.default in (None, [], False) or name in _FLAG_HELP_OVERRIDES else (
        f" (default: {flag.default})")
    lines.append(f"  --{name:<18}{text}{default}")
  lines += ["", "Example: explore run --gin_file=quickstart.gin --gin.RUN_DIR=\"'/tmp/explore'\"",
            "All flags: explore --helpfull.  Configurables of a stage: explore help STAGE."]
  return "\n".join(lines)


def stage_help(name: str) -> str:
  """`explore help STAGE`: the stage's docstring, inputs, and configurables with their values.

  The values are the code defaults overlaid with the gin files and bindings given.
  """
  from explore import stages  # pylint: disable=g-import-not-at-top
  (stage,) = [s for s in stages.execution_order([name]) if s.name == name]
  lines = [f"stage {stage.name}: {stage.doc or '(no description)'}",
           f"reads: {', '.join(stage.deps) or 'nothing from the run directory'}",
           f"configurables: {', '.join(stage.configurables) or 'none'}",
           "", "# Defaults, overlaid with the given gin files and bindings:",
           gin_config.configurables_config_str(stage.configurables)]
  return "\n".join(lines)


def _print_status(rows) -> int:
  """Prints the status table, then each corrupt stage's files; 1 when a stage is corrupt."""
  print(f"{'stage':<14}{'state':<10}{'size':>12}  {'config':<18}current")
  for row in rows:
    size = f"{row['bytes'] / 1e6:.2f} MB" if row["bytes"] else "-"
    print(f"{row['stage']:<14}{row['state']:<10}{size:>12}  {row['config_hash'] or '-':<18}"
          f"{row['current'] or '-'}")
  corrupt = [row for row in rows if row["problems"]]
  for row in corrupt:
    print(f"{row['stage']}: corrupt (redo it with: explore {row['stage']} --force)")
    for problem in row["problems"]:
      print(f"  {problem}")
  return 1 if corrupt else 0


def _write_run_config(stages, run_dir, run_config: str, after_failure: bool = False) -> None:
  """Writes RUN_DIR/config.gin; after a failure, its own error is logged, not raised over it."""
  try:
    logging.info("config written to %s", stages.write_run_config(run_dir, run_config))
  except OSError as e:
    if not after_failure:
      raise
    logging.warning("could not rewrite the run's config.gin: %s", describe_os_error(e))


def run_command(command: Sequence[str]) -> int:
  """Runs one CLI command after flags are parsed; returns the exit status."""
  from explore import stages  # pylint: disable=g-import-not-at-top
  from explore import rundir  # pylint: disable=g-import-not-at-top

  logs.quiet_third_party(FLAGS.verbosity)  # third-party INFO lines only with --verbosity>=1
  if not command:
    raise gin_config.ConfigError("missing command: explore {run,status,<stage>...} "
                                 "(see explore --help)")
  if FLAGS.cpu_devices is not None:
    _emulate_cpu_devices(FLAGS.cpu_devices)
  stages.load_builtin_stages()
  from explore import partitioning  # pylint: disable=g-import-not-at-top
  if command[0] == "help":
    gin_config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths,
                         check_required=False)
    print("\n\n".join(stage_help(name) for name in command[1:]) if command[1:] else usage())
    return 0
  gin_config.parse_gin(FLAGS.gin_file, FLAGS.gin_bindings, FLAGS.gin_search_paths)
  if command[0] in serving_cli.COMMANDS:
    return serving_cli.run_command(command, None if FLAGS.run_dir else RunConfig().run_dir)
  if command[0] in export_cli.COMMANDS:
    return export_cli.run_command(command, None if FLAGS.run_dir else RunConfig().run_dir)
  config = RunConfig()
  targets = list(command)
  if targets == ["run"]:
    targets = sorted(stages.registered_stages())
  elif targets != ["status"]:
    stages.execution_order(targets)  # unknown stage names fail before any work
  if FLAGS.dry_run:
    print(gin.config_str())
    print(f"# dry run: would run {targets} in {config.run_dir}")
    return 0

  _initialize_distributed()
  import jax  # pylint: disable=g-import-not-at-top
  mesh = partitioning.create_mesh(partitioning.MeshConfig())
  devices = jax.devices()
  logging.info("JAX %s: %d %s devices (%d processes, this is process %d)", jax.__version__,
               len(devices), devices[0].platform, jax.process_count(), jax.process_index())
  logging.info("%s", partitioning.describe_mesh(mesh))

  run_dir = rundir.RunDir(config.run_dir)
  if targets == ["status"]:
    return _print_status(stages.status_table(run_dir, config.seed, verify=FLAGS.verify))
  is_chief = jax.process_index() == 0
  # One writer per run directory: process 0 holds its lock for the whole command.
  run_config = gin_config.configurables_config_str(RUN_LEVEL_CONFIGURABLES) if is_chief else None
  with run_dir.lock() if is_chief else contextlib.nullcontext():
    try:
      done = stages.run_stages(targets, run_dir, seed=config.seed, mesh=mesh, force=FLAGS.force,
                               run_config=run_config)
    except BaseException:
      if is_chief:  # the union of the complete stages' configs, also after a failure
        _write_run_config(stages, run_dir, run_config, after_failure=True)
      raise
    if is_chief:
      _write_run_config(stages, run_dir, run_config)
  for name, action in done:
    verb = {"skip": "up to date", "run": "ran", "rebuild": "rebuilt"}[action]
    print(f"== {name}: {verb}")
    if action != "skip" and is_chief:
      print(stages.format_summary(run_dir.manifest(name).summary))
  if is_chief:  # times, headline numbers, what to run next
    from explore import run_summary  # pylint: disable=g-import-not-at-top
    print(run_summary.format_run_summary(run_dir, done,
                                         [*COMMANDS, *stages.registered_stages()]))
  return 0


_USER_ERRORS = (ValueError, KeyError, OSError)

# What to do about the operating system's faults a user can fix, by errno.
_OS_ERROR_HINTS = {
    errno.ENOSPC: "the disk is full: free space or choose a RUN_DIR on another disk",
    errno.EDQUOT: "the disk quota is exceeded: free space or choose another RUN_DIR",
    errno.EROFS: "the file system is read-only: choose a writable RUN_DIR",
    errno.EACCES: "permission denied: fix the permissions or choose another RUN_DIR",
    errno.EPERM: "operation not permitted: fix the permissions or choose another RUN_DIR",
    errno.ENOTDIR: "a parent of the path is a file, not a directory",
    errno.EEXIST: "the path exists already, as another kind of file",
}


def describe_os_error(e: OSError) -> str:
  """One line for an operating-system error: the path(s), the cause, and what to do."""
  paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
  cause = e.strerror or str(e)
  hint = _OS_ERROR_HINTS.get(e.errno)
  return ": ".join(part for part in (paths, cause, hint) if part)


def error_message(e: BaseException) -> str:
  """The one-line `explore: error:` text for an input, config or OS error."""
  if isinstance(e, OSError):
    return describe_os_error(e)
  if isinstance(e, KeyError) and e.args:
    return str(e.args[0])
  message = str(e)
  return message.splitlines()[0] if isinstance(e, RuntimeError) else message


def main(argv: Sequence[str]) -> None:
  try:
    status = run_command(argv[1:])
  except (*_USER_ERRORS, RuntimeError) as e:
    is_gin_required = isinstance(e, RuntimeError) and "Required bindings" in str(e)
    if FLAGS.traceback or (isinstance(e, RuntimeError) and not is_gin_required):
      raise
    print(f"explore: error: {error_message(e)}", file=sys.stderr)
    sys.exit(1)
  sys.exit(status)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl flag parsing after rewriting --gin.NAME=VALUE; bad flags exit 2 with a message."""
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    FLAGS([argv[0]])  # defaults, so the flag table can be read
    print(usage())
    sys.exit(0)
  try:
    argv = gin_config.rewrite_gin_args(argv)
    return FLAGS(argv)
  except (gin_config.ConfigError, flags.Error) as e:
    print(f"explore: error: {e}\nSee explore --help.", file=sys.stderr)
    sys.exit(2)


def console_main() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  console_main()
