"""The serving API: histories -> clusters -> table plan (with fallbacks) -> slates, and its errors."""

import json
import shutil

import numpy as np
import pytest

from explore.precompute.table import TableError, TupleTable
from explore.serving import Explorer, ServingError, UnknownIdError
from explore.serving import histories as histories_lib
from explore.serving.config import ServingConfig
from explore.serving import plan as plan_lib
from explore.serving import slate as slate_lib
from serving_fixtures import serving_run


def test_recent_clusters_are_the_last_k_unique_engaged_ones_oldest_first():
  item_to_cluster = np.array([0, 1, 2, 3, 0, 1])  # items 4, 5 share clusters 0, 1
  batch = histories_lib.Histories.from_lists([[0, 1, 2, 4], [3], [5, 1, 5]])
  history = histories_lib.cluster_history(batch, item_to_cluster, num_clusters=4, k=2)
  # Row 0: clusters 0 1 2 0 -> last two unique by latest engagement: 2 (pos 2), 0 (pos 3).
  np.testing.assert_array_equal(history.recent, [[2, 0], [-1, 3], [-1, 1]])
  np.testing.assert_array_equal(history.num_recent, [2, 1, 1])
  np.testing.assert_array_equal(history.engaged(0), [0, 1, 2])
  assert history.is_engaged(np.array([[1, 3], [3, -1], [0, 1]])).tolist() == [
      [True, False], [True, False], [False, True]]


def test_logged_negatives_are_seen_but_not_engaged():
  batch = histories_lib.Histories(np.array([0, 3]), np.array([0, 1, 2], np.int32),
                                  np.array([True, False, True]))
  history = histories_lib.cluster_history(batch, np.array([0, 1, 2]), num_clusters=3, k=2)
  np.testing.assert_array_equal(history.recent, [[0, 2]])
  np.testing.assert_array_equal(batch.seen_matrix()[0, :4], [0, 1, 2, -1])


def small_table():
  """M = 4, K = 2, n = 3: tuple (0, 1) plans 2, 3; (2, 1) plans 3, 0; (3, 1) plans 0, 2."""
  table = TupleTable.empty(4, 2, 3)
  table.set_rows(np.array([[0, 1], [2, 1], [3, 1]]),
                 np.array([[2, 3, -1], [3, 0, -1], [0, 2, -1]]),
                 np.array([[-0.5, -1.0, 0.0], [-0.2, -2.0, 0.0], [-0.1, -0.3, 0.0]]))
  return table


def test_plan_reads_the_table_and_drops_every_engaged_cluster():
  planner = plan_lib.ClusterPlanner(small_table(), cluster_popularity=[5, 1, 9, 2])
  history = histories_lib.ClusterHistory(
      recent=np.array([[0, 1], [0, 1]], np.int32), num_recent=np.array([2, 2], np.int32),
      engaged_keys=np.array([0, 1, 4, 5, 6]), num_clusters=4)  # row 1 also engaged cluster 2
  plan = planner.plan(history, width=2)
  np.testing.assert_array_equal(plan.clusters, [[2, 3], [3, -1]])
  np.testing.assert_allclose(plan.scores[0], [-0.5, -1.0])
  assert [plan_lib.SOURCES[s] for s in plan.source[0]] == ["table", "table"]
  assert plan.source[1, 1] == plan_lib.NO_SOURCE  # nothing novel is left for row 1


def test_shorter_history_aggregates_the_rows_ending_with_it_then_popular_fills():
  planner = plan_lib.ClusterPlanner(small_table(), cluster_popularity=[5, 1, 9, 2])
  # Rows ending with cluster 1: (0,1) -> 2,3; (2,1) -> 3,0; (3,1) -> 0,2. Borda (3 points for
  # rank 0, 2 for rank 1) averaged over the 3 rows: 0 -> 5/3, 2 -> 5/3, 3 -> 5/3; ties by id.
  clusters, scores = planner.suffix_plan(np.array([1]))
  np.testing.assert_array_equal(clusters, [0, 2, 3])
  np.testing.assert_allclose(scores, [5 / 3] * 3)
  history = histories_lib.ClusterHistory(
      recent=np.array([[-1, 1], [-1, -1]], np.int32), num_recent=np.array([1, 0], np.int32),
      engaged_keys=np.array([1, 2 + 4]), num_clusters=4)  # row 0: 1; row 1: cluster 2 (neg.)
  plan = planner.plan(history, width=4)
  np.testing.assert_array_equal(plan.clusters[0], [0, 2, 3, -1])
  assert [plan_lib.SOURCES[s] for s in plan.source[0][:3]] == ["table_suffix"] * 3
  # Row 1 has no recent cluster: the most popular clusters it has not engaged with.
  np.testing.assert_array_equal(plan.clusters[1], [0, 3, 1, -1])
  assert set(plan.source[1][:3]) == {plan_lib.POPULAR}


def test_mix_puts_exploration_at_even_slots_and_drops_regular_duplicates():
  np.testing.assert_array_equal(slate_lib.exploration_slots(2, 6), [1, 4])
  mixed = slate_lib.mix(np.array([[7, 8]]), np.array([[8, 1, 2, 3, 4, 5]]),
                        np.arange(6, 0, -1, dtype=np.float32)[None], n_regular=4)
  np.testing.assert_array_equal(mixed.items, [[1, 7, 2, 3, 8, 4]])
  np.testing.assert_array_equal(mixed.kind, [[1, 0, 1, 1, 0, 1]])
  np.testing.assert_array_equal(mixed.regular_scores, [[5, 4, 3, 2]])


# On a real (tiny) run ----------------------------------------------------------


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  return serving_run(tmp_path_factory)


@pytest.fixture(scope="module")
def explorer(run):
  return Explorer.load(run[0], run[1])


def assert_valid_slate(explorer, result, history):
  seen = set(history)
  engaged_clusters = {int(explorer.item_to_cluster[i]) for i in explorer.items.dense(history)}
  slate = [entry["item"] for entry in result["slate"]]
  assert len(slate) == len(set(slate)) == 10  # 3 exploration + 7 regular by default
  assert not seen & set(slate)
  planned = {c["cluster"] for c in result["clusters"]}
  assert len(planned) == 3 and not planned & engaged_clusters
  for entry in result["slate"]:
    if entry["kind"] == "explore":
      assert entry["cluster"] in planned
  for cluster in result["clusters"]:
    assert all(item["cluster"] == cluster["cluster"] for item in cluster["items"])
    scores = [item["score"] for item in cluster["items"]]
    assert scores == sorted(scores, reverse=True)
  json.dumps(result)  # JSON-ready


def test_user_slate_never_returns_seen_items_or_plans_history_clusters(explorer):
  for user in explorer.users.ids[:10]:
    history = explorer.user_history(user)
    result = explorer.recommend_user(user)
    assert result["user"] == user.item() and result["history"]["items"] == len(history)
    # Logged users are planned from their positive engagements only.
    positives = explorer.items.original(explorer.log.items[
        explorer.log.offsets[user]:explorer.log.offsets[user + 1]][explorer.log.engaged[
            explorer.log.offsets[user]:explorer.log.offsets[user + 1]]])
    assert_valid_slate(explorer, result, positives)
    assert not set(history) & {entry["item"] for entry in result["slate"]}


def test_explicit_history_is_encoded_like_the_stored_user_vector(explorer):
  user = explorer.users.ids[3]
  history = explorer.user_history(user)
  stored = explorer.recommend_users([user])
  encoded = explorer.recommend_batch([history])
  np.testing.assert_allclose(explorer.encoder.encode(histories_lib.Histories.from_lists(
      [explorer.items.dense(history)])), explorer.user_vectors[[3]], rtol=1e-4, atol=1e-4)
  np.testing.assert_array_equal(stored.mixed.regular, encoded.mixed.regular)


def test_batch_rows_equal_single_calls_and_sizes_are_honoured(explorer):
  histories = [explorer.user_history(u)[:n] for u, n in zip(explorer.users.ids[:5], (1, 3, 8, 20, 40))]
  batch = explorer.recommend_batch(histories, n_explore=2, n_regular=3)
  for row, history in enumerate(histories):
    single = explorer.recommend(history, n_explore=2, n_regular=3)
    assert explorer.describe(batch, row) == single
    assert len(single["slate"]) == 5
    assert [e["kind"] for e in single["slate"]].count("explore") == 2


def test_cached_regular_candidates_equal_a_catalog_scan(run, explorer):
  uncached = Explorer.load(run[0], run[1], ServingConfig(regular_cache=0))
  assert uncached.regular_cache is None
  assert explorer.regular_cache[1].shape == (len(explorer.user_vectors), 32)
  users = explorer.users.ids[:40]
  for sizes in ({}, {"n_explore": 2, "n_regular": 5}, {"n_explore": 20, "n_regular": 30}):
    cached, scanned = explorer.recommend_users(users, **sizes), uncached.recommend_users(
        users, **sizes)
    np.testing.assert_array_equal(cached.mixed.items, scanned.mixed.items)
    np.testing.assert_array_equal(cached.mixed.regular_scores, scanned.mixed.regular_scores)
  # A cached candidate is never an item of the user's log.
  for row in range(10):
    logged = explorer.log.items[explorer.log.offsets[row]:explorer.log.offsets[row + 1]]
    assert not set(logged) & set(explorer.regular_cache[1][row].tolist())


@pytest.mark.parametrize("bad", [-1, 201, 2.0, True])
def test_regular_cache_size_is_checked(bad):
  with pytest.raises(ServingError, match="ServingConfig.regular_cache"):
    ServingConfig(regular_cache=bad)


def test_one_item_history_uses_the_shorter_history_fallback_and_names_it(explorer):
  result = explorer.recommend([explorer.items.ids[0]])
  assert result["plan_source"].startswith("table_suffix")
  assert len(result["history"]["recent_clusters"]) == 1
  assert_valid_slate(explorer, result, [explorer.items.ids[0].item()])


def test_bad_requests_are_named(explorer):
  with pytest.raises(UnknownIdError, match="unknown user id 123456"):
    explorer.recommend_user(123456)
  with pytest.raises(UnknownIdError, match="unknown item id 99999"):
    explorer.recommend([1, 99999])
  with pytest.raises(UnknownIdError, match="'x' is not an integer"):
    explorer.recommend(["x"])
  with pytest.raises(ServingError, match="history 0 is empty"):
    explorer.recommend([])
  with pytest.raises(ServingError, match="n_explore=-1"):
    explorer.recommend([1], n_explore=-1)


def copy_table(table_dir, tmp_path, **fingerprints):
  table = TupleTable.load(table_dir, mmap=False)
  table.fingerprints.update(fingerprints)
  return table.save(tmp_path / "table")


def test_table_from_another_cluster_set_or_checkpoint_is_refused(run, tmp_path):
  run_dir, table_dir = run
  other = copy_table(table_dir, tmp_path, cluster_descriptions="0123456789abcdef")
  with pytest.raises(TableError, match="built from other inputs: cluster_descriptions"):
    Explorer.load(run_dir, other)
  other = copy_table(table_dir, tmp_path, **{"stage:transitions": "fedcba9876543210"})
  with pytest.raises(TableError, match="stage:transitions"):
    Explorer.load(run_dir, other)
  small = small_table().save(tmp_path / "small")
  with pytest.raises(TableError, match="plans over 4 clusters, the run's clusters stage has 16"):
    Explorer.load(run_dir, small)


def test_truncated_table_file_is_refused_and_left_alone(run, tmp_path):
  run_dir, table_dir = run
  copy = tmp_path / "truncated"
  shutil.copytree(table_dir, copy)
  data = (copy / "clusters.npy").read_bytes()
  (copy / "clusters.npy").write_bytes(data[:len(data) // 2])
  with pytest.raises(TableError, match="clusters.npy: .*truncated|clusters.npy: holds"):
    Explorer.load(run_dir, copy)
  assert (copy / "clusters.npy").stat().st_size == len(data) // 2


def test_run_without_a_precompute_table_names_the_fix(run, tmp_path):
  with pytest.raises(ServingError, match="stage 'precompute' is missing; run `explore precompute`"):
    Explorer.load(run[0])
  with pytest.raises(ServingError, match="does not exist"):
    Explorer.load(tmp_path / "nothing", run[1])


def test_precompute_stage_table_is_served_until_an_input_stage_is_remade(run, tmp_path):
  from explore import rundir  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / "run"
  shutil.copytree(run[0], run_dir)
  runs = rundir.RunDir(run_dir)

  def precompute_with(transitions_fingerprint):
    path = runs.begin("precompute", {"seed": 0}, {
        "clusters": runs.manifest("clusters").fingerprint,
        "transitions": transitions_fingerprint})
    shutil.copytree(run[1], path / "table")
    runs.finish("precompute")

  precompute_with(runs.manifest("transitions").fingerprint)
  explorer = Explorer.load(run_dir)  # the stage's table, through its loader
  assert explorer.inputs.table_path == run_dir / "precompute" / "table"
  assert explorer.recommend_user(explorer.users.ids[0])["plan_source"] == "table"
  precompute_with("0123456789abcdef")  # as if the planner's checkpoint had been retrained
  with pytest.raises(TableError, match="stage\\(s\\) transitions were remade since"):
    Explorer.load(run_dir)


def test_serving_benchmark_times_the_cached_and_scanning_batch_paths(explorer):
  from serving_fixtures import serving_bench  # pylint: disable=g-import-not-at-top
  rows = serving_bench.time_batch(explorer, batch=8, batches=1)
  assert set(rows) == {"recommend_users", "recommend_users catalog scan",
                       "recommend_users explore_only", "recommend_batch"}
  assert all(row["users_per_s"] > 0 for row in rows.values())
  assert explorer.regular_cache is not None  # the scanning row used a copy without it
