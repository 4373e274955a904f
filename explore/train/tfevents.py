"""A minimal TensorBoard event-file writer: scalars and text, no TensorFlow needed.

TensorBoard reads `events.out.tfevents.*` files: a TFRecord stream (each
record framed by its length and masked CRC32C checksums) of serialized
`tensorflow.Event` protocol buffers. We only ever write two kinds of event,
so the protobuf wire format is encoded by hand here:

  Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
            Summary summary = 5; }
  Summary { repeated Value value = 1; }
  Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8;
            SummaryMetadata metadata = 9; }
  TensorProto     { DataType dtype = 1 (DT_STRING = 7); TensorShapeProto tensor_shape = 2;
                    repeated bytes string_val = 8; }
  SummaryMetadata { PluginData plugin_data = 1 { string plugin_name = 1 ("text") } }

The first event of a file carries `file_version: "brain.Event:2"`.
"""

from __future__ import annotations

import os
from pathlib import Path
import socket
import struct
import time
from typing import Mapping

FILE_VERSION = "brain.Event:2"


def _crc32c_table() -> tuple[int, ...]:
  poly = 0x82F63B78  # CRC-32C (Castagnoli), reflected.
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C of `data` (the checksum TFRecord uses)."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """TFRecord's masked CRC: rotate right by 15 bits and add a constant."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """One TFRecord: length, masked CRC of the length, data, masked CRC of the data."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


def _varint(value: int) -> bytes:
  value &= (1 << 64) - 1  # Negative int64 values are ten-byte two's complement.
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
  return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


_DT_STRING = 7


def _text_value(tag: str, text: str) -> bytes:
  """A Summary.Value holding a scalar string tensor for TensorBoard's text plugin."""
  tensor = (_key(1, 0) + _varint(_DT_STRING) + _length_delimited(2, b"")
            + _length_delimited(8, text.encode()))
  metadata = _length_delimited(1, _length_delimited(1, b"text"))
  return (_length_delimited(1, tag.encode()) + _length_delimited(8, tensor)
          + _length_delimited(9, metadata))


def encode_event(wall_time: float, step: int, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None,
                 texts: Mapping[str, str] | None = None) -> bytes:
  """Serializes an Event holding a file version, or a summary of scalars and texts."""
  out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(int(step))
  if file_version is not None:
    out += _length_delimited(3, file_version.encode())
  values = b"".join(
      _length_delimited(1, _length_delimited(1, tag.encode())
                        + _key(2, 5) + struct.pack("<f", float(value)))
      for tag, value in (scalars or {}).items())
  values += b"".join(_length_delimited(1, _text_value(tag, text))
                     for tag, text in (texts or {}).items())
  if values:
    out += _length_delimited(5, values)
  return out


class EventFileWriter:
  """Appends scalar summaries to a new `events.out.tfevents.*` file in `logdir`."""

  def __init__(self, logdir: str | os.PathLike, filename_suffix: str = ""):
    self.logdir = Path(logdir)
    self.logdir.mkdir(parents=True, exist_ok=True)
    name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
    self.path = self.logdir / (name + filename_suffix)
    self._file = open(self.path, "ab")
    self._file.write(tfrecord(encode_event(time.time(), 0, file_version=FILE_VERSION)))
    self._file.flush()

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    """Writes one event with a scalar per tag at `step`."""
    if values:
      self._file.write(tfrecord(encode_event(time.time(), step, scalars=values)))

  def text(self, step: int, tag: str, text: str) -> None:
    """Writes one text summary (Markdown, shown by TensorBoard's Text tab) at `step`."""
    self._file.write(tfrecord(encode_event(time.time(), step, texts={tag: text})))

  def flush(self) -> None:
    self._file.flush()

  def close(self) -> None:
    if not self._file.closed:
      self._file.close()

  def __enter__(self) -> "EventFileWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
