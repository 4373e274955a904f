"""Timing helpers and the Pallas path cut into steps, for bench/retrieval.py.

Each step of `explore.seqrec.pallas_topk.pallas_top_k` is jitted alone on the
benchmark batch, so its time can be read next to XLA's alternative; the sweeps
time each kernel's options and check their outputs against the default's.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from explore.seqrec import RestrictedRetriever
from explore.seqrec import contiguous_retrieval


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


def timed(fn, warmup, repeats) -> dict:
  """Per-call median (host waits each call) and queued mean (device-bound) seconds."""
  times = time_call(fn, warmup, repeats)
  return {"median_s": statistics.median(times), "min_s": min(times),
          "queued_s": pipelined_seconds(fn)}


class PallasStages:
  """The Pallas path cut into its steps, on the timed batch, to see where time goes."""

  def __init__(self, items, layout, users, chosen, k, options, interpret=False):
    from explore.seqrec import pallas_score  # pylint: disable=g-import-not-at-top
    from explore.seqrec import pallas_select  # pylint: disable=g-import-not-at-top
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
      groups = contiguous_retrieval.group_pairs(chosen, layout.num_clusters, per_tile)
      start, size = contiguous_retrieval.tile_bounds(offsets, groups.tile_cluster,
                                                     layout.num_items)
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
      from explore.seqrec import topk_ops  # pylint: disable=g-import-not-at-top
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
    from explore.seqrec import topk_ops  # pylint: disable=g-import-not-at-top
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
