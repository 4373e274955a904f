"""Time and peak memory of item embeddings and the balanced cluster tree at scale.

  python3 bench/clustering_scale.py --num_items=1000000 --out=/tmp/clustering_scale.json
  python3 bench/clustering_scale.py --num_items=10000000 --embedding_items=1000000 \
      --out=$OUT/clustering_scale.json                      # on an accelerator

Two parts, each on planted data so quality can be checked at any size:
- embeddings: a log where each user engages mostly with one of `--topics` item
  groups (`--events_per_item` events per item on average) -> co-engagement
  embeddings (`--embedding_items` items; 0 skips the part);
- clustering: `--num_items` unit vectors around `--topics` random centres ->
  `build_cluster_tree(levels)`; timed twice (the first call includes XLA
  compilation), AMI of the finest level against the planted topics measured on
  a random sample of `--ami_sample` items.
Prints a table and writes the numbers as JSON to --out.
"""

from __future__ import annotations

import datetime
import json
import platform
import resource
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_NUM_ITEMS = flags.DEFINE_integer("num_items", 1_000_000, "Items clustered (planted vectors).")
_DIM = flags.DEFINE_integer("dim", 64, "Embedding size.")
_LEVELS = flags.DEFINE_list("levels", ["8", "64", "256"], "Clusters per tree level.")
_STRATEGY = flags.DEFINE_enum("strategy", "bottom_up", ["bottom_up", "top_down"],
                              "Tree building strategy.")
_TOPICS = flags.DEFINE_integer("topics", 256, "Planted topics.")
_NOISE = flags.DEFINE_float("noise", 1.0, "Std of planted vectors around their topic centre "
                            "(relative to a unit centre, spread over all dims).")
_EMBEDDING_ITEMS = flags.DEFINE_integer("embedding_items", 200_000,
                                        "Items of the planted log for the embedding part (0: skip).")
_EVENTS_PER_ITEM = flags.DEFINE_integer("events_per_item", 10, "Mean events per item in the log.")
_EVENTS_PER_USER = flags.DEFINE_integer("events_per_user", 20, "Events per user in the log.")
_WINDOW = flags.DEFINE_integer("window", 5, "Co-occurrence window.")
_SPARSE_BACKEND = flags.DEFINE_enum("sparse_backend", "auto", ["auto", "scipy", "jax"],
                                    "Where the SVD's sparse products run.")
_AMI_SAMPLE = flags.DEFINE_integer("ami_sample", 50_000, "Items sampled for the AMI check.")
_CHUNK_SIZE = flags.DEFINE_integer("chunk_size", 0, "balanced_kmeans.chunk_size (0: default); "
                                   "larger chunks use an accelerator better.")
_RESTARTS = flags.DEFINE_integer("coarse_restarts", 8, "build_cluster_tree.coarse_restarts.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def planted_log(num_items: int, topics: int, events_per_item: int, events_per_user: int,
                seed: int):
  """Users with one topic each: 80% of their events in it, the rest anywhere."""
  import numpy as np

  from explore.data.schema import Interactions

  rng = np.random.default_rng(seed)
  num_users = max(1, num_items * events_per_item // events_per_user)
  topic_of_item = np.arange(num_items) % topics  # [items]
  per_topic = np.bincount(topic_of_item, minlength=topics)
  user_topic = rng.integers(topics, size=num_users)  # [users]
  user = np.repeat(np.arange(num_users, dtype=np.int32), events_per_user)  # [events]
  topic = user_topic[user]
  rank = (rng.random(user.size) * per_topic[topic]).astype(np.int64)
  item = np.where(rng.random(user.size) < 0.8, rank * topics + topic,
                  rng.integers(num_items, size=user.size)).astype(np.int32)
  events = user.size
  interactions = Interactions(
      user=user, item=item, timestamp=np.tile(np.arange(events_per_user), num_users),
      engagement=np.ones(events, np.float32), positive=np.ones(events, bool),
      user_ids=np.arange(num_users), item_ids=np.arange(num_items))
  return interactions, topic_of_item


def planted_vectors(num_items: int, dim: int, topics: int, noise: float, seed: int):
  import numpy as np

  rng = np.random.default_rng(seed)
  centres = rng.standard_normal((topics, dim), dtype=np.float32)
  centres /= np.linalg.norm(centres, axis=1, keepdims=True)
  topic = rng.integers(topics, size=num_items)
  vectors = rng.standard_normal((num_items, dim), dtype=np.float32)  # [items, dim]
  vectors *= noise / np.sqrt(dim)
  vectors += centres[topic]
  vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
  return vectors, topic


def main(argv):
  del argv
  import jax
  import numpy as np

  from explore.clusters import (adjusted_mutual_info, build_cluster_tree,
                                co_engagement_embeddings)

  import gin

  if _CHUNK_SIZE.value:
    gin.bind_parameter("balanced_kmeans.chunk_size", _CHUNK_SIZE.value)
  device = jax.devices()[0]
  rows = []  # (part, seconds, peak RSS MiB, notes)
  print(f"device: {device.platform} ({device.device_kind})", flush=True)
  results = {}
  levels = tuple(int(k) for k in _LEVELS.value)
  rng = np.random.default_rng(_SEED.value)

  def ami_on_sample(truth, labels):
    take = rng.choice(len(truth), size=min(_AMI_SAMPLE.value, len(truth)), replace=False)
    return adjusted_mutual_info(truth[take], labels[take])

  if _EMBEDDING_ITEMS.value:
    start = time.perf_counter()
    interactions, topic_of_item = planted_log(
        _EMBEDDING_ITEMS.value, _TOPICS.value, _EVENTS_PER_ITEM.value, _EVENTS_PER_USER.value,
        _SEED.value)
    rows.append(("planted log", time.perf_counter() - start, _peak_rss_mib(),
                 f"{len(interactions):,} events, {interactions.num_users:,} users"))
    start = time.perf_counter()
    embeddings = co_engagement_embeddings(interactions, dim=_DIM.value, window=_WINDOW.value,
                                          seed=_SEED.value, sparse_backend=_SPARSE_BACKEND.value)
    seconds = time.perf_counter() - start
    stats = dict(embeddings.stats)
    rows.append(("embeddings", seconds, _peak_rss_mib(),
                 f"{_EMBEDDING_ITEMS.value:,} items, nnz {stats['nnz']:,}, "
                 f"cold {stats['num_cold_items']:,}, {stats['sparse_backend']}"))
    print(rows[-1], flush=True)
    tree = build_cluster_tree(embeddings, levels=(_TOPICS.value,), seed=_SEED.value)
    ami = ami_on_sample(topic_of_item, tree.item_to_cluster(0))
    rows[-1] = rows[-1][:3] + (rows[-1][3] + f", AMI of {_TOPICS.value} clusters {ami:.3f}",)
    results["embeddings"] = {"items": _EMBEDDING_ITEMS.value, "events": len(interactions),
                             "seconds": seconds, "peak_rss_mib": _peak_rss_mib(),
                             "ami_vs_planted": ami, "stats": stats}
    del interactions, embeddings

  start = time.perf_counter()
  vectors, topic = planted_vectors(_NUM_ITEMS.value, _DIM.value, _TOPICS.value, _NOISE.value,
                                   _SEED.value)
  rows.append(("planted vectors", time.perf_counter() - start, _peak_rss_mib(),
               f"{_NUM_ITEMS.value:,} x {_DIM.value}"))
  timings = []
  for attempt in ("first (with compile)", "second"):
    start = time.perf_counter()
    tree = build_cluster_tree(vectors, levels=levels, seed=_SEED.value, strategy=_STRATEGY.value,
                              coarse_restarts=_RESTARTS.value)
    timings.append(time.perf_counter() - start)
    rows.append((f"tree {attempt}", timings[-1], _peak_rss_mib(),
                 f"levels {levels}, {_STRATEGY.value}"))
    print(rows[-1], flush=True)
  balance = [tree.balance(level) for level in range(tree.num_levels)]
  ami = ami_on_sample(topic, tree.item_to_cluster(tree.num_levels - 1)) \
      if levels[-1] == _TOPICS.value else None
  results["clustering"] = {
      "items": _NUM_ITEMS.value, "dim": _DIM.value, "levels": list(levels),
      "strategy": _STRATEGY.value, "seconds_first": timings[0], "seconds_second": timings[1],
      "balance": balance, "ami_finest_vs_planted": ami, "peak_rss_mib": _peak_rss_mib()}

  print(f"clustering at scale on {device.platform} ({device.device_kind})")
  print(f"{'part':<24} {'seconds':>9} {'peak RSS MiB':>13}  notes")
  for part, secs, rss, notes in rows:
    print(f"{part:<24} {secs:>9.2f} {rss:>13.0f}  {notes}")
  print(f"balance (max/min) per level: {[round(b, 4) for b in balance]}"
        + (f"; AMI finest vs planted: {ami:.3f}" if ami is not None else ""))

  if _OUT.value:
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "device": f"{device.platform} ({device.device_kind})", "host": platform.node(),
        "flags": {name: flags.FLAGS[name].value for name in (
            "num_items", "dim", "levels", "strategy", "topics", "noise", "embedding_items",
            "events_per_item", "events_per_user", "window", "sparse_backend", "chunk_size",
            "coarse_restarts",
            "seed")},
        "rows": [{"part": p, "seconds": s, "peak_rss_mib": r, "notes": n} for p, s, r, n in rows],
        **results,
    }
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
