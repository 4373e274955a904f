"""tools/recbole_sasrec.py: the order RecBole gives a user's items, and the exact one.

RecBole keeps timestamps as float32 (64 s apart before 2004, 128 s after), so ratings made
within a minute or two of each other tie and keep file order. These tests need no RecBole.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

import recbole_sasrec
from explore.data.movielens import load_movielens

MOVIES = "movieId,title,genres\n1,A (1990),Drama\n2,B (1991),Comedy\n3,C (1992),Drama\n"
# User 7 rates movie 3, then 2, then 1, each 20 s apart, in the float32 step of 2018 (128 s).
RATINGS = ("userId,movieId,rating,timestamp\n"
           "7,1,4.0,1514764840\n7,2,3.0,1514764820\n7,3,5.0,1514764800\n"
           "9,1,4.0,964982703\n9,2,2.0,964982000\n")


def _folder(tmp_path, ratings=RATINGS):
  folder = tmp_path / "ml"
  folder.mkdir()
  (folder / "movies.csv").write_text(MOVIES)
  (folder / "ratings.csv").write_text(ratings)
  return folder


def _inter_rows(data_dir):
  path = data_dir / recbole_sasrec.DATASET / f"{recbole_sasrec.DATASET}.inter"
  lines = path.read_text().splitlines()
  assert lines[0] == "user_id:token\titem_id:token\trating:float\ttimestamp:float"
  return [line.split("\t") for line in lines[1:]]


def test_float32_timestamps_round_to_the_float32_step():
  stamps = np.array([964982703, 964982000, 1514764800, 1514764840, 2**24 + 1], np.int64)
  rounded = recbole_sasrec.float32_timestamps(stamps)
  assert rounded.tolist() == [964982720, 964982016, 1514764800, 1514764800, 2**24]
  np.testing.assert_array_equal(rounded, np.float32(stamps).astype(np.int64))


def test_timestamp_ranks_keep_the_order_and_the_ties():
  stamps = np.array([1514764840, 1514764820, 1514764800, 964982703, 1514764820], np.int64)
  ranks = recbole_sasrec.timestamp_ranks(stamps)
  assert ranks.tolist() == [3, 2, 1, 0, 2]
  assert (np.float32(ranks).astype(np.int64) == ranks).all()  # exact where RecBole reads it


@pytest.mark.parametrize("order,expected", [
    ("recbole", ["1514764800", "1514764800", "1514764800", "964982720", "964982016"]),
    ("exact", ["4", "3", "2", "1", "0"]),
])
def test_atomic_file_timestamps_by_order(tmp_path, order, expected):
  folder = _folder(tmp_path)
  recbole_sasrec.write_atomic_file(folder / "ratings.csv", tmp_path / "rb", order)
  rows = _inter_rows(tmp_path / "rb")
  assert [r[:3] for r in rows] == [["7", "1", "4.0"], ["7", "2", "3.0"], ["7", "3", "5.0"],
                                   ["9", "1", "4.0"], ["9", "2", "2.0"]]
  if order == "recbole":  # what RecBole's float32 field holds of the raw times
    assert [int(np.float32(float(r[3]))) for r in rows] == [int(s) for s in expected]
  else:
    assert [r[3] for r in rows] == expected


def test_unknown_time_order_is_named(tmp_path):
  with pytest.raises(SystemExit, match="--time_order='hours'"):
    recbole_sasrec.write_atomic_file(_folder(tmp_path) / "ratings.csv", tmp_path / "rb", "hours")


def test_export_gives_explore_recboles_order(tmp_path):
  folder = _folder(tmp_path)
  exact, _ = load_movielens(folder)
  out = tmp_path / "recbole_order"
  changed = recbole_sasrec.export_movielens(folder / "ratings.csv", out)
  assert changed == 4  # all but 1514764800, a float32 already
  assert (out / "movies.csv").read_text() == MOVIES
  with (out / "ratings.csv").open(newline="") as f:
    assert [r["timestamp"] for r in csv.DictReader(f)] == [
        "1514764800", "1514764800", "1514764800", "964982720", "964982016"]
  rounded, _ = load_movielens(out)

  def user_items(interactions, user_id):
    rows = interactions.user == list(interactions.user_ids).index(user_id)
    return interactions.item_ids[interactions.item[rows]].tolist()

  assert user_items(exact, 7) == [3, 2, 1]  # exact time order
  assert user_items(rounded, 7) == [1, 2, 3]  # one float32 tie: file order (movieId)
  assert user_items(exact, 9) == user_items(rounded, 9) == [2, 1]


def test_export_never_writes_into_a_folder_with_files(tmp_path):
  folder = _folder(tmp_path)
  out = tmp_path / "taken"
  out.mkdir()
  (out / "ratings.csv").write_text("keep me")
  with pytest.raises(SystemExit, match="exists and is not empty"):
    recbole_sasrec.export_movielens(folder / "ratings.csv", out)
  assert (out / "ratings.csv").read_text() == "keep me"


@pytest.mark.parametrize("ratings,message", [
    ("userId,movieId,rating\n7,1,4.0\n", r"columns \['timestamp'\] are missing"),
    ("userId,movieId,rating,timestamp\n7,1,4.0,12.5\n", "line 2: timestamp '12.5'"),
])
def test_bad_ratings_are_named(tmp_path, ratings, message):
  folder = _folder(tmp_path, ratings)
  with pytest.raises(SystemExit, match=message):
    recbole_sasrec.export_movielens(folder / "ratings.csv", tmp_path / "out")
  assert not (tmp_path / "out").exists()


def test_missing_ratings_file_is_named(tmp_path):
  with pytest.raises(SystemExit, match="file not found"):
    recbole_sasrec.read_ratings(tmp_path / "nowhere.csv")


def _stopped_run(work_dir, best_epoch=3, epochs_trained=3, checkpoints=("SASRec.pth",)):
  """A work_dir as a run capped at `epochs_trained` epochs leaves it."""
  (work_dir / "saved").mkdir(parents=True)
  for name in checkpoints:
    (work_dir / "saved" / name).write_bytes(b"weights")
  curve = [{"ndcg@10": 0.01 * (1 + (e == best_epoch - 1))} for e in range(epochs_trained)]
  report = {"recbole": {"best_epoch": best_epoch, "epochs_trained": epochs_trained,
                        "valid_curve": curve, "fit_seconds": 30.0},
            "seed": 2020, "time_order": "exact"}
  (work_dir / "report.json").write_text(json.dumps(report))
  return report


def test_resume_finds_the_stopped_run(tmp_path):
  report = _stopped_run(tmp_path)
  previous, checkpoint = recbole_sasrec.previous_run(tmp_path, 2020, "exact", 300)
  assert previous == report
  assert checkpoint == tmp_path / "saved" / "SASRec.pth"


@pytest.mark.parametrize("run,args,message", [
    ({}, (2021, "exact", 300), r"seed=2020, not 2021; pass --seed=2020"),
    ({}, (2020, "recbole", 300), r"time_order='exact', not 'recbole'"),
    ({"best_epoch": 2}, (2020, "exact", 300), "holds its best epoch 2, not its last epoch 3"),
    ({}, (2020, "exact", 3), "--epochs=3 is not above the 3 epochs"),
    ({"checkpoints": ()}, (2020, "exact", 300), "holds 0 checkpoints"),
    ({"checkpoints": ("a.pth", "b.pth")}, (2020, "exact", 300), "holds 2 checkpoints"),
])
def test_resume_refuses_what_it_cannot_continue(tmp_path, run, args, message):
  _stopped_run(tmp_path, **run)
  with pytest.raises(SystemExit, match=message):
    recbole_sasrec.previous_run(tmp_path, *args)


def test_resume_without_a_run_says_so(tmp_path):
  with pytest.raises(SystemExit, match="report.json not found; train without --resume first"):
    recbole_sasrec.previous_run(tmp_path, 2020, "exact", 300)
