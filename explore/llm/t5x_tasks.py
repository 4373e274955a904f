r"""Registers a run's novel-interest seqio Task and Mixture when imported: a T5X task module.

T5X imports the module named by `MIXTURE_OR_TASK_MODULE` before it looks up
`MIXTURE_OR_TASK_NAME`; this module registers, on import, the tasks of the run
directory named by the environment variable `EXPLORE_RUN_DIR`:

  EXPLORE_RUN_DIR=/tmp/explore python -m t5x.train \
    --gin_file=my_decoder.gin \
    --gin.MIXTURE_OR_TASK_MODULE="'explore.llm.t5x_tasks'" \
    --gin.MIXTURE_OR_TASK_NAME="'novel_interest_sft_mixture'" ...

Environment variables:
  EXPLORE_RUN_DIR     (required) a run directory with a complete `transitions`
                      stage (its `task_source/` TSVs)
  EXPLORE_VOCABULARY  a SentencePiece `.model` file; default: the `llm`
                      stage's tokenizer (`RUN_DIR/llm/tokenizer/`), so that
                      stage must be complete unless this is set
  EXPLORE_TASK_NAME   the task name (default `novel_interest_sft`; the
                      Mixture is `<name>_mixture`)
  EXPLORE_WEIGHTING   repeat_weight (default), repeat_count or none

seqio is an extra (`pip install 'explore[seqio]'`): without it, importing
this module is one `explore.extras.MissingExtraError` naming the extra.
"""

from __future__ import annotations

import os
from pathlib import Path

from explore.llm import seqio_tasks  # raises MissingExtraError without seqio
from explore.llm import planner as planner_lib
from explore.llm import tokenizer as tokenizer_lib

RUN_DIR_ENV = "EXPLORE_RUN_DIR"
VOCABULARY_ENV = "EXPLORE_VOCABULARY"
TASK_NAME_ENV = "EXPLORE_TASK_NAME"
WEIGHTING_ENV = "EXPLORE_WEIGHTING"
TRANSITIONS, TASK_SOURCE, LLM = "transitions", "task_source", "llm"


class T5xTasksError(ValueError):
  """The environment does not name a usable run directory or vocabulary."""


def _vocabulary(run_dir: Path):
  path = os.environ.get(VOCABULARY_ENV)
  if path:
    tokenizer = tokenizer_lib.Tokenizer.from_file(path, seqio_ids=False)
  else:
    stage = run_dir / LLM
    if not (stage / planner_lib.TOKENIZER_DIR).is_dir():
      raise T5xTasksError(
          f"{VOCABULARY_ENV} is not set and {stage / planner_lib.TOKENIZER_DIR} does not exist:"
          " run the llm stage (it trains the tokenizer) or point"
          f" {VOCABULARY_ENV} at a SentencePiece .model file")
    tokenizer = planner_lib.load_tokenizer(stage)
  return tokenizer_lib.seqio_vocabulary(tokenizer)


def register_from_environment(environ: os._Environ | dict | None = None):
  """Registers the Task and Mixture of `$EXPLORE_RUN_DIR`; returns the Task."""
  environ = os.environ if environ is None else environ
  run_dir = environ.get(RUN_DIR_ENV)
  if not run_dir:
    raise T5xTasksError(f"explore.llm.t5x_tasks: set {RUN_DIR_ENV} to the run directory whose"
                        " transitions stage holds the task source (e.g."
                        f" {RUN_DIR_ENV}=/tmp/explore)")
  run_dir = Path(run_dir)
  source = run_dir / TRANSITIONS / TASK_SOURCE
  if not source.is_dir():
    raise T5xTasksError(f"{RUN_DIR_ENV}={run_dir}: {source} does not exist; run the transitions"
                        " stage first (explore transitions ...)")
  return seqio_tasks.register_novel_interest_tasks(
      source, _vocabulary(run_dir),
      name=environ.get(TASK_NAME_ENV) or seqio_tasks.DEFAULT_TASK,
      weighting=environ.get(WEIGHTING_ENV) or "repeat_weight")


TASK = register_from_environment()
