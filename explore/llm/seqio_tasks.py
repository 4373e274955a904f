"""The novel-interest fine-tuning data as a seqio Task and Mixture (imports seqio and TensorFlow).

seqio is an extra: `pip install 'explore[seqio]'`; without it, importing this
module is one `explore.extras.MissingExtraError` naming the extra.

`register_novel_interest_tasks(task_source_dir, vocabulary)` registers a Task
reading the `transitions` stage's `train.tsv` / `test.tsv` (header skipped)
and a Mixture of it named `<name>_mixture`, so T5X users train with
`MIXTURE_OR_TASK_NAME = "novel_interest_sft_mixture"` and
`seqio.DecoderFeatureConverter`. Each line becomes

  inputs   the prompt (the history's descriptions), tokenized, + EOS
  targets  the next cluster's description, tokenized, + EOS

Pairs are repeated by their curated weight by default (`weighting`, the same
rule as `explore.llm.features.pair_repeats`): seqio's loss weights are
integers, so frequency is how a T5X run sees the curation; the shuffle
buffer of `get_dataset(shuffle=True)` spreads the copies. EOS is appended
after trimming (`append_eos_after_trim`), so a sequence cut to its feature
length still ends in EOS.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import gin

from explore import extras
from explore.llm.features import WEIGHTINGS
from explore.transitions.task_source import COLUMNS
from explore.transitions.task_source import SOURCE_FILE
from explore.transitions.task_source import SPLIT_FILES
from explore.transitions.task_source import TaskSourceError
from explore.transitions.task_source import read_task_source

seqio = extras.require("seqio", "seqio", "explore.llm.seqio_tasks")
tf = extras.require("tensorflow", "seqio", "explore.llm.seqio_tasks")

DEFAULT_TASK = "novel_interest_sft"
MIXTURE_SUFFIX = "_mixture"


def _check_split_file(path: Path, validate_rows: bool) -> int:
  """Number of data rows of one TSV; raises TaskSourceError naming the file if unusable."""
  if validate_rows:
    rows = len(read_task_source(path)["next_id"])
  else:
    try:
      with path.open() as f:
        header = f.readline().rstrip("\n")
        rows = sum(1 for line in f if line.strip("\n"))
    except FileNotFoundError:
      raise TaskSourceError(f"{path}: task source file not found") from None
    if tuple(header.split("\t")) != COLUMNS:
      raise TaskSourceError(f"{path}: header must be {chr(9).join(COLUMNS)!r}")
  if rows == 0:
    raise TaskSourceError(f"{path}: task source has a header but no rows")
  return rows


def parse_task_source_lines(dataset: tf.data.Dataset, weighting: str = "repeat_weight"
                            ) -> tf.data.Dataset:
  """Lines of a task-source TSV (header already skipped) -> {"inputs", "targets"} strings.

  Each pair is emitted `pair_repeats(count, weight, weighting)` times.
  """
  index = {name: i for i, name in enumerate(COLUMNS)}

  def parse(line):
    fields = tf.strings.split(line, "\t")  # [columns]
    tf.debugging.assert_equal(tf.size(fields), len(COLUMNS), message=(
        f"task source line without {len(COLUMNS)} tab-separated fields"))
    if weighting == "repeat_weight":
      weight = tf.strings.to_number(fields[index["weight"]], tf.float64)
      repeats = tf.maximum(tf.constant(1, tf.int64), tf.cast(tf.round(weight), tf.int64))
    elif weighting == "repeat_count":
      repeats = tf.strings.to_number(fields[index["count"]], tf.int64)
    else:
      repeats = tf.constant(1, tf.int64)
    example = {"inputs": fields[index["inputs"]], "targets": fields[index["targets"]]}
    return tf.data.Dataset.from_tensors(example).repeat(repeats)

  return dataset.flat_map(parse)


@gin.configurable
def register_novel_interest_tasks(
    task_source_dir: str | os.PathLike,
    vocabulary: seqio.Vocabulary,
    name: str = DEFAULT_TASK,
    weighting: str = "repeat_weight",
    validate_rows: bool = True,
) -> seqio.Task:
  """Registers the Task `name` (splits train, test) and the Mixture `name + "_mixture"`.

  Args:
    task_source_dir: the folder `export_task_source` wrote (train.tsv,
      test.tsv, task_source.json).
    vocabulary: e.g. `explore.llm.tokenizer.seqio_vocabulary(tokenizer)`;
      used for inputs and targets, both with EOS.
    name: the task name; a task or mixture already registered under this
      name (or its mixture's) is replaced.
    weighting: "repeat_weight" (default), "repeat_count" or "none", as in
      `explore.llm.features.pair_repeats`.
    validate_rows: read every row once now (without TensorFlow), so a
      malformed line is reported with its file and line number instead of
      failing inside the input pipeline; only the header is checked if False.

  Returns:
    The registered task.
  """
  if weighting not in WEIGHTINGS or weighting == "loss_weight":
    raise TaskSourceError(
        f"register_novel_interest_tasks: weighting={weighting!r}, expected one of "
        "'repeat_weight', 'repeat_count', 'none' (seqio loss weights are integers)")
  directory = Path(task_source_dir)
  files = dict(SPLIT_FILES)
  if (directory / SOURCE_FILE).exists():
    files.update(json.loads((directory / SOURCE_FILE).read_text()).get("files", {}))
  paths = {split: directory / file for split, file in files.items()}
  num_rows = {split: _check_split_file(path, validate_rows) for split, path in paths.items()}

  mixture_name = name + MIXTURE_SUFFIX
  seqio.MixtureRegistry.remove(mixture_name)
  seqio.TaskRegistry.remove(name)
  features = {key: seqio.Feature(vocabulary, add_eos=True) for key in ("inputs", "targets")}
  task = seqio.TaskRegistry.add(
      name,
      source=seqio.TextLineDataSource(
          {split: str(path) for split, path in paths.items()}, skip_header_lines=1,
          num_input_examples=num_rows),
      preprocessors=[
          functools.partial(parse_task_source_lines, weighting=weighting),
          seqio.preprocessors.tokenize,
          seqio.preprocessors.append_eos_after_trim,
      ],
      output_features=features,
      metric_fns=[],
  )
  seqio.MixtureRegistry.add(mixture_name, [(name, 1.0)])
  return task
