"""bench/llm_mfu.py: MaxText FLOP counting, an end-to-end CPU run, the sweep, its imports."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

BENCH_DIR = pathlib.Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH_DIR))

import llm_mfu  # pylint: disable=g-import-not-at-top,wrong-import-position
from explore.llm.decoder_config import DecoderConfig  # pylint: disable=g-import-not-at-top

# Small enough that every run splits over the 8 emulated devices and compiles in seconds.
TINY_FLAGS = ["--model=tiny", "--seq_len=32", "--batch_size=8", "--steps=2", "--warmup_steps=1"]


def test_flops_match_a_hand_count_and_decoder_config():
  config = DecoderConfig(vocab_size=32, d_model=8, num_layers=2, num_heads=4, num_kv_heads=2,
                         head_dim=4, mlp_dim=16)
  # T = 8 tokens, per layer, forward:
  #   ffn        2*8*8*16*2 + 2*8*16*8   = 4096 + 2048 = 6144
  #   qkv        2*8*8*(4 + 2*2)*4       = 4096
  #   projection 2*8*(4*4)*8             = 2048
  #   attention  4*8*8*4*4 / 2           = 2048   (causal)
  # unembedding  2*8*8*32                = 4096   (once)
  # weights: 3 * ((6144 + 4096 + 2048) * 2 + 4096) = 86016; attention: 3 * 2048 * 2 = 12288.
  flops = llm_mfu.maxtext_training_flops(config, seq_len=8)
  assert flops == {"learnable_weights": 86016.0, "attention": 12288.0, "total": 98304.0}
  assert config.flops_per_example(8) == flops["total"]


def test_main_runs_the_tiny_model_and_writes_the_report(tmp_path, clean_gin):
  out = tmp_path / "mfu.json"
  record = llm_mfu.main(TINY_FLAGS + [f"--out={out}"])
  written = json.loads(out.read_text())
  assert written == json.loads(json.dumps(record))
  assert written["device_kind"] == "cpu" and written["num_devices"] == 8
  assert written["params"] == 188_736 == written["best"]["params_counted"]
  assert written["command"] == "python3 bench/llm_mfu.py " + " ".join(TINY_FLAGS + [f"--out={out}"])
  assert written["flops_agree"]
  run = written["runs"][0]
  assert run["model_flops_per_step"] == 8 * written["flops_per_sequence"]["total"]
  assert written["tokens_per_s"] == pytest.approx(8 * 32 / written["step_time_s"])
  assert written["model_tflops_per_s_per_device"] == pytest.approx(
      run["model_flops_per_step"] / run["step_time_s"] / 8 / 1e12)
  assert written["mfu"] is None and written["mfu_measured_peak"] is None  # no CPU peak
  assert "hbm" in written  # empty on CPU: no allocator statistics
  # The Trainer's own log of the timed window says the same.
  logged = run["trainer_logged"]
  assert logged["timing/tokens_per_second"] == pytest.approx(written["tokens_per_s"])
  assert logged["timing/model_flops_per_second_per_device"] == pytest.approx(
      written["model_tflops_per_s_per_device"] * 1e12)
  assert run["stopped_reason"] == "done" and 0 < run["final_loss"] < 20


def _fake_point(config, batch_size, seq_len, args, peaks, devices):
  """Stands in for a compiled run: batch 64 without remat runs out of memory."""
  if batch_size >= 64 and not config.remat:
    raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate\nmore")
  tokens_per_s = batch_size * (90.0 if config.remat else 100.0)
  return {"batch_size": batch_size, "remat": config.remat, "step_time_s": 1.0,
          "tokens_per_s": tokens_per_s, "model_tflops_per_s_per_device": 1.0, "mfu": None,
          "mfu_measured_peak": None, "hbm": {}, "compile_s": 1.0}


def test_sweep_skips_larger_batches_after_a_failure_and_reports_the_fastest(
    monkeypatch, clean_gin):
  monkeypatch.setattr(llm_mfu, "run_point", _fake_point)
  record = llm_mfu.main(["--model=tiny", "--sweep", "--sweep_batch_sizes=16,32,64,128",
                         "--sweep_remat_batch_sizes=64"])
  runs = {(r["batch_size"], r["remat"]): r for r in record["runs"]}
  assert runs[(64, False)]["error"] == (
      "RuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate")
  assert runs[(128, False)]["skipped"] == "batch 64 already failed"
  assert record["best"] is runs[(64, True)]  # 64 * 90 beats 32 * 100
  assert record["tokens_per_s"] == 64 * 90.0 and record["remat"] is True


def test_sweep_stops_starting_points_once_its_budget_is_spent(monkeypatch, clean_gin):
  monkeypatch.setattr(llm_mfu, "run_point", _fake_point)
  record = llm_mfu.main(["--model=tiny", "--sweep", "--sweep_batch_sizes=16,32",
                         "--sweep_remat_batch_sizes=", "--sweep_budget_s=0"])
  first, second = record["runs"]
  assert first["tokens_per_s"] == 1600.0  # the first point always runs
  assert second["skipped"] == "sweep budget of 0 s spent"


def test_bad_flags_are_rejected_by_name():
  with pytest.raises(llm_mfu.BenchFlagError, match="--steps=0"):
    llm_mfu.parse_args(["--steps=0"])
  with pytest.raises(llm_mfu.BenchFlagError, match="--sweep_batch_sizes"):
    llm_mfu.batch_list("sweep_batch_sizes", "32,x")


def test_bench_runs_where_seqio_tensorflow_and_grain_are_missing(tmp_path):
  """As on the GPU image: importing any of them fails, and none ends up imported."""
  out = tmp_path / "mfu.json"
  script = textwrap.dedent(f"""
      import sys
      FORBIDDEN = ("seqio", "tensorflow", "grain")
      for name in FORBIDDEN:
        sys.modules[name] = None  # as if not installed: import fails, find_spec gives None
      sys.path.insert(0, {str(BENCH_DIR)!r})
      import llm_mfu
      llm_mfu.main({TINY_FLAGS + ["--steps=1", f"--out={out}"]!r})
      print("LOADED", sorted(name for name, module in sys.modules.items()
                             if module is not None and name.split(".")[0] in FORBIDDEN))
  """)
  env = {**os.environ, "XLA_FLAGS": ""}  # one CPU device: compiles faster
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=env)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "LOADED []" in result.stdout
  assert json.loads(out.read_text())["tokens_per_s"] > 0
