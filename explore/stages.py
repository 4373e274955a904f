"""Pipeline stages: registration, dependency order and make-like execution.

A stage is a function of a `StageContext` that writes its artifacts into
`ctx.path` and returns a small summary. It declares the stages it reads and
the gin configurables whose bindings define its output; those bindings, the
seed and the fingerprints of its inputs decide whether a complete stage is up
to date (skipped), must be rebuilt (an input was remade), or conflicts with the
current config (an error, unless `--force`).
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from absl import logging

from explore import artifacts
from explore import gin_config
from explore import rundir as rundir_lib

# Modules that register the built-in stages when imported (by the CLI, before the
# gin files are parsed). Each imports the modules holding its gin configurables,
# so their bindings and defaults are known when the stage's config is hashed;
# TensorFlow and seqio stay inside the functions that use them.
BUILTIN_STAGE_MODULES: tuple[str, ...] = (
    "explore.data.stage",
    "explore.clusters.stage",
    "explore.transitions.stage",
    "explore.llm.pretrain_stage",
    "explore.llm.stage",
    "explore.seqrec.stage",
    "explore.precompute.stage",
    "explore.sim.stage",
    "explore.report.stage",
)


class StageError(ValueError):
  """An unknown stage, a dependency cycle, or artifacts from another config."""


@dataclasses.dataclass(frozen=True)
class Stage:
  name: str
  run: Callable[["StageContext"], Mapping[str, Any] | None]
  deps: tuple[str, ...] = ()
  configurables: tuple[str, ...] = ()
  doc: str = ""
  # "Configurable.param" bindings of `configurables` that do not change the
  # stage's output (the stage overrides them), left out of its config.
  ignored_bindings: tuple[str, ...] = ()
  # () -> {name: fingerprint} of inputs from outside the run directory (e.g. a
  # pretrained checkpoint folder), read under the current gin config; a changed
  # fingerprint rebuilds the stage like a remade input stage.
  external_inputs: Callable[[], Mapping[str, str]] | None = None


@dataclasses.dataclass
class StageContext:
  """What a running stage sees: where to write, where its inputs are, the mesh."""

  stage: Stage
  run_dir: rundir_lib.RunDir
  path: Path  # the folder to write this stage's artifacts into
  seed: int
  mesh: Any = None

  def input_path(self, dep: str) -> Path:
    """The complete folder of input stage `dep`, after checking its files' sizes."""
    if dep not in self.stage.deps:
      raise StageError(f"stage {self.stage.name!r} reads {dep!r} but does not declare it in deps")
    self.run_dir.check_complete(dep)
    return self.run_dir.complete_path(dep)


# A complete stage's operative config (gin text), in its own folder.
STAGE_CONFIG_FILE = "config.gin"
# RUN_DIR/config.gin: the run-level settings and the union of the complete stages' configs.
RUN_CONFIG_FILE = "config.gin"

_REGISTRY: dict[str, Stage] = {}
RESERVED_NAMES = ("run", "status", "help", "recommend", "serve", "export")


def register_stage(name: str, deps: Sequence[str] = (), configurables: Sequence[str] = (),
                   external_inputs: Callable[[], Mapping[str, str]] | None = None,
                   ignored_bindings: Sequence[str] = ()):
  """Decorator registering a stage function under `name` (see `Stage` for the fields)."""
  if name in RESERVED_NAMES:
    raise StageError(f"{name!r} is a CLI command and cannot name a stage")

  def decorator(fn):
    _REGISTRY[name] = Stage(name=name, run=fn, deps=tuple(deps),
                            configurables=tuple(configurables), doc=(fn.__doc__ or "").strip(),
                            external_inputs=external_inputs,
                            ignored_bindings=tuple(ignored_bindings))
    return fn

  return decorator


def unregister_stage(name: str) -> None:
  _REGISTRY.pop(name, None)


def load_builtin_stages() -> None:
  for module in BUILTIN_STAGE_MODULES:
    importlib.import_module(module)


def registered_stages() -> dict[str, Stage]:
  return dict(_REGISTRY)


def execution_order(targets: Sequence[str]) -> list[Stage]:
  """The targets and everything they depend on, dependencies first."""
  order: list[Stage] = []
  visiting: list[str] = []

  def visit(name: str, wanted_by: str | None):
    if name not in _REGISTRY:
      who = f" (needed by {wanted_by!r})" if wanted_by else ""
      known = ", ".join(sorted(_REGISTRY)) or "none registered"
      raise StageError(f"unknown stage {name!r}{who}; stages: {known}")
    if any(s.name == name for s in order):
      return
    if name in visiting:
      raise StageError(f"stage dependency cycle: {' -> '.join(visiting + [name])}")
    visiting.append(name)
    for dep in _REGISTRY[name].deps:
      visit(dep, name)
    visiting.pop()
    order.append(_REGISTRY[name])

  for target in targets:
    visit(target, None)
  return order


def stage_config(stage: Stage, seed: int) -> dict[str, Any]:
  """The settings that define a stage's output: the seed and its configurables' bindings."""
  config: dict[str, Any] = {"seed": seed}
  for name in stage.configurables:
    if not gin_config.is_registered(name):
      raise StageError(f"stage {stage.name!r} names gin configurable {name!r}, which is not "
                       "registered (a typo, or its module is not imported by the stage module)")
    for param, value in gin_config.configurable_bindings(name).items():
      config[f"{name}.{param}"] = value
  return _without_ignored(config, stage.ignored_bindings)


def _without_ignored(config: Mapping[str, Any], ignored: Sequence[str]) -> dict[str, Any]:
  """A stage config without its `ignored` bindings, also inside expanded references."""
  return {key: _without(value, ignored) for key, value in config.items() if key not in ignored}


def _without(value: Any, ignored: Sequence[str]) -> Any:
  """`value` (canonical form) without the `ignored` "Configurable.param" of its references.

  A reference expands to {"@Configurable()": {param: value}}
  (`gin_config.canonical_value`), e.g. DecoderTask.config = @DecoderConfig().
  """
  if not ignored:
    return value
  if isinstance(value, list):
    return [_without(v, ignored) for v in value]
  if not isinstance(value, dict):
    return value
  out = {}
  for key, inner in value.items():
    name = key[1:].removesuffix("()") if key.startswith("@") else None
    if name is not None and isinstance(inner, dict):
      inner = {p: v for p, v in inner.items() if f"{name}.{p}" not in ignored}
    out[key] = _without(inner, ignored)
  return out


def _decide(stage: Stage, run_dir: rundir_lib.RunDir, config: dict[str, Any],
            inputs: dict[str, str], force: bool) -> str:
  """'skip', 'run' or 'rebuild' for one stage, or raises on a config conflict."""
  manifest = run_dir.manifest(stage.name)
  state = run_dir.state(stage.name)
  if force or state not in ("complete", "corrupt") or manifest is None:
    return "run"
  if state == "corrupt":
    run_dir.check_complete(stage.name)  # raises, naming the files and the fix
  wanted = rundir_lib.fingerprint(config)
  # A stage made before some of its bindings were ignored is still up to date.
  if manifest.config_hash != wanted and rundir_lib.fingerprint(
      _without_ignored(manifest.config, stage.ignored_bindings)) != wanted:
    diff = "\n  ".join(rundir_lib.config_diff(manifest.config, config))
    raise StageError(
        f"run directory {run_dir.root}: stage {stage.name!r} was made with another config:\n  "
        f"{diff}\nUse --force to redo {stage.name!r} (stages after it are rebuilt), "
        "or choose another RUN_DIR.")
  if manifest.inputs != inputs:
    return "rebuild"
  return "skip"


EXTERNAL_PREFIX = "external:"


def _stage_inputs(stage: Stage, run_dir: rundir_lib.RunDir) -> dict[str, str]:
  """Fingerprints of what a stage reads: its input stages and its external inputs."""
  inputs = {dep: run_dir.manifest(dep).fingerprint for dep in stage.deps}
  if stage.external_inputs is not None:
    for name, value in stage.external_inputs().items():
      inputs[EXTERNAL_PREFIX + name] = str(value)
  return inputs


def run_stages(targets: Sequence[str], run_dir: rundir_lib.RunDir, seed: int, mesh: Any = None,
               force: bool = False, run_config: str | None = None) -> list[tuple[str, str]]:
  """Runs `targets` after whatever they depend on that is not up to date.

  Returns (stage, action) pairs, action in {'skip', 'run', 'rebuild'}.
  `force` redoes the targets themselves; stages after a redone one are rebuilt.
  With `run_config` (gin text of the run-level settings), RUN_DIR/config.gin is
  rewritten after each stage completes (see `write_run_config`).
  """
  order = execution_order(targets)
  # Check every stage before running any, so a conflict is reported before work starts.
  configs = {s.name: stage_config(s, seed) for s in order}
  done: list[tuple[str, str]] = []
  for stage in order:
    inputs = _stage_inputs(stage, run_dir)
    action = _decide(stage, run_dir, configs[stage.name], inputs, force and stage.name in targets)
    if action == "skip":
      logging.info("stage %s: up to date, skipped", stage.name)
      done.append((stage.name, action))
      continue
    if action == "rebuild":
      logging.info("stage %s: an input was remade since it ran; rebuilding", stage.name)
    path = run_dir.begin(stage.name, configs[stage.name], inputs)
    logging.info("stage %s: running (writing %s)", stage.name, path)
    start = time.time()
    summary = stage.run(StageContext(stage=stage, run_dir=run_dir, path=path, seed=seed, mesh=mesh))
    summary = dict(summary or {})
    summary.setdefault("seconds", round(time.time() - start, 3))
    write_stage_record(stage, path, summary)
    run_dir.finish(stage.name, summary)
    if run_config is not None:
      write_run_config(run_dir, run_config)
    logging.info("stage %s: complete in %.1f s", stage.name, time.time() - start)
    done.append((stage.name, action))
  return done


def summary_scalars(summary: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
  """The numbers of a stage summary as TensorBoard tags: nested keys joined by '/'.

  E.g. {"hit@5": {"llm": 0.28}} -> {"hit@5/llm": 0.28}; strings, lists and
  booleans are left out.
  """
  out: dict[str, float] = {}
  for key, value in summary.items():
    tag = f"{prefix}{key}"
    if isinstance(value, Mapping):
      out.update(summary_scalars(value, tag + "/"))
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
      out[tag] = float(value)
  return out


def write_stage_record(stage: Stage, path: Path, summary: Mapping[str, Any]) -> None:
  """Writes the stage's operative config into its folder, and config and numbers for TensorBoard.

  The gin text (`config.gin`) sets every configurable the stage's fingerprint
  covers (defaults included), so parsing it reproduces the stage config.
  TensorBoard shows, under the stage's run (its folder), the config as text
  (`gin/operative_config`, indented: Markdown code) and every number of the
  summary as a scalar (e.g. `hit@5/llm`, `model/test/hr@10`), beside the
  training scalars the stage's trainer wrote below it.
  """
  from explore.train import tfevents  # pylint: disable=g-import-not-at-top
  text = gin_config.configurables_config_str(stage.configurables)
  artifacts.atomic_write_text(path / STAGE_CONFIG_FILE,
                              f"# Operative config of stage {stage.name!r}.\n{text}")
  for old in path.glob("events.out.tfevents.*"):  # a resumed stage's earlier attempt
    old.unlink()
  with tfevents.EventFileWriter(path) as events:
    events.text(0, "gin/operative_config", "\n".join("    " + line for line in text.splitlines()))
    events.scalars(0, summary_scalars(summary))


def write_run_config(run_dir: rundir_lib.RunDir, run_config: str) -> Path:
  """Writes RUN_DIR/config.gin: `run_config`, then each complete stage's own config.

  Stages come in dependency order, so `explore run --gin_file=RUN_DIR/config.gin`
  reproduces every complete stage (each is reported up to date), whatever
  sequence of commands (no-op reruns, failed `--force` redos) made the run directory.
  """
  parts = [f"# The run's config: run-level settings, then each complete stage's operative "
           f"config.\n{run_config}"]
  for stage in execution_order(sorted(_REGISTRY)):
    stage_file = run_dir.complete_path(stage.name) / STAGE_CONFIG_FILE
    if run_dir.manifest(stage.name) is not None and stage_file.is_file():
      parts.append(stage_file.read_text())
  path = run_dir.root / RUN_CONFIG_FILE
  artifacts.atomic_write_text(path, "\n".join(parts))
  return path


def status_table(run_dir: rundir_lib.RunDir, seed: int, verify: bool = False
                 ) -> list[dict[str, Any]]:
  """One row per registered stage: state, size, config hash, whether it is current.

  A complete stage whose files differ in size from its manifest is 'corrupt';
  with `verify`, so is one whose files' SHA-256 differ. `problems` names the files.
  """
  rows = []
  for stage in execution_order(sorted(_REGISTRY)):
    problems = run_dir.verify(stage.name, hashes=verify)
    state = "corrupt" if problems else run_dir.state(stage.name)
    manifest = run_dir.manifest(stage.name)
    row = {"stage": stage.name, "state": state, "bytes": run_dir.size_bytes(stage.name),
           "config_hash": manifest.config_hash if manifest else "", "current": "",
           "problems": problems}
    if manifest is not None:
      same = manifest.config_hash == rundir_lib.fingerprint(stage_config(stage, seed))
      row["current"] = "yes" if same else "no (config differs)"
    rows.append(row)
  return rows


def format_summary(summary: Mapping[str, Any], indent: str = "  ", max_items: int = 8) -> str:
  """A stage summary as indented `key: value` lines (long lists shortened)."""
  lines = []
  for key, value in summary.items():
    if isinstance(value, list) and value and isinstance(value[0], dict):
      lines.append(f"{indent}{key}:")
      for row in value[:max_items]:
        lines.append(f"{indent}  - " + ", ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    elif isinstance(value, list):
      shown = ", ".join(repr(v) if isinstance(v, str) else str(v) for v in value[:max_items])
      more = f", ... ({len(value)} in all)" if len(value) > max_items else ""
      lines.append(f"{indent}{key}: [{shown}{more}]")
    elif isinstance(value, dict) and value:
      lines.append(f"{indent}{key}:")
      lines.append(format_summary(value, indent + "  ", max_items))
    else:
      lines.append(f"{indent}{key}: {value:.4g}" if isinstance(value, float)
                   else f"{indent}{key}: {value}")
  return "\n".join(lines)
