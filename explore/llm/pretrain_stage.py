"""The `pretrain` stage: next-token pretraining of the planner's decoder on a knowledge corpus.

Optional (`PretrainOptions.enabled`; off, the stage records that and does
nothing). On, it writes into the stage folder:
  corpus.txt            the documents, one per line: the synthetic world's
                        knowledge corpus (`explore.data.synthetic_corpus`), or
                        for real logs the catalog's (`explore.data.catalog_corpus`)
  tokenizer/spm.model   SentencePiece trained on the corpus + the cluster
                        descriptions and prompts (so it covers both)
  model/                the trainer's model_dir (packed rows, orbax checkpoints,
                        TensorBoard scalars)
  hf/                   the trained decoder as a Hugging Face Llama/Gemma folder
                        (config.json, model.safetensors, tokenizer.model)
  metrics.json          corpus size, rows, steps, epochs, loss, seconds
The `llm` stage fine-tunes from `hf/` through the same path as an imported
Llama/Gemma release (`explore.llm.pretrained`), so one code path serves both.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
import time
from typing import Any

from absl import logging
import gin
import numpy as np

from explore import artifacts
from explore import stages
from explore import train
from explore.clusters import stage as clusters_stage
from explore.data import catalog_corpus
from explore.data import stage as data_stage
from explore.data import synthetic_corpus
from explore.llm import checkpoint_export
from explore.llm import checkpoint_import
from explore.llm import decoder_task
from explore.llm import features
from explore.llm import pretrained as pretrained_lib
from explore.llm import tokenizer as tokenizer_lib
from explore.transitions import stage as transitions_stage
from explore.transitions.examples import NovelTransitions

PRETRAIN = "pretrain"
CORPUS = "corpus.txt"
TOKENIZER = "tokenizer/spm.model"
MODEL = "model"
EXPORT = "hf"
METRICS = "metrics.json"


class PretrainError(ValueError):
  """Pretraining settings or inputs that cannot be used; names the file or setting and the fix."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PretrainOptions:
  """Knobs of the `pretrain` stage.

  Attributes:
    enabled: run the pretraining, and let the `llm` stage fine-tune from it.
    epochs: training length in passes over the packed corpus rows (steps =
      ceil(epochs * rows / batch_size)), so it scales with the corpus; used
      when `train_steps` is None.
    train_steps: a fixed number of steps instead of `epochs`.
    batch_size, max_length: packed rows of `max_length` tokens per step.
    learning_rate, warmup_steps: AdamW with cosine decay (`make_optimizer`).
    vocab_size: at most this many SentencePiece pieces.
    max_catalog_documents: real logs: at most this many item documents.
  """

  enabled: bool = False
  epochs: float = 2.0
  train_steps: int | None = None
  batch_size: int = 64
  max_length: int = 128
  learning_rate: float = 5e-3
  warmup_steps: int = 20
  vocab_size: int = 1024
  max_catalog_documents: int | None = None

  def __post_init__(self):
    if self.train_steps is None and not self.epochs > 0:
      raise PretrainError(f"PretrainOptions.epochs={self.epochs} must be > 0")
    if self.train_steps is not None and self.train_steps < 1:
      raise PretrainError(f"PretrainOptions.train_steps={self.train_steps} must be >= 1 or None")
    if self.batch_size < 1 or self.max_length < 8:
      raise PretrainError(f"PretrainOptions: batch_size={self.batch_size} must be >= 1 and "
                          f"max_length={self.max_length} >= 8")


def steps_for(options: PretrainOptions, rows: int) -> int:
  """Training steps: `train_steps`, else ceil(epochs * rows / batch_size) (at least 1)."""
  if options.train_steps is not None:
    return options.train_steps
  return train.steps_for_epochs(options.epochs, rows, options.batch_size)


def corpus_documents(data_path: Path, options: PretrainOptions) -> list[str]:
  """The synthetic world's knowledge corpus, or the catalog's documents for real logs."""
  world = data_stage.load_world(data_path)
  config = synthetic_corpus.CorpusConfig()
  if world is not None:
    return synthetic_corpus.generate_corpus(world, config)
  # CorpusConfig.control: the catalog's control, each field's texts given to other items.
  return catalog_corpus.catalog_corpus(data_stage.load_catalog(data_path),
                                       options.max_catalog_documents,
                                       shuffle_fields=config.control)


def check_covers(tokenizer: tokenizer_lib.Tokenizer, texts: list[str], what: str) -> None:
  """Raises unless every text encodes without <unk> (the tokenizer covers its characters)."""
  for i, text in enumerate(texts):
    if tokenizer.unk_id in tokenizer.encode(text):
      raise PretrainError(
          f"{tokenizer.model_path}: the tokenizer does not cover {what} {i} ({text!r}: a "
          f"character maps to <unk>); train it on the descriptions too (rerun the "
          f"pretrain stage with --force)")


def document_rows(tokenizer: tokenizer_lib.Tokenizer, documents: list[str], max_length: int
                  ) -> dict[str, np.ndarray]:
  """[rows, max_length] packed next-token features of the documents (+ EOS), long ones split.

  A task-form statement (prompt TAB target, `synthetic_corpus.task_statement`)
  becomes a prompt/target example laid out exactly like a fine-tuning pair
  (prompt + EOS, target + EOS, loss on the target); other documents are
  plain next-token text (loss on every token).
  """
  inputs: list[list[int]] = []
  pieces: list[list[int]] = []
  split = [synthetic_corpus.split_task_statement(d) for d in documents]
  plain = [d for d, pair in zip(documents, split) if pair is None]
  pairs = [pair for pair in split if pair is not None]
  for ids in tokenizer.encode_batch(plain, add_eos=True) if plain else []:
    chunks = [ids[i:i + max_length] for i in range(0, len(ids), max_length)]
    pieces += chunks
    inputs += [[] for _ in chunks]
  if pairs:
    prompts = tokenizer.encode_batch([p for p, _ in pairs], add_eos=True)
    targets = tokenizer.encode_batch([t for _, t in pairs], add_eos=True)
    for prompt, target in zip(prompts, targets):
      if len(prompt) + len(target) > max_length:
        raise PretrainError(f"a task-form corpus statement has {len(prompt) + len(target)} "
                            f"tokens, more than PretrainOptions.max_length={max_length}")
    inputs += prompts
    pieces += targets
  if not pieces:
    raise PretrainError("document_rows: no documents to train on")
  # Interleave the task examples with the text (seeded), so every row mixes both.
  order = np.random.default_rng(0).permutation(len(pieces)) if pairs and plain else range(len(pieces))
  return features.prefix_lm_examples([inputs[i] for i in order], [pieces[i] for i in order],
                                     max_length, pack=True)


def tokenizer_text(documents: list[str]) -> list[str]:
  """The documents as SentencePiece training lines (a task statement's tab as a space)."""
  return [d.replace(synthetic_corpus.TASK_SEPARATOR, " ") for d in documents]


def mix_corpus_rows(rows: dict[str, np.ndarray], corpus: dict[str, np.ndarray], fraction: float,
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Fine-tuning rows plus round(fraction * rows) corpus rows (uniform, without replacement).

  Keeps the pretraining knowledge in the fine-tuning mix so that it is not
  forgotten (`LlmStageOptions.corpus_mix`). Both are packed decoder features of
  the same row length; the corpus rows' loss weights take the fine-tuning
  rows' dtype (1 on their tokens). Corpus rows are drawn with replacement only
  when the corpus has fewer rows than asked for. The result is shuffled.
  """
  if not 0.0 <= fraction:
    raise PretrainError(f"LlmStageOptions.corpus_mix={fraction} must be >= 0")
  n = len(rows[decoder_task.TARGETS])
  extra = int(round(fraction * n))
  if extra == 0:
    return rows
  if set(rows) != set(corpus):
    raise PretrainError(f"mix_corpus_rows: fine-tuning rows have features {sorted(rows)}, the "
                        f"corpus rows {sorted(corpus)}")
  width, corpus_width = rows[decoder_task.TARGETS].shape[1], corpus[decoder_task.TARGETS].shape[1]
  if width != corpus_width:
    raise PretrainError(f"mix_corpus_rows: fine-tuning rows have {width} tokens, corpus rows "
                        f"{corpus_width}; set PretrainOptions.max_length to the fine-tuning's")
  available = len(corpus[decoder_task.TARGETS])
  rng = np.random.default_rng(seed)
  pick = rng.choice(available, size=extra, replace=extra > available)
  order = rng.permutation(n + extra)
  return {name: np.concatenate([rows[name], corpus[name][pick].astype(rows[name].dtype)])[order]
          for name in rows}


def load_corpus_rows(pretrain_path: Path, tokenizer: tokenizer_lib.TextTokenizer,
                     max_length: int) -> dict[str, np.ndarray]:
  """The pretrain stage's corpus as packed rows of `max_length` tokens, for `mix_corpus_rows`."""
  path = Path(pretrain_path) / CORPUS
  if not path.exists():
    raise PretrainError(f"{path}: no corpus; LlmStageOptions.corpus_mix needs the pretrain "
                        "stage enabled (PretrainOptions.enabled = True)")
  documents = [d for d in path.read_text().split("\n") if d.strip()]
  return document_rows(tokenizer, documents, max_length)


def _write_disabled(path: Path) -> dict[str, Any]:
  artifacts.atomic_write_json(path / METRICS, {"enabled": False})
  return {"enabled": False}


# Pretraining trains every weight without adapters, so the llm stage's LoRA
# settings neither change its output nor make a complete pretrain stage stale.
LORA_BINDINGS = ("DecoderConfig.lora_rank", "DecoderConfig.lora_alpha",
                 "DecoderConfig.lora_targets")


@stages.register_stage(
    PRETRAIN, deps=("data", "clusters", "transitions"),
    configurables=("PretrainOptions", "CorpusConfig", "DecoderTask", "DecoderConfig"),
    ignored_bindings=LORA_BINDINGS)
def pretrain_stage(ctx: stages.StageContext) -> dict[str, Any]:
  """Pretrains the decoder on the knowledge corpus (when enabled) and exports it for `llm`."""
  options = PretrainOptions()
  if not options.enabled:
    return _write_disabled(ctx.path)
  start = time.perf_counter()
  documents = corpus_documents(ctx.input_path("data"), options)
  if not documents or not any(d.strip() for d in documents):
    raise PretrainError(f"{ctx.path / CORPUS}: the corpus is empty; raise CorpusConfig.num_words "
                        "or give the catalog item text")
  artifacts.atomic_write_text(ctx.path / CORPUS, "\n".join(documents) + "\n")
  clusters = clusters_stage.load_exploration_clusters(ctx.input_path("clusters"))
  descriptions = list(clusters.texts)
  transitions = NovelTransitions.load(ctx.input_path("transitions") /
                                      transitions_stage.TRANSITIONS)
  prompts = tokenizer_lib.sentencepiece_corpus(descriptions, transitions.k)
  tokenizer = tokenizer_lib.train_sentencepiece(tokenizer_text(documents) + prompts,
                                                ctx.path / TOKENIZER,
                                                options.vocab_size)
  check_covers(tokenizer, descriptions, "the description of cluster")
  tokenizer_lib.check_descriptions_tokenize_uniquely(tokenizer, descriptions)
  arrays = document_rows(tokenizer, documents, options.max_length)
  rows = len(arrays[decoder_task.TARGETS])
  steps = steps_for(options, rows)
  task = decoder_task.DecoderTask()
  # Without adapters: LoRA (DecoderConfig.lora_rank) is the llm stage's fine-tuning.
  config = dataclasses.replace(task.config, vocab_size=tokenizer.vocab_size, lora_rank=0)
  task = dataclasses.replace(task, config=config, sequence_length=options.max_length,
                             packed=True)
  trainer_config = dataclasses.replace(
      train.TrainerConfig(train_steps=steps, batch_size=options.batch_size), eval_every=0,
      checkpoint_every=steps, log_every=max(1, steps // 8), initial_checkpoint_path=None,
      restore_weights_only=False)
  optimizer = train.make_optimizer(total_steps=steps, learning_rate=options.learning_rate,
                                   warmup_steps=min(options.warmup_steps, steps))
  mesh = ctx.mesh
  if mesh is None:
    from explore import partitioning  # pylint: disable=g-import-not-at-top
    mesh = partitioning.create_mesh(partitioning.MeshConfig())
  trainer = train.Trainer(task, task.model_fn(ctx.seed), ctx.path / MODEL, mesh, trainer_config,
                          optimizer=optimizer)
  logging.info("pretrain: %d documents, %d packed rows of %d tokens, %d steps (%.2f epochs)",
               len(documents), rows, options.max_length, steps, steps * options.batch_size / rows)
  result = trainer.train(train.ArrayBatches(
      {name: arrays[name] for name in task.batch_logical_axes()}, options.batch_size,
      seed=ctx.seed))
  if result.stopped_reason == "nan":
    raise PretrainError(f"pretrain: non-finite loss at step {result.step}; lower "
                        f"PretrainOptions.learning_rate (see {ctx.path / MODEL})")
  checkpoint_export.export_hf_checkpoint(trainer.model, config, ctx.path / TOKENIZER,
                                         ctx.path / EXPORT)
  losses = [h["loss"] for h in result.history if isinstance(h.get("loss"), (int, float))]
  metrics = {
      "enabled": True, "documents": len(documents),
      "words": int(sum(len(d.split()) for d in documents)),
      "tokens": int((arrays[decoder_task.WEIGHTS] > 0).sum()), "rows": rows,
      "train_steps": int(result.step), "epochs": round(steps * options.batch_size / rows, 3),
      "vocab_size": tokenizer.vocab_size, "num_params": int(trainer.num_params),
      "train_loss_first": losses[0] if losses else None,
      "train_loss_last": losses[-1] if losses else None,
      "seconds": round(time.perf_counter() - start, 2)}
  artifacts.atomic_write_json(ctx.path / METRICS, metrics)
  return metrics


def llm_checkpoint(ctx: stages.StageContext, configured: str | None) -> str | None:
  """The folder the `llm` stage starts from: an explicit one, the pretrain stage's, or None.

  Raises when both are set, and when the pretrain stage's export has another
  model shape than the current `DecoderConfig` (naming its config.json).
  """
  path = ctx.input_path(PRETRAIN)
  if not artifacts.read_json(path / METRICS).get("enabled"):
    return configured
  if configured:
    raise PretrainError(
        f"LlmStageOptions.pretrained_checkpoint={configured!r} and PretrainOptions.enabled are "
        "both set; the llm stage starts from one of them: unbind one")
  export = path / EXPORT
  where = export / checkpoint_import.CONFIG_FILE
  try:
    pretrained_lib.merge_decoder_config(
        checkpoint_import.decoder_config_from_hf(checkpoint_import.read_hf_config(export),
                                                 where=str(where)),
        decoder_task.DecoderTask().config, pretrained_lib.bound_decoder_fields(), where)
  except checkpoint_import.CheckpointImportError as e:
    raise PretrainError(f"{where}: the pretrained model's shape differs from the llm stage's "
                        f"DecoderConfig; rerun `explore pretrain --force` with the same model "
                        f"preset ({e})") from None
  return str(export)
