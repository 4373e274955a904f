r"""Serving benchmark: one-user latency, batch throughput, and an HTTP loopback load test.

  PYTHONPATH=$PWD python3 bench/serving.py --run_dir=/tmp/serve_run \
      [--table=DIR | --count_table=DIR] [--out=/tmp/serving.json]

Needs a run directory with the data, clusters and seqrec stages (and a
`precompute` table, or --table). With --count_table=DIR the benchmark first
writes a table from the transition-count planner of the run's `transitions`
stage (`explore.eval.planners.TransitionCounts`) into DIR and serves that: the
table's contents do not change serving's cost, only which clusters it names.

Measures, on the host CPU:
  recommend      p50 / p99 ms of `Explorer.recommend_user` (stored user vector)
                 and `Explorer.recommend` (explicit history, encoded by the model)
  batch          users/s of `recommend_users` (with the load-time regular
                 candidates, and with a catalog scan per request) and
                 `recommend_batch` at --batch
  load           `Explorer.load` seconds, and the regular candidates' share
  http           --requests GET /api/recommend?user=... with --concurrency
                 clients over loopback (uvicorn in a thread): p50 / p99 ms, errors
Prints a table and the JSON, and writes the JSON to --out.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path
import platform
import sys
import threading
import time

from absl import app
from absl import flags
import numpy as np

FLAGS = flags.FLAGS
from explore.serving import cli  # noqa: F401,E402  (defines --run_dir and --table)
flags.DEFINE_string("count_table", None, "Write a transition-count table here and serve it.")
flags.DEFINE_integer("top_n", 10, "Clusters per row of the count table.")
flags.DEFINE_integer("single", 500, "Timed single-user calls (after warm-up).")
flags.DEFINE_integer("batch", 1024, "Rows per batch call.")
flags.DEFINE_integer("batches", 10, "Timed batch calls.")
flags.DEFINE_integer("requests", 2000, "HTTP requests in the load test (0 skips it).")
flags.DEFINE_integer("concurrency", 16, "Concurrent HTTP clients.")
if "out" not in FLAGS:  # explore.main's `explore export --out` may be defined first (tests)
  flags.DEFINE_string("out", None, "Write the results here as JSON.")


def planner_table(planner, num_clusters: int, k: int, top_n: int, fingerprints=None,
                  batch: int = 4096):
  """A `TupleTable` of any planner with the `scores(history [b, K]) -> [b, M]` face.

  Each tuple's own clusters are excluded; ties keep the lower cluster id.
  """
  from explore.precompute.table import TupleTable, distinct_tuples  # pylint: disable=g-import-not-at-top
  table = TupleTable.empty(num_clusters, k, top_n, fingerprints=fingerprints)
  tuples = distinct_tuples(num_clusters, k)  # [r, K]
  for begin in range(0, len(tuples), batch):
    history = tuples[begin:begin + batch]
    scores = np.array(planner.scores(history), np.float64)  # [b, M]
    np.put_along_axis(scores, history.astype(np.int64), -np.inf, axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top_n]  # [b, n]
    top = np.take_along_axis(scores, order, 1)
    table.set_rows(history, np.where(np.isfinite(top), order, -1).astype(np.int32),
                   np.where(np.isfinite(top), top, -np.inf).astype(np.float32))
  return table


def write_count_table(run_dir, directory, top_n: int = 10) -> Path:
  """Writes the transition-count planner's table of a run (fingerprinted like a served one)."""
  from explore import rundir  # pylint: disable=g-import-not-at-top
  from explore.clusters import stage as clusters_stage  # pylint: disable=g-import-not-at-top
  from explore.eval.planners import TransitionCounts  # pylint: disable=g-import-not-at-top
  from explore.serving import run_inputs  # pylint: disable=g-import-not-at-top
  from explore.transitions import stage as transitions_stage  # pylint: disable=g-import-not-at-top
  from explore.transitions.examples import TRAIN, NovelTransitions  # pylint: disable=g-import-not-at-top
  run = rundir.RunDir(run_dir)
  clusters = clusters_stage.load_exploration_clusters(run.complete_path("clusters"))
  transitions = NovelTransitions.load(run.complete_path("transitions") /
                                      transitions_stage.TRANSITIONS)
  train = transitions.indices(TRAIN)
  planner = TransitionCounts(transitions.history[train], transitions.next_cluster[train],
                             clusters.num_clusters)
  expected = run_inputs.expected_fingerprints(run, clusters)
  fingerprints = {name: expected[name] for name in (
      "cluster_assignment", "cluster_descriptions", run_inputs.STAGE_PREFIX + "transitions")}
  table = planner_table(planner, clusters.num_clusters, transitions.k, top_n, fingerprints)
  table.meta["planner"] = planner.name
  return table.save(directory)


def _percentiles(seconds) -> dict[str, float]:
  ms = np.asarray(seconds) * 1e3
  return {"p50_ms": round(float(np.percentile(ms, 50)), 3),
          "p99_ms": round(float(np.percentile(ms, 99)), 3), "calls": len(ms)}


def time_single(explorer, calls: int, seed: int = 0) -> dict[str, dict]:
  """Latency of one-user calls: a logged user, and an explicit history."""
  rng = np.random.default_rng(seed)
  users = explorer.users.ids[rng.integers(0, len(explorer.users), calls + 20)]
  histories = [explorer.user_history(u) for u in users]
  out = {}
  for name, call, args in (("recommend_user", explorer.recommend_user, users),
                           ("recommend_history", explorer.recommend, histories)):
    for arg in args[:20]:  # warm-up: compile every history-width bucket in use
      call(arg)
    seconds = []
    for arg in args[20:]:
      start = time.perf_counter()
      call(arg)
      seconds.append(time.perf_counter() - start)
    out[name] = _percentiles(seconds)
  return out


def time_batch(explorer, batch: int, batches: int, seed: int = 0) -> dict[str, dict]:
  """Throughput of batch calls on random logged users (and their histories, re-encoded).

  "explore_only" asks for exploration items only (n_regular=0), which skips the
  regular slate's scan of the whole catalog; "catalog scan" serves logged users
  with the load-time regular candidates off (`ServingConfig.regular_cache=0`),
  as explicit histories are served.
  """
  rng = np.random.default_rng(seed)
  scan = copy.copy(explorer)
  scan.regular_cache = None
  out = {}
  for name, server, method, sizes in (
      ("recommend_users", explorer, "recommend_users", {}),
      ("recommend_users catalog scan", scan, "recommend_users", {}),
      ("recommend_users explore_only", explorer, "recommend_users", {"n_regular": 0}),
      ("recommend_batch", explorer, "recommend_batch", {})):
    rows = [explorer.users.ids[rng.integers(0, len(explorer.users), batch)]
            for _ in range(batches + 1)]
    if method == "recommend_batch":
      rows = [[explorer.user_history(u) for u in r] for r in rows]
    call = getattr(server, method)
    call(rows[0], **sizes)  # warm-up
    start = time.perf_counter()
    for r in rows[1:]:
      call(r, **sizes)
    seconds = time.perf_counter() - start
    out[name] = {"users_per_s": round(batch * batches / seconds), "batch": batch,
                 "batches": batches, **sizes}
  return out


def http_load(explorer, requests: int, concurrency: int, seed: int = 0) -> dict:
  """GET /api/recommend?user=... over loopback from `concurrency` threads."""
  import http.client  # pylint: disable=g-import-not-at-top
  from explore.serving import server  # pylint: disable=g-import-not-at-top
  running = server.start_in_thread(explorer, port=0)
  rng = np.random.default_rng(seed)
  users = explorer.users.ids[rng.integers(0, len(explorer.users), requests)]
  seconds, errors, lock = [], [], threading.Lock()

  def client(part):
    connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
    for user in part:
      start = time.perf_counter()
      failure = None
      try:
        connection.request("GET", f"/api/recommend?user={user}")
        response = connection.getresponse()
        response.read()
        if response.status != 200:
          failure = f"HTTP {response.status}"
      except OSError as e:
        failure = repr(e)
        connection = http.client.HTTPConnection("127.0.0.1", running.port, timeout=30)
      with lock:
        seconds.append(time.perf_counter() - start)
        if failure:
          errors.append(failure)
    connection.close()

  try:
    threads = [threading.Thread(target=client, args=(part,))
               for part in np.array_split(users, concurrency)]
    start = time.perf_counter()
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    wall = time.perf_counter() - start
  finally:
    running.stop()
  return {**_percentiles(seconds), "errors": len(errors), "concurrency": concurrency,
          "requests_per_s": round(requests / wall, 1)}


def main(argv) -> None:
  del argv
  from explore.serving import Explorer  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  if not FLAGS.run_dir:
    sys.exit("bench/serving.py: --run_dir is required")
  table = FLAGS.table
  if FLAGS.count_table:
    table = write_count_table(FLAGS.run_dir, FLAGS.count_table, FLAGS.top_n)
  start = time.perf_counter()
  explorer = Explorer.load(FLAGS.run_dir, table)
  load_seconds = time.perf_counter() - start
  start = time.perf_counter()
  explorer.regular_candidates(explorer.config.regular_cache)  # the part of the load it took
  cache_seconds = time.perf_counter() - start
  results = {"device": f"{jax.devices()[0].platform} ({platform.processor() or platform.machine()},"
                       f" {os.cpu_count()} cores)",
             "run_dir": FLAGS.run_dir, "table": str(explorer.inputs.table_path),
             "users": len(explorer.users), "items": len(explorer.items),
             "clusters": explorer.num_clusters, "load_s": round(load_seconds, 2),
             "regular_cache_s": round(cache_seconds, 2),
             "single": time_single(explorer, FLAGS.single),
             "batch": time_batch(explorer, FLAGS.batch, FLAGS.batches)}
  if FLAGS.requests:
    results["http"] = http_load(explorer, FLAGS.requests, FLAGS.concurrency)
  print(f"{'measure':<30}{'value':>14}")
  for name, row in results["single"].items():
    print(f"{name + ' p50 / p99 ms':<30}{row['p50_ms']:>7} / {row['p99_ms']}")
  for name, row in results["batch"].items():
    print(f"{name + ' users/s':<30}{row['users_per_s']:>14}")
  if "http" in results:
    row = results["http"]
    print(f"{'http p50 / p99 ms':<30}{row['p50_ms']:>7} / {row['p99_ms']}")
    print(f"{'http requests/s, errors':<30}{row['requests_per_s']:>7} / {row['errors']}")
  print(json.dumps(results, indent=1))
  if FLAGS.out:
    Path(FLAGS.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
  app.run(main)
