"""The `seqrec` stage: train the transformer sequence recommender, rank, report.

Reads the `data` stage's interactions and the `clusters` stage's item -> cluster
map at the exploration level, and writes into the stage folder:
  model/            the trainer's model_dir (orbax checkpoints, model-info.txt,
                    train/ TensorBoard scalars and metrics.jsonl)
  best_checkpoint/  a copy of the checkpoint with the best validation NDCG@10
  validation.jsonl  validation HR@k / NDCG@k / MRR@k after every round of epochs
  vectors/          `SeqRecVectors` of the best round (item and user vectors, for retrieval),
                    with the popularity prior and its weight tuned for in-cluster retrieval
  metrics.json      the model at its best validation round (test ranked once, after
                    training) and the most-popular baseline (HR@k / NDCG@k / MRR@k,
                    validation and test; also "val_unmasked" / "test_unmasked", ranked
                    with the user's history left among the candidates as RecBole does
                    for sequential models), seconds per epoch and to the best epoch,
                    and "grounding": the best model's retrieval restricted to the
                    test item's cluster (`grounding.py`), with and without the
                    popularity prior (its weight tuned on the validation cases)
With `SeqRecStageOptions.cluster_embeddings` the model also embeds each input
item's cluster (the clusters stage's count fills `SeqRecConfig.num_clusters`).
The folder of an interrupted run is kept (same config) and training resumes.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any

from absl import logging
import gin
import numpy as np

from explore import artifacts
from explore import stages
from explore.clusters import stage as clusters_stage
from explore.data import stage as data_stage
from explore.seqrec import data as data_lib
from explore.seqrec import grounding as grounding_lib
from explore.seqrec import training as training_lib
from explore.seqrec import vectors as vectors_lib
from explore.seqrec.model import SeqRecConfig, SeqRecModel
from explore.retrieval.restricted import IMPLEMENTATIONS
from explore.seqrec.task import SoftmaxConfig
from explore.seqrec.vectors import SeqRecVectors

METRICS = "metrics.json"
VECTORS = training_lib.VECTORS


class SeqRecStageError(ValueError):
  """Stage settings that contradict each other or the clusters stage."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SeqRecStageOptions:
  """What the stage feeds the model and how it measures grounding (gin: `SeqRecStageOptions.x`).

  cluster_embeddings: add a learned embedding of each input item's cluster at the
    exploration level; the number of clusters comes from the clusters stage.
  grounding_k: the cutoff of the grounding evaluation.
  grounding_implementation: the `RestrictedRetriever` implementation it uses.
  prior_weights: the weights w of the in-cluster popularity prior,
    score = u . v + w * log(1 + training count), tried on the validation cases;
    the one with the best in-cluster NDCG@k is stored with the vectors and
    reported on test. `()` turns the prior off.
  """

  cluster_embeddings: bool = False
  grounding_k: int = 10
  grounding_implementation: str = "contiguous"
  prior_weights: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)

  def __post_init__(self):
    if not isinstance(self.grounding_k, int) or self.grounding_k < 1:
      raise SeqRecStageError(
          f"SeqRecStageOptions.grounding_k={self.grounding_k!r} must be a positive integer")
    if self.grounding_implementation not in IMPLEMENTATIONS:
      raise SeqRecStageError(
          f"SeqRecStageOptions.grounding_implementation={self.grounding_implementation!r} "
          f"is not one of {', '.join(IMPLEMENTATIONS)}")
    weights = self.prior_weights
    if (not isinstance(weights, (tuple, list))
        or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and math.isfinite(w)
                   for w in weights)):
      raise SeqRecStageError(
          f"SeqRecStageOptions.prior_weights={weights!r} must be a tuple of finite numbers "
          "(() turns the popularity prior off)")


def load_vectors(stage_path: Path) -> SeqRecVectors:
  """The item and user vectors written by the `seqrec` stage."""
  return SeqRecVectors.load(Path(stage_path) / VECTORS)


def load_metrics(stage_path: Path) -> dict[str, Any]:
  return artifacts.read_json(Path(stage_path) / METRICS)


def _default_mesh():
  from explore import partitioning  # pylint: disable=g-import-not-at-top
  return partitioning.create_mesh(partitioning.MeshConfig())


def model_config(num_items: int, num_clusters: int, options: SeqRecStageOptions) -> SeqRecConfig:
  """`SeqRecConfig` from gin with the catalog size and, if enabled, the cluster count filled."""
  config = SeqRecConfig(num_items=num_items)
  if options.cluster_embeddings:
    if config.num_clusters not in (0, num_clusters):
      raise SeqRecStageError(
          f"SeqRecConfig.num_clusters = {config.num_clusters} but the clusters stage has "
          f"{num_clusters} clusters at its exploration level; leave num_clusters unset "
          "(SeqRecStageOptions.cluster_embeddings fills it)")
    return dataclasses.replace(config, num_clusters=num_clusters)
  if config.num_clusters:
    raise SeqRecStageError(
        f"SeqRecConfig.num_clusters = {config.num_clusters} is set, but the stage feeds "
        "clusters only with SeqRecStageOptions.cluster_embeddings = True (which also fills "
        "the count from the clusters stage); set that instead")
  return config


restore_best_model = training_lib.restore_best_model


def case_user_vectors(model: SeqRecModel, split: data_lib.LeaveLastOutSplit,
                      item_tokens_clusters: np.ndarray | None, which: str = "test",
                      batch_size: int = 256) -> np.ndarray:
  """[E, D] each evaluated user's vector before its `which` ("test" or "val") target.

  Test reads the training and validation items, validation the training items.
  The stage's saved user vectors read the whole log, test item included, so
  they would leak the target; grounding uses these instead.
  """
  inputs = data_lib.ranking_examples(split, which, model.config.max_len).inputs  # [E, L]
  return vectors_lib.encode_rows(model, len(inputs), lambda rows: inputs[rows], batch_size,
                                 item_tokens_clusters)


def evaluate_grounding(split: data_lib.LeaveLastOutSplit, config: SeqRecConfig,
                       stage_path: Path, best_step: int, item_to_cluster: np.ndarray,
                       options: SeqRecStageOptions, seed: int = 0) -> dict[str, Any]:
  """Grounding metrics (`grounding.grounding_metrics`) of the best validation checkpoint.

  With `options.prior_weights`, the prior's weight is tuned on the validation
  cases first, reported under "prior" and saved with the stage's vectors.
  """
  model = restore_best_model(config, stage_path, best_step, seed)
  vectors = load_vectors(stage_path)
  if vectors.meta.get("step") != best_step:
    raise SeqRecStageError(f"{stage_path / VECTORS} holds the vectors of step "
                           f"{vectors.meta.get('step')}, not of the best step {best_step}")
  tokens = training_lib.token_clusters(
      config, item_to_cluster if config.num_clusters else None, config.num_items)
  counts = split.target_counts()[1:]  # [num_items] training interactions per item
  k, implementation = options.grounding_k, options.grounding_implementation
  prior = None
  if options.prior_weights:
    prior = grounding_lib.tune_prior_weight(
        case_user_vectors(model, split, tokens, "val"), vectors.item_vectors, item_to_cluster,
        grounding_lib.grounding_cases(split, item_to_cluster, "val"), counts,
        tuple(options.prior_weights), k, implementation)
    dataclasses.replace(vectors, item_prior=vectors_lib.popularity_prior(counts),
                        prior_weight=prior["weight"]).save(Path(stage_path) / VECTORS)
  metrics = grounding_lib.grounding_metrics(
      case_user_vectors(model, split, tokens), vectors.item_vectors, item_to_cluster,
      grounding_lib.grounding_cases(split, item_to_cluster), counts, k, implementation,
      prior_weight=None if prior is None else prior["weight"])
  if prior is not None:
    metrics["prior"] = {"kind": "log(1 + training count)", "tuned_on": "val", **prior}
  return metrics


def _log_grounding(grounding: dict[str, Any]) -> None:
  k = grounding["k"]
  for part in ("all", "novel"):
    row = grounding[part]
    cells = ", ".join(f"{name} {m[f'hr@{k}']:.4f} / {m[f'ndcg@{k}']:.4f}"
                      for name, m in row.items() if isinstance(m, dict))
    logging.info("seqrec grounding (%s test users, %d): HR@%d / NDCG@%d: %s", part,
                 row["users"], k, k, cells or "no users")
  if "prior" in grounding:
    logging.info("seqrec grounding: popularity prior weight %g (validation NDCG@%d by weight: "
                 "%s)", grounding["prior"]["weight"], k, grounding["prior"][f"ndcg@{k}"])


@stages.register_stage("seqrec", deps=("data", "clusters"),
                       configurables=("SeqRecConfig", "SoftmaxConfig", "SeqRecTraining",
                                      "SeqRecStageOptions"))
def seqrec_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Trains the SASRec-style recommender; HR@10 / NDCG@10 against most-popular; grounding."""
  interactions = data_stage.load_interactions(ctx.input_path("data"))
  clusters = clusters_stage.load_exploration_clusters(ctx.input_path("clusters"))
  if clusters.item_to_cluster.shape != (interactions.num_items,):
    raise SeqRecStageError(
        f"{ctx.input_path('clusters')}: the clusters cover {len(clusters.item_to_cluster)} "
        f"items, the interactions have {interactions.num_items}; rerun the clusters stage")
  split = data_lib.leave_last_out(data_lib.user_sequences(interactions))
  options = SeqRecStageOptions()
  config = model_config(interactions.num_items, clusters.num_clusters, options)
  training = training_lib.SeqRecTraining()
  softmax = SoftmaxConfig()
  logging.info("seqrec: %d users (%d evaluated: >= %d items), %d items, %s softmax, "
               "cluster embeddings: %s", split.sequences.num_users, len(split.eval_users),
               data_lib.MIN_EVAL_LENGTH, config.num_items, softmax.kind,
               f"{config.num_clusters} clusters" if config.num_clusters else "off")
  result = training_lib.fit(
      split, config, ctx.path, ctx.mesh if ctx.mesh is not None else _default_mesh(), training,
      softmax, seed=ctx.seed,
      item_clusters=clusters.item_to_cluster if config.num_clusters else None)
  best = result.best
  start = time.perf_counter()
  grounding = evaluate_grounding(split, config, ctx.path, best["step"],
                                 clusters.item_to_cluster, options, ctx.seed)
  grounding.update(level=clusters.level, clusters=clusters.num_clusters,
                   seconds=round(time.perf_counter() - start, 3))
  losses = [r["train_loss"] for r in result.rounds if r.get("train_loss") is not None]
  metrics = {
      "model": {key: best[key] for key in ("val", "test", "val_unmasked", "test_unmasked")},
      "history_masked": training.mask_history,  # the protocol of "val" / "test"
      "most_popular": result.baseline,
      "grounding": grounding,
      "best_epoch": best["epoch"],
      "best_step": best["step"],
      "epochs_trained": result.rounds[-1]["epoch"],
      "stopped_reason": result.stopped_reason,
      "seconds_per_epoch": result.seconds_per_epoch,
      "seconds_to_best_epoch": best.get("elapsed_seconds"),
      "seconds_to_stop": result.rounds[-1].get("elapsed_seconds"),
      "steps_per_epoch": result.steps_per_epoch,
      "training_windows": result.num_windows,
      "mean_training_context": round(result.mean_context, 2),
      "seed": ctx.seed,
      "train_loss_first_round": losses[0] if losses else None,
      "train_loss_last_round": losses[-1] if losses else None,
      "users": split.sequences.num_users,
      "evaluated_users": int(len(split.eval_users)),
      "items": config.num_items,
      "cluster_embeddings": config.num_clusters,
      "softmax": softmax.kind,
  }
  artifacts.atomic_write_json(ctx.path / METRICS, metrics)
  k = training.selection_metric.partition("@")[2]
  for key in ("test", "test_unmasked"):
    logging.info("seqrec: best epoch %d; %s HR@%s %.4f NDCG@%s %.4f (most popular %.4f / %.4f)",
                 best["epoch"], key, k, best[key][f"hr@{k}"], k, best[key][f"ndcg@{k}"],
                 result.baseline[key][f"hr@{k}"], result.baseline[key][f"ndcg@{k}"])
  _log_grounding(grounding)
  return {key: metrics[key] for key in (
      "model", "most_popular", "grounding", "best_epoch", "epochs_trained", "seconds_per_epoch",
      "seconds_to_best_epoch", "seconds_to_stop", "stopped_reason", "evaluated_users")}
