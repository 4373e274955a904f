"""The `llm` stage: tokenizer, decoder training and the novel-cluster hit@k evaluation.

Reads the `clusters` descriptions and the `transitions` examples and task
source; writes into the stage folder:
  tokenizer/spm.model   SentencePiece model trained on the descriptions + prompts
                        (from scratch), or the pretrained checkpoint's own
                        tokenizer.model / tokenizer.json + special_tokens.json
  pretrained/           with `LlmStageOptions.pretrained_checkpoint`: the imported
                        weights (checkpoint_0, weights only) the training starts
                        from, and source.json (the checkpoint folder's fingerprint)
  model/                the trainer's model_dir (checkpoints, model-info.txt,
                        train/ TensorBoard scalars and metrics.jsonl)
  planner.json          the decoder config, bos id, K and descriptions, so
                        `load_planner` reopens the trained planner (see
                        `explore.llm.planner`) without rerunning the stage
  fit_task_source/      with `LlmStageOptions.validation_fraction` > 0: the curated
                        pairs of the train examples before the validation cut
                        (train.tsv, fine-tuned on) and the held-out ones (test.tsv);
                        with `LlmStageOptions.count_targets` > 0 train.tsv also holds
                        the distilled count targets (test.tsv: the test pairs
                        without a held-out split)
  selection.jsonl       with `LlmStageOptions.select_every`: each round's step,
                        train loss and validation hit@k (`explore.llm.selection`);
                        planner.json "step" names the chosen round's checkpoint
  merged/               with `LlmStageOptions.interpolate`, when an alpha < 1 wins on
                        validation: the interpolated weights (`explore.llm.interpolation`);
                        planner.json "model_dir" names this folder
  eval_examples/        the test example indices evaluated (`load_eval_examples`) and the
                        LLM's exact scores of them (`load_eval_scores`)
  metrics.json          hit@1/5/10 of the LLM and every baseline planner, overall
                        and by unseen / rare / frequent test tuples; free-decode
                        validity (`explore.llm.free_decode`); train loss
                        first / last; seconds and CPU seconds per phase; with
                        a held-out validation split, the same hit@k on it
                        ("validation"), to choose settings on; "selection":
                        the rounds and the chosen step (None without select_every);
                        "count_targets": the distilled targets' weight, top,
                        pairs added and share of the total weight (None without)
The folder of an interrupted run is kept (same config), so training resumes
from the latest checkpoint. TensorFlow and seqio are never imported here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import shutil
from typing import Any

from absl import logging
import gin
import numpy as np

from explore import artifacts
from explore import progress
from explore import stages
from explore import train
from explore.clusters import stage as clusters_stage
from explore.eval import blend
from explore.eval import bootstrap
from explore.eval import hit_rate
from explore.eval import planners as planners_lib
from explore.llm import checkpoint_import
from explore.llm import count_targets as count_targets_lib
from explore.llm import decoder_task  # registers DecoderTask / DecoderConfig
from explore.llm import features
from explore.llm import free_decode
from explore.llm import interpolation
from explore.llm import lora
from explore.llm import planner as planner_lib
from explore.llm import pretrain_stage
from explore.llm import pretrained as pretrained_lib
from explore.llm import selection
from explore.llm import tokenizer as tokenizer_lib
from explore.transitions import stage as transitions_stage
from explore.transitions.examples import NovelTransitions, TEST, TRAIN
from explore.transitions import counts as counts_lib
from explore.transitions import task_source
from explore.transitions.task_source import format_history_prompt

TOKENIZER_DIR = planner_lib.TOKENIZER_DIR
TOKENIZER = planner_lib.TOKENIZER
PRETRAINED = "pretrained"
MODEL = planner_lib.MODEL_DIR
METRICS = "metrics.json"
LLM = "llm"


class LlmStageError(ValueError):
  """Settings or inputs the `llm` stage cannot use."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LlmStageOptions:
  """Knobs of the `llm` stage: where the decoder starts, and its evaluation.

  Attributes:
    pretrained_checkpoint: a Hugging Face Llama/Gemma checkpoint folder
      (config.json, *.safetensors, tokenizer.model or tokenizer.json) to
      fine-tune with its own tokenizer, instead of training a tokenizer and
      a decoder from scratch (see `explore.llm.pretrained` for which
      DecoderConfig fields come from the checkpoint and which from gin).
    max_eval_examples: evaluate at most this many test examples (None: all),
      a uniform sample without replacement drawn with the run's seed, in test
      order; every planner is evaluated on the same sample.
    length_normalize: rank clusters by mean instead of summed token
      log-likelihood of their description (+ EOS) (see `explore.llm.scoring`).
    prompts_per_chunk: prompts scored per compiled call (None: ~2048 rows).
    rare_max: test tuples seen 1..rare_max times in train are 'rare'.
    train_epochs: train for this many passes over the packed rows instead of
      `TrainerConfig.train_steps` (None), so the length scales with the data.
    corpus_mix: add this fraction (of the fine-tuning rows' number) of the
      pretrain stage's corpus rows to the fine-tuning rows, so that
      fine-tuning does not erase what pretraining taught
      (`pretrain_stage.mix_corpus_rows`); 0: none. Needs the pretrain stage.
    validation_fraction: hold the latest this fraction (by time) of the train
      examples out of fine-tuning; the planners are evaluated on them as on
      test examples (counts fitted on the earlier train examples, tuples
      bucketed by their counts there) into metrics.json "validation", and the
      blend's weight is tuned on them. Choose settings (training length,
      corpus_mix, ...) on those numbers, never on test ones. 0: fine-tune on
      every train pair; the blend is then tuned on the latest 10%, which the
      LLM has trained on.
    select_every: with a held-out split, train in rounds of this many steps and
      keep the round whose planner ranks the validation examples best
      (`explore.llm.selection`); test is evaluated with that checkpoint only,
      and `planner.json` pins it. None: the last step's checkpoint.
    select_metric: the validation LLM hit@k that chooses the round.
    select_bucket: the validation tuples it is computed on ("all", "unseen",
      "rare", "frequent").
    interpolate: with a held-out split and a pretrained start, fractions alpha
      in (0, 1) of the fine-tuned weights to mix with the start's, (1 - alpha)
      * start + alpha * fine-tuned; the planner keeps the alpha (or the
      fine-tuned weights, alpha 1) with the best validation `select_metric` on
      `select_bucket` (`explore.llm.interpolation`). (): no interpolation.
    count_targets: also fine-tune on the last-cluster count planner's
      distribution as soft targets: each history tuple's `count_targets_top`
      most likely novel clusters after its last cluster, with weights adding up
      to this times the tuple's curated weight (`explore.llm.count_targets`),
      counted on the fine-tuning examples only (never the held-out ones),
      into `fit_task_source/`. 0: none.
    count_targets_top: the clusters per tuple that `count_targets` keeps.
  """

  pretrained_checkpoint: str | None = None
  max_eval_examples: int | None = 2000
  length_normalize: bool = False
  prompts_per_chunk: int | None = None
  rare_max: int = 4
  train_epochs: float | None = None
  corpus_mix: float = 0.0
  validation_fraction: float = 0.0
  select_every: int | None = None
  select_metric: str = "hit@5"
  select_bucket: str = "all"
  interpolate: tuple[float, ...] = ()
  count_targets: float = 0.0
  count_targets_top: int = 10

  def __post_init__(self):
    if self.max_eval_examples is not None and self.max_eval_examples < 1:
      raise LlmStageError(
          f"LlmStageOptions.max_eval_examples={self.max_eval_examples} must be >= 1 or None")
    if self.rare_max < 1:
      raise LlmStageError(f"LlmStageOptions.rare_max={self.rare_max} must be >= 1")
    if self.train_epochs is not None and not self.train_epochs > 0:
      raise LlmStageError(f"LlmStageOptions.train_epochs={self.train_epochs} must be > 0 or None")
    if not self.corpus_mix >= 0:
      raise LlmStageError(f"LlmStageOptions.corpus_mix={self.corpus_mix} must be >= 0")
    if not (np.isfinite(self.count_targets) and self.count_targets >= 0):
      raise LlmStageError(f"LlmStageOptions.count_targets={self.count_targets} must be finite "
                          "and >= 0")
    if (isinstance(self.count_targets_top, bool) or
        not isinstance(self.count_targets_top, (int, np.integer)) or self.count_targets_top < 1):
      raise LlmStageError(f"LlmStageOptions.count_targets_top={self.count_targets_top!r} must be "
                          "an integer >= 1")
    if not 0.0 <= self.validation_fraction < 1.0:
      raise LlmStageError(f"LlmStageOptions.validation_fraction={self.validation_fraction} "
                          "must be in [0, 1)")
    try:
      selection.check_options(self.select_every, self.select_metric, self.select_bucket,
                              self.validation_fraction)
    except selection.SelectionError as e:
      raise LlmStageError(str(e)) from None
    try:
      interpolation.check_options(self.interpolate, self.validation_fraction, lora_rank=0)
    except interpolation.InterpolationError as e:
      raise LlmStageError(str(e)) from None


def load_metrics(stage_path: Path) -> dict[str, Any]:
  return artifacts.read_json(Path(stage_path) / METRICS)


def load_tokenizer(stage_path: Path) -> tokenizer_lib.TextTokenizer:
  """The stage's tokenizer: its trained SentencePiece model, or the checkpoint's copy."""
  return planner_lib.load_tokenizer(stage_path)


def load_planner(stage_path: Path, mesh=None, prompts_per_chunk: int | None = None
                 ) -> planner_lib.LlmPlanner:
  """The trained planner (decoder, tokenizer, descriptions) reopened from the stage folder."""
  return planner_lib.LlmPlanner.load(stage_path, mesh, prompts_per_chunk)


def _default_mesh():
  from explore import partitioning  # pylint: disable=g-import-not-at-top
  return partitioning.create_mesh(partitioning.MeshConfig())


def eval_examples(transitions: NovelTransitions, max_examples: int | None, seed: int
                  ) -> np.ndarray:
  """Test example indices to evaluate: all, or a seeded uniform sample kept in test order."""
  test = transitions.indices(TEST)
  if max_examples is None or len(test) <= max_examples:
    return test
  rng = np.random.default_rng(seed)
  return np.sort(rng.choice(test, size=max_examples, replace=False))


def _loss_curve(history: list[dict]) -> tuple[float | None, float | None]:
  losses = [h["loss"] for h in history if isinstance(h.get("loss"), (int, float))]
  return (losses[0], losses[-1]) if losses else (None, None)


def _last(history: list[dict], key: str) -> float | None:
  values = [h[key] for h in history if isinstance(h.get(key), (int, float))]
  return values[-1] if values else None


def _fine_tuning_config(config: train.TrainerConfig, initial_dir: Path) -> train.TrainerConfig:
  """Starts training from the imported weights (weights only; adapters and optimizer fresh)."""
  if config.initial_checkpoint_path:
    raise LlmStageError(
        f"TrainerConfig.initial_checkpoint_path={config.initial_checkpoint_path!r} and "
        "LlmStageOptions.pretrained_checkpoint are both set; the stage starts from the imported "
        "checkpoint, so unbind initial_checkpoint_path")
  return dataclasses.replace(config, initial_checkpoint_path=str(initial_dir),
                             restore_weights_only=True)


def pretrained_inputs() -> dict[str, str]:
  """The pretrained checkpoint folder's content fingerprint, when the stage starts from one.

  Part of the stage's inputs, so new weights or a new tokenizer at the same
  path rebuild a completed stage.
  """
  path = LlmStageOptions().pretrained_checkpoint
  if not path:
    return {}
  if not Path(path).is_dir():
    raise LlmStageError(f"LlmStageOptions.pretrained_checkpoint={path!r} is not a folder")
  return {"pretrained_checkpoint": pretrained_lib.checkpoint_fingerprint(path)["hash"]}


EVAL_EXAMPLES = "eval_examples"
FIT_TASK_SOURCE = "fit_task_source"
# Without a held-out split, the blend's weight is tuned on this latest fraction of train.
BLEND_VALIDATION_FRACTION = 0.1


# The LLM's [n, M] scores of the evaluated examples are kept up to this many entries (256 MB).
MAX_SAVED_SCORES = 1 << 26


def load_eval_examples(stage_path: Path) -> tuple[np.ndarray, int]:
  """(test example indices the stage evaluated, rare_max): later stages score the same ones."""
  arrays, meta, _ = artifacts.load_artifact(Path(stage_path) / EVAL_EXAMPLES, EVAL_EXAMPLES, 1)
  return arrays["examples"], int(meta["rare_max"])


def load_eval_scores(stage_path: Path) -> np.ndarray | None:
  """The exact scorer's [n, M] scores of `load_eval_examples`' examples, None if not kept.

  Computed by the stage with its trained planner, so a later stage that
  reopens the same checkpoint needs not score those examples again.
  """
  arrays, _, _ = artifacts.load_artifact(Path(stage_path) / EVAL_EXAMPLES, EVAL_EXAMPLES, 1)
  return arrays.get("llm_scores")


def _load_inputs(ctx: stages.StageContext) -> tuple[list[str], NovelTransitions, Path]:
  """(cluster descriptions, transitions, transitions stage folder), checked against each other."""
  clusters = clusters_stage.load_exploration_clusters(ctx.input_path("clusters"))
  descriptions = list(clusters.texts)  # keyword descriptions or semantic IDs
  transitions_path = ctx.input_path("transitions")
  transitions = transitions_stage.load_transitions(transitions_path)
  if transitions.num_clusters != len(descriptions):
    raise LlmStageError(
        f"{transitions_path}: transitions have {transitions.num_clusters} clusters, the "
        f"clusters stage describes {len(descriptions)}; rerun the transitions stage")
  if not len(transitions.indices(TEST)) or not len(transitions.indices(TRAIN)):
    raise LlmStageError(f"{transitions_path}: the llm stage needs train and test examples "
                        f"(set novel_transitions.test_fraction in (0, 1))")
  return descriptions, transitions, transitions_path


def fine_tuning_pairs(transitions: NovelTransitions, options: LlmStageOptions
                      ) -> tuple[counts_lib.TupleCounts, counts_lib.TupleCounts,
                                 dict[str, Any] | None]:
  """(pairs to fine-tune on, held-out pairs, metrics.json "count_targets").

  The pairs are counted and curated (the transitions stage's `curate`
  bindings) from the train examples before the validation cut with
  `validation_fraction` > 0 (held out: the pairs after it), else from every
  train example (held out: the test pairs). With `count_targets` > 0 the
  last-cluster counts of those same examples are added as soft targets.
  """
  if options.validation_fraction:
    fit, held_out = blend.validation_split(transitions, options.validation_fraction)
    counts = transitions.with_train(fit).tuple_counts(TRAIN)
    test = counts_lib.count_tuples(transitions.history[held_out],
                                   transitions.next_cluster[held_out])
    logging.info("llm: fine-tuning on %d train examples before the validation cut, %d held out",
                 len(fit), len(held_out))
  else:
    counts, test = transitions.tuple_counts(TRAIN), transitions.tuple_counts(TEST)
  curated = counts_lib.curate(counts)
  if not options.count_targets:
    return curated, test, None
  train = count_targets_lib.add_count_targets(curated, counts, transitions.num_clusters,
                                              options.count_targets, options.count_targets_top)
  total = float(train.weight.sum())
  record = {"weight": options.count_targets, "top": options.count_targets_top,
            "pairs_added": int(len(train) - len(curated)),
            "weight_share": (total - float(curated.weight.sum())) / total if total else 0.0}
  return train, test, record


def _training_source(ctx: stages.StageContext, options: LlmStageOptions,
                     descriptions: list[str], transitions: NovelTransitions,
                     transitions_path: Path) -> tuple[Path, dict[str, Any] | None]:
  """(the task-source TSV to fine-tune on, metrics.json "count_targets").

  The transitions stage's train.tsv, or with `validation_fraction` or
  `count_targets` > 0 `fine_tuning_pairs` written into `fit_task_source/`.
  """
  if not options.validation_fraction and not options.count_targets:
    return (transitions_path / transitions_stage.TASK_SOURCE / task_source.SPLIT_FILES["train"],
            None)
  train, held_out, record = fine_tuning_pairs(transitions, options)
  paths = task_source.export_task_source(ctx.path / FIT_TASK_SOURCE, train, held_out,
                                         descriptions)
  if record is not None:
    logging.info("llm: %d distilled count-target pairs added, %.1f%% of the weight",
                 record["pairs_added"], 100 * record["weight_share"])
  return paths["train"], record


@dataclasses.dataclass
class _Prepared:
  """What training needs: the task (config + row length), tokenizer, rows and start point."""

  task: decoder_task.DecoderTask
  trainer_config: train.TrainerConfig
  tokenizer: tokenizer_lib.TextTokenizer
  arrays: dict[str, np.ndarray]
  bos_id: int
  start: Any  # pretrained_lib's prepared start, or None from scratch
  count_targets: dict[str, Any] | None = None  # metrics.json "count_targets"


def _prepare(ctx: stages.StageContext, options: LlmStageOptions, descriptions: list[str],
             transitions: NovelTransitions, transitions_path: Path, mesh) -> _Prepared:
  """Tokenizer (trained or the checkpoint's), decoder config and the packed training rows."""
  task = decoder_task.DecoderTask()
  trainer_config = train.TrainerConfig()
  start = None
  # An imported release, the pretrain stage's export, or None (from scratch).
  checkpoint = pretrain_stage.llm_checkpoint(ctx, options.pretrained_checkpoint)
  if checkpoint:
    start = pretrained_lib.prepare_pretrained(
        checkpoint, task.config, pretrained_lib.bound_decoder_fields(),
        ctx.path / TOKENIZER_DIR)
    tokenizer, config = start.tokenizer, start.config
    trainer_config = _fine_tuning_config(trainer_config, ctx.path / PRETRAINED)
    # Feature rows pad with id 0; a tokenizer whose id 0 is a real token must not produce it.
    if tokenizer.pad_id != features.PAD_ID:
      tokenizer_lib.check_padding_id_unused(tokenizer, descriptions, "description of cluster")
      tokenizer_lib.check_padding_id_unused(
          tokenizer, [format_history_prompt(descriptions[:transitions.k])], "prompt")
  else:
    tokenizer = tokenizer_lib.train_sentencepiece(
        tokenizer_lib.sentencepiece_corpus(descriptions, transitions.k), ctx.path / TOKENIZER)
    if task.config.vocab_size != tokenizer.vocab_size:
      logging.info("llm: decoder vocab_size %d set to the tokenizer's %d",
                   task.config.vocab_size, tokenizer.vocab_size)
    config = dataclasses.replace(task.config, vocab_size=tokenizer.vocab_size)
  tokenizer_lib.check_descriptions_tokenize_uniquely(tokenizer, descriptions)
  tokenizer_lib.check_vocab_matches(tokenizer, config.vocab_size,
                                    allow_padding=start is not None)
  source, count_targets = _training_source(ctx, options, descriptions, transitions,
                                           transitions_path)
  arrays = features.novel_interest_arrays(source, tokenizer, descriptions=descriptions)
  if options.corpus_mix > 0:
    arrays = pretrain_stage.mix_corpus_rows(arrays, pretrain_stage.load_corpus_rows(
        ctx.input_path(pretrain_stage.PRETRAIN), tokenizer,
        arrays[decoder_task.TARGETS].shape[1]), options.corpus_mix, seed=ctx.seed)
  # Examples start with seqio's 0, or with a pretrained model's own BOS token.
  bos_id = start.bos_id if start is not None and start.bos_id is not None else features.BOS_ID
  if bos_id != features.BOS_ID:
    arrays = features.with_bos(arrays, bos_id)
  length = arrays[decoder_task.TARGETS].shape[1]
  task = dataclasses.replace(task, config=config, sequence_length=length, packed=True)
  if options.train_epochs is not None:
    trainer_config = dataclasses.replace(trainer_config, train_steps=train.steps_for_epochs(
        options.train_epochs, len(arrays[decoder_task.TARGETS]), trainer_config.batch_size))
  if options.select_every is not None:  # every round's checkpoint stays until the choice
    rounds = len(selection.round_steps(trainer_config.train_steps, options.select_every))
    trainer_config = dataclasses.replace(
        trainer_config, keep_checkpoints=max(trainer_config.keep_checkpoints, rounds))
  if start is not None:
    pretrained_lib.write_initial_checkpoint_once(start, ctx.path / PRETRAINED, mesh,
                                                 stale=(ctx.path / MODEL,))
  return _Prepared(task=task, trainer_config=trainer_config, tokenizer=tokenizer,
                   arrays=arrays, bos_id=int(bos_id), start=start, count_targets=count_targets)


def _planner(model, prepared: _Prepared, descriptions: list[str], k: int,
             options: LlmStageOptions) -> planner_lib.LlmPlanner:
  return planner_lib.LlmPlanner(
      model=model, tokenizer=prepared.tokenizer, descriptions=descriptions,
      config=prepared.task.config, k=k, bos_id=prepared.bos_id,
      length_normalize=options.length_normalize, prompts_per_chunk=options.prompts_per_chunk)


def _validation_examples(transitions: NovelTransitions, options: LlmStageOptions, seed: int
                         ) -> tuple[np.ndarray, np.ndarray]:
  """(fit, validation) train example indices: the held-out split, or the blend's latest 10%."""
  return blend.validation_split(
      transitions, options.validation_fraction or BLEND_VALIDATION_FRACTION,
      options.max_eval_examples, seed)


@dataclasses.dataclass
class _Trained:
  """What `_train` hands to evaluation."""

  trainer: train.Trainer
  result: train.TrainResult
  model: Any  # the planner's decoder: the last step's, or the validation-chosen round's
  selection: dict[str, Any] | None  # metrics.json "selection" (None without select_every)
  # The chosen round's LLM scores of the validation examples, when this process computed them.
  validation_scores: np.ndarray | None = None
  step: int | None = None  # the planner's checkpoint step (None: the latest)
  model_dir: str | None = None  # the planner's checkpoint folder when not model/
  interpolation: dict[str, Any] | None = None  # metrics.json "interpolation"


def _validation_report(view: NovelTransitions, scores: np.ndarray, validation: np.ndarray,
                       options: LlmStageOptions) -> dict[str, Any]:
  """The LLM's hit@k by tuple bucket from its [n, M] `scores` of the validation examples."""
  return hit_rate.evaluate_planners(view, {LLM: scores}, examples=validation,
                                    rare_max=options.rare_max)["planners"][LLM]


def _train(ctx: stages.StageContext, prepared: _Prepared, mesh, options: LlmStageOptions,
           descriptions: list[str], transitions: NovelTransitions) -> _Trained:
  """Trains the decoder into `model/` (resuming from its latest checkpoint)."""
  task, trainer_config, arrays = prepared.task, prepared.trainer_config, prepared.arrays
  # With DecoderConfig.lora_rank > 0 only the adapters train; the base is frozen.
  trainer = train.Trainer(task, task.model_fn(ctx.seed), ctx.path / MODEL, mesh, trainer_config,
                          trainable=lora.trainable_filter(task.config))
  logging.info("llm: %d packed rows of %d tokens, %d parameters (%d trainable), %d steps at"
               " batch %d", len(arrays[decoder_task.TARGETS]), task.sequence_length,
               trainer.num_params, trainer.num_trainable_params, trainer_config.train_steps,
               trainer_config.batch_size)
  batch_features = {name: arrays[name] for name in task.batch_logical_axes()}
  batches = train.ArrayBatches(batch_features, trainer_config.batch_size, seed=ctx.seed)
  chosen = None
  validation_scores: dict[int, np.ndarray] = {}
  if options.select_every is None:
    result = trainer.train(batches)
  else:
    fit, validation = _validation_examples(transitions, options, ctx.seed)
    view = transitions.with_train(fit)

    def model_at(step: int):
      if trainer.step == step:
        return trainer.model
      return planner_lib.restore_decoder(task.config, ctx.path / MODEL, mesh, step)[0]

    def validate(step: int) -> dict[str, Any]:
      planner = _planner(model_at(step), prepared, descriptions, transitions.k, options)
      validation_scores[step] = planner.scores(transitions.history[validation])
      return _validation_report(view, validation_scores[step], validation, options)

    steps = selection.round_steps(trainer_config.train_steps, options.select_every)
    result, rounds = selection.train_in_rounds(trainer, batches, steps, validate,
                                               ctx.path / selection.SELECTION_LOG)
    if result.stopped_reason != "nan":
      best = selection.best_round(rounds, options.select_metric, options.select_bucket)
      chosen = {"every": options.select_every, "metric": options.select_metric,
                "bucket": options.select_bucket, "validation_examples": int(len(validation)),
                "chosen_step": best["step"], "rounds": rounds}
      logging.info("llm: step %d chosen on validation %s %s (%s)", best["step"],
                   options.select_bucket, options.select_metric,
                   {r["step"]: r["validation"][options.select_bucket][options.select_metric]
                    for r in rounds})
  if result.stopped_reason == "nan":
    raise LlmStageError(f"llm: training stopped on a non-finite loss at step {result.step}; "
                        f"lower make_optimizer.learning_rate (see {ctx.path / MODEL})")
  if chosen is None:
    return _Trained(trainer, result, trainer.model, None)
  step = chosen["chosen_step"]
  return _Trained(trainer, result, model_at(step), chosen, validation_scores.get(step), step=step)


def _interpolation_alphas(options: LlmStageOptions, prepared: _Prepared) -> tuple[float, ...]:
  """`LlmStageOptions.interpolate`'s alphas, largest first, checked against the run's start."""
  try:
    alphas = interpolation.check_options(options.interpolate, options.validation_fraction,
                                         prepared.task.config.lora_rank)
  except interpolation.InterpolationError as e:
    raise LlmStageError(str(e)) from None
  if alphas and prepared.start is None:
    raise LlmStageError(f"LlmStageOptions.interpolate={options.interpolate!r} mixes the fine-tuned"
                        " weights with pretrained ones, but this run trains from scratch: enable"
                        " the pretrain stage or set LlmStageOptions.pretrained_checkpoint")
  return alphas


def _interpolate(ctx: stages.StageContext, prepared: _Prepared, trained: _Trained, mesh,
                 options: LlmStageOptions, alphas: tuple[float, ...], descriptions: list[str],
                 transitions: NovelTransitions) -> _Trained:
  """The planner's weights mixed with the start's at the validation-chosen alpha.

  Writes them to `merged/` when an alpha < 1 wins (`explore.llm.interpolation`);
  without alphas returns `trained` as it is.
  """
  config = prepared.task.config
  merged_dir = ctx.path / interpolation.MERGED_DIR
  if merged_dir.exists():  # an earlier run's choice
    shutil.rmtree(merged_dir)
  if not alphas:
    return trained
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from explore.train import train_step as step_lib  # pylint: disable=g-import-not-at-top
  start = planner_lib.restore_decoder(config, ctx.path / PRETRAINED, mesh,
                                      interpolation.START_CHECKPOINT)[0]
  start_params = step_lib.split_model(start)[1]
  del start
  graphdef, tuned, extras = step_lib.split_model(trained.model)
  fit, validation = _validation_examples(transitions, options, ctx.seed)
  view = transitions.with_train(fit)
  scores: dict[float, np.ndarray] = {}

  def model_with(alpha: float):
    if alpha == 1.0:
      return trained.model
    return nnx.merge(graphdef, interpolation.mix(start_params, tuned, alpha), extras)

  def validate(alpha: float) -> dict[str, Any]:
    if alpha == 1.0 and trained.validation_scores is not None:
      scores[alpha] = trained.validation_scores
    else:
      planner = _planner(model_with(alpha), prepared, descriptions, transitions.k, options)
      scores[alpha] = planner.scores(transitions.history[validation])
    return _validation_report(view, scores[alpha], validation, options)

  chosen, candidates = interpolation.choose(alphas, validate, options.select_metric,
                                            options.select_bucket)
  alpha = chosen["alpha"]
  logging.info("llm: interpolation alpha %s chosen on validation %s %s (%s)", alpha,
               options.select_bucket, options.select_metric,
               {c["alpha"]: c["validation"][options.select_bucket][options.select_metric]
                for c in candidates})
  record = {"alphas": list(alphas), "metric": options.select_metric,
            "bucket": options.select_bucket, "validation_examples": int(len(validation)),
            "start": f"{PRETRAINED}/checkpoint_{interpolation.START_CHECKPOINT}",
            "chosen_alpha": alpha, "candidates": candidates}
  if alpha == 1.0:
    return dataclasses.replace(trained, validation_scores=scores[alpha], interpolation=record)
  model = model_with(alpha)
  step = trained.step if trained.step is not None else int(trained.result.step)
  checkpoint_import.write_initial_checkpoint(model, merged_dir, step)
  return dataclasses.replace(trained, model=model, validation_scores=scores[alpha], step=step,
                             model_dir=interpolation.MERGED_DIR, interpolation=record)


def _planner_scores(view: NovelTransitions, examples: np.ndarray, llm: np.ndarray,
                    llm_scores, weight: float, seed: int) -> dict[str, np.ndarray]:
  """[n, M] scores of `examples` by the LLM, every count baseline and the blend.

  The count planners (and the blend's counts) are fitted on `view`'s train
  examples; `llm` holds the LLM's scores of `examples`.
  """
  history = view.history[examples]  # [n, K]
  fit = view.indices(TRAIN)
  baselines = planners_lib.fit_baselines(view.history[fit], view.next_cluster[fit],
                                         view.num_clusters, seed=seed)
  scores = {LLM: llm}
  scores.update({name: baseline.scores(history) for name, baseline in baselines.items()})
  scores[blend.BlendedPlanner.name] = blend.BlendedPlanner(
      llm_scores, view.history[fit], view.next_cluster[fit], view.num_clusters,
      weight).blend(llm, history)
  return scores


def _report(view: NovelTransitions, scores: dict[str, np.ndarray], examples: np.ndarray,
            options: LlmStageOptions, seed: int) -> dict[str, Any]:
  """hit@k of every planner by tuple bucket, and the LLM minus the best count planner."""
  evaluation = hit_rate.evaluate_planners(view, scores, examples=examples,
                                          rare_max=options.rare_max)
  evaluation["llm_minus_best_count"] = bootstrap.llm_minus_best_count(
      view, scores, examples, rare_max=options.rare_max, seed=seed)
  return evaluation


def _evaluate(ctx: stages.StageContext, options: LlmStageOptions, planner: planner_lib.LlmPlanner,
              transitions: NovelTransitions, llm_validation: np.ndarray | None = None
              ) -> tuple[dict[str, Any], np.ndarray, dict[str, np.ndarray], dict[str, Any],
                         dict[str, Any] | None]:
  """(test report, evaluated example indices, scores by planner, blend tuning, validation report).

  Planners: the LLM, every count baseline, and the blend of the LLM with the
  last-cluster counts, its weight tuned on validation examples (the held-out
  ones with `validation_fraction` > 0, else the latest 10% of train). The
  validation report (None without a held-out split) evaluates every planner
  on the held-out examples, fitted on the train examples before them.
  `llm_validation`: the planner's scores of those examples, if already known.
  """
  examples = eval_examples(transitions, options.max_eval_examples, ctx.seed)
  llm = planner.scores(transitions.history[examples])
  kept = {"examples": examples}
  if llm.size <= MAX_SAVED_SCORES:
    kept["llm_scores"] = np.asarray(llm, np.float32)
  artifacts.save_artifact(ctx.path / EVAL_EXAMPLES, EVAL_EXAMPLES, 1, kept,
                          {"rare_max": options.rare_max})
  fit, validation = _validation_examples(transitions, options, ctx.seed)
  if llm_validation is None:
    llm_validation = planner.scores(transitions.history[validation])
  tuned = blend.tune_weight_on(transitions, llm_validation, fit, validation)
  scores = _planner_scores(transitions, examples, llm, planner.scores, tuned["weight"], ctx.seed)
  evaluation = _report(transitions, scores, examples, options, ctx.seed)
  validation_report = None
  if options.validation_fraction:
    view = transitions.with_train(fit)
    validation_report = _report(view, _planner_scores(
        view, validation, llm_validation, planner.scores, tuned["weight"], ctx.seed),
                                validation, options, ctx.seed)
  return evaluation, examples, scores, tuned, validation_report


@stages.register_stage(
    "llm", deps=("clusters", "transitions", pretrain_stage.PRETRAIN),
    configurables=("LlmStageOptions", "train_sentencepiece", "novel_interest_arrays",
                   "DecoderTask", "DecoderConfig", "TrainerConfig", "make_optimizer"),
    external_inputs=pretrained_inputs)
def llm_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Trains, or fine-tunes from a pretrained checkpoint, the decoder; hit@k vs the baselines."""
  options = LlmStageOptions()
  clock = progress.PhaseClock()
  clock.start()
  descriptions, transitions, transitions_path = _load_inputs(ctx)
  mesh = ctx.mesh if ctx.mesh is not None else _default_mesh()
  prepared = _prepare(ctx, options, descriptions, transitions, transitions_path, mesh)
  alphas = _interpolation_alphas(options, prepared)
  clock.stop("prepare")

  clock.start()
  trained = _train(ctx, prepared, mesh, options, descriptions, transitions)
  trained = _interpolate(ctx, prepared, trained, mesh, options, alphas, descriptions,
                         transitions)
  trainer, result, chosen = trained.trainer, trained.result, trained.selection
  config = prepared.task.config
  planner_lib.save_planner_spec(ctx.path, config, prepared.bos_id, transitions.k, descriptions,
                                options.length_normalize, step=trained.step,
                                model_dir=trained.model_dir)
  clock.stop("train")

  clock.start()
  planner = _planner(trained.model, prepared, descriptions, transitions.k, options)
  evaluation, examples, scores, tuned, validation = _evaluate(ctx, options, planner, transitions,
                                                              trained.validation_scores)
  names = list(scores)
  clock.stop("evaluate")

  loss_first, loss_last = _loss_curve(result.history)
  tokenizer, start = prepared.tokenizer, prepared.start
  metrics = {
      **evaluation,
      "blend": tuned,
      "free_decode": free_decode.free_decode_metrics(planner, history=transitions.history[examples],
                                                     next_cluster=transitions.next_cluster[examples]),
      "validation": validation,
      "selection": chosen,
      "interpolation": trained.interpolation,
      "count_targets": prepared.count_targets,
      "test_examples": int(len(transitions.indices(TEST))),
      "evaluated_examples": int(len(examples)),
      "distinct_test_tuples_scored": int(len(np.unique(transitions.history[examples], axis=0))),
      "num_clusters": transitions.num_clusters,
      "k": transitions.k,
      "length_normalize": options.length_normalize,
      "train_loss_first": loss_first,
      "train_loss_last": loss_last,
      "train_steps": int(result.step),
      "stopped_reason": result.stopped_reason,
      "train_rows": int(len(prepared.arrays[decoder_task.TARGETS])),
      "sequence_length": int(prepared.task.sequence_length),
      "vocab_size": tokenizer.vocab_size,
      "bos_id": prepared.bos_id,
      "num_params": int(trainer.num_params),
      "num_trainable_params": int(trainer.num_trainable_params),
      "lora_rank": int(config.lora_rank),
      "pretrained": None if start is None else {
          "checkpoint": str(start.directory), "fingerprint": start.fingerprint["hash"],
          "files": start.fingerprint["files"], "family": config.family,
          "tokenizer": tokenizer.model_path.name, "eos_id": tokenizer.eos_id},
      "tokens_per_second": _last(result.history, "timing/tokens_per_second"),
      "seconds": clock.seconds,
  }
  artifacts.atomic_write_json(ctx.path / METRICS, metrics)
  hit5 = {name: evaluation["planners"][name]["all"]["hit@5"] for name in names}
  logging.info("llm: hit@5 on %d test examples: %s", len(examples),
               ", ".join(f"{k} {v:.4f}" for k, v in hit5.items()))
  return {"hit@5": hit5,
          "hit@5_unseen": {n: evaluation["planners"][n]["unseen"]["hit@5"] for n in names},
          "train_loss_first": loss_first, "train_loss_last": loss_last,
          "evaluated_examples": int(len(examples)), "seconds": clock.seconds,
          "selected_step": None if chosen is None else chosen["chosen_step"],
          "interpolation_alpha": (None if trained.interpolation is None
                                  else trained.interpolation["chosen_alpha"]),
          "pretrained": None if start is None else {
              "checkpoint": str(start.directory), "fingerprint": start.fingerprint["hash"]}}
