"""Reads tensors from (sharded) safetensors checkpoints into numpy, without torch.

A folder holds `model.safetensors`, or shards listed in
`model.safetensors.index.json` (`weight_map`: tensor name -> file). Each file
is an 8-byte little-endian header size, a JSON header (name -> dtype, shape,
byte offsets) and the raw tensor bytes. Tensors of numpy dtypes are read with
`safetensors.safe_open(framework="numpy")`; bfloat16, which numpy lacks, is
read from the header's byte offsets as `ml_dtypes.bfloat16`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
import struct
from typing import Any

import ml_dtypes
import numpy as np

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
_RAW_DTYPES = {"BF16": ml_dtypes.bfloat16}


class SafetensorsError(ValueError):
  """A safetensors file or index that cannot be read: names the file and the problem."""


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
  """The safetensors JSON header of `path` and the byte offset where tensor data starts."""
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) != 8:
      raise SafetensorsError(f"{path}: not a safetensors file (shorter than 8 bytes)")
    (size,) = struct.unpack("<Q", raw)
    try:
      header = json.loads(f.read(size))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise SafetensorsError(f"{path}: not a safetensors file ({e})") from None
  header.pop("__metadata__", None)
  return header, 8 + size


class SafetensorsReader:
  """Reads named tensors from one or several (sharded) safetensors files as numpy arrays."""

  def __init__(self, checkpoint_dir: str | os.PathLike):
    directory = Path(checkpoint_dir)
    index = directory / INDEX_FILE
    if index.exists():
      try:
        weight_map = json.loads(index.read_text())["weight_map"]
      except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise SafetensorsError(f"{index}: no valid 'weight_map' ({e})") from None
      files = sorted(set(weight_map.values()))
    elif (directory / SINGLE_FILE).exists():
      files = [SINGLE_FILE]
    else:
      raise SafetensorsError(f"{directory}: neither {SINGLE_FILE} nor {INDEX_FILE} found")
    self._where: dict[str, tuple[Path, dict[str, Any], int]] = {}
    for name in files:
      path = directory / name
      if not path.exists():
        raise SafetensorsError(f"{path}: shard listed in {INDEX_FILE} is missing")
      header, data_start = _read_header(path)
      for tensor, info in header.items():
        self._where[tensor] = (path, info, data_start)

  def names(self) -> list[str]:
    return sorted(self._where)

  def file_of(self, name: str) -> Path:
    return self._where[name][0]

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._where[name][1]["shape"])

  def __contains__(self, name: str) -> bool:
    return name in self._where

  def read(self, name: str) -> np.ndarray:
    """The tensor `name`; bfloat16 comes back as ml_dtypes.bfloat16."""
    path, info, data_start = self._where[name]
    raw_dtype = _RAW_DTYPES.get(info["dtype"])
    if raw_dtype is None:
      from safetensors import safe_open  # pylint: disable=g-import-not-at-top
      with safe_open(path, framework="numpy") as f:
        return f.get_tensor(name)
    begin, end = info["data_offsets"]
    array = np.fromfile(path, dtype=np.uint8, count=end - begin, offset=data_start + begin)
    return array.view(raw_dtype).reshape(info["shape"])
