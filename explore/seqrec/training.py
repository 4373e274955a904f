"""Training the sequence recommender with validation-based model selection.

`fit` trains with the shared `explore.train.Trainer` in rounds of
`eval_every_epochs` epochs. After each round it ranks the full catalog for
every evaluated user on the **validation** targets only (`evaluation.py`),
appends the result to `<work_dir>/validation.jsonl` (and TensorBoard scalars
to `model/training_eval/`), and when the selection metric (NDCG@k, HR@k or
MRR@k) improves copies that round's checkpoint to `<work_dir>/best_checkpoint/`
(with `param_average_decay`, the rounds rank, and `best_checkpoint/` keeps, the
optimizer's moving average of the weights instead of the weights themselves).
Training stops after `train_epochs`, or earlier when validation has not
improved for `patience` epochs. Only then is the test split read, once: the
best checkpoint is restored and ranked on the test targets, so nothing about
the test items can reach the choice of the round. The rounds rank with each
user's history removed from the candidates (`mask_history`); the final ranking
also reports the best checkpoint with the history left in (`val_unmasked`,
`test_unmasked`: RecBole's protocol for sequential models, for comparison
only, never used to choose). Everything is resumable: a
rerun continues from the trainer's latest checkpoint and the rounds already
logged.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from absl import logging
from flax import nnx
import gin
import jax
import numpy as np

from explore import artifacts
from explore.seqrec import data as data_lib
from explore.seqrec import evaluation
from explore.seqrec import sampling
from explore.seqrec import vectors as vectors_lib
from explore.seqrec.model import SeqRecConfig, SeqRecModel, build_model
from explore.seqrec.task import SeqRecTask, SoftmaxConfig
from explore.seqrec.vectors import SeqRecVectors
from explore.train import Trainer, TrainerConfig, make_optimizer
from explore.train import checkpoints as checkpoints_lib
from explore.train import metrics as metrics_lib
from explore.train import train_step as step_lib
from explore.train.trainer import EVAL_DIR

MODEL_DIR = "model"
VALIDATION_LOG = "validation.jsonl"
BEST_CHECKPOINT = "best_checkpoint"
VECTORS = "vectors"


class SeqRecTrainingError(ValueError):
  """A training setting that cannot be used, or a run that diverged."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SeqRecTraining:
  """How long and how the sequence recommender trains (gin: `SeqRecTraining.x = ...`).

  All optimizer settings are here (not on `make_optimizer`) so that they do
  not mix with another model's trainer bindings in the same run.
  """

  train_epochs: int = 200
  eval_every_epochs: int = 5  # validation ranking (and a checkpoint) every this many epochs
  patience: int = 50  # stop after this many epochs without a better validation metric
  batch_size: int = 128  # windows per step
  # Targets scored per window, and the step between windows (`data.training_windows`):
  # None = max_len (non-overlapping windows); smaller gives each target a longer context.
  window_stride: int | None = None
  max_windows_per_user: int | None = None  # None: cover each whole history; 1: SASRec's newest
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  schedule: str = "constant"
  weight_decay: float = 0.0
  clip_norm: float | None = 1.0
  b1: float = 0.9
  b2: float = 0.98
  # Polyak averaging: validation, the best checkpoint, the vectors and the test ranking use an
  # exponential moving average of the weights over the steps (e.g. 0.99: about the last 100
  # steps); training itself is unchanged. None: the trained weights.
  param_average_decay: float | None = None
  ks: tuple[int, ...] = (10,)
  selection_metric: str = "ndcg@10"
  eval_batch_size: int = 256  # users per ranking batch
  # Remove each user's history from the ranked candidates in the validation rounds (model
  # selection) and in "val" / "test"; False keeps it (RecBole's full sort of sequential models).
  # "val_unmasked" / "test_unmasked" are reported either way.
  mask_history: bool = True
  log_every: int = 50

  def __post_init__(self):
    object.__setattr__(self, "ks", tuple(self.ks))
    for name in ("train_epochs", "eval_every_epochs", "patience", "batch_size",
                 "eval_batch_size", "log_every"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise SeqRecTrainingError(f"SeqRecTraining.{name}={value!r} must be a positive integer")
    decay = self.param_average_decay
    if decay is not None and not (isinstance(decay, (int, float)) and 0 < decay < 1):
      raise SeqRecTrainingError(
          f"SeqRecTraining.param_average_decay={decay!r} must be in (0, 1) or None")
    metric, _, k = self.selection_metric.partition("@")
    if metric not in evaluation.METRICS or not k.isdigit() or int(k) not in self.ks:
      raise SeqRecTrainingError(
          f"SeqRecTraining.selection_metric={self.selection_metric!r} must be one of "
          f"{', '.join(m + '@k' for m in evaluation.METRICS)} with k in ks={self.ks}")


@dataclasses.dataclass
class FitResult:
  """What `fit` reports and hands on."""

  model: SeqRecModel  # the trained model at its last round (not necessarily the best)
  # The best validation round (step, epoch, val) + its "test", "val_unmasked", "test_unmasked"
  best: dict[str, Any]
  rounds: list[dict[str, Any]]  # every validation round
  baseline: dict[str, dict[str, float]]  # most popular: the same four keys as `best`
  vectors: SeqRecVectors  # item and user vectors of the best round
  steps_per_epoch: int
  seconds_per_epoch: float | None  # median wall time of an epoch over rounds (no compile)
  num_windows: int
  mean_context: float  # mean items read by a scored training position
  stopped_reason: str  # "done" | "early_stopped"
  train_history: list[dict] = dataclasses.field(default_factory=list)


def _save_best(trainer: Trainer, averaged: SeqRecModel | None, target: Path) -> None:
  """Writes the best round's weights to target/checkpoint_<step>, replacing target.

  Without a parameter average the trainer's own checkpoint of the step is copied
  (weights and optimizer state); with one, the `averaged` model's weights alone.
  """
  step = trainer.step
  tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
  try:
    if averaged is None:
      source = trainer.model_dir / f"checkpoint_{step}"
      shutil.copytree(source, tmp / source.name)
    else:
      checkpoints_lib.save_weights(averaged, tmp, step)
    artifacts.replace_folder(tmp, target)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write_scalars(model_dir: Path, step: int, values: dict[str, dict[str, float]]) -> None:
  """{split: ranking metrics} as TensorBoard scalars in `model_dir/training_eval/`."""
  writer = metrics_lib.MetricWriter(model_dir / EVAL_DIR, jax.process_index() == 0)
  writer.write(step, {f"{split}/{name}": value for split, metrics in values.items()
                      for name, value in metrics.items()})
  writer.close()


def restore_best_model(config: SeqRecConfig, work_dir: Path, step: int,
                       seed: int = 0) -> SeqRecModel:
  """The model of `best_checkpoint/checkpoint_<step>` (weights only, on one device)."""
  graphdef, params, extras = step_lib.split_model(build_model(config, seed))
  folder = Path(work_dir) / BEST_CHECKPOINT
  target = step_lib.TrainState(params=params, extras=extras, opt_state=None, step=None)
  checkpoints = checkpoints_lib.TrainCheckpoints(folder, keep=None, async_save=False)
  try:
    restored, _, _ = checkpoints.restore(target, folder / f"checkpoint_{step}",
                                         weights_only=True)
  finally:
    checkpoints.close()
  return nnx.merge(graphdef, restored["params"], restored.get("extras", extras))


def token_clusters(config: SeqRecConfig, item_clusters: np.ndarray | None,
                   num_items: int) -> np.ndarray | None:
  """[num_items + 1] cluster id per token (cluster index + 1; 0 for padding), or None."""
  if not config.num_clusters:
    if item_clusters is not None:
      raise SeqRecTrainingError("item_clusters were given but SeqRecConfig.num_clusters = 0; "
                                "set it to the number of clusters to use them")
    return None
  if item_clusters is None:
    raise SeqRecTrainingError(f"SeqRecConfig.num_clusters = {config.num_clusters} needs "
                              "item_clusters (the cluster of every item)")
  item_clusters = np.asarray(item_clusters)
  if item_clusters.shape != (num_items,):
    raise SeqRecTrainingError(f"item_clusters has shape {item_clusters.shape}, expected "
                              f"({num_items},): one cluster per item")
  if item_clusters.min() < 0 or item_clusters.max() >= config.num_clusters:
    raise SeqRecTrainingError(f"item_clusters holds cluster {int(item_clusters.max())} or "
                              f"{int(item_clusters.min())}, outside [0, "
                              f"SeqRecConfig.num_clusters={config.num_clusters})")
  return np.concatenate([[0], item_clusters.astype(np.int32) + 1]).astype(np.int32)


def best_round(rounds: Sequence[dict[str, Any]], metric: str) -> dict[str, Any]:
  """The first round with the highest validation `metric` (ties keep the earlier one)."""
  return rounds[int(np.argmax([r["val"][metric] for r in rounds]))]


def _stalled_epochs(rounds: Sequence[dict[str, Any]], metric: str) -> int:
  """Epochs since the best validation value (0 when the last round is the best)."""
  return rounds[-1]["epoch"] - best_round(rounds, metric)["epoch"]


@dataclasses.dataclass
class TrainingSetup:
  """What `fit` trains with (also timed on its own by bench/seqrec_train.py)."""

  trainer: Trainer
  batches: sampling.SequenceBatches
  windows: dict[str, np.ndarray]  # `data.training_windows`
  clusters_of_tokens: np.ndarray | None
  steps_per_epoch: int


def build_trainer(split: data_lib.LeaveLastOutSplit, model_config: SeqRecConfig,
                  model_dir: Path, mesh: jax.sharding.Mesh, training: SeqRecTraining,
                  softmax: SoftmaxConfig, seed: int = 0,
                  item_clusters: np.ndarray | None = None) -> TrainingSetup:
  """The training rows, their resumable batches and the trainer (not yet restored)."""
  num_items = split.sequences.num_items
  if model_config.num_items != num_items:
    raise SeqRecTrainingError(f"SeqRecConfig.num_items={model_config.num_items} but the "
                              f"interactions have {num_items} items")
  clusters_of_tokens = token_clusters(model_config, item_clusters, num_items)
  windows = data_lib.training_windows(split, model_config.max_len, training.window_stride,
                                      training.max_windows_per_user)
  num_windows = len(windows["inputs"])
  if num_windows < training.batch_size:
    raise SeqRecTrainingError(
        f"SeqRecTraining.batch_size={training.batch_size} is larger than the {num_windows} "
        "training windows; lower it")
  counts = split.target_counts()
  task = SeqRecTask(model_config, softmax, counts, batch_size=training.batch_size,
                    scored_positions=windows["targets"].shape[1])
  batches = sampling.SequenceBatches(windows, training.batch_size, seed,
                                     softmax.sampled_negatives, task.sampler, clusters_of_tokens)
  steps_per_epoch = batches.batches_per_epoch
  total_steps = steps_per_epoch * training.train_epochs
  optimizer = make_optimizer(
      total_steps, learning_rate=training.learning_rate,
      warmup_steps=min(training.warmup_steps, total_steps), schedule=training.schedule,
      end_learning_rate_fraction=0.1, weight_decay=training.weight_decay,
      clip_norm=training.clip_norm, b1=training.b1, b2=training.b2,
      param_average_decay=training.param_average_decay)
  trainer_config = TrainerConfig(
      train_steps=steps_per_epoch, batch_size=training.batch_size, eval_every=0,
      checkpoint_every=total_steps, keep_checkpoints=2, log_every=training.log_every,
      seed=seed)
  trainer = Trainer(task, lambda: build_model(model_config, seed), model_dir, mesh,
                    trainer_config, optimizer=optimizer)
  return TrainingSetup(trainer, batches, windows, clusters_of_tokens, steps_per_epoch)


def fit(split: data_lib.LeaveLastOutSplit, model_config: SeqRecConfig, work_dir: str | Path,
        mesh: jax.sharding.Mesh, training: SeqRecTraining | None = None,
        softmax: SoftmaxConfig | None = None, seed: int = 0,
        item_clusters: np.ndarray | None = None,
        on_round: Callable[[dict[str, Any]], None] | None = None) -> FitResult:
  """Trains on `split`'s training prefixes; selects the round by validation ranking.

  `item_clusters` ([num_items] cluster index per dense item) feeds the model's
  cluster embeddings; it is required exactly when `model_config.num_clusters` > 0.

  Writes into `work_dir`: `model/` (the trainer's checkpoints and logs),
  `validation.jsonl`, `best_checkpoint/` and `vectors/` (`SeqRecVectors` of
  the best round). Rounds are chosen on validation; the test split is ranked
  once, with the best round's checkpoint, after training stops.
  """
  training = training or SeqRecTraining()
  softmax = softmax or SoftmaxConfig()
  work_dir = Path(work_dir)
  work_dir.mkdir(parents=True, exist_ok=True)
  num_items = split.sequences.num_items
  setup = build_trainer(split, model_config, work_dir / MODEL_DIR, mesh, training, softmax,
                        seed, item_clusters)
  trainer, batches, windows = setup.trainer, setup.batches, setup.windows
  clusters_of_tokens, steps_per_epoch = setup.clusters_of_tokens, setup.steps_per_epoch
  num_windows, counts = len(windows["inputs"]), split.target_counts()

  val = data_lib.ranking_examples(split, "val", model_config.max_len)

  trainer.restore(batches)  # the model and data position of the latest checkpoint, if any
  log_path = work_dir / VALIDATION_LOG
  rounds = artifacts.read_jsonl(log_path)
  metric = training.selection_metric
  stopped_reason = "done"
  history: list[dict] = []
  round_epochs = list(range(training.eval_every_epochs, training.train_epochs,
                            training.eval_every_epochs)) + [training.train_epochs]
  elapsed = rounds[-1].get("elapsed_seconds", 0.0) if rounds else 0.0
  for epoch in round_epochs:
    if rounds and _stalled_epochs(rounds, metric) >= training.patience:
      stopped_reason = "early_stopped"
      break
    if any(r["epoch"] == epoch for r in rounds):
      continue
    trainer.config.train_steps = epoch * steps_per_epoch
    start = time.perf_counter()
    result = trainer.train(batches)
    seconds = time.perf_counter() - start
    if result.stopped_reason == "nan":
      raise SeqRecTrainingError(
          f"seqrec training diverged (non-finite loss) before step {result.step}; lower "
          "SeqRecTraining.learning_rate or raise warmup_steps")
    history = list(result.history)  # the whole run's (the trainer reads earlier rounds back)
    averaged = trainer.averaged_model  # None without SeqRecTraining.param_average_decay
    model = trainer.model if averaged is None else averaged  # the one validation chooses
    scorer = evaluation.model_scorer(model, clusters_of_tokens)
    record = {"epoch": epoch, "step": trainer.step,
              "train_seconds": round(seconds, 3),
              "epochs_trained": (epoch - rounds[-1]["epoch"]) if rounds else epoch,
              "train_loss": result.history[-1]["loss"] if result.history else None,
              "val": evaluation.evaluate(scorer, val, num_items, training.ks,
                                         training.eval_batch_size, training.mask_history)}
    is_best = not rounds or record["val"][metric] > max(r["val"][metric] for r in rounds)
    if is_best:
      _save_best(trainer, averaged, work_dir / BEST_CHECKPOINT)
      vectors_lib.model_vectors(model, split.sequences,
                                {"step": record["step"], "epoch": epoch},
                                clusters_of_tokens).save(work_dir / VECTORS)
    elapsed += time.perf_counter() - start
    record["elapsed_seconds"] = round(elapsed, 3)  # training + validation since the start
    artifacts.append_jsonl(log_path, record)
    _write_scalars(work_dir / MODEL_DIR, record["step"], {"val": record["val"]})
    rounds.append(record)
    logging.info("seqrec epoch %d (step %d, %.0f s): loss %s, val %s%s", epoch, record["step"],
                 elapsed, record["train_loss"], record["val"], " (best so far)" if is_best else "")
    if on_round is not None:
      on_round(record)

  best = dict(best_round(rounds, metric))
  final, baseline = _final_test(split, model_config, work_dir, best["step"], seed,
                                clusters_of_tokens, training, counts, val, best["val"])
  best.update(final)
  _write_scalars(work_dir / MODEL_DIR, best["step"], final)
  logging.info("seqrec: best epoch %d by validation %s; test (read once) %s, history unmasked "
               "%s; most popular %s", best["epoch"], metric, best["test"],
               best["test_unmasked"], baseline)
  per_epoch = [r["train_seconds"] / r["epochs_trained"] for r in rounds[1:]] or [
      r["train_seconds"] / r["epochs_trained"] for r in rounds]
  return FitResult(model=trainer.model, best=best, rounds=rounds, baseline=baseline,
                   vectors=SeqRecVectors.load(work_dir / VECTORS),
                   steps_per_epoch=steps_per_epoch,
                   seconds_per_epoch=float(np.median(per_epoch)) if per_epoch else None,
                   num_windows=num_windows, mean_context=data_lib.mean_context(windows),
                   stopped_reason=stopped_reason, train_history=history)


def _final_test(split: data_lib.LeaveLastOutSplit, config: SeqRecConfig, work_dir: Path,
                best_step: int, seed: int, clusters_of_tokens: np.ndarray | None,
                training: SeqRecTraining, counts: np.ndarray, val: data_lib.RankingExamples,
                best_val: dict[str, float]
                ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
  """The best checkpoint's "test", "val_unmasked" and "test_unmasked" metrics, and the
  most-popular baseline's (and its "val").

  The only place `fit` reads the test targets: after the rounds are chosen.
  `best_val`: the best round's validation metrics (`training.mask_history`'s protocol).
  """
  test = data_lib.ranking_examples(split, "test", config.max_len)
  model = restore_best_model(config, work_dir, best_step, seed)

  def rank(scorer, examples, mask_history=training.mask_history):
    return evaluation.evaluate(scorer, examples, config.num_items, training.ks,
                               training.eval_batch_size, mask_history)

  def unmasked(scorer, examples, metrics):  # `metrics` are unmasked already without masking
    return rank(scorer, examples, mask_history=False) if training.mask_history else metrics

  scorer = evaluation.model_scorer(model, clusters_of_tokens)
  model_test = rank(scorer, test)
  model_metrics = {"test": model_test, "val_unmasked": unmasked(scorer, val, best_val),
                   "test_unmasked": unmasked(scorer, test, model_test)}
  popular = evaluation.popularity_scorer(counts)
  baseline = {}
  for name, examples in (("val", val), ("test", test)):
    baseline[name] = rank(popular, examples)
    baseline[f"{name}_unmasked"] = unmasked(popular, examples, baseline[name])
  return model_metrics, baseline
