r"""`explore recommend` and `explore serve`: the command-line face of `Explorer`.

  explore recommend --run_dir=/tmp/explore --user=7 [--json]
  explore recommend --run_dir=/tmp/explore --items=12,40,7
  explore serve --run_dir=/tmp/explore --port=8000
The run directory is --run_dir, or RUN_DIR from the gin files as for every
other command. --table serves a table folder instead of the run's
`precompute` stage. This module defines its flags without importing JAX.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from absl import flags

from explore.serving import config as _config  # noqa: F401  (registers ServingConfig)
from explore.serving.histories import ServingError

COMMANDS = ("recommend", "serve")

flags.DEFINE_string("run_dir", None, "recommend/serve: the run directory (default: RUN_DIR "
                    "from the gin files).")
flags.DEFINE_string("user", None, "recommend: a user id of the run's log.")
flags.DEFINE_list("items", None, "recommend: an explicit history, item ids oldest first.")
flags.DEFINE_bool("json", False, "recommend: print the slate as JSON.")
flags.DEFINE_string("table", None, "recommend/serve: a table folder to serve instead of the "
                    "run's precompute stage.")
flags.DEFINE_integer("n_explore", None, "recommend: exploration items (default "
                     "ServingConfig.n_explore).")
flags.DEFINE_integer("n_regular", None, "recommend: regular items (default "
                     "ServingConfig.n_regular).")
flags.DEFINE_integer("port", 8000, "serve: the port to listen on.")
flags.DEFINE_string("host", "127.0.0.1", "serve: the address to listen on.")
FLAGS = flags.FLAGS


def _cluster(entry: dict[str, Any]) -> str:
  return f"#{entry['cluster']} \"{entry['description']}\""


def format_slate(result: dict[str, Any]) -> str:
  """A readable rendering of one slate (`response.describe_row`)."""
  who = "history" if result["user"] is None else f"user {result['user']}"
  recent = " -> ".join(_cluster(c) for c in result["history"]["recent_clusters"]) or "none"
  lines = [f"{who}: {result['history']['items']} items; recent clusters: {recent}",
           f"novel clusters (plan: {result['plan_source']}):"]
  for cluster in result["clusters"]:
    lines.append(f"  {_cluster(cluster)}  [{cluster['source']}, score {cluster['score']}]")
  lines.append("slate:")
  width = max((len(str(item["title"])) for item in result["slate"]), default=0)
  for slot, item in enumerate(result["slate"], 1):
    lines.append(f"  {slot:>2}. {item['kind']:<8}{str(item['title']):<{width}}  "
                 f"[item {item['item']}]  score {item['score']}  {_cluster(item)}")
  return "\n".join(lines)


def _recommend(explorer) -> int:
  sizes = {"n_explore": FLAGS.n_explore, "n_regular": FLAGS.n_regular}
  if (FLAGS.user is None) == (FLAGS.items is None):
    raise ServingError("explore recommend needs exactly one of --user=ID or --items=ID,ID,...")
  if FLAGS.user is not None:
    result = explorer.recommend_user(FLAGS.user, **sizes)
  else:
    result = explorer.recommend(FLAGS.items, **sizes)
  print(json.dumps(result, indent=1) if FLAGS.json else format_slate(result))
  return 0


def run_command(command: Sequence[str], run_dir: str | None) -> int:
  """Runs `recommend` or `serve` on the run directory; returns the exit status."""
  from explore.serving import explorer as explorer_lib  # pylint: disable=g-import-not-at-top
  from explore.serving import server  # pylint: disable=g-import-not-at-top
  name, rest = command[0], list(command[1:])
  if rest:
    raise ServingError(f"explore {name} takes flags only, got extra arguments {rest}")
  run_dir = FLAGS.run_dir or run_dir
  if not run_dir:
    raise ServingError(f"explore {name} needs --run_dir=DIR (or RUN_DIR from --gin_file)")
  if name == "serve":
    sock = server.bind(FLAGS.host, FLAGS.port)  # a taken port fails before the load
    try:
      explorer = explorer_lib.Explorer.load(run_dir, FLAGS.table)
    except BaseException:
      sock.close()
      raise
    server.serve(explorer, sock)
    return 0
  return _recommend(explorer_lib.Explorer.load(run_dir, FLAGS.table))
