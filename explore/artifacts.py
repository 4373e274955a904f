"""Versioned, atomic, pickle-free storage for stage artifacts.

Every artifact is a folder holding `arrays.npz` (numpy arrays, loaded with
`allow_pickle=False`) and `meta.json` (kind, format version, free metadata).
Writes go to a temporary sibling folder that is renamed into place, so a crash
never leaves a half-written artifact where a complete one is expected, and an
existing artifact is only replaced once its successor is fully on disk.

Artifacts verify themselves: a complete stage's `MANIFEST.json` lists the size
and SHA-256 of every file in the stage folder (`describe_files`), and loading an
artifact inside such a folder checks its files against that list first, so a
truncated or altered file is one error naming the file, the stage and the fix.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable, Mapping

import numpy as np

META_FILE = "meta.json"
ARRAYS_FILE = "arrays.npz"
# A stage folder's manifest (see explore/rundir.py); its "files" entry lists the payload.
MANIFEST_FILE = "MANIFEST.json"


class ArtifactError(ValueError):
  """An artifact is missing, of the wrong kind, or of an unsupported version."""


class CorruptArtifactError(ArtifactError):
  """A file that differs from what its stage's manifest recorded (truncated, altered, missing)."""


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


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """The records of a JSON-lines log ([] when it does not exist yet)."""
  path = Path(path)
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def append_jsonl(path: str | os.PathLike, record: dict[str, Any]) -> None:
  """Adds `record` to a JSON-lines log, rewriting it atomically (never half a line)."""
  records = read_jsonl(path) + [record]
  atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records))


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
  verify_artifact(directory)
  meta, version = _read_header(directory, kind, supported_versions)
  try:
    with np.load(directory / ARRAYS_FILE, allow_pickle=False) as npz:
      arrays = {k: npz[k] for k in npz.files}
  except FileNotFoundError:
    raise ArtifactError(f"{directory}: {ARRAYS_FILE} is missing") from None
  except (zipfile.BadZipFile, EOFError, ValueError, OSError) as e:
    raise CorruptArtifactError(
        f"{directory / ARRAYS_FILE}: unreadable ({type(e).__name__}: {e}); re-run the stage "
        "that writes it (explore <stage> --force)") from None
  return arrays, meta, version


def _stream_sha256(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


@functools.lru_cache(maxsize=4096)
def _cached_sha256(path: str, size: int, mtime_ns: int) -> str:
  del size, mtime_ns  # part of the cache key only: a rewritten file is hashed again
  return _stream_sha256(Path(path))


def file_sha256(path: str | os.PathLike) -> str:
  """The hex SHA-256 of a file's bytes (memoized on path, size and modification time)."""
  st = os.stat(path)
  return _cached_sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


def describe_files(folder: str | os.PathLike) -> dict[str, dict[str, Any]]:
  """{relative path: {"bytes", "sha256"}} for every file below `folder` but its manifest."""
  folder = Path(folder)
  return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
          for p in sorted(folder.rglob("*")) if p.is_file() and p != folder / MANIFEST_FILE}


def check_files(folder: str | os.PathLike, expected: Mapping[str, Mapping[str, Any]],
                hashes: bool = True, under: str = "") -> list[str]:
  """Problems of the files below `folder` against `expected` (from `describe_files`).

  Checks the files whose relative path starts with `under` (all by default):
  each must exist with the recorded size and, when `hashes`, the recorded
  SHA-256. Returns one line per bad file, naming it; empty when all match.
  """
  folder = Path(folder)
  problems = []
  for name, entry in sorted(expected.items()):
    if under and not (name == under or name.startswith(under.rstrip("/") + "/")):
      continue
    path = folder / name
    if not path.is_file():
      problems.append(f"{path}: missing")
      continue
    size = path.stat().st_size
    if size != entry["bytes"]:
      problems.append(f"{path}: {size} bytes, the manifest recorded {entry['bytes']} (truncated "
                      "or altered)")
    elif hashes and file_sha256(path) != entry["sha256"]:
      problems.append(f"{path}: content differs from the manifest's SHA-256 (altered)")
  return problems


def corrupt_stage_message(stage: str, problems: list[str]) -> str:
  """One error text for a stage whose files fail `check_files`: the files, then the fix."""
  shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
  return f"stage {stage!r} is corrupt: {shown}; redo it with: explore {stage} --force"


def _enclosing_manifest(directory: Path) -> tuple[Path, dict[str, Any]] | None:
  """The nearest folder at or above `directory` with a manifest, and that manifest."""
  for folder in (directory, *directory.parents):
    manifest = folder / MANIFEST_FILE
    if manifest.is_file():
      try:
        return folder, json.loads(manifest.read_text())
      except (OSError, json.JSONDecodeError):
        return None  # the run directory reports a malformed manifest itself
  return None


def verify_artifact(directory: str | os.PathLike) -> None:
  """Checks an artifact folder against the manifest of the complete stage holding it.

  Does nothing outside a run directory or inside a stage still being written
  (its manifest lists no files yet).

  Raises:
    CorruptArtifactError: naming each bad file, the stage, and the command that redoes it.
  """
  directory = Path(directory).resolve()
  found = _enclosing_manifest(directory)
  if found is None or not found[1].get("files"):
    return
  stage_folder, manifest = found
  under = directory.relative_to(stage_folder).as_posix()
  problems = check_files(stage_folder, manifest["files"], under="" if under == "." else under)
  if problems:
    raise CorruptArtifactError(corrupt_stage_message(manifest.get("stage", stage_folder.name),
                                                     problems))


def artifact_size_bytes(path: str | os.PathLike) -> int:
  """Total size of the files below `path` (0 when it does not exist)."""
  path = Path(path)
  if path.is_file():
    return path.stat().st_size
  return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
