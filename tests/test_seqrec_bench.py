"""bench/seqrec_train.py: every config times the data of its own run file."""

from __future__ import annotations

import pathlib
import sys

import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH_DIR))

import seqrec_train  # pylint: disable=g-import-not-at-top,wrong-import-position


@pytest.mark.parametrize("name", sorted(seqrec_train.CONFIGS))
def test_every_config_reads_its_run_files_data(name, monkeypatch):
  monkeypatch.setattr(seqrec_train.movielens, "load_movielens",
                      lambda path: type("Loaded", (), {"interactions": ("movielens", path)}))
  monkeypatch.setattr(seqrec_train.synthetic, "generate", lambda: (None, "synthetic", None))
  run_file = seqrec_train.CONFIGS[name][0][0]
  expected = ("movielens", "/ml") if run_file == "movielens.gin" else "synthetic"
  assert seqrec_train._interactions(name, "/ml") == expected  # pylint: disable=protected-access
  assert run_file in ("movielens.gin", "quickstart.gin")
  assert name.startswith("movielens") == (run_file == "movielens.gin")
