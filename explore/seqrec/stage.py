"""The `seqrec` stage: train the transformer sequence recommender, rank, report.

Reads the `data` stage's interactions and writes into the stage folder:
  model/            the trainer's model_dir (orbax checkpoints, model-info.txt,
                    train/ TensorBoard scalars and metrics.jsonl)
  best_checkpoint/  a copy of the checkpoint with the best validation NDCG@10
  validation.jsonl  HR@k / NDCG@k (validation and test) after every round of epochs
  vectors/          `SeqRecVectors` of the best round (item and user vectors, for retrieval)
  metrics.json      the model at its best validation round and the most-popular
                    baseline (HR@k / NDCG@k, validation and test), seconds per epoch
The folder of an interrupted run is kept (same config) and training resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from absl import logging

from explore import artifacts
from explore import stages
from explore.data import stage as data_stage
from explore.seqrec import data as data_lib
from explore.seqrec import training as training_lib
from explore.seqrec.model import SeqRecConfig
from explore.seqrec.task import SoftmaxConfig
from explore.seqrec.vectors import SeqRecVectors

METRICS = "metrics.json"
VECTORS = training_lib.VECTORS


def load_vectors(stage_path: Path) -> SeqRecVectors:
  """The item and user vectors written by the `seqrec` stage."""
  return SeqRecVectors.load(Path(stage_path) / VECTORS)


def load_metrics(stage_path: Path) -> dict[str, Any]:
  return artifacts.read_json(Path(stage_path) / METRICS)


def _default_mesh():
  from explore import partitioning  # pylint: disable=g-import-not-at-top
  return partitioning.create_mesh(partitioning.MeshConfig())


@stages.register_stage("seqrec", deps=("data",),
                       configurables=("SeqRecConfig", "SoftmaxConfig", "SeqRecTraining"))
def seqrec_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Trains the SASRec-style recommender; HR@10 / NDCG@10 against most-popular."""
  interactions = data_stage.load_interactions(ctx.input_path("data"))
  split = data_lib.leave_last_out(data_lib.user_sequences(interactions))
  config = SeqRecConfig(num_items=interactions.num_items)
  training = training_lib.SeqRecTraining()
  softmax = SoftmaxConfig()
  logging.info("seqrec: %d users (%d evaluated: >= %d items), %d items, %s softmax",
               split.sequences.num_users, len(split.eval_users), data_lib.MIN_EVAL_LENGTH,
               config.num_items, softmax.kind)
  result = training_lib.fit(split, config, ctx.path, ctx.mesh if ctx.mesh is not None else _default_mesh(), training,
                            softmax, seed=ctx.seed)
  best = result.best
  losses = [r["train_loss"] for r in result.rounds if r.get("train_loss") is not None]
  metrics = {
      "model": {"val": best["val"], "test": best["test"]},
      "most_popular": result.baseline,
      "best_epoch": best["epoch"],
      "best_step": best["step"],
      "epochs_trained": result.rounds[-1]["epoch"],
      "stopped_reason": result.stopped_reason,
      "seconds_per_epoch": result.seconds_per_epoch,
      "steps_per_epoch": result.steps_per_epoch,
      "training_windows": result.num_windows,
      "train_loss_first_round": losses[0] if losses else None,
      "train_loss_last_round": losses[-1] if losses else None,
      "users": split.sequences.num_users,
      "evaluated_users": int(len(split.eval_users)),
      "items": config.num_items,
      "softmax": softmax.kind,
  }
  artifacts.atomic_write_json(ctx.path / METRICS, metrics)
  k = training.selection_metric.partition("@")[2]
  logging.info("seqrec: best epoch %d; test HR@%s %.4f NDCG@%s %.4f (most popular %.4f / %.4f)",
               best["epoch"], k, best["test"][f"hr@{k}"], k, best["test"][f"ndcg@{k}"],
               result.baseline["test"][f"hr@{k}"], result.baseline["test"][f"ndcg@{k}"])
  return {key: metrics[key] for key in (
      "model", "most_popular", "best_epoch", "epochs_trained", "seconds_per_epoch",
      "stopped_reason", "evaluated_users")}
