"""Versioned, atomic, pickle-free storage for stage artifacts.

Every artifact is a folder holding `arrays.npz` (numpy arrays, loaded with
`allow_pickle=False`) and `meta.json` (kind, format version, free metadata).
Writes go to a temporary sibling folder that is renamed into place, so a crash
never leaves a half-written artifact where a complete one is expected, and an
existing artifact is only replaced once its successor is fully on disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"


class ArtifactError(ValueError):
  """An artifact is missing, of the wrong kind, or of an unsupported version."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file and an atomic rename."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
  atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
  atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike, error: type[ValueError] = ArtifactError) -> Any:
  """Parses a JSON file; a missing or malformed file raises `error` naming it."""
  path = Path(path)
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise error(f"{path}: file not found") from None
  except json.JSONDecodeError as e:
    raise error(f"{path}: not valid JSON ({e})") from None


def replace_folder(new: Path, final: Path) -> None:
  """Moves the finished folder `new` to `final`, replacing any previous `final`.

  The old version is renamed aside first and deleted only once the new one is
  in place, so at every moment one complete version exists on disk.
  """
  if final.exists():
    old = final.with_name(f".{final.name}.old")
    if old.exists():
      shutil.rmtree(old)
    os.replace(final, old)
    os.replace(new, final)
    shutil.rmtree(old)
  else:
    os.replace(new, final)


def save_folder(
    directory: str | os.PathLike,
    kind: str,
    version: int,
    meta: Mapping[str, Any] | None,
    writers: Mapping[str, Callable[[BinaryIO], None]],
) -> Path:
  """Writes an artifact folder atomically: each `writers[name](file)` fills one payload file.

  The folder is built beside `directory` and renamed into place at the end, so
  an existing artifact is only replaced once its successor is fully on disk.
  """
  directory = Path(directory)
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
  try:
    for name, write in writers.items():
      with open(tmp / name, "wb") as f:
        write(f)
    full_meta = {"kind": kind, "version": version, "meta": dict(meta or {})}
    (tmp / META_FILE).write_text(json.dumps(full_meta, indent=2, sort_keys=True) + "\n")
    replace_folder(tmp, directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory


def save_artifact(
    directory: str | os.PathLike,
    kind: str,
    version: int,
    arrays: Mapping[str, np.ndarray],
    meta: Mapping[str, Any] | None = None,
) -> Path:
  """Writes an artifact folder (arrays.npz + meta.json) atomically."""
  for name, value in arrays.items():
    if np.asarray(value).dtype == object:
      raise ArtifactError(f"{kind}: array {name!r} has dtype object; artifacts never use pickle")
  return save_folder(directory, kind, version, meta, {
      ARRAYS_FILE: lambda f: np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})})


def load_folder_meta(
    directory: str | os.PathLike,
    kind: str,
    supported_versions: Mapping[int, str] | int,
) -> dict[str, Any]:
  """The free metadata of an artifact folder, after checking its kind and version."""
  return _read_header(Path(directory), kind, supported_versions)[0]


def _read_header(directory: Path, kind: str, supported_versions: Mapping[int, str] | int
                 ) -> tuple[dict[str, Any], int]:
  header = read_json(directory / META_FILE)
  if header.get("kind") != kind:
    raise ArtifactError(f"{directory}: expected a {kind!r} artifact, found {header.get('kind')!r}")
  version = header.get("version")
  if isinstance(supported_versions, int):
    supported_versions = {supported_versions: "current"}
  if version not in supported_versions:
    known = ", ".join(f"v{v}: {note}" for v, note in sorted(supported_versions.items()))
    raise ArtifactError(
        f"{directory}: {kind} artifact has format version {version}, this code reads {known}; "
        "re-run the stage that writes it (explore <stage> --force)")
  return header.get("meta", {}), version


def load_artifact(
    directory: str | os.PathLike,
    kind: str,
    supported_versions: Mapping[int, str] | int,
) -> tuple[dict[str, np.ndarray], dict[str, Any], int]:
  """Reads an artifact folder, checking its kind and version.

  Args:
    directory: the artifact folder.
    kind: the expected kind (e.g. "interactions").
    supported_versions: the current version, or a mapping version -> note
      describing what changed in the versions this code still reads.

  Returns:
    (arrays, meta, version).
  """
  directory = Path(directory)
  meta, version = _read_header(directory, kind, supported_versions)
  try:
    with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except FileNotFoundError:
    raise ArtifactError(f"{directory}: {ARRAYS_FILE} is missing") from None
  return arrays, meta, version


def artifact_size_bytes(path: str | os.PathLike) -> int:
  """Total size of the files below `path` (0 when it does not exist)."""
  path = Path(path)
  if path.is_file():
    return path.stat().st_size
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
