"""Timing helpers and the Pallas path cut into steps, for bench/retrieval.py.

Each step of `explore.retrieval.pallas_topk.pallas_top_k` is jitted alone on the
benchmark batch, so its time can be read next to XLA's alternative; the sweeps
time each kernel's options and check their outputs against the default's.

Nothing here imports gin: `--gpu_plan` (`run_gpu_plan`) runs on a device
image without it and reaches these helpers through the bare package modules.
"""

from __future__ import annotations

import re
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from explore.retrieval import contiguous_retrieval


def time_call(fn, warmup: int, repeats: int) -> list[float]:
  """Seconds per call, after warm-up (compilation included in the first warm-up)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return times


def pipelined_seconds(fn, calls: int = 20) -> float:
  """Mean seconds per call when `calls` calls are queued before one wait (no host gaps)."""
  jax.block_until_ready(fn())
  start = time.perf_counter()
  outs = [fn() for _ in range(calls)]
  jax.block_until_ready(outs)
  return (time.perf_counter() - start) / calls


def dispatch_seconds(fn, calls: int = 10) -> float:
  """Median seconds until a call returns (before its result is ready): host-side cost."""
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - start)
    jax.block_until_ready(out)
  return statistics.median(times)


def timed(fn, warmup, repeats) -> dict:
  """Per-call median (host waits each call), queued mean (device-bound) and dispatch seconds."""
  times = time_call(fn, warmup, repeats)
  return {"median_s": statistics.median(times), "min_s": min(times),
          "queued_s": pipelined_seconds(fn), "dispatch_s": dispatch_seconds(fn)}


# Top-level HLO instructions that launch nothing (or only a copy-free view).
_NOT_KERNELS = ("parameter", "constant", "tuple", "get-tuple-element", "bitcast",
                "after-all", "partition-id", "replica-id")


def count_launches(compiled_hlo: str) -> dict:
  """Top-level instructions of the compiled ENTRY computation, by opcode.

  On a GPU each one is (about) one kernel launch (fusions, custom calls such as
  Triton kernels, sorts, copies). On CPU it is the same count for the XLA parts
  of a program, a proxy; an interpreted Pallas kernel shows up as one `while`.
  """
  entry = compiled_hlo[compiled_hlo.index("\nENTRY "):]
  body = entry[entry.index("{") + 1:entry.index("\n}")]
  counts: dict[str, int] = {}
  for line in body.splitlines():
    match = re.search(r"=\s*\S+\s+([a-z][a-z0-9-]*)\(", line)
    if match and match.group(1) not in _NOT_KERNELS:
      counts[match.group(1)] = counts.get(match.group(1), 0) + 1
  return {"total": sum(counts.values()), "by_opcode": counts}


class PallasStages:
  """The Pallas path cut into its steps, on the timed batch, to see where time goes."""

  def __init__(self, items, layout, users, chosen, k, options, interpret=False):
    from explore.retrieval import RestrictedRetriever  # pylint: disable=g-import-not-at-top
    from explore.retrieval import pallas_score  # pylint: disable=g-import-not-at-top
    from explore.retrieval import pallas_select  # pylint: disable=g-import-not-at-top
    self.pallas_score, self.pallas_select = pallas_score, pallas_select
    self.interpret = interpret
    self.options = options
    retriever = RestrictedRetriever(items, layout, implementation="pallas",
                                    pallas_options=dict(options), interpret=self.interpret)
    self.laid, self.order, _, offsets = retriever._arrays  # pylint: disable=protected-access
    self.width = self.laid.shape[0] - layout.num_items
    self.kk = min(k, self.width)
    self.k, self.num_items = k, layout.num_items
    per_tile = self.per_tile = 16
    users, chosen = jnp.asarray(users), jnp.asarray(chosen)

    @jax.jit
    def group(users, chosen):
      groups, start, size = contiguous_retrieval.plan_tiles(chosen, offsets, layout.num_items,
                                                            per_tile)
      return groups, start, size, users[jnp.maximum(groups.tile_user, 0)]

    self.group = lambda: group(users, chosen)
    self.groups, self.start, self.size, self.tile_users = self.group()
    self.used = (self.groups.tile_user >= 0).astype(jnp.int32)
    self.rows = self.groups.pair_row.reshape(-1)
    o = options
    self.scores = self.score_fn(o["score_schedule"], o["score_stages"], o["score_warps"],
                                o["items_major"], o["block_items"])()
    self.selected = self.select_fn(o["search"], o["rows_per_block"], o["select_warps"],
                                   o["chunk"])()
    num_users, per_user = self.groups.pair_row.shape
    kk, order = self.kk, self.order

    @jax.jit
    def candidates(values, columns, pair_row, start):
      from explore.retrieval import topk_ops  # pylint: disable=g-import-not-at-top
      cand = jnp.where((pair_row >= 0)[:, :, None], values.reshape(num_users, per_user, kk),
                       -jnp.inf)
      first = start[jnp.maximum(pair_row, 0) // per_tile]
      ids = topk_ops.mark_invalid(cand, order[first[:, :, None]
                                              + columns.reshape(num_users, per_user, kk)])
      return cand.reshape(num_users, -1), ids.reshape(num_users, -1)

    self.candidates = lambda: candidates(*self.selected, self.groups.pair_row, self.start)
    self.cand_scores, self.cand_ids = self.candidates()

  def score_fn(self, schedule, stages, warps, items_major, block_items=128):
    dot = self.pallas_score.DOT_PRECISIONS[self.options["dot_precision"]]
    score = jax.jit(lambda s, z, u, m: self.pallas_score.score_tiles(
        s, z, u, m, self.laid, width=self.width, block_items=block_items, precision=dot,
        num_warps=warps, schedule=schedule, num_stages=stages, items_major=items_major,
        interpret=self.interpret))
    return lambda: score(self.start, self.size, self.tile_users, self.used)

  def select_fn(self, search, rows_per_block, warps, chunk):
    width, kk = self.width, self.kk
    select = jax.jit(lambda sc, r: self.pallas_select.select_rows(
        sc.reshape(-1, width), r, k=kk, rows_per_block=rows_per_block, num_warps=warps,
        search=search, chunk=chunk, interpret=self.interpret))
    return lambda: select(self.scores, self.rows)

  def merge_fn(self, how, chunk=32, warps=4):
    from explore.retrieval import topk_ops  # pylint: disable=g-import-not-at-top
    if how == "sort":
      merge = jax.jit(lambda s, i: topk_ops.merge_candidates(s, i, self.k))
    else:
      merge = jax.jit(lambda s, i: self.pallas_select.merge_rows(
          s, i, self.k, num_items=self.num_items, chunk=chunk, num_warps=warps,
          interpret=self.interpret))
    return lambda: merge(self.cand_scores, self.cand_ids)

  def steps(self) -> dict:
    width, kk = self.width, self.kk
    xla_top_k = jax.jit(lambda sc, r: jax.lax.top_k(
        sc.reshape(-1, width)[jnp.maximum(r, 0)], kk))
    o = self.options
    return {
        "group_pairs+gather_users": self.group,
        "score_kernel": self.score_fn(o["score_schedule"], o["score_stages"], o["score_warps"],
                                      o["items_major"], o["block_items"]),
        "select_kernel": self.select_fn(o["search"], o["rows_per_block"], o["select_warps"],
                                        o["chunk"]),
        "candidate_ids": self.candidates,
        "merge_kernel": self.merge_fn("pallas"),
        "merge_xla_sort": self.merge_fn("sort"),
        "xla_top_k_on_pair_rows": lambda: xla_top_k(self.scores, self.rows),
    }


def sweep_kernels(stages: PallasStages, warmup, repeats, record, save) -> None:
  """Times variants of each kernel alone; checks each against the default's output."""
  record["stages"] = {}
  for name, fn in stages.steps().items():
    try:
      record["stages"][name] = timed(fn, warmup, repeats)
    except Exception as e:  # pylint: disable=broad-except
      record["stages"][name] = {"error": f"{type(e).__name__}: {e}"[:500]}
    print(f"stage {name}: {record['stages'][name]}", flush=True)
    save()

  def sweep(key, configs, make, compare):
    record[key] = []
    for config in configs:
      entry = dict(config)
      try:
        fn = make(**config)
        entry.update(timed(fn, warmup, repeats))
        entry["same_as_default"] = compare(fn())
      except Exception as e:  # pylint: disable=broad-except
        entry["error"] = f"{type(e).__name__}: {e}"[:500]
      record[key].append(entry)
      print(f"{key} {entry}", flush=True)
      save()

  used = np.asarray(stages.used).astype(bool)
  ref_scores = np.asarray(stages.scores)[used]
  sweep("score_sweep",
        [dict(schedule="loop", stages=n, warps=w, items_major=m)
         for m, n, w in ((False, 3, 4), (False, 2, 4), (False, 4, 4), (False, 3, 8),
                         (True, 3, 4), (True, 3, 8))]
        + [dict(schedule="grid", stages=1, warps=4, items_major=False),
           dict(schedule="loop", stages=3, warps=4, items_major=False, block_items=64)],
        stages.score_fn,
        lambda out: bool(np.array_equal(np.asarray(out)[used], ref_scores)))
  ref_sel = [np.asarray(a) for a in stages.selected]
  sweep("select_sweep",
        [dict(search="interval", rows_per_block=r, warps=w, chunk=c)
         for c, r, w in ((128, 4, 4), (128, 2, 2), (128, 8, 8), (128, 4, 8), (64, 4, 4),
                         (64, 2, 2), (None, 4, 4))],
        stages.select_fn,
        lambda out: all(np.array_equal(np.asarray(a), b) for a, b in zip(out, ref_sel)))
  ref_merge = [np.asarray(a) for a in stages.merge_fn("sort")()]
  sweep("merge_sweep",
        [dict(how="pallas", chunk=c, warps=w) for c, w in ((32, 4), (16, 4), (32, 8))],
        stages.merge_fn,
        lambda out: all(np.array_equal(np.asarray(a), b) for a, b in zip(out, ref_merge)))


# ----------------------------------------------------------------------------- GPU plan

# Candidate pipelines of `--gpu_plan`, known-good first (results are saved as they
# come): name -> (implementation, table dtype, options over that implementation's
# defaults). "pallas" is the library default measured at 0.695 ms queued on an H200.
PLAN_VARIANTS = {
    "pallas": ("pallas", "float32", {}),
    "fused_bf16": ("pallas_fused", "bfloat16", {}),
    "fused": ("pallas_fused", "float32", {}),
    "pallas_bf16": ("pallas", "bfloat16", {}),
    "fused_bf16_warps4": ("pallas_fused", "bfloat16", dict(num_warps=4)),
    "fused_bf16_warps16": ("pallas_fused", "bfloat16", dict(num_warps=16)),
    "fused_bf16_xla_users": ("pallas_fused", "bfloat16", dict(users_in_kernel=False)),
    "fused_bf16_block64": ("pallas_fused", "bfloat16", dict(block_items=64)),
}
TARGET_S = 0.4e-3  # the issue's target per batch of 4096 users


def plan_search(implementation, item_table, layout, table_dtype, options, k, interpret):
  """A jitted batch search of one candidate (no gin): returns (call, jitted, laid arrays).

  `call(users, chosen, seen=None)` is one dispatch, as `RestrictedRetriever.top_k`
  with validate=False.
  """
  import functools  # pylint: disable=g-import-not-at-top
  from explore.retrieval import laid_table  # pylint: disable=g-import-not-at-top
  from explore.retrieval import pallas_fused  # pylint: disable=g-import-not-at-top
  from explore.retrieval import pallas_topk  # pylint: disable=g-import-not-at-top
  options = dict(options)
  block = options.setdefault("block_items", 128)
  options.setdefault("dot_precision", "highest" if interpret else "tf32x3")
  laid, width = laid_table.lay_out_table(item_table, layout, width_multiple=block,
                                         pad_dimension=True, table_dtype=table_dtype,
                                         store_rounded=True)
  fn = pallas_topk.pallas_top_k if implementation == "pallas" else pallas_fused.fused_top_k
  search = functools.partial(fn, k=k, slab_width=width, users_per_tile=16,
                             interpret=interpret, **options)
  dim = laid.items.shape[1]

  @jax.jit
  def batch(users, arrays, chosen, seen):
    users = jnp.pad(users.astype(jnp.float32), ((0, 0), (0, dim - users.shape[1])))
    if seen is None:
      seen = jnp.full((users.shape[0], 0), -1, jnp.int32)
    return search(users, *arrays, chosen.astype(jnp.int32), seen)

  arrays = tuple(laid)
  return (lambda users, chosen, seen=None: batch(users, arrays, chosen, seen)), batch, arrays


def _same(result, reference) -> bool:
  return all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(result, reference))


def fused_steps(items, layout, users, chosen, k, table_dtype, options, interpret) -> dict:
  """The fused path's three steps, each jitted alone: grouping, the kernel, the merge."""
  from explore.retrieval import laid_table  # pylint: disable=g-import-not-at-top
  from explore.retrieval import pallas_fused  # pylint: disable=g-import-not-at-top
  options = dict(options)
  block = options.pop("block_items", 128)
  laid, width = laid_table.lay_out_table(items, layout, width_multiple=block,
                                         pad_dimension=True, table_dtype=table_dtype,
                                         store_rounded=True)
  kk, per_tile = min(k, width), 16
  users, chosen = jnp.asarray(users), jnp.asarray(chosen)
  merge = options.pop("merge", "sort")
  options.pop("dot_precision", None)
  dot = pallas_fused.DOT_PRECISIONS["highest" if interpret else "tf32x3"]

  @jax.jit
  def group(chosen):
    return contiguous_retrieval.plan_tiles(chosen, laid.offsets, layout.num_items, per_tile)

  groups, start, size = group(chosen)
  no_seen = jnp.full((users.shape[0], 0), -1, jnp.int32)
  kernel = jax.jit(lambda s, z, t, u: pallas_fused.fused_tile_top_k(
      s, z, t, u, no_seen, laid.items, laid.order, k=kk, width=width, block_items=block,
      precision=dot, interpret=interpret, **options))
  values, ids = kernel(start, size, groups.tile_user, users)
  merge_fn = jax.jit(lambda v, i, r: pallas_fused.merge_slot_rows(
      v, i, r, k, num_items=layout.num_items, merge=merge, interpret=interpret))
  return {"group_pairs": lambda: group(chosen),
          "fused_kernel": lambda: kernel(start, size, groups.tile_user, users),
          "merge": lambda: merge_fn(values, ids, groups.pair_row)}


def run_gpu_plan(problem, record, save, *, names, interpret, warmup, repeats, budget_s):
  """Times every candidate on the full batch and checks it exactly; one call, one JSON.

  `problem` holds: items, users, chosen (float data, timed), layout, k, floors,
  float_reference (float64 brute force of the first users; bfloat16 variants
  differ from it where rounding the table reorders items), exact (small-integer data: items, users, chosen, seen, num_check, and the
  numpy brute force `references["seen"]`).
  """
  import tempfile  # pylint: disable=g-import-not-at-top
  from explore.retrieval import dense_retrieval  # pylint: disable=g-import-not-at-top
  from explore.retrieval import laid_table  # pylint: disable=g-import-not-at-top
  started = time.perf_counter()
  try:  # so that reading a variant's compiled HLO reuses its executable, not a recompile
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="retrieval_plan_"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  except Exception as e:  # pylint: disable=broad-except
    print(f"plan: no compilation cache ({e}); reading the HLO recompiles", flush=True)
  layout, k, exact = problem["layout"], problem["k"], problem["exact"]
  n = exact.num_check
  users, chosen = jnp.asarray(problem["users"]), jnp.asarray(problem["chosen"])
  exact_users, exact_chosen = jnp.asarray(exact.users), jnp.asarray(exact.chosen)
  exact_seen = jnp.asarray(exact.seen)
  dense = jax.jit(lambda u, items, clusters, ch, seen: dense_retrieval.dense_top_k(
      u, items, clusters, ch, seen, k=k, precision=jax.lax.Precision.HIGHEST))
  dense_result = dense(exact_users[:n], jnp.asarray(exact.items),
                       jnp.asarray(layout.item_to_cluster), exact_chosen[:n], exact_seen[:n])
  empty = jax.jit(lambda u: u + 1.0)  # the host floor of one jitted call
  plan = record["gpu_plan"] = {
      "target_s": TARGET_S, "dense_equals_brute_force": _same(dense_result,
                                                              exact.references["seen"]),
      "empty_call": timed(lambda: empty(users), warmup, repeats), "variants": []}
  touched = np.unique(problem["chosen"][problem["chosen"] >= 0])
  touched_items = int(layout.cluster_sizes[touched].sum())
  dim = problem["users"].shape[1]
  for dtype in laid_table.TABLE_DTYPES:
    item_bytes = laid_table.table_bytes(touched_items, dim, dtype)
    other = problem["floors"]["bytes"] - laid_table.table_bytes(touched_items, dim, "float32")
    plan[f"byte_floor_{dtype}_s"] = (
        (item_bytes + other) * problem["floors"]["byte_floor_s"] / problem["floors"]["bytes"])
  print(f"plan: dense == brute force: {plan['dense_equals_brute_force']}; "
        f"empty call {plan['empty_call']}", flush=True)
  save()
  for name in names:
    implementation, table_dtype, options = PLAN_VARIANTS[name]
    row = {"variant": name, "implementation": implementation, "table_dtype": table_dtype,
           "options": options}
    plan["variants"].append(row)
    if time.perf_counter() - started > budget_s:
      row["skipped"] = f"past the plan budget of {budget_s:.0f} s"
      continue
    try:
      call, jitted, arrays = plan_search(implementation, problem["items"], layout, table_dtype,
                                         options, k, interpret)
      compile_start = time.perf_counter()
      jax.block_until_ready(call(users, chosen))
      row["first_call_s"] = time.perf_counter() - compile_start
      row.update(timed(lambda: call(users, chosen), warmup, repeats))
      float_ids = np.asarray(call(users, chosen)[1])[:len(problem["float_reference"][1])]
      row["float_ids_equal_fraction"] = float(np.mean(float_ids == problem["float_reference"][1]))
      hlo = jitted.lower(users, arrays, chosen, None).compile().as_text()
      row["launches"] = count_launches(hlo)
      del call, arrays
      call, _, _ = plan_search(implementation, exact.items, layout, table_dtype, options, k,
                               interpret)
      result = [np.asarray(a)[:n] for a in call(exact_users, exact_chosen, exact_seen)]
      row["equals_dense"] = _same(result, dense_result)
      row["equals_brute_force"] = _same(result, exact.references["seen"])
      row["check"] = "PASS" if row["equals_dense"] and row["equals_brute_force"] else "FAIL"
      floor = plan[f"byte_floor_{table_dtype}_s"]
      row["x_byte_floor_queued"] = row["queued_s"] / floor
      row["meets_target_queued"] = row["queued_s"] <= TARGET_S
      row["meets_target_per_call"] = row["median_s"] <= TARGET_S
    except Exception as e:  # pylint: disable=broad-except
      row["error"] = f"{type(e).__name__}: {e}"[:2000]
      row["check"] = "ERROR"
    print(f"plan {name}: {row}", flush=True)
    save()
  fused = [r for r in plan["variants"]
           if r["implementation"] == "pallas_fused" and r.get("check") == "PASS"]
  if fused and time.perf_counter() - started < budget_s:
    best = min(fused, key=lambda r: r["queued_s"])
    plan["fused_steps_of"] = best["variant"]
    plan["fused_steps"] = {}
    try:
      steps = fused_steps(problem["items"], layout, problem["users"], problem["chosen"], k,
                          best["table_dtype"], best["options"], interpret)
      for step, fn in steps.items():
        plan["fused_steps"][step] = timed(fn, warmup, repeats)
    except Exception as e:  # pylint: disable=broad-except
      plan["fused_steps"]["error"] = f"{type(e).__name__}: {e}"[:2000]
    print(f"plan steps of {best['variant']}: {plan['fused_steps']}", flush=True)
  plan["elapsed_s"] = time.perf_counter() - started
  save()


def print_plan(plan) -> None:
  print()
  print(f"GPU plan: target {plan['target_s'] * 1e3:.3f} ms per batch; byte floors "
        f"float32 {plan['byte_floor_float32_s'] * 1e3:.3f} ms, "
        f"bfloat16 {plan['byte_floor_bfloat16_s'] * 1e3:.3f} ms; empty jitted call "
        f"{plan['empty_call']['median_s'] * 1e3:.3f} ms per call; dense == brute force: "
        f"{plan['dense_equals_brute_force']}")
  header = (f"{'variant':<22} {'queued ms':>9} {'per call':>9} {'dispatch':>9} "
            f"{'launches':>8} {'x floor':>8} {'target':>7} {'check':>6}")
  print(header)
  print("-" * len(header))
  for r in plan["variants"]:
    if "queued_s" not in r:
      print(f"{r['variant']:<22} {r.get('skipped') or r.get('error', '')[:100]}")
      continue
    meets = ("both" if r["meets_target_per_call"] else
             "queued" if r["meets_target_queued"] else "no")
    print(f"{r['variant']:<22} {r['queued_s'] * 1e3:>9.3f} {r['median_s'] * 1e3:>9.3f} "
          f"{r['dispatch_s'] * 1e3:>9.3f} {r['launches']['total']:>8} "
          f"{r['x_byte_floor_queued']:>8.2f} {meets:>7} {r.get('check', '-'):>6}")
  for step, value in plan.get("fused_steps", {}).items():
    if isinstance(value, dict):
      print(f"  step of {plan['fused_steps_of']}: {step:<12} {value['queued_s'] * 1e3:.3f} ms "
            f"queued, {value['median_s'] * 1e3:.3f} ms per call")
