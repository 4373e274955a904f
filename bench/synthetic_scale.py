"""Time and peak memory of the synthetic platform at scale (world build + streamed logs).

  python3 bench/synthetic_scale.py --num_users=100000 --num_items=1000000 \
      --chunk_users=8192 --out=/tmp/synthetic_scale.json

Logs are streamed chunk by chunk and only counted, so memory should stay at
O(items + users) for the world plus O(chunk) for the logs. Prints a table and
writes the numbers as JSON to --out.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

from absl import app, flags

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explore.data import synthetic  # noqa: E402

_NUM_USERS = flags.DEFINE_integer("num_users", 100_000, "Users in the world.")
_NUM_ITEMS = flags.DEFINE_integer("num_items", 1_000_000, "Items in the world.")
_BRANCHING = flags.DEFINE_list("branching", ["16", "16", "16"], "Topic tree branching per level.")
_CHUNK_USERS = flags.DEFINE_integer("chunk_users", 8192, "Users per streamed log chunk.")
_CATALOG_ITEMS = flags.DEFINE_integer("catalog_items", 100_000,
                                      "Items whose catalog text is generated and timed (0: none).")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_OUT = flags.DEFINE_string("out", None, "Write the results as JSON here.")


def _peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def main(argv):
  del argv
  config = synthetic.SyntheticConfig(
      seed=_SEED.value, num_users=_NUM_USERS.value, num_items=_NUM_ITEMS.value,
      branching=tuple(int(b) for b in _BRANCHING.value))
  rows = []

  start = time.perf_counter()
  world = synthetic.build_world(config)
  rows.append(("world", time.perf_counter() - start, _peak_rss_mib(), ""))

  start = time.perf_counter()
  events = positives = chunks = 0
  for chunk in synthetic.iter_interaction_chunks(world, _CHUNK_USERS.value):
    events += len(chunk)
    positives += int(chunk.positive.sum())
    chunks += 1
  seconds = time.perf_counter() - start
  rows.append(("logs", seconds, _peak_rss_mib(),
               f"{events:,} events in {chunks} chunks, {events / seconds:,.0f} events/s, "
               f"{positives / max(events, 1):.2f} positive"))

  catalog_items = min(_CATALOG_ITEMS.value, world.num_items)
  if catalog_items:
    start = time.perf_counter()
    synthetic.item_catalog(world, 0, catalog_items)
    seconds = time.perf_counter() - start
    rows.append(("catalog", seconds, _peak_rss_mib(),
                 f"{catalog_items:,} items, {catalog_items / seconds:,.0f} items/s"))

  print(f"synthetic platform: {world.num_users:,} users x {world.num_items:,} items, "
        f"{world.num_topics:,} leaf topics, chunk_users={_CHUNK_USERS.value}")
  print(f"{'stage':<8} {'seconds':>9} {'peak RSS MiB':>13}  notes")
  for stage, secs, rss, notes in rows:
    print(f"{stage:<8} {secs:>9.2f} {rss:>13.0f}  {notes}")

  if _OUT.value:
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "command": " ".join(sys.argv),
        "config": config.to_json(),
        "events": events,
        "positives": positives,
        "stages": [{"stage": s, "seconds": round(t, 3), "peak_rss_mib": round(r, 1), "notes": n}
                   for s, t, r, n in rows],
    }
    Path(_OUT.value).parent.mkdir(parents=True, exist_ok=True)
    Path(_OUT.value).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
  app.run(main)
