"""Decoder training throughput and MFU: the project's real Trainer on random tokens.

Trains the decoder preset `--model` (configs/models/<model>.gin) with the
project's `Trainer` (sharded init, jitted train step with donated state, AdamW
with clipping) on two fixed random token batches, so input costs nothing.
`Trainer.train` runs once to compile and warm up, then again for `--steps`
steps in one logging window: the Trainer waits for the window's last step, so
its time is the steady-state step time of a real run (host dispatch included,
checkpointing and logging excluded). It prints a table (device, command,
tokens/s, step time, model TFLOP/s per device, MFU against the spec peak and
against a measured matmul peak, HBM) and writes JSON to --out.

FLOPs follow MaxText's `calculate_tflops_training_per_device` (see
`maxtext_training_flops`); `DecoderConfig.flops_per_example` is checked
against it in every run.

  python3 bench/llm_mfu.py --model=tiny --out=/tmp/llm_mfu_tiny.json           # CPU
  python3 bench/llm_mfu.py --model=300m --sweep --out=$OUT/llm_mfu_300m.json   # GPU

`--sweep` tries several batch sizes (and remat) within --sweep_budget_s and
reports the fastest. Imports neither TensorFlow, seqio nor grain; needs
gin-config (the model presets are gin files).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import itertools
import json
import pathlib
import shlex
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx
import gin
import jax
import jax.numpy as jnp
import numpy as np

from explore import gin_config
from explore import partitioning
from explore.llm import decoder_task
from explore.llm.decoder_config import DecoderConfig
from explore.train import metrics as metrics_lib
from explore.train.trainer import Trainer
from explore.train.trainer import TrainerConfig
# pylint: enable=g-import-not-at-top,wrong-import-position

MODELS = ("tiny", "100m", "300m", "1b", "2b")
# Default (sequence length, global batch) per preset: the quickstart's rows for tiny.
MODEL_DEFAULTS = {"tiny": (128, 64), "100m": (256, 64), "300m": (256, 64), "1b": (256, 32),
                  "2b": (256, 16)}
DTYPES = ("float32", "bfloat16", "float16")
# Best large bf16 matmul measured on the lent machines (8192^3, random data):
# H100 769-798 TFLOP/s, H200 788. Matched as a substring of device_kind, in order.
MEASURED_MATMUL_PEAK_BY_DEVICE_KIND = (("H200", 790e12), ("H100", 800e12))
# Each point compiles the train step once (tens of seconds on an H100 at 300M),
# so the default sweep is short; larger batches follow smaller ones
# so that one running out of memory skips the rest.
SWEEP_BATCH_SIZES = "64,128,256"
SWEEP_REMAT_BATCH_SIZES = "256"


class BenchFlagError(ValueError):
  """A flag value the benchmark cannot use."""


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--model", choices=MODELS, default="tiny",
                      help="decoder preset: configs/models/<model>.gin")
  parser.add_argument("--seq_len", type=int, default=0,
                      help="tokens per row (0: 128 for tiny, 256 otherwise)")
  parser.add_argument("--batch_size", type=int, default=0,
                      help="global rows per step (0: the model's default)")
  parser.add_argument("--grad_accum_steps", type=int, default=1)
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup_steps", type=int, default=3,
                      help="untimed steps (the first one compiles)")
  parser.add_argument("--dtype", choices=("auto",) + DTYPES, default="auto",
                      help="compute dtype (auto: bfloat16 on accelerators, float32 on CPU)")
  parser.add_argument("--param_dtype", choices=DTYPES, default="float32",
                      help="stored parameters and optimizer state (master weights)")
  parser.add_argument("--remat", action="store_true",
                      help="recompute each block's activations in the backward pass")
  parser.add_argument("--packed", action="store_true",
                      help="two packed segments per row (segment-aware mask) instead of one")
  parser.add_argument("--gin_bindings", action="append", default=[],
                      help="extra bindings after the preset, e.g. 'DecoderConfig.num_layers = 4'")
  parser.add_argument("--measured_peak_tflops", type=float, default=0.0,
                      help="measured matmul peak per device (0: 800 on H100, 790 on H200)")
  parser.add_argument("--measure_peak", action="store_true",
                      help="measure the peak with a large matmul in the compute dtype")
  parser.add_argument("--sweep", action="store_true",
                      help="try --sweep_batch_sizes (and remat) and report the fastest")
  parser.add_argument("--sweep_batch_sizes", default=SWEEP_BATCH_SIZES)
  parser.add_argument("--sweep_remat_batch_sizes", default=SWEEP_REMAT_BATCH_SIZES,
                      help="batch sizes tried with remat ('' for none)")
  parser.add_argument("--sweep_budget_s", type=float, default=180.0,
                      help="no new sweep point starts after this many seconds")
  parser.add_argument("--num_devices", type=int, default=0,
                      help="data-parallel over the first N devices (0: all)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="", help="JSON output path")
  args = parser.parse_args(argv)
  for name, low in (("steps", 1), ("warmup_steps", 1), ("grad_accum_steps", 1),
                    ("seq_len", 0), ("batch_size", 0), ("num_devices", 0)):
    if getattr(args, name) < low:
      raise BenchFlagError(f"--{name}={getattr(args, name)} must be >= {low}")
  if args.seq_len == 1:
    raise BenchFlagError("--seq_len=1 is too short for next-token training; use >= 2")
  return args


def batch_list(flag: str, text: str) -> list[int]:
  """'32,64' -> [32, 64]; a bad entry raises BenchFlagError naming the flag."""
  try:
    sizes = [int(x) for x in text.split(",") if x.strip()]
  except ValueError:
    raise BenchFlagError(f"--{flag}={text!r} must be a comma list of integers") from None
  if any(s < 1 for s in sizes):
    raise BenchFlagError(f"--{flag}={text!r} has a batch size < 1")
  return sizes


# FLOPs -------------------------------------------------------------------------


def maxtext_training_flops(config: DecoderConfig, seq_len: int) -> dict[str, float]:
  """Training FLOPs of one sequence as MaxText's `calculate_tflops_training_per_device`.

  Per layer, forward, for T tokens (a [m, k] x [k, n] matmul is 2mkn FLOPs):
    ffn         2*T*D*F*2 (gate and up) + 2*T*F*D (down)
    qkv         2*T*D*(N + 2K)*H
    projection  2*T*N*H*D
    attention   4*T^2*N*H (QK^T and AV), halved for the causal mask
  plus the unembedding 2*T*D*V once (the embedding lookup is free); training is
  3 x forward. Norms, softmax, rotary positions and the optimizer are not counted.
  """
  t, d, f, v = seq_len, config.d_model, config.mlp_dim, config.vocab_size
  n, k, h, layers = config.num_heads, config.num_kv_heads, config.head_dim, config.num_layers
  ffn = 2 * t * d * f * 2 + 2 * t * f * d
  qkv = 2 * t * d * (n + 2 * k) * h
  projection = 2 * t * n * h * d
  causal_attention = 4 * t * t * n * h / 2
  unembed = 2 * t * d * v
  weights = 3 * ((ffn + qkv + projection) * layers + unembed)
  attention = 3 * causal_attention * layers
  return {"learnable_weights": float(weights), "attention": float(attention),
          "total": float(weights + attention)}


# Setup -------------------------------------------------------------------------


def load_model_config(model: str, bindings: list[str], **overrides) -> DecoderConfig:
  """The preset's DecoderConfig (+ gin bindings), with `overrides` replaced; gin is left clean."""
  gin.clear_config()
  try:
    gin_config.parse_gin([f"models/{model}.gin"], bindings)
    config = DecoderConfig()
  finally:
    gin.clear_config()
  return dataclasses.replace(config, **overrides)


def random_batch(rng: np.random.Generator, batch_size: int, seq_len: int, vocab_size: int,
                 packed: bool) -> dict[str, np.ndarray]:
  """Uniform random tokens in the decoder task's features (two segments per row if packed)."""
  tokens = rng.integers(0, vocab_size, (batch_size, seq_len + 1), dtype=np.int32)  # [B, T + 1]
  batch = {decoder_task.INPUTS: tokens[:, :-1], decoder_task.TARGETS: tokens[:, 1:],
           decoder_task.WEIGHTS: np.ones((batch_size, seq_len), np.float32)}
  if packed:
    split = seq_len // 2
    steps = np.arange(seq_len, dtype=np.int32)  # [T]
    segments = np.where(steps < split, 1, 2).astype(np.int32)  # [T]
    positions = np.where(steps < split, steps, steps - split).astype(np.int32)  # [T]
    batch[decoder_task.SEGMENT_IDS] = np.broadcast_to(segments, (batch_size, seq_len)).copy()
    batch[decoder_task.POSITIONS] = np.broadcast_to(positions, (batch_size, seq_len)).copy()
  return batch


def default_measured_peak(device_kind: str) -> float | None:
  """The best large bf16 matmul seen on this device kind, None where unknown."""
  for name, flops in MEASURED_MATMUL_PEAK_BY_DEVICE_KIND:
    if name.lower() in device_kind.lower():
      return flops
  return None


def measure_matmul_peak(dtype: str, size: int, repeats: int = 20) -> float:
  """FLOP/s of back-to-back [size, size] x [size, size] matmuls in `dtype` on one device."""
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.random.normal(key, (size, size), jnp.float32).astype(dtype) for key in keys)
  matmul = jax.jit(jnp.matmul)
  jax.block_until_ready(matmul(a, b))
  times = []
  for _ in range(3):
    start = time.perf_counter()
    outs = [matmul(a, b) for _ in range(repeats)]
    jax.block_until_ready(outs)
    times.append((time.perf_counter() - start) / repeats)
  return 2.0 * size ** 3 / min(times)


def memory_stats(device) -> dict[str, int]:
  """Peak and limit of the device allocator (GPU/TPU); empty where not reported (CPU)."""
  stats = device.memory_stats() or {}
  return {key: int(stats[key]) for key in ("peak_bytes_in_use", "bytes_limit", "bytes_in_use")
          if key in stats}


# One operating point -------------------------------------------------------------


def compilation_seconds(model_dir: pathlib.Path) -> float | None:
  """The train step's compile time that the Trainer logged to train/metrics.jsonl."""
  path = model_dir / "train" / metrics_lib.MetricWriter.JSONL
  if not path.exists():
    return None
  for line in path.read_text().splitlines():
    record = json.loads(line)
    if "timing/compilation_seconds" in record:
      return float(record["timing/compilation_seconds"])
  return None


def run_point(config: DecoderConfig, batch_size: int, seq_len: int, args: argparse.Namespace,
              peaks: dict, devices: list) -> dict:
  """Trains `config` with the project's Trainer at one (batch size, remat) point, timed.

  `Trainer.train` runs twice: to `warmup_steps` (compilation, then warm-up
  steps), then `steps` more in one logging window, whose time (waited on at
  its end) is the measurement. No checkpoint is written.
  """
  task = decoder_task.DecoderTask(config=config, sequence_length=seq_len, packed=args.packed)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(), devices)
  total_steps = args.warmup_steps + args.steps
  trainer_config = TrainerConfig(
      train_steps=total_steps, batch_size=batch_size, grad_accum_steps=args.grad_accum_steps,
      eval_every=0, checkpoint_every=total_steps + 1, checkpoint_at_end=False,
      keep_checkpoints=1, log_every=total_steps,
      peak_flops_per_device=peaks["spec"], measured_peak_flops_per_device=peaks["measured"],
      async_checkpointing=False)
  rng = np.random.default_rng(args.seed)
  # Two fixed host batches in turn: the input pipeline costs nothing.
  data = itertools.cycle([random_batch(rng, batch_size, seq_len, config.vocab_size, args.packed)
                          for _ in range(2)])
  with tempfile.TemporaryDirectory(prefix="llm_mfu_") as tmp:  # logs only, no checkpoints
    model_dir = pathlib.Path(tmp)
    trainer = Trainer(task, task.model_fn(args.seed), model_dir, mesh, trainer_config)
    trainer.config.train_steps = args.warmup_steps  # first call: compile + warm-up
    trainer.train(data)
    compile_s = compilation_seconds(model_dir)
    trainer.config.train_steps = total_steps  # second call: the timed window
    result = trainer.train(data)
    num_params = sum(x.size for x in jax.tree.leaves(nnx.state(trainer.model, nnx.Param)))
    del trainer
  timed = result.history[-1]

  step_s = timed["timing/seconds_per_step"]
  tokens_per_s = batch_size * seq_len / step_s
  flops_per_step = batch_size * maxtext_training_flops(config, seq_len)["total"]
  per_device = flops_per_step / step_s / mesh.size
  spec, measured = peaks["spec"], peaks["measured"]
  return {
      "batch_size": batch_size, "remat": config.remat, "grad_accum_steps": args.grad_accum_steps,
      "params_counted": num_params, "compile_s": compile_s, "steps": args.steps,
      "warmup_steps": args.warmup_steps, "step_time_s": step_s, "tokens_per_s": tokens_per_s,
      "tokens_per_s_per_device": tokens_per_s / mesh.size,
      "model_flops_per_step": flops_per_step,
      "model_tflops_per_s_per_device": per_device / 1e12,
      "mfu": per_device / spec if spec else None,
      "mfu_measured_peak": per_device / measured if measured else None,
      "trainer_logged": {k: v for k, v in timed.items() if k.startswith("timing/")
                         or k.startswith("mfu")},
      "final_loss": timed.get("loss"), "stopped_reason": result.stopped_reason,
      "hbm": memory_stats(devices[0]),
  }


def sweep_points(args: argparse.Namespace) -> list[tuple[int, bool]]:
  points = [(b, False) for b in batch_list("sweep_batch_sizes", args.sweep_batch_sizes)]
  points += [(b, True) for b in batch_list("sweep_remat_batch_sizes",
                                           args.sweep_remat_batch_sizes)]
  if not points:
    raise BenchFlagError("--sweep needs at least one batch size in --sweep_batch_sizes or"
                         " --sweep_remat_batch_sizes")
  return points


def run_sweep(config: DecoderConfig, seq_len: int, args: argparse.Namespace,
              peaks: dict, devices: list) -> list[dict]:
  """Every sweep point in order (the first always; later ones while the budget lasts).

  A point that fails (e.g. out of memory) is recorded with its error, and larger
  batches with the same remat setting are then skipped.
  """
  start, runs, failed_at = time.perf_counter(), [], {}
  for batch_size, remat in sweep_points(args):
    point = {"batch_size": batch_size, "remat": remat}
    if remat in failed_at and batch_size >= failed_at[remat]:
      runs.append({**point, "skipped": f"batch {failed_at[remat]} already failed"})
    elif runs and time.perf_counter() - start > args.sweep_budget_s:
      runs.append({**point, "skipped": f"sweep budget of {args.sweep_budget_s:.0f} s spent"})
    else:
      try:
        runs.append(run_point(dataclasses.replace(config, remat=remat), batch_size, seq_len,
                              args, peaks, devices))
      except Exception as e:  # pylint: disable=broad-except
        failed_at[remat] = min(batch_size, failed_at.get(remat, batch_size))
        message = (str(e).strip().splitlines() or [type(e).__name__])[0]
        runs.append({**point, "error": f"{type(e).__name__}: {message[:300]}"})
      gc.collect()  # release a failed point's buffers before the next one
    print(json.dumps(runs[-1]), flush=True)
  return runs


# Report ----------------------------------------------------------------------------


def _pct(value: float | None) -> str:
  return "n/a" if value is None else f"{value:.1%}"


def print_table(record: dict) -> None:
  flops = record["flops_per_sequence"]
  print(f"\nDecoder training throughput: model={record['model']}"
        f" ({record['params'] / 1e6:.1f}M params), seq_len={record['seq_len']},"
        f" {record['dtype']} compute / {record['param_dtype']} params"
        f"{', packed' if record['packed'] else ''}")
  print(f"device: {record['device_kind']} x{record['num_devices']} ({record['platform']}),"
        f" jax {record['jax_version']}, {record['date']}")
  print(f"command: {record['command']}")
  agree = ("agrees" if record["flops_agree"]
           else f"DISAGREES: {record['flops_decoder_config']:.6g}")
  print(f"FLOPs per sequence (MaxText counting): {flops['total']:.4g}, attention"
        f" {flops['attention'] / flops['total']:.1%}; DecoderConfig.flops_per_example {agree}")
  spec = record["peak_flops_spec"]
  measured = record["peak_flops_measured"]
  spec_col = f"MFU (spec {spec / 1e12:.3g})" if spec else "MFU (spec)"
  meas_col = (f"MFU (measured {measured / 1e12:.3g}, {record['peak_flops_measured_source']})"
              if measured else "MFU (measured)")
  header = ["batch", "remat", "step ms", "tokens/s", "TFLOP/s/dev", spec_col, meas_col,
            "HBM peak GiB", "compile s"]
  print("\n| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for run in record["runs"]:
    head = [str(run["batch_size"]), "on" if run["remat"] else "off"]
    if "step_time_s" not in run:
      print("| " + " | ".join(head + [run.get("error") or run.get("skipped", "")]
                              + [""] * (len(header) - 3)) + " |")
      continue
    hbm = run["hbm"].get("peak_bytes_in_use")
    print("| " + " | ".join(head + [
        f"{run['step_time_s'] * 1e3:.1f}", f"{run['tokens_per_s']:,.0f}",
        f"{run['model_tflops_per_s_per_device']:.4g}", _pct(run["mfu"]),
        _pct(run["mfu_measured_peak"]), "n/a" if hbm is None else f"{hbm / 2**30:.1f}",
        f"{run['compile_s']:.1f}"]) + " |")
  if record.get("best"):
    best = record["best"]
    print(f"\nbest: batch {best['batch_size']}, remat {'on' if best['remat'] else 'off'}:"
          f" {best['tokens_per_s']:,.0f} tokens/s, MFU {_pct(best['mfu'])}"
          f" (measured peak: {_pct(best['mfu_measured_peak'])})")


def main(argv: list[str]) -> dict:
  """Runs the benchmark; returns the record also written to --out."""
  args = parse_args(argv)
  devices = jax.devices()
  if args.num_devices > len(devices):
    raise BenchFlagError(f"--num_devices={args.num_devices} but only {len(devices)}"
                         f" {devices[0].platform} devices are visible")
  devices = devices[:args.num_devices or len(devices)]
  device = devices[0]
  default_seq, default_batch = MODEL_DEFAULTS[args.model]
  seq_len = args.seq_len or default_seq
  batch_size = args.batch_size or default_batch
  dtype = args.dtype if args.dtype != "auto" else (
      "float32" if device.platform == "cpu" else "bfloat16")
  config = load_model_config(args.model, args.gin_bindings, dtype=dtype,
                             param_dtype=args.param_dtype, remat=args.remat)
  flops = maxtext_training_flops(config, seq_len)
  flops_config = config.flops_per_example(seq_len)

  spec = metrics_lib.peak_flops_for_device_kind(device.device_kind)
  if args.measure_peak:
    size = 2048 if device.platform == "cpu" else 8192
    measured, source = measure_matmul_peak(dtype, size), f"{size}^3 {dtype} matmul, this run"
  elif args.measured_peak_tflops:
    measured, source = args.measured_peak_tflops * 1e12, "--measured_peak_tflops"
  else:
    measured = default_measured_peak(device.device_kind)
    source = "best 8192^3 bf16 matmul seen on this kind" if measured else None
  peaks = {"spec": spec, "measured": measured}

  record = {
      "date": datetime.date.today().isoformat(),
      "command": "python3 bench/llm_mfu.py " + " ".join(shlex.quote(a) for a in argv),
      "device_kind": device.device_kind, "platform": device.platform,
      "num_devices": len(devices), "jax_version": jax.__version__,
      "model": args.model, "model_config": dataclasses.asdict(config),
      "params": config.num_params(), "seq_len": seq_len, "dtype": dtype,
      "param_dtype": args.param_dtype, "packed": args.packed,
      "flops_per_sequence": flops, "flops_decoder_config": flops_config,
      "flops_agree": bool(np.isclose(flops["total"], flops_config, rtol=1e-9)),
      "peak_flops_spec": spec, "peak_flops_measured": measured,
      "peak_flops_measured_source": source,
  }
  if args.sweep:
    record["runs"] = run_sweep(config, seq_len, args, peaks, devices)
  else:
    record["runs"] = [run_point(config, batch_size, seq_len, args, peaks, devices)]
  done = [run for run in record["runs"] if "tokens_per_s" in run]
  record["best"] = max(done, key=lambda run: run["tokens_per_s"]) if done else None
  if record["best"]:
    record.update({key: record["best"][key] for key in (
        "batch_size", "remat", "step_time_s", "tokens_per_s", "model_tflops_per_s_per_device",
        "mfu", "mfu_measured_peak", "hbm")})
  print_table(record)
  if args.out:
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out}")
  return record


if __name__ == "__main__":
  main(sys.argv[1:])
