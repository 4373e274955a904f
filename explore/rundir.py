"""The run directory: one folder per stage, each with a manifest.

Layout:
  RUN_DIR/config.gin               the operative gin config (process 0)
  RUN_DIR/<stage>/MANIFEST.json    a complete stage: config, inputs, summary, and the
                                   size and SHA-256 of every other file in the folder
  RUN_DIR/<stage>/...              the stage's artifacts
  RUN_DIR/<stage>.partial/         a stage being written (kept for resume)
  RUN_DIR/.lock                    flock'ed by the one process writing the run directory
                                   (its pid and host inside, for the refusal message)

A stage writes into `<stage>.partial/`; only when it finishes is that folder
renamed to `<stage>/`, replacing the previous complete version. A failure or
a kill therefore never damages a complete stage.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Mapping

from absl import logging

from explore import artifacts

MANIFEST = artifacts.MANIFEST_FILE
MANIFEST_VERSION = 1
PARTIAL_SUFFIX = ".partial"
LOCK_FILE = ".lock"


class RunDirError(ValueError):
  """A run directory whose contents cannot be used with the current settings."""


class RunDirLockedError(RunDirError):
  """Another live process holds the run directory's lock."""


@contextlib.contextmanager
def exclusive_lock(path: Path):
  """Holds `path` as a lock file recording {pid, host, started} for the `with` block.

  The lock itself is `flock` on the file, which the kernel releases when the
  holder exits or is killed; the recorded holder names it in the refusal. A file
  that still names a holder but whose lock is free was left by a killed process:
  it is stale and taken over (with a warning naming the old holder). A live
  holder makes this raise `RunDirLockedError`.
  """
  me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    holder = _read_holder(path)
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
    raise RunDirLockedError(
        f"{path.parent}: another run is writing this run directory (pid {holder.get('pid', '?')} "
        f"on {holder.get('host', '?')}, since {since}); wait for it to finish or choose another "
        "RUN_DIR") from None
  try:
    stale = _read_holder(path)
    if stale:
      logging.warning("%s: taking over a stale lock left by pid %s on %s (no longer running)",
                      path, stale.get("pid"), stale.get("host"))
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    os.fsync(fd)
    yield me
  finally:
    # Emptied rather than deleted: deleting could let a waiter lock an unlinked file.
    os.ftruncate(fd, 0)
    os.close(fd)


def _read_holder(path: Path) -> dict[str, Any]:
  try:
    holder = json.loads(path.read_text() or "{}")
  except (OSError, ValueError):
    return {}
  return holder if isinstance(holder, dict) else {}


def fingerprint(obj: Any) -> str:
  """A stable short hash of a JSON-able object."""
  blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=repr)
  return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclasses.dataclass
class StageManifest:
  """What a stage was made with and what it produced."""

  stage: str
  status: str  # "partial" or "complete"
  config: dict[str, Any]
  config_hash: str
  inputs: dict[str, str]  # upstream stage -> its fingerprint when this stage ran
  fingerprint: str
  started: float
  finished: float | None = None
  summary: dict[str, Any] = dataclasses.field(default_factory=dict)
  version: int = MANIFEST_VERSION
  # relative path -> {"bytes", "sha256"} of every payload file, recorded on completion
  # (empty in manifests written before files were recorded: nothing to check).
  files: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)

  @classmethod
  def new(cls, stage: str, config: Mapping[str, Any], inputs: Mapping[str, str]
          ) -> "StageManifest":
    config_hash = fingerprint(config)
    return cls(stage=stage, status="partial", config=dict(config), config_hash=config_hash,
               inputs=dict(inputs), fingerprint=fingerprint([stage, config_hash, dict(inputs)]),
               started=time.time())

  @classmethod
  def read(cls, path: Path) -> "StageManifest":
    data = artifacts.read_json(path)
    if data.get("version") != MANIFEST_VERSION:
      raise RunDirError(f"{path}: manifest version {data.get('version')} is not "
                        f"{MANIFEST_VERSION}; redo the stage with --force")
    try:
      return cls(**data)
    except TypeError as e:
      raise RunDirError(f"{path}: malformed manifest ({e})") from None

  def write(self, path: Path) -> None:
    artifacts.atomic_write_json(path, dataclasses.asdict(self))


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
  """Human-readable differences between two flat stage configs."""
  lines = []
  for key in sorted(set(old) | set(new)):
    if old.get(key, "<unset>") != new.get(key, "<unset>"):
      lines.append(f"{key}: {old.get(key, '<unset>')!r} on disk, {new.get(key, '<unset>')!r} now")
  return lines


class RunDir:
  """Stage folders, manifests and the config file of one run."""

  def __init__(self, root: str | os.PathLike):
    self.root = Path(root)
    if self.root.exists() and not self.root.is_dir():
      raise RunDirError(f"RUN_DIR {self.root} exists and is not a directory")

  def lock(self):
    """A context manager making this process the run directory's one writer (see `exclusive_lock`).

    Creates the run directory if needed; readers (`explore status`) need no lock.
    """
    self.root.mkdir(parents=True, exist_ok=True)
    return exclusive_lock(self.root / LOCK_FILE)

  def complete_path(self, stage: str) -> Path:
    return self.root / stage

  def partial_path(self, stage: str) -> Path:
    return self.root / (stage + PARTIAL_SUFFIX)

  def manifest(self, stage: str) -> StageManifest | None:
    """The manifest of the complete version of `stage`, if any."""
    path = self.complete_path(stage) / MANIFEST
    return StageManifest.read(path) if path.exists() else None

  def partial_manifest(self, stage: str) -> StageManifest | None:
    path = self.partial_path(stage) / MANIFEST
    return StageManifest.read(path) if path.exists() else None

  def state(self, stage: str) -> str:
    """'complete', 'corrupt', 'partial' (being written or interrupted) or 'missing'.

    A complete version wins over a `<stage>.partial/` beside it (a `--force`
    redo in progress or interrupted): the complete one is what readers use.
    'corrupt' is a complete stage whose files differ in size from its manifest.
    """
    if self.manifest(stage) is not None:
      return "corrupt" if self.verify(stage, hashes=False) else "complete"
    if self.partial_path(stage).exists():
      return "partial"
    return "missing"

  def verify(self, stage: str, hashes: bool = True) -> list[str]:
    """Problems of a complete stage's files against its manifest (sizes, and hashes if asked)."""
    manifest = self.manifest(stage)
    if manifest is None:
      return []
    return artifacts.check_files(self.complete_path(stage), manifest.files, hashes=hashes)

  def check_complete(self, stage: str, hashes: bool = False) -> None:
    """Raises `artifacts.CorruptArtifactError` (naming files and the fix) for a corrupt stage."""
    problems = self.verify(stage, hashes=hashes)
    if problems:
      raise artifacts.CorruptArtifactError(artifacts.corrupt_stage_message(stage, problems))

  def begin(self, stage: str, config: Mapping[str, Any], inputs: Mapping[str, str]) -> Path:
    """Opens `<stage>.partial/` for writing; resumes it when made with the same settings.

    A partial folder left by a run with other settings is discarded, so
    artifacts made with different configs are never mixed.
    """
    manifest = StageManifest.new(stage, config, inputs)
    path = self.partial_path(stage)
    previous = self.partial_manifest(stage) if path.exists() else None
    if path.exists() and (previous is None or previous.fingerprint != manifest.fingerprint):
      shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    if previous is not None and previous.fingerprint == manifest.fingerprint:
      manifest.started = previous.started
    manifest.write(path / MANIFEST)
    return path

  def finish(self, stage: str, summary: Mapping[str, Any] | None = None) -> StageManifest:
    """Marks `<stage>.partial/` complete and swaps it in place of the old version."""
    path = self.partial_path(stage)
    manifest = StageManifest.read(path / MANIFEST)
    manifest.status = "complete"
    manifest.finished = time.time()
    manifest.summary = json.loads(json.dumps(dict(summary or {}), default=repr))
    manifest.files = artifacts.describe_files(path)
    manifest.write(path / MANIFEST)
    artifacts.replace_folder(path, self.complete_path(stage))
    return manifest

  def size_bytes(self, stage: str) -> int:
    path = self.complete_path(stage)
    if not path.exists():
      path = self.partial_path(stage)
    return artifacts.artifact_size_bytes(path)
