"""bench/decode.py: a small CPU run writes the report with every variant and the table estimate."""

from __future__ import annotations

import json
import pathlib
import sys

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH_DIR))

import decode  # pylint: disable=g-import-not-at-top,wrong-import-position

FLAGS = ["--num_clusters=24", "--batch=2", "--num_beams=3", "--top_n=2", "--repeats=1",
         "--vocab_size=64"]


def test_main_times_every_variant_and_writes_the_report(tmp_path, clean_gin):
  out = tmp_path / "decode.json"
  record = decode.main(FLAGS + [f"--out={out}"])
  assert json.loads(out.read_text()) == json.loads(json.dumps(record))
  assert [row["variant"] for row in record["rows"]] == ["full vocab", "trie, all levels", "trie"]
  assert record["command"] == "python3 bench/decode.py " + " ".join(FLAGS + [f"--out={out}"])
  assert record["valid_output_rate"] == 1.0
  assert record["table_prompts"] == 24 * 23
  assert record["trie_over_full_vocab"] > 0 and set(record["trie_step_only_s"]) == {"dense", "csr"}


def test_cluster_paths_are_distinct_and_end_with_eos():
  import numpy as np  # pylint: disable=g-import-not-at-top
  paths = decode.cluster_paths(np.random.default_rng(0), 50, 40, 2, 4)
  assert len({tuple(p) for p in paths}) == 50
  assert all(p[-1] == decode.EOS and 3 <= len(p) <= 5 for p in paths)
