"""Novel-interest transitions: examples, time split, counts, curation and the task source."""

from __future__ import annotations

import csv
import time

import numpy as np
import pytest

from explore.data.schema import Interactions
from explore.transitions import TEST
from explore.transitions import TRAIN
from explore.transitions import NovelTransitions
from explore.transitions import TaskSourceError
from explore.transitions import TransitionsError
from explore.transitions import count_tuples
from explore.transitions import curate
from explore.transitions import export_task_source
from explore.transitions import novel_transitions
from explore.transitions import read_task_source

A, B, C, D, E = range(5)


def log(sequences: dict[int, list], num_items: int = 5) -> Interactions:
  """A log from per-user event lists; an event is an item (positive) or ("neg", item)."""
  user, item, positive, timestamp = [], [], [], []
  for u, events in sequences.items():
    for t, event in enumerate(events):
      is_negative = isinstance(event, tuple)
      user.append(u)
      item.append(event[1] if is_negative else event)
      positive.append(not is_negative)
      timestamp.append(100 * u + t)
  num_users = max(sequences) + 1
  return Interactions.from_columns(user, item, timestamp, np.ones(len(user)), positive,
                                   np.arange(num_users), np.arange(num_items))


def transitions(sequences, k=2, test_fraction=0.0, **kwargs) -> NovelTransitions:
  return novel_transitions(log(sequences), np.arange(5), 5, k=k, test_fraction=test_fraction,
                           **kwargs)


def pairs(t: NovelTransitions) -> list[tuple[tuple[int, ...], int]]:
  return [(tuple(h), n) for h, n in zip(t.history.tolist(), t.next_cluster.tolist())]


def test_consecutive_duplicates_are_removed():
  assert pairs(transitions({0: [A, A, B, B, B, C]})) == [((A, B), C)]


def test_return_to_an_old_cluster_is_not_an_example():
  assert pairs(transitions({0: [A, B, C, A, B, D]})) == [((A, B), C), ((A, B), D)]


def test_history_is_the_last_k_unique_clusters_for_k2():
  assert pairs(transitions({0: [A, B, C, A, D]})) == [((A, B), C), ((C, A), D)]


def test_history_is_the_last_k_unique_clusters_for_k3():
  # Before D the sequence is A B A C: the last three unique clusters are B, A, C.
  assert pairs(transitions({0: [A, B, A, C, D]}, k=3)) == [((B, A, C), D)]


def test_history_skips_repeats_far_back():
  assert pairs(transitions({0: [A, B, C, B, C, B, C, D]}, k=3)) == [((A, B, C), D)]


def test_users_with_fewer_than_k_clusters_are_counted():
  t = transitions({0: [A, B, C], 1: [A, A, B], 2: [C], 3: [("neg", A)]}, k=3)
  summary = t.summary()
  assert summary["users_with_fewer_than_k_clusters"] == 3
  assert summary["users_without_positives"] == 1
  assert summary["users_without_novel_transitions"] == 4
  assert len(t) == 0


def test_negative_engagements_are_ignored():
  # The negative C neither breaks the A run nor makes C old: C is still novel.
  t = transitions({0: [A, ("neg", C), A, B, ("neg", A), C]})
  assert pairs(t) == [((A, B), C)]
  assert t.timestamp.tolist() == [5]


def test_example_records_the_clusters_engaged_before():
  t = transitions({0: [A, B, A, C, D], 1: [D, E, A]})
  assert [t.previously_engaged(i).tolist() for i in range(len(t))] == [[A, B], [A, B, C], [D, E]]
  mask = t.previously_engaged_mask(np.arange(len(t)))
  assert mask.tolist() == [[True, True, False, False, False], [True, True, True, False, False],
                           [False, False, False, True, True]]


def test_time_split_puts_the_latest_fraction_in_test():
  rng = np.random.default_rng(0)
  sequences = {u: list(rng.integers(0, 5, 12)) for u in range(40)}
  t = transitions(sequences, test_fraction=0.25)
  test, train = t.timestamp[t.split == TEST], t.timestamp[t.split == TRAIN]
  assert test.min() >= train.max()
  assert test.min() == t.cut_timestamp
  assert len(test) == pytest.approx(0.25 * len(t), abs=1)


def test_examples_with_the_cut_timestamp_all_go_to_test():
  # Four users with the same times 0, 1, 2: four examples, all at time 2.
  inter = log({u: [A, B, C] for u in range(4)})
  inter = Interactions.from_columns(
      inter.user, inter.item, inter.timestamp % 100, inter.engagement, inter.positive,
      inter.user_ids, inter.item_ids)
  t = novel_transitions(inter, np.arange(5), 5, test_fraction=0.25)
  assert t.split.tolist() == [TEST] * 4


def test_tuple_counts_count_each_history_next_pair():
  t = transitions({0: [A, B, C], 1: [A, B, C], 2: [A, B, D], 3: [B, A, C]})
  counts = t.tuple_counts(TRAIN)
  rows = list(zip(map(tuple, counts.history.tolist()), counts.next_cluster.tolist(),
                  counts.count.tolist()))
  assert rows == [((A, B), C, 2), ((A, B), D, 1), ((B, A), C, 1)]
  assert counts.num_tuples() == 2


def test_chunked_processing_matches_one_pass():
  rng = np.random.default_rng(1)
  inter = log({u: list(rng.integers(0, 5, 30)) for u in range(50)})
  one = novel_transitions(inter, np.arange(5), 5, k=2)
  chunked = novel_transitions(inter, np.arange(5), 5, k=2, max_events_per_chunk=40)
  for name in ("user", "history", "next_cluster", "timestamp", "split", "engaged_clusters",
               "engaged_offsets", "num_engaged_before"):
    np.testing.assert_array_equal(getattr(one, name), getattr(chunked, name), err_msg=name)


def test_five_thousand_users_of_a_hundred_events_take_well_under_a_second():
  rng = np.random.default_rng(2)
  num_users, events, num_items = 5000, 100, 2000
  n = num_users * events
  inter = Interactions.from_columns(
      np.repeat(np.arange(num_users), events), rng.integers(0, num_items, n),
      rng.integers(0, 10**9, n), np.ones(n), rng.random(n) < 0.7, np.arange(num_users),
      np.arange(num_items))
  start = time.perf_counter()
  t = novel_transitions(inter, rng.integers(0, 256, num_items), 256)
  t.tuple_counts(TRAIN)
  assert time.perf_counter() - start < 1.5
  assert len(t) > 0


def test_save_load_round_trip(tmp_path):
  t = transitions({0: [A, B, C, D], 1: [B, C, E]}, test_fraction=0.3)
  t.save(tmp_path / "transitions")
  loaded = NovelTransitions.load(tmp_path / "transitions")
  assert pairs(loaded) == pairs(t)
  assert loaded.split.tolist() == t.split.tolist()
  assert loaded.cut_timestamp == t.cut_timestamp and loaded.num_clusters == 5
  assert loaded.previously_engaged(1).tolist() == t.previously_engaged(1).tolist()


def test_item_to_cluster_length_must_match_interactions():
  with pytest.raises(TransitionsError, match="item_to_cluster has shape .*5 items"):
    novel_transitions(log({0: [A, B]}), np.arange(3), 5)


def test_cluster_ids_out_of_range_are_rejected():
  with pytest.raises(TransitionsError, match=r"item_to_cluster\[4\] = 9 is outside \[0, 5\)"):
    novel_transitions(log({0: [A, B]}), np.array([0, 1, 2, 3, 9]), 5)


def test_k_below_one_is_rejected():
  with pytest.raises(TransitionsError, match="k \\(history length\\) must be an integer >= 1"):
    novel_transitions(log({0: [A, B]}), np.arange(5), 5, k=0)


def test_test_fraction_out_of_range_is_rejected():
  with pytest.raises(TransitionsError, match="test_fraction must be in"):
    novel_transitions(log({0: [A, B]}), np.arange(5), 5, test_fraction=1.0)


# Curation on: (A,B)->C x6, (A,B)->D x1, (B,A)->C x3, (C,D)->E x2.
COUNTS = count_tuples(np.array([[A, B]] * 7 + [[B, A]] * 3 + [[C, D]] * 2),
                      np.array([C] * 6 + [D] + [C] * 3 + [E] * 2))


def weights_by_pair(counts) -> dict:
  return {(tuple(h), n): w for h, n, w in zip(counts.history.tolist(),
                                              counts.next_cluster.tolist(), counts.weight)}


def test_curate_min_count_drops_rare_pairs():
  assert set(weights_by_pair(curate(COUNTS, min_count=2))) == {
      ((A, B), C), ((B, A), C), ((C, D), E)}


def test_curate_cap_per_pair_limits_frequent_pairs():
  w = weights_by_pair(curate(COUNTS, cap_per_pair=3))
  assert w == {((A, B), C): 3, ((A, B), D): 1, ((B, A), C): 3, ((C, D), E): 2}


def test_curate_cap_per_tuple_scales_a_tuple_keeping_ratios():
  w = weights_by_pair(curate(COUNTS, cap_per_tuple=3.5))
  assert w[((A, B), C)] == pytest.approx(3.0) and w[((A, B), D)] == pytest.approx(0.5)
  assert w[((B, A), C)] == 3 and w[((C, D), E)] == 2


def test_curate_downweights_popular_next_clusters_toward_the_tail():
  curated = curate(COUNTS, popular_next_downweight=1.0)
  w = weights_by_pair(curated)
  assert curated.weight.sum() == pytest.approx(COUNTS.weight.sum())
  # C is next 9 times: with alpha = 1 each next cluster gets the same total weight.
  assert w[((A, B), C)] + w[((B, A), C)] == pytest.approx(w[((A, B), D)])
  assert w[((A, B), D)] == pytest.approx(w[((C, D), E)])
  assert curated.count.tolist() == COUNTS.count.tolist()


def test_curate_rejects_bad_options():
  with pytest.raises(ValueError, match="min_count must be an integer >= 1"):
    curate(COUNTS, min_count=0)


DESCRIPTIONS = ["hiking, trails", "camping, tents", "cooking, pasta", "jazz", "rock, guitar"]


def test_task_source_round_trips_through_the_python_reader(tmp_path):
  paths = export_task_source(tmp_path, curate(COUNTS, cap_per_pair=3), COUNTS, DESCRIPTIONS)
  rows = read_task_source(paths["train"])
  assert rows["history_ids"].tolist() == [[A, B], [A, B], [B, A], [C, D]]
  assert rows["next_id"].tolist() == [C, D, C, E]
  assert rows["count"].tolist() == [6, 1, 3, 2]
  assert rows["weight"].tolist() == [3, 1, 3, 2]
  assert rows["inputs"][0] == "history: hiking, trails | camping, tents"
  assert rows["targets"][0] == "cooking, pasta"
  assert len(read_task_source(paths["test"])["next_id"]) == len(COUNTS)


def test_task_source_refuses_a_description_with_a_tab(tmp_path):
  bad = DESCRIPTIONS[:3] + ["jazz\tblues"] + DESCRIPTIONS[4:]
  with pytest.raises(TaskSourceError, match="contains a tab or line break"):
    export_task_source(tmp_path, COUNTS, COUNTS, bad)


def test_task_source_reader_names_a_malformed_line(tmp_path):
  path = tmp_path / "train.tsv"
  path.write_text("history_ids\tnext_id\tcount\tweight\tinputs\ttargets\n1 2\t3\t4\n")
  with pytest.raises(TaskSourceError, match="train.tsv:2: expected 6 tab-separated fields"):
    read_task_source(path)


def test_seqio_text_line_source_reads_every_row(tmp_path):
  seqio = pytest.importorskip("seqio")
  paths = export_task_source(tmp_path, COUNTS, COUNTS, DESCRIPTIONS)
  source = seqio.TextLineDataSource({"train": str(paths["train"])}, skip_header_lines=1)
  lines = [line.decode() for line in source.get_dataset("train", shuffle=False).as_numpy_iterator()]
  assert len(lines) == len(COUNTS)
  assert lines[0].split("\t")[-1] == "cooking, pasta"


def read_movielens(directory) -> tuple[Interactions, np.ndarray]:
  with open(directory / "ratings.csv", newline="") as f:
    rows = list(csv.DictReader(f))
  user_ids, user = np.unique([int(r["userId"]) for r in rows], return_inverse=True)
  item_ids, item = np.unique([int(r["movieId"]) for r in rows], return_inverse=True)
  rating = np.asarray([float(r["rating"]) for r in rows], np.float32)
  inter = Interactions.from_columns(user, item, [int(r["timestamp"]) for r in rows], rating,
                                    rating >= 4.0, user_ids, item_ids)
  return inter, item_ids


def test_movielens_transitions_have_counts_and_a_time_split(movielens_small_dir):
  inter, item_ids = read_movielens(movielens_small_dir)
  item_to_cluster = (item_ids * 2654435761 % 2**32) % 64  # a fixed hash into 64 groups
  t = novel_transitions(inter, item_to_cluster, 64)
  summary = t.summary()
  assert summary["num_examples_train"] > 10_000 and summary["num_examples_test"] > 1_000
  assert summary["num_examples_test"] == pytest.approx(0.1 * len(t), rel=0.01)
  assert t.timestamp[t.split == TEST].min() > t.timestamp[t.split == TRAIN].max()
  counts = t.tuple_counts(TRAIN)
  assert counts.count.sum() == summary["num_examples_train"] and counts.count.max() > 1
  assert len(summary["top_next_clusters_train"]) == 10
