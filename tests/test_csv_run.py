"""configs/csv.gin end to end on a generic CSV log, and the early too-small error."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages
from explore.clusters import stage as clusters_stage

stages.load_builtin_stages()

pytestmark = pytest.mark.usefixtures("clean_gin")

TOPICS = ["hiking trails", "pasta cooking", "war drama", "jazz piano", "space opera",
          "garden roses", "chess openings", "surf boards"]
SMALL = ["build_cluster_tree.levels = (4, 8)", "co_engagement_embeddings.dim = 8"]


def write_topic_log(path, users=300, items_per_topic=25, seed=0) -> None:
  """A log where each user moves through three topics; titles name the topic.

  Columns as configs/csv.gin maps them (user_id, item_id, timestamp, rating,
  title), plus one repeated row and one same-timestamp basket, so the checks
  have something to count.
  """
  rng = np.random.default_rng(seed)
  rows = ["user_id,item_id,timestamp,rating,title"]
  for user in range(users):
    t = 1_000 * user
    for topic in rng.choice(len(TOPICS), 3, replace=False):
      for item in rng.choice(items_per_topic, 8, replace=False):
        t += int(rng.integers(1, 100))
        rating = 5 if rng.random() < 0.8 else 2
        item_id = f"{TOPICS[topic].split()[0]}-{item}"
        rows.append(f"u{user},{item_id},{t},{rating},\"{TOPICS[topic]}, volume {item}\"")
  rows.append(rows[1])  # a duplicate event
  user, _, t, _, _ = rows[2].split(",", 4)
  rows.append(f"{user},chess-0,{t},5,\"chess openings, volume 0\"")  # a basket of two
  path.write_text("\n".join(rows) + "\n")


def _run(tmp_path, csv_path, bindings=(), targets=("transitions",)):
  gin_config.parse_gin(["csv.gin"], [f"RUN_DIR = '{tmp_path / 'run'}'",
                                     f"CSV_LOGS = '{csv_path}'", *bindings])
  run_dir = rundir.RunDir(tmp_path / "run")
  stages.run_stages(list(targets), run_dir, seed=0)
  return run_dir


def _summary(run_dir, stage):
  return json.loads((run_dir.complete_path(stage) / "MANIFEST.json").read_text())["summary"]


def test_csv_gin_runs_data_clusters_and_transitions(tmp_path):
  csv_path = tmp_path / "events.csv"
  write_topic_log(csv_path)
  start = time.time()
  run_dir = _run(tmp_path, csv_path, SMALL)
  seconds = time.time() - start
  data = _summary(run_dir, "data")
  assert data["source"] == "csv" and data["items"] == 200 and data["users"] == 300
  report = data["load_report"]
  assert report["checks"]["duplicate_rows"] == 1 and report["checks"]["on_duplicates"] == "skip"
  assert report["checks"]["baskets"] == 1 and report["checks"]["basket_rows"] == 2
  assert report["rows_read"] == 300 * 24 + 2 and report["rows_kept"] == 300 * 24 + 1
  clusters = clusters_stage.load_exploration_clusters(run_dir.complete_path("clusters"))
  assert clusters.num_clusters == 8
  # Titles come from the log's title column, so descriptions use the topics' words.
  words = " ".join(clusters.descriptions.texts)
  assert sum(topic.split()[0] in words for topic in TOPICS) >= 6, clusters.descriptions.texts
  transitions = _summary(run_dir, "transitions")
  assert transitions["num_examples_train"] > 100 and transitions["num_examples_test"] > 10
  # Nearly all of it is XLA compiling the k-means; the bound only catches a pathological
  # slowdown on a loaded machine.
  assert seconds < 300, f"data + clusters + transitions took {seconds:.0f} s"


def test_too_few_items_for_the_cluster_levels_is_an_early_clear_error(tmp_path):
  csv_path = tmp_path / "events.csv"
  write_topic_log(csv_path, users=20, items_per_topic=10)  # 80 items, csv.gin wants 128 clusters
  with pytest.raises(clusters_stage.DataTooSmallError) as e:
    _run(tmp_path, csv_path, targets=("clusters",))
  message = str(e.value)
  assert "80 items" in message and "build_cluster_tree.levels = (8, 32, 128)" in message
  assert "level 2: 128 clusters" in message and "NUM_CLUSTERS" in message
  run_dir = rundir.RunDir(tmp_path / "run")
  assert run_dir.state("data") == "complete"
  assert not (run_dir.partial_path("clusters") / clusters_stage.EMBEDDINGS).exists()  # no work


def test_embedding_dim_above_the_item_count_is_named(tmp_path):
  csv_path = tmp_path / "events.csv"
  write_topic_log(csv_path, users=20, items_per_topic=10)
  with pytest.raises(clusters_stage.DataTooSmallError, match=r"80 items.*"
                     r"co_engagement_embeddings.dim = 100"):
    _run(tmp_path, csv_path, ["NUM_CLUSTERS = 16", "co_engagement_embeddings.dim = 100"],
         ("clusters",))


def test_no_positive_events_names_the_positive_rule(tmp_path):
  csv_path = tmp_path / "events.csv"
  write_topic_log(csv_path, users=20, items_per_topic=10)
  with pytest.raises(clusters_stage.DataTooSmallError, match="positive_rule.threshold"):
    _run(tmp_path, csv_path, SMALL + ["positive_rule.threshold = 9.0"], ("clusters",))
