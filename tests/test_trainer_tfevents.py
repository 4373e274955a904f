"""The hand-written TensorBoard event files are read back by TensorFlow itself."""

import json

import pytest

from explore.train import metrics as metrics_lib
from explore.train import tfevents


def _read_with_tensorflow(path):
  tf = pytest.importorskip("tensorflow")
  events = []
  for record in tf.data.TFRecordDataset(str(path)):  # verifies the masked CRCs
    events.append(tf.compat.v1.Event.FromString(record.numpy()))
  return events


def test_crc32c_matches_the_standard_check_value():
  assert tfevents.crc32c(b"123456789") == 0xE3069283


def test_tensorflow_reads_back_tags_steps_and_values(tmp_path):
  writer = tfevents.EventFileWriter(tmp_path)
  writer.scalars(3, {"loss": 1.5, "timing/steps_per_second": 250.25})
  writer.scalars(1_000_000_007, {"accuracy": -0.125})
  writer.close()

  events = _read_with_tensorflow(writer.path)
  assert events[0].file_version == "brain.Event:2"
  scalars = [(e.step, v.tag, v.simple_value) for e in events[1:] for v in e.summary.value]
  assert scalars == [(3, "loss", 1.5), (3, "timing/steps_per_second", 250.25),
                     (1_000_000_007, "accuracy", -0.125)]
  assert all(e.wall_time > 1e9 for e in events)


def test_a_corrupted_record_fails_the_checksum(tmp_path):
  tf = pytest.importorskip("tensorflow")
  writer = tfevents.EventFileWriter(tmp_path)
  writer.scalars(1, {"loss": 2.0})
  writer.close()
  data = bytearray(writer.path.read_bytes())
  data[-6] ^= 0xFF  # inside the last record's payload
  writer.path.write_bytes(bytes(data))
  with pytest.raises(tf.errors.DataLossError):
    list(tf.data.TFRecordDataset(str(writer.path)))


def test_metric_writer_writes_events_and_jsonl(tmp_path):
  writer = metrics_lib.MetricWriter(tmp_path / "train")
  writer.write(5, {"step": 5, "loss": 0.5, "accuracy": float("nan")})
  writer.close()
  lines = [json.loads(l) for l in (tmp_path / "train" / "metrics.jsonl").read_text().splitlines()]
  assert lines == [{"step": 5, "loss": 0.5, "accuracy": "nan"}]
  (events_file,) = (tmp_path / "train").glob("events.out.tfevents.*")
  tags = {v.tag for e in _read_with_tensorflow(events_file) for v in e.summary.value}
  assert tags == {"loss", "accuracy"}


def test_tensorflow_reads_back_a_text_summary(tmp_path):
  tf = pytest.importorskip("tensorflow")
  writer = tfevents.EventFileWriter(tmp_path)
  writer.text(0, "gin/operative_config", "    f.a = 1\n    f.b = 'x'")
  writer.close()
  (event,) = _read_with_tensorflow(writer.path)[1:]
  (value,) = event.summary.value
  assert value.tag == "gin/operative_config"
  assert value.metadata.plugin_data.plugin_name == "text"
  assert tf.make_ndarray(value.tensor).item().decode() == "    f.a = 1\n    f.b = 'x'"
