"""The reference SASRec: RecBole's, trained on MovieLens and ranked with and without the history.

Trains RecBole's SASRec with its defaults (2 blocks, 2 heads, width 64, MLP 256,
dropout 0.5, history of 50, full-catalog cross-entropy, Adam lr 0.001, batch
2048 prefixes, early stopping after 10 epochs without a better validation
NDCG@10) on leave-last-two-out by time, then ranks the best checkpoint's
validation and test users twice: as RecBole does for sequential models (the
user's earlier items left among the candidates; checked against RecBole's own
evaluator, which it prints beside) and with them removed (the protocol of
`explore/seqrec/evaluation.py`). It also reports where the model ranks the
newest item of its own input, how many of the user's earlier items reach its
top 10, and whether explore's `SeqRecModel` given the trained weights computes
the same scores, training loss and gradients ("parity"). Results: docs/seqrec.md,
"RecBole's SASRec, run here".

The order of a user's items. RecBole keeps a `:float` field as float32, whose step
is 64 s for Unix times of 1987-2004 and 128 s after, so it sorts ratings made
within a minute or two of each other as ties and keeps those in file order
(ascending movieId in ratings.csv): `--time_order=recbole` (the default) trains
on that order, as RecBole's users do. `--time_order=exact` writes each timestamp
as its rank among the distinct timestamps (exact in float32), so RecBole sees the
exact time order with only same-second ties in file order: the order explore's
MovieLens loader uses. `--export_movielens=DIR` writes a MovieLens folder whose
ratings carry the float32 timestamps (movies, tags and links copied), so explore
can train on RecBole's order (`--gin.MOVIELENS_DIR`), and exits without RecBole.

`--resume` continues a run that stopped at its `--epochs` cap while still
improving: it loads the checkpoint in `--work_dir/saved` (model, optimizer, the
early-stopping counter; the checkpoint must hold the run's last epoch, i.e. the
last epoch was its best) and trains on to the new `--epochs` or RecBole's early
stop, with the validation curve and the fit time carried on from `report.json`
(kept as `report.epoch<N>.json`). A run killed before it wrote `report.json`
resumes the same way from its RecBole log (`--work_dir/log`: the validation
curve and the epochs' training and validation times), with the seed checked
against the checkpoint's and the time order against the data file it trained on. The only difference from an uninterrupted
run is the random state of the data order after the resumed epoch.

RecBole is not a dependency of explore (it pins NumPy 1 names and pulls ray);
run it in its own virtual environment that sees the system's packages:

  python3 -m venv --system-site-packages /tmp/rbenv
  /tmp/rbenv/bin/pip install --no-deps recbole==1.2.1 colorlog==4.7.2 colorama==0.4.4 \
      texttable thop tabulate
  /tmp/rbenv/bin/pip install pandas scikit-learn tensorboard torch==2.13.0
  TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 /tmp/rbenv/bin/python tools/recbole_sasrec.py \
      --ratings=../shared/data/ml-latest-small/ratings.csv --work_dir=/tmp/recbole \
      --epochs=25 --seed=2020
  TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 /tmp/rbenv/bin/python tools/recbole_sasrec.py \
      --ratings=../shared/data/ml-latest-small/ratings.csv --work_dir=/tmp/recbole \
      --epochs=300 --seed=2020 --resume
  python3 tools/recbole_sasrec.py --ratings=../shared/data/ml-latest-small/ratings.csv \
      --export_movielens=/tmp/ml_recbole_order
"""

from __future__ import annotations

import argparse
import csv
import json
import os
from pathlib import Path
import re
import shutil
import time

import numpy as np

DATASET = "movielens"
TOP_K = 10
TIME_ORDERS = ("recbole", "exact")
MOVIELENS_COLUMNS = ("userId", "movieId", "rating", "timestamp")


def read_ratings(ratings: Path) -> tuple[list[dict[str, str]], np.ndarray]:
  """The rows of a MovieLens ratings.csv (columns checked) and their int64 timestamps."""
  if not ratings.is_file():
    raise SystemExit(f"--ratings={ratings}: file not found (MovieLens ratings.csv)")
  with ratings.open(newline="") as src:
    reader = csv.DictReader(src)
    missing = set(MOVIELENS_COLUMNS) - set(reader.fieldnames or ())
    if missing:
      raise SystemExit(f"--ratings={ratings}: columns {sorted(missing)} are missing")
    rows = list(reader)
  for line, row in enumerate(rows, start=2):
    if not row["timestamp"].strip().isdigit():
      raise SystemExit(f"--ratings={ratings}: line {line}: timestamp {row['timestamp']!r} is "
                       "not a non-negative integer")
  return rows, np.array([int(row["timestamp"]) for row in rows], np.int64)


def float32_timestamps(timestamps: np.ndarray) -> np.ndarray:
  """The Unix times RecBole sorts by: each rounded to the nearest float32."""
  return np.asarray(timestamps, np.float64).astype(np.float32).astype(np.int64)


def timestamp_ranks(timestamps: np.ndarray) -> np.ndarray:
  """Each timestamp's rank among the distinct ones: the same order, exact in float32."""
  ranks = np.unique(np.asarray(timestamps, np.int64), return_inverse=True)[1]
  if len(ranks) and ranks.max() >= 2**24:
    raise SystemExit(f"{ranks.max() + 1} distinct timestamps: more than float32 holds exactly")
  return ranks.astype(np.int64)


def write_atomic_file(ratings: Path, data_dir: Path, time_order: str = "recbole",
                      must_match: bool = False) -> None:
  """ratings.csv (userId, movieId, rating, timestamp) -> RecBole's `<dataset>.inter`.

  With `must_match` the file must already be there with the same contents (a resumed run
  trains on the data it started on); it is checked, not written.
  """
  if time_order not in TIME_ORDERS:
    raise SystemExit(f"--time_order={time_order!r}: must be one of {TIME_ORDERS}")
  rows, stamps = read_ratings(ratings)
  if time_order == "exact":
    stamps = timestamp_ranks(stamps)
  text = "".join(["user_id:token\titem_id:token\trating:float\ttimestamp:float\n"] + [
      f"{row['userId']}\t{row['movieId']}\t{row['rating']}\t{stamp}\n"
      for row, stamp in zip(rows, stamps.tolist())])
  target = data_dir / DATASET / f"{DATASET}.inter"
  if must_match:
    if not target.is_file() or target.read_text() != text:
      raise SystemExit(f"--resume: {target} is not what --ratings={ratings} and "
                       f"--time_order={time_order} write; pass the run's own flags")
    return
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_text(text)


def export_movielens(ratings: Path, out_dir: Path) -> int:
  """A MovieLens folder in RecBole's order: ratings with float32 timestamps, the rest copied.

  Returns how many ratings changed timestamp. Writes into a fresh folder only (never over a
  MovieLens folder already there).
  """
  rows, stamps = read_ratings(ratings)
  if out_dir.exists() and any(out_dir.iterdir()):
    raise SystemExit(f"--export_movielens={out_dir}: the folder exists and is not empty")
  rounded = float32_timestamps(stamps)
  out_dir.mkdir(parents=True, exist_ok=True)
  with (out_dir / "ratings.csv").open("w", newline="") as dst:
    writer = csv.writer(dst)
    writer.writerow(MOVIELENS_COLUMNS)
    for row, stamp in zip(rows, rounded.tolist()):
      writer.writerow([row["userId"], row["movieId"], row["rating"], stamp])
  for name in ("movies.csv", "tags.csv", "links.csv"):
    if (ratings.parent / name).is_file():
      shutil.copyfile(ratings.parent / name, out_dir / name)
  return int((rounded != stamps).sum())


def rank_users(model, loader, seen: dict[int, set[int]], later: dict[int, set[int]]
               ) -> dict[str, object]:
  """HR / NDCG / MRR@10 with the history kept and removed; where the newest input item ranks."""
  import torch  # pylint: disable=import-outside-toplevel

  from explore.seqrec import evaluation  # pylint: disable=import-outside-toplevel

  ranks = {"unmasked": [], "masked": []}
  newest_rank, history_in_top = [], []
  with torch.no_grad():
    for batch in loader:
      interaction = batch[0]
      scores = model.full_sort_predict(interaction).view(len(interaction), -1).numpy().copy()
      scores[:, 0] = -np.inf  # RecBole's padding item
      targets = interaction["item_id"].numpy()
      users = interaction["user_id"].numpy()
      inputs = interaction["item_id_list"].numpy()
      lengths = interaction["item_length"].numpy()
      for r, (user, target) in enumerate(zip(users.tolist(), targets.tolist())):
        row = scores[r]
        history = seen[user] - {target} - later.get(user, set())
        above = int((row > row[target]).sum())
        ranks["unmasked"].append(above)
        ranks["masked"].append(above - int((row[np.fromiter(history, int)] > row[target]).sum()))
        newest = inputs[r, lengths[r] - 1]
        newest_rank.append(int((row > row[newest]).sum()))
        history_in_top.append(len(set(np.argsort(-row)[:TOP_K].tolist()) & history))
  newest_rank = np.asarray(newest_rank)
  report = {key: evaluation.ranking_metrics(np.asarray(r), (TOP_K,)) for key, r in ranks.items()}
  report.update(newest_input_item_median_rank=float(np.median(newest_rank)),
                newest_input_item_first=float(np.mean(newest_rank == 0)),
                newest_input_item_in_top10=float(np.mean(newest_rank < TOP_K)),
                history_items_in_top10=float(np.mean(history_in_top)), users=len(newest_rank))
  return report


def _to_explore(recbole_key: str, value: np.ndarray, heads: int) -> np.ndarray:
  """A RecBole SASRec tensor (torch layout) in the layout of explore's parameter."""
  width = value.shape[-1]
  if recbole_key.endswith(("query.weight", "key.weight", "value.weight")):
    return value.T.reshape(width, heads, -1)  # [out, in] -> [D, H, K]
  if recbole_key.endswith(("query.bias", "key.bias", "value.bias")):
    return value.reshape(heads, -1)
  if recbole_key.endswith("dense.weight") and "attention" in recbole_key:
    return value.T.reshape(heads, -1, value.shape[0])  # [D, H*K] -> [H, K, D]
  if recbole_key.endswith(("dense_1.weight", "dense_2.weight")):
    return value.T
  return value


def _explore_path(recbole_key: str) -> tuple[str, ...]:
  """The explore `SeqRecModel` parameter that a RecBole SASRec state-dict key maps to."""
  fixed = {"item_embedding.weight": ("items", "table"),
           "position_embedding.weight": ("positions",),
           "LayerNorm.weight": ("input_norm", "scale"), "LayerNorm.bias": ("input_norm", "bias")}
  if recbole_key in fixed:
    return fixed[recbole_key]
  _, _, block, module, *rest = recbole_key.split(".")
  leaf = {"weight": "scale", "bias": "bias"}
  if rest[0] == "LayerNorm":
    norm = "attention_norm" if module == "multi_head_attention" else "mlp_norm"
    return ("blocks", int(block), norm, leaf[rest[1]])
  if module == "multi_head_attention":
    name = {"query": "q", "key": "k", "value": "v", "dense": "out"}[rest[0]]
    return ("blocks", int(block), "attention", name if rest[1] == "weight" else f"{name}_bias")
  name = {"dense_1": "up", "dense_2": "down"}[rest[0]]
  return ("blocks", int(block), "mlp", name if rest[1] == "weight" else f"{name}_bias")


def check_parity(model, config, train_batch, test_batch) -> dict[str, float]:
  """explore's SeqRecModel with the RecBole model's weights: scores, loss and gradients.

  The model is built with RecBole's layout (post-LN, attention biases, exact
  GELU, positions from the oldest item); histories are right-padded in
  RecBole and left-padded here. Dropout is off on both sides.
  """
  # pylint: disable=import-outside-toplevel
  import jax
  import jax.numpy as jnp
  from flax import nnx
  import torch

  from explore.seqrec.model import SeqRecConfig, build_model
  from explore.seqrec.task import SeqRecTask

  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  rows, width = state["item_embedding.weight"].shape
  ours = build_model(SeqRecConfig(
      num_items=rows - 1, max_len=config["MAX_ITEM_LIST_LENGTH"], embed_dim=width,
      num_blocks=config["n_layers"], num_heads=config["n_heads"], mlp_dim=config["inner_size"],
      dropout=config["hidden_dropout_prob"], norm="post", init="normal",
      layer_norm_epsilon=config["layer_norm_eps"], positions="from_start", attention_bias=True,
      gelu="erf"))
  graphdef, params, rest = nnx.split(ours, nnx.Param, ...)

  def node(tree, path):
    for part in path:
      tree = tree[part]
    return tree

  for key, value in state.items():
    target = node(params, _explore_path(key))
    value = _to_explore(key, value, config["n_heads"])
    if key == "item_embedding.weight":  # explore's table is rounded up to a multiple of rows
      value = np.concatenate([value, np.zeros((target.shape[0] - rows, width), value.dtype)])
    target.set_value(jnp.asarray(value))

  def left_padded(batch):
    seq, length = batch["item_id_list"].numpy(), batch["item_length"].numpy()
    out = np.zeros_like(seq)
    for r, n in enumerate(length.tolist()):
      out[r, seq.shape[1] - n:] = seq[r, :n]
    return jnp.asarray(out, jnp.int32)

  model.eval()
  with torch.no_grad():
    reference = model.full_sort_predict(test_batch).numpy()  # [B, rows]
  hidden = nnx.merge(graphdef, params, rest).user_vectors(left_padded(test_batch))
  scores = np.asarray(hidden @ node(params, ("items", "table")).get_value()[:rows].T)
  model.zero_grad()
  reference_loss = model.calculate_loss(train_batch)
  reference_loss.backward()
  task = SeqRecTask(ours.config)
  batch = {"inputs": left_padded(train_batch),
           "targets": jnp.asarray(train_batch["item_id"].numpy()[:, None], jnp.int32)}
  loss, grads = jax.value_and_grad(
      lambda p: task.loss(nnx.merge(graphdef, p, rest), batch, train=False)[0])(params)
  worst, worst_key = 0.0, None
  for key, parameter in model.named_parameters():
    expected = _to_explore(key, parameter.grad.numpy(), config["n_heads"])
    got = np.asarray(node(grads, _explore_path(key)).get_value())
    if key == "item_embedding.weight":  # row 0: RecBole's padding item is a class, not here
      expected, got = expected[1:], got[1:rows]
    if key.endswith("key.bias"):  # its gradient is 0 up to rounding: it shifts every logit
      continue
    relative = float(np.abs(got - expected).max() / np.abs(expected).max())
    if relative > worst:
      worst, worst_key = relative, key
  return {"scores_max_abs_difference": float(np.abs(scores[:, 1:] - reference[:, 1:]).max()),
          "scores_max_abs": float(np.abs(reference[:, 1:]).max()),
          "top10_sets_equal": float(np.mean([
              set(np.argsort(-scores[r, 1:])[:TOP_K]) == set(np.argsort(-reference[r, 1:])[:TOP_K])
              for r in range(len(reference))])),
          "loss": float(loss), "recbole_loss": float(reference_loss.item()),
          "gradient_max_relative_difference": worst, "gradient_worst_parameter": worst_key,
          "users": int(len(reference)), "train_batch": int(len(train_batch))}


def best_saved_epoch(curve: list[dict[str, float]]) -> int:
  """The epoch (from 1) whose checkpoint RecBole keeps: the last of the highest NDCG@10.

  RecBole saves on every validation score at least as high as the best so far, and its scores
  are rounded (4 places), so ties are common and the later epoch is the one kept. After a
  resume with no better epoch RecBole returns no best result, so the report reads it here.
  """
  scores = [c[f"ndcg@{TOP_K}"] for c in curve]
  return len(scores) - int(np.argmax(scores[::-1]))


LOG_TRAINED = re.compile(r"epoch \d+ (?:training|evaluating) \[time: ([0-9.]+)s")
LOG_VALIDATED = re.compile(r"hit@10 : ([0-9.]+)\s+ndcg@10 : ([0-9.]+)")


def interrupted_run(work_dir: Path) -> dict:
  """What the RecBole log of a run killed before its report says: its curve and time."""
  report_path = work_dir / "report.json"
  logs = sorted((work_dir / "log").glob("*/*.log"))
  if len(logs) != 1:
    raise SystemExit(f"--resume: {report_path} not found and {work_dir / 'log'} holds "
                     f"{len(logs)} RecBole logs; train without --resume first")
  curve, seconds = [], 0.0
  for line in logs[0].read_text().splitlines():
    if trained := LOG_TRAINED.search(line):
      seconds += float(trained[1])
    elif validated := LOG_VALIDATED.search(line):
      curve.append({f"hit@{TOP_K}": float(validated[1]), f"ndcg@{TOP_K}": float(validated[2])})
  if not curve:
    raise SystemExit(f"--resume: {logs[0]} records no validated epoch; train without "
                     "--resume first")
  return {"recbole": {"best_epoch": best_saved_epoch(curve), "epochs_trained": len(curve),
                      "valid_curve": curve, "fit_seconds": round(seconds, 1)},
          "interrupted_log": str(logs[0])}


def previous_run(work_dir: Path, seed: int, time_order: str,
                 epochs: int) -> tuple[dict, Path]:
  """The report and checkpoint of the run in `work_dir` that `--resume` continues.

  A run killed before its report is read off its RecBole log (`interrupted_run`); its seed
  and time order are checked in `main`, against the checkpoint and the data file.
  """
  report_path = work_dir / "report.json"
  report = (json.loads(report_path.read_text()) if report_path.is_file() else
            interrupted_run(work_dir))
  for name, value in (("seed", seed), ("time_order", time_order)):
    if "interrupted_log" not in report and report.get(name) != value:
      raise SystemExit(f"--resume: {report_path} was trained with {name}={report.get(name)!r}, "
                       f"not {value!r}; pass --{name}={report.get(name)}")
  run = report["recbole"]
  if run["best_epoch"] != run["epochs_trained"]:
    raise SystemExit(
        f"--resume: the checkpoint of {work_dir} holds its best epoch {run['best_epoch']}, not "
        f"its last epoch {run['epochs_trained']}; resuming from it would drop the epochs after "
        "it (a run that early-stopped is finished)")
  if epochs <= run["epochs_trained"]:
    raise SystemExit(f"--resume: --epochs={epochs} is not above the {run['epochs_trained']} "
                     f"epochs {work_dir} has trained")
  # RecBole 1.2.1 saves a resumed run into the checkpoint it loaded; should the folder hold
  # several, the newest is the run's. `main` checks that it holds the curve's last epoch.
  checkpoints = sorted((work_dir / "saved").glob("*.pth"), key=lambda c: c.stat().st_mtime)
  if not checkpoints:
    raise SystemExit(f"--resume: {work_dir / 'saved'} holds no checkpoint")
  return report, checkpoints[-1]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--ratings", type=Path, required=True, help="MovieLens ratings.csv")
  parser.add_argument("--work_dir", type=Path, help="where RecBole writes (required to train)")
  parser.add_argument("--epochs", type=int, default=300)
  parser.add_argument("--seed", type=int, default=2020, help="RecBole's default seed")
  parser.add_argument("--time_order", default="recbole", choices=TIME_ORDERS,
                      help="recbole: float32 timestamps, as RecBole sorts; exact: the exact order")
  parser.add_argument("--export_movielens", type=Path, default=None,
                      help="write a MovieLens folder in RecBole's order here and exit")
  parser.add_argument("--resume", action="store_true",
                      help="continue the run in --work_dir from its checkpoint to --epochs")
  args = parser.parse_args()
  if args.export_movielens is not None:
    changed = export_movielens(args.ratings.resolve(), args.export_movielens)
    print(f"{args.export_movielens}: MovieLens with float32 timestamps ({changed} changed)")
    return
  if args.work_dir is None:
    raise SystemExit("--work_dir is required to train (RecBole writes its data, logs and "
                     "checkpoints there)")

  # RecBole 1.2.1 aliases NumPy names that NumPy 2 removed; give them their NumPy 2 values.
  for old, new in (("float_", np.float64), ("complex_", np.complex128), ("unicode_", np.str_)):
    if not hasattr(np, old):
      setattr(np, old, new)
  # pylint: disable=import-outside-toplevel
  from recbole.config import Config
  from recbole.data import create_dataset, data_preparation
  from recbole.model.sequential_recommender import SASRec
  from recbole.trainer import Trainer
  from recbole.utils import init_logger, init_seed

  args.work_dir = args.work_dir.resolve()
  previous, checkpoint = (previous_run(args.work_dir, args.seed, args.time_order, args.epochs)
                          if args.resume else (None, None))
  write_atomic_file(args.ratings.resolve(), args.work_dir / "data", args.time_order,
                    must_match=previous is not None and "interrupted_log" in previous)
  os.chdir(args.work_dir)  # RecBole writes log/ and log_tensorboard/ into the working folder
  config = Config(model="SASRec", dataset=DATASET, config_dict={
      "data_path": str(args.work_dir / "data"),
      "load_col": {"inter": ["user_id", "item_id", "rating", "timestamp"]},
      "eval_args": {"split": {"LS": "valid_and_test"}, "order": "TO", "mode": "full",
                    "group_by": "user"},
      "train_neg_sample_args": None, "loss_type": "CE", "metrics": ["Hit", "NDCG"],
      "topk": [TOP_K], "valid_metric": f"NDCG@{TOP_K}", "epochs": args.epochs,
      "stopping_step": 10, "checkpoint_dir": str(args.work_dir / "saved"),
      "show_progress": False, "seed": args.seed, "reproducibility": True, "use_gpu": False,
      "device": "cpu"})
  init_seed(config["seed"], config["reproducibility"])
  init_logger(config)
  dataset = create_dataset(config)
  train_data, valid_data, test_data = data_preparation(config, dataset)
  model = SASRec(config, train_data.dataset).to(config["device"])
  trainer = Trainer(config, model)
  curve = []  # validation HR / NDCG@10 of every epoch (RecBole's protocol)
  fit_before = 0.0
  if previous is not None:
    import torch  # pylint: disable=import-outside-toplevel
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    curve = list(previous["recbole"]["valid_curve"])
    if saved["config"]["seed"] != args.seed or saved["epoch"] + 1 != len(curve):
      raise SystemExit(f"--resume: {checkpoint} holds epoch {saved['epoch'] + 1} of seed "
                       f"{saved['config']['seed']}, not epoch {len(curve)} of --seed={args.seed}")
    trainer.resume_checkpoint(checkpoint)
    fit_before = previous["recbole"]["fit_seconds"]
    if "interrupted_log" not in previous:
      shutil.copyfile(args.work_dir / "report.json",
                      args.work_dir / f"report.epoch{len(curve)}.json")
  valid_epoch = trainer._valid_epoch  # pylint: disable=protected-access

  def recording_valid_epoch(*a, **kw):
    score, result = valid_epoch(*a, **kw)
    curve.append({k: float(v) for k, v in result.items()})
    return score, result

  trainer._valid_epoch = recording_valid_epoch  # pylint: disable=protected-access
  start = time.perf_counter()
  _, best_valid = trainer.fit(train_data, valid_data, saved=True, show_progress=False)
  fit_seconds = fit_before + time.perf_counter() - start
  recbole_test = trainer.evaluate(test_data, load_best_model=True, show_progress=False)
  model.eval()

  seen: dict[int, set[int]] = {}
  for user, item in zip(dataset.inter_feat["user_id"].tolist(),
                        dataset.inter_feat["item_id"].tolist()):
    seen.setdefault(user, set()).add(item)
  test_targets = {}
  for batch in test_data:
    for user, item in zip(batch[0]["user_id"].tolist(), batch[0]["item_id"].tolist()):
      test_targets[user] = {item}
  best_epoch = best_saved_epoch(curve)
  report = {
      "recbole": {"best_valid": curve[best_epoch - 1] if best_valid is None else
                                {k: float(v) for k, v in best_valid.items()},
                  "test": {k: float(v) for k, v in recbole_test.items()},
                  "best_epoch": best_epoch,
                  "epochs_trained": len(curve), "valid_curve": curve,
                  "fit_seconds": round(fit_seconds, 1)},
      "test": rank_users(model, test_data, seen, {}),
      "valid": rank_users(model, valid_data, seen, test_targets),
      "parity": check_parity(model, config, next(iter(train_data)), next(iter(test_data))[0]),
      "seed": args.seed, "epochs": args.epochs, "time_order": args.time_order,
      "resumed_after_epochs": [] if previous is None else
                              [*previous.get("resumed_after_epochs", []),
                               previous["recbole"]["epochs_trained"]]}
  text = json.dumps(report, indent=1)
  (args.work_dir / "report.json").write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
