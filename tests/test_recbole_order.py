"""tools/recbole_sasrec.py: the order RecBole gives a user's items, and the exact one.

RecBole keeps timestamps as float32 (64 s apart before 2004, 128 s after), so ratings made
within a minute or two of each other tie and keep file order. These tests need no RecBole.
"""

from __future__ import annotations

import csv
import json
import os

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
    ({"checkpoints": ()}, (2020, "exact", 300), "holds no checkpoint"),
])
def test_resume_refuses_what_it_cannot_continue(tmp_path, run, args, message):
  _stopped_run(tmp_path, **run)
  with pytest.raises(SystemExit, match=message):
    recbole_sasrec.previous_run(tmp_path, *args)


def test_resume_takes_the_newest_checkpoint(tmp_path):
  # A resumed run saves a checkpoint of its own beside the one it loaded.
  _stopped_run(tmp_path, checkpoints=("SASRec-Dec-31-2026_23-00-00.pth",
                                      "SASRec-Jan-01-2027_01-00-00.pth"))
  older, newer = tmp_path / "saved" / "SASRec-Jan-01-2027_01-00-00.pth", (
      tmp_path / "saved" / "SASRec-Dec-31-2026_23-00-00.pth")
  os.utime(older, (1_000, 1_000))
  os.utime(newer, (2_000, 2_000))
  assert recbole_sasrec.previous_run(tmp_path, 2020, "exact", 300)[1] == newer


def test_resume_without_a_run_says_so(tmp_path):
  with pytest.raises(SystemExit, match="report.json not found and .* holds 0 RecBole logs; "
                                       "train without --resume first"):
    recbole_sasrec.previous_run(tmp_path, 2020, "exact", 300)


# RecBole's log of a run killed during its fourth epoch: epochs 1, 2 and 3 validated, the
# checkpoint saved after epochs 1 and 3 (epoch 2 scored lower).
KILLED_LOG = """\
Sat 05 Dec 2026 10:02:51 INFO  [Training]: train_batch_size = [2048]
Sat 05 Dec 2026 10:08:10 INFO  epoch 0 training [time: 317.97s, train loss: 422.5437]
Sat 05 Dec 2026 10:08:10 INFO  epoch 0 evaluating [time: 0.25s, valid_score: 0.008800]
Sat 05 Dec 2026 10:08:10 INFO  valid result: \nhit@10 : 0.0148    ndcg@10 : 0.0088
Sat 05 Dec 2026 10:08:10 INFO  Saving current: /w/saved/SASRec-Dec-05-2026_10-02-51.pth
Sat 05 Dec 2026 10:13:02 INFO  epoch 1 training [time: 291.5s, train loss: 394.2448]
Sat 05 Dec 2026 10:13:02 INFO  epoch 1 evaluating [time: 0.25s, valid_score: 0.006000]
Sat 05 Dec 2026 10:13:02 INFO  valid result: \nhit@10 : 0.0120    ndcg@10 : 0.0060
Sat 05 Dec 2026 10:20:18 INFO  epoch 2 training [time: 435.0s, train loss: 388.7935]
Sat 05 Dec 2026 10:20:18 INFO  epoch 2 evaluating [time: 0.5s, valid_score: 0.012400]
Sat 05 Dec 2026 10:20:18 INFO  valid result: \nhit@10 : 0.0230    ndcg@10 : 0.0124
Sat 05 Dec 2026 10:20:18 INFO  Saving current: /w/saved/SASRec-Dec-05-2026_10-02-51.pth
"""


def _killed_run(work_dir, log=KILLED_LOG):
  (work_dir / "log" / "SASRec").mkdir(parents=True)
  (work_dir / "log" / "SASRec" / "SASRec-movielens.log").write_text(log)
  (work_dir / "saved").mkdir()
  (work_dir / "saved" / "SASRec-Dec-05-2026_10-02-51.pth").write_bytes(b"weights")


def test_resume_reads_a_killed_run_off_its_log(tmp_path):
  _killed_run(tmp_path)
  previous, checkpoint = recbole_sasrec.previous_run(tmp_path, 2021, "exact", 25)
  assert previous["recbole"] == {
      "best_epoch": 3, "epochs_trained": 3, "fit_seconds": 1045.5,
      "valid_curve": [{"hit@10": 0.0148, "ndcg@10": 0.0088},
                      {"hit@10": 0.0120, "ndcg@10": 0.0060},
                      {"hit@10": 0.0230, "ndcg@10": 0.0124}]}
  assert checkpoint == tmp_path / "saved" / "SASRec-Dec-05-2026_10-02-51.pth"


@pytest.mark.parametrize("log,message", [
    # the last validated epoch scored lower: the checkpoint holds epoch 1, not 2
    ("\n".join(KILLED_LOG.splitlines()[:10]), "holds its best epoch 1, not its last epoch 2"),
    (KILLED_LOG.splitlines()[0], "records no validated epoch"),
], ids=["last-epoch-not-saved", "nothing-validated"])
def test_resume_refuses_a_killed_run_it_cannot_continue(tmp_path, log, message):
  _killed_run(tmp_path, log)
  with pytest.raises(SystemExit, match=message):
    recbole_sasrec.previous_run(tmp_path, 2021, "exact", 25)


def test_resumed_data_must_be_the_runs_own(tmp_path):
  folder = _folder(tmp_path)
  recbole_sasrec.write_atomic_file(folder / "ratings.csv", tmp_path / "rb", "exact")
  before = _inter_rows(tmp_path / "rb")
  recbole_sasrec.write_atomic_file(folder / "ratings.csv", tmp_path / "rb", "exact",
                                   must_match=True)  # the same file: checked, kept
  with pytest.raises(SystemExit, match="is not what --ratings=.* and --time_order=recbole "
                                       "write; pass the run's own flags"):
    recbole_sasrec.write_atomic_file(folder / "ratings.csv", tmp_path / "rb", "recbole",
                                     must_match=True)
  assert _inter_rows(tmp_path / "rb") == before


def test_the_best_epoch_is_the_last_of_a_tie():
  # RecBole rounds its scores and saves on a tie: the checkpoint holds the later epoch.
  curve = [{"ndcg@10": v} for v in (0.0300, 0.0357, 0.0331, 0.0357, 0.0354)]
  assert recbole_sasrec.best_saved_epoch(curve) == 4
  assert recbole_sasrec.best_saved_epoch(curve[:3]) == 2
