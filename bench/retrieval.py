"""Benchmark of cluster-restricted top-k retrieval: dense vs cluster-contiguous.

Times each implementation of `explore.retrieval.RestrictedRetriever` on one batch
(median over repeats, after warm-up, with `jax.block_until_ready`), prints a
table next to the FLOP and byte floors of the restricted problem on this device
(rates measured here), checks every implementation against a numpy brute force
(exact equality on small-integer data, tolerance on float data), and writes
everything as JSON to --out.

  python3 bench/retrieval.py --size=cpu --out=/tmp/retrieval_cpu.json
  python3 bench/retrieval.py --size=gpu --out=$OUT/retrieval.json
  PYTHONUNBUFFERED=1 python3 bench/retrieval.py --gpu_plan --out=$OUT/retrieval.json

Imports neither TensorFlow nor seqio; `explore.retrieval` needs gin-config, except
with --gpu_plan, which loads only the retrieval modules (no gin, no flax): it
times the candidate pipelines of `retrieval_stages.PLAN_VARIANTS` at the GPU
shape in one go and checks each exactly against the dense path.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys

import traceback
import types

SIZES = {
    # users, items, dim, clusters, chosen per user, k
    "cpu": dict(users=512, items=100_000, dim=64, clusters=100, chosen=2, k=100),
    "gpu": dict(users=4096, items=1_000_000, dim=128, clusters=1000, chosen=2, k=100),
    "tiny": dict(users=64, items=4_000, dim=16, clusters=20, chosen=2, k=10),
}
# Full Pallas pipelines timed on a GPU: name -> pallas_options on top of the library
# defaults ("pallas" = the defaults: grid score schedule, 128-column select chunks,
# XLA-sort merge), and the alternatives measured against them.
PALLAS_VARIANTS = {
    "pallas": {},
    "pallas_loop_score": dict(score_schedule="loop", score_stages=3, score_warps=8),
    "pallas_merge_kernel": dict(merge="pallas"),
    "pallas_first_cut": dict(chunk=None),
}
DEFAULT_OPTIONS = dict(dot_precision="tf32x3", block_items=128, score_schedule="grid",
                       score_stages=1, score_warps=4, items_major=False, rows_per_block=4,
                       select_warps=4, search="interval", chunk=128, merge="sort")


def parse_args(argv):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="cpu")
  parser.add_argument("--out", default="", help="JSON output path")
  parser.add_argument("--implementations", default="",
                      help="comma list; default: dense,contiguous,sharded on CPU, "
                           "dense,contiguous + Pallas variants on GPU")
  parser.add_argument("--repeats", type=int, default=0, help="timed runs (default by size)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--dense_users", type=int, default=0,
                      help="time dense on this many users (0: all on CPU, 512 on GPU)")
  parser.add_argument("--dense_repeats", type=int, default=2)
  parser.add_argument("--check_users", type=int, default=64,
                      help="users compared with the numpy brute force")
  parser.add_argument("--cpu_devices", type=int, default=8,
                      help="emulated CPU devices (for 'sharded' on CPU)")
  parser.add_argument("--no_stages", action="store_true", help="skip the per-stage timings")
  parser.add_argument("--interpret", action="store_true",
                      help="run Pallas variants in the interpreter (CPU dry run of this script)")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--gpu_plan", action="store_true",
                      help="time the candidate pipelines (PLAN_VARIANTS) and check them "
                           "exactly; implies --size=gpu unless --size is given")
  parser.add_argument("--plan_variants", default="",
                      help="comma list of PLAN_VARIANTS (default: all, known-good first)")
  parser.add_argument("--plan_budget_s", type=float, default=170.0,
                      help="start no new plan variant after this many seconds")
  args = parser.parse_args(argv)
  if args.gpu_plan and not any(a.startswith("--size") for a in argv):
    args.size = "gpu"
  return args


def import_without_package_inits(repo_root: pathlib.Path) -> None:
  """Makes `explore.retrieval.<module>` importable without running `explore/retrieval/__init__.py`.

  That file imports the whole recommender (gin-config, flax); the retrieval
  modules need only jax and numpy, which is all the GPU image is sure to have.
  """
  for name in ("explore", "explore.retrieval"):
    if name not in sys.modules:
      package = types.ModuleType(name)
      package.__path__ = [str(repo_root.joinpath(*name.split(".")))]
      sys.modules[name] = package


ARGS = parse_args(sys.argv[1:])
if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             f" --xla_force_host_platform_device_count={ARGS.cpu_devices}")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
if ARGS.gpu_plan:
  import_without_package_inits(pathlib.Path(__file__).resolve().parents[1])

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

# pylint: disable=g-import-not-at-top,wrong-import-position
from explore.retrieval.cluster_layout import ClusterLayout
from explore.retrieval.topk_ops import brute_force_top_k
from retrieval_stages import PLAN_VARIANTS
from retrieval_stages import PallasStages
from retrieval_stages import pipelined_seconds
from retrieval_stages import print_plan
from retrieval_stages import run_gpu_plan
from retrieval_stages import sweep_kernels
from retrieval_stages import time_call
# pylint: enable=g-import-not-at-top,wrong-import-position


def uneven_assignment(rng, num_items: int, num_clusters: int) -> np.ndarray:
  """Cluster sizes within +-11% of the mean (balanced clustering, unevenly), shuffled."""
  weights = rng.uniform(0.89, 1.11, num_clusters)
  sizes = np.floor(weights / weights.sum() * num_items).astype(np.int64)
  sizes[np.argsort(-weights)[:num_items - sizes.sum()]] += 1
  return rng.permutation(np.repeat(np.arange(num_clusters), sizes)).astype(np.int32)


def skewed_choices(rng, num_users, per_user, num_clusters):
  """Zipf-like popular clusters (several tiles per cluster), repeats and -1 entries."""
  popularity = 1.0 / np.arange(1, num_clusters + 1)
  chosen = rng.choice(num_clusters, (num_users, per_user), p=popularity / popularity.sum())
  chosen[rng.random((num_users, per_user)) < 0.05] = -1
  chosen[::7, -1] = chosen[::7, 0]  # repeated cluster
  return chosen.astype(np.int32)


def seen_for(rng, layout, chosen, per_user=24):
  """Seen items: half inside the user's chosen clusters (so they matter), -1 padding."""
  seen = rng.integers(0, layout.num_items, (len(chosen), per_user)).astype(np.int32)
  for b, clusters in enumerate(chosen):
    inside = np.concatenate([layout.cluster_items(c) for c in clusters if c >= 0] or [[]])
    if len(inside):
      seen[b, :per_user // 2] = rng.choice(inside.astype(np.int32), per_user // 2)
  seen[:, -3:] = -1
  return seen


def measure_device_rates(size: str) -> dict:
  """Memory bandwidth (read + write of a big array) and float32 matmul rate, measured."""
  n = 2**28 if size == "gpu" else 2**24
  x = jnp.arange(n, dtype=jnp.float32)
  scale = jax.jit(lambda v: v * 2.0 + 1.0)
  copy_s = statistics.median(time_call(lambda: scale(x), 2, 10))
  m = 8192 if size == "gpu" else 1024
  a = jax.random.normal(jax.random.key(1), (m, m), jnp.float32)
  matmul = jax.jit(lambda p, q: jnp.dot(p, q, precision=jax.lax.Precision.HIGHEST))
  matmul_s = statistics.median(time_call(lambda: matmul(a, a), 2, 5))
  del x, a
  return {"bandwidth_bytes_per_s": 8 * n / copy_s,
          "float32_matmul_flops_per_s": 2 * m**3 / matmul_s}


def problem_floors(layout, chosen, dim, k, rates) -> dict:
  """FLOPs and bytes any restricted implementation needs for this batch, and their times."""
  sizes = layout.cluster_sizes
  flops = 0
  for row in chosen:
    distinct = np.unique(row[row >= 0])
    flops += 2 * dim * int(sizes[distinct].sum())
  touched = np.unique(chosen[chosen >= 0])
  bytes_needed = (4 * dim * int(sizes[touched].sum()) + 4 * dim * len(chosen)
                  + 4 * chosen.size + 8 * k * len(chosen))
  return {"flops": flops, "bytes": bytes_needed,
          "flop_floor_s": flops / rates["float32_matmul_flops_per_s"],
          "byte_floor_s": bytes_needed / rates["bandwidth_bytes_per_s"]}


def variant_options(name: str) -> dict:
  options = dict(DEFAULT_OPTIONS, **PALLAS_VARIANTS[name])
  if ARGS.interpret:
    options["dot_precision"] = "highest"  # the CPU interpreter has no TF32
  return options


def make_retriever(name, items, layout):
  from explore.retrieval import RestrictedRetriever  # pylint: disable=g-import-not-at-top
  if name in PALLAS_VARIANTS:
    return RestrictedRetriever(items, layout, implementation="pallas",
                               pallas_options=variant_options(name), interpret=ARGS.interpret)
  if name in PLAN_VARIANTS:  # the fused and bfloat16 candidates
    implementation, table_dtype, options = PLAN_VARIANTS[name]
    return RestrictedRetriever(items, layout, implementation=implementation,
                               pallas_options=dict(options), table_dtype=table_dtype,
                               interpret=ARGS.interpret)
  return RestrictedRetriever(items, layout, implementation=name)


class ExactProblem:
  """Small-integer data on the same layout: every score is exact, so results must match bit
  for bit. Users choose Zipf-popular clusters (several tiles per cluster), with repeats, -1
  entries and seen items; the first `num_check` users are compared with the brute force."""

  def __init__(self, rng, layout, shape, num_check):
    dim, users = shape["dim"], shape["users"]
    self.items = rng.integers(-3, 4, (layout.num_items, dim), dtype=np.int8).astype(np.float32)
    self.users = rng.integers(-3, 4, (users, dim), dtype=np.int8).astype(np.float32)
    self.chosen = skewed_choices(rng, users, shape["chosen"], layout.num_clusters)
    seen = seen_for(rng, layout, self.chosen[:num_check])
    self.seen = np.concatenate([seen, np.full((users - num_check, seen.shape[1]), -1, np.int32)])
    self.num_check, self.k, self.layout = num_check, shape["k"], layout
    self.references = {
        label: brute_force_top_k(self.users[:num_check], self.items, self.chosen[:num_check],
                                 layout.item_to_cluster, self.k,
                                 None if seen_arg is None else seen_arg[:num_check])
        for label, seen_arg in (("no_seen", None), ("seen", self.seen))}

  def check(self, name) -> dict:
    retriever = make_retriever(name, self.items, self.layout)
    n = self.num_check if name in ("dense", "sharded") else len(self.users)
    result = {}
    for label, seen_arg in (("no_seen", None), ("seen", self.seen)):
      scores, ids = retriever.top_k(self.users[:n], self.chosen[:n], self.k,
                                    None if seen_arg is None else seen_arg[:n])
      ref_scores, ref_ids = self.references[label]
      scores = np.asarray(scores)[:self.num_check]
      ids = np.asarray(ids)[:self.num_check]
      result[label] = bool(np.array_equal(ids, ref_ids) and np.array_equal(scores, ref_scores))
    return result


def check_float(scores, ids, reference) -> dict:
  """Float data: compare with a float64 brute force (scores to tolerance, ids where separated)."""
  ref_scores, ref_ids = reference
  n = len(ref_ids)
  scores, ids = np.asarray(scores)[:n], np.asarray(ids)[:n]
  finite = np.isfinite(ref_scores)
  max_err = float(np.max(np.abs(scores[finite] - ref_scores[finite]))) if finite.any() else 0.0
  return {"ids_equal_fraction": float(np.mean(ids == ref_ids)),
          "max_abs_score_error": max_err,
          "padding_agrees": bool(np.array_equal(np.isfinite(scores), finite))}


def print_table(record) -> None:
  rows, floors, rates, shape = (record["results"], record["floors"], record["rates"],
                                record["shape"])
  dense_full = next((r.get("per_full_batch_s") for r in rows
                     if r["implementation"] == "dense" and "per_full_batch_s" in r), None)
  floor_s = max(floors["flop_floor_s"], floors["byte_floor_s"])
  print()
  print(f"restricted top-k, {record['size']} shape {shape}, {record['device']}")
  print(f"floors for this batch: FLOP {floors['flop_floor_s'] * 1e3:.3f} ms "
        f"({floors['flops'] / 1e9:.2f} GFLOP at {rates['float32_matmul_flops_per_s'] / 1e12:.1f} "
        f"TFLOP/s f32), bytes {floors['byte_floor_s'] * 1e3:.3f} ms "
        f"({floors['bytes'] / 1e6:.0f} MB at {rates['bandwidth_bytes_per_s'] / 1e9:.0f} GB/s)")
  header = (f"{'implementation':<20} {'users':>6} {'ms/batch':>10} {'queued ms':>10} "
            f"{'full batch ms':>14} {'x floor':>8} {'vs dense':>9} {'ids=f64':>8} {'check':>6}")
  print(header)
  print("-" * len(header))
  for r in rows:
    if "median_s" not in r:
      print(f"{r['implementation']:<20} {r.get('skipped') or r.get('error', '')[:100]}")
      continue
    speedup = f"{dense_full / r['per_full_batch_s']:.1f}x" if dense_full else "-"
    print(f"{r['implementation']:<20} {r['timed_users']:>6} {r['median_s'] * 1e3:>10.3f} "
          f"{r.get('queued_s', float('nan')) * 1e3:>10.3f} "
          f"{r['per_full_batch_s'] * 1e3:>14.3f} {r['per_full_batch_s'] / floor_s:>8.1f} "
          f"{speedup:>9} {r['float_check']['ids_equal_fraction']:>8.4f} {r['check']:>6}")
  for name, value in record.get("stages", {}).items():
    if "median_s" in value:
      print(f"  stage {name:<26} {value['median_s'] * 1e3:8.3f} ms per call, "
            f"{value['queued_s'] * 1e3:8.3f} ms queued")


def main() -> None:
  args = ARGS
  shape = SIZES[args.size]
  backend = jax.default_backend()
  on_gpu = backend == "gpu"
  if args.implementations:
    names = args.implementations.split(",")
  elif on_gpu:
    # Known-good paths first: results are saved as they come, should a new kernel fail.
    names = ["contiguous", "pallas_first_cut", "pallas", "pallas_loop_score",
             "pallas_merge_kernel", "dense"]
  else:
    names = ["dense", "contiguous", "sharded"]
  repeats = args.repeats or (30 if on_gpu else 5)
  dense_users = args.dense_users or (512 if on_gpu else shape["users"])
  rng = np.random.default_rng(args.seed)
  print(f"jax {jax.__version__} backend={backend} devices={jax.devices()}", flush=True)
  print(f"shape: {shape}", flush=True)

  layout = ClusterLayout.build(uneven_assignment(rng, shape["items"], shape["clusters"]),
                               shape["clusters"])
  items = rng.standard_normal((shape["items"], shape["dim"]), dtype=np.float32)
  users = rng.standard_normal((shape["users"], shape["dim"]), dtype=np.float32)
  chosen = rng.integers(0, shape["clusters"], (shape["users"], shape["chosen"]),
                        dtype=np.int32)
  rates = measure_device_rates(args.size)
  floors = problem_floors(layout, chosen, shape["dim"], shape["k"], rates)
  print(f"device rates: {rates}", flush=True)
  print(f"floors: {floors}", flush=True)
  num_check = min(args.check_users, dense_users)
  float_reference = brute_force_top_k(users[:num_check], items, chosen[:num_check],
                                      layout.item_to_cluster, shape["k"])
  exact = ExactProblem(rng, layout, shape, num_check)
  record = {
      "date": datetime.date.today().isoformat(), "command": " ".join(sys.argv),
      "jax": jax.__version__, "backend": backend,
      "device": jax.devices()[0].device_kind, "num_devices": len(jax.devices()),
      "size": args.size, "shape": shape, "rates": rates, "floors": floors,
      "cluster_sizes": {"min": int(layout.cluster_sizes.min()),
                        "max": int(layout.cluster_sizes.max())},
      "check_users": num_check, "results": [],
  }

  def save():
    if args.out:
      pathlib.Path(args.out).parent.mkdir(parents=True, exist_ok=True)
      pathlib.Path(args.out).write_text(json.dumps(record, indent=2) + "\n")

  if args.gpu_plan:
    plan_names = args.plan_variants.split(",") if args.plan_variants else list(PLAN_VARIANTS)
    unknown = [n for n in plan_names if n not in PLAN_VARIANTS]
    if unknown:
      raise SystemExit(f"--plan_variants: unknown {unknown}; known: {list(PLAN_VARIANTS)}")
    problem = dict(items=items, users=users, chosen=chosen, layout=layout, k=shape["k"],
                   floors=floors, exact=exact, float_reference=float_reference)
    run_gpu_plan(problem, record, save, names=plan_names, interpret=args.interpret,
                 warmup=args.warmup, repeats=repeats, budget_s=args.plan_budget_s)
    print_plan(record["gpu_plan"])
    if args.out:
      print(f"wrote {args.out}")
    return

  for name in names:
    row = {"implementation": name}
    try:
      if name == "sharded" and len(jax.devices()) == 1:
        row["skipped"] = "one device: sharded is dense on a single shard"
        record["results"].append(row)
        continue
      retriever = make_retriever(name, items, layout)
      slow = name in ("dense", "sharded")
      timed_users = dense_users if slow else shape["users"]
      u, ch = jnp.asarray(users[:timed_users]), jnp.asarray(chosen[:timed_users])
      reps = args.dense_repeats if (slow and on_gpu) else repeats
      def fn(retriever=retriever, u=u, ch=ch):
        return retriever.top_k(u, ch, shape["k"], validate=False)
      times = time_call(fn, 1 if reps <= 2 else args.warmup, reps)
      row.update(timed_users=timed_users, repeats=reps,
                 median_s=statistics.median(times), min_s=min(times),
                 per_full_batch_s=statistics.median(times) * shape["users"] / timed_users)
      if not slow:
        row["queued_s"] = pipelined_seconds(fn)
      scores, ids = fn()
      row["float_check"] = check_float(scores, ids, float_reference)
      del retriever, scores, ids
      row["exact_check"] = exact.check(name)
      row["check"] = "PASS" if all(row["exact_check"].values()) else "FAIL"
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = f"{type(e).__name__}: {e}"[:2000]
      row["check"] = "ERROR"
      traceback.print_exc()
    record["results"].append(row)
    print(json.dumps(row), flush=True)
    save()

  pallas_names = sorted((n for n in names if n.startswith("pallas")), key=len)
  if (on_gpu or args.interpret) and not args.no_stages and pallas_names:
    try:
      stages = PallasStages(items, layout, users, chosen, shape["k"],
                            variant_options(pallas_names[0]), interpret=args.interpret)
      sweep_kernels(stages, args.warmup, repeats, record, save)
    except Exception as e:  # pylint: disable=broad-except
      record["stages_error"] = f"{type(e).__name__}: {e}"[:2000]
      traceback.print_exc()
  save()
  print_table(record)
  if args.out:
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
