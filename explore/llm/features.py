"""Decoder-only (prefix LM) features in numpy, as seqio's DecoderFeatureConverter gives them.

Our trainer feeds numpy batches, without TensorFlow; these functions give the
same arrays that `seqio.DecoderFeatureConverter` gives for a task with
`inputs` and `targets` (each ending in EOS), so a checkpoint trained on either
pipeline sees identical data. One example is the prompt followed by its
target in one sequence:

  decoder_target_tokens     prompt + EOS, target + EOS, then 0 (padding)
  decoder_input_tokens      the targets shifted right by one, 0 (BOS) at the
                            start of every packed example
  decoder_loss_weights      1 on target tokens (incl. their EOS), 0 on the
                            prompt and padding
  decoder_segment_ids       1, 2, ... per packed example in a row, 0 on padding
  decoder_positions         position inside its example, 0 on padding
  decoder_causal_attention  1 on the prompt and the position after it (where
                            the first target token is predicted), for models
                            with a bidirectional prefix; 0 elsewhere

Packing is greedy and keeps the order (next fit): an example goes into the
current row if it fits, otherwise it starts a new row; an example never
spans two rows. seqio packs the same way, except that it also starts a new
row every `max_length` examples (it packs batches of that many), so its rows
agree with these exactly when a split has fewer examples than that and hold
the same examples in the same order otherwise, cut at more places.
Without packing each example has a row of its own; seqio then returns no
segment ids or positions, here they are 1 and 0..n-1 on the example's tokens.
"""

from __future__ import annotations

import itertools
import os
from typing import TYPE_CHECKING, Sequence

import gin
import numpy as np

from explore.transitions.task_source import format_history_prompt
from explore.transitions.task_source import read_task_source

if TYPE_CHECKING:
  from explore.llm.tokenizer import Tokenizer

PAD_ID = 0
BOS_ID = 0  # the first decoder input of every example, as in seqio
WEIGHTINGS = ("loss_weight", "repeat_weight", "repeat_count", "none")


class FeatureError(ValueError):
  """Examples or settings that cannot be turned into decoder features."""


def _next_fit_rows(lengths: np.ndarray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
  """Row and start column of each example under order-preserving greedy packing."""
  rows = np.empty(len(lengths), np.int64)
  starts = np.empty(len(lengths), np.int64)
  row, used = 0, 0
  for i, length in enumerate(lengths.tolist()):
    if used + length > max_length:
      row, used = row + 1, 0
    rows[i], starts[i] = row, used
    used += length
  return rows, starts


def prefix_lm_examples(
    inputs_tokens: Sequence[Sequence[int]],
    targets_tokens: Sequence[Sequence[int]],
    max_length: int,
    pack: bool = True,
    example_weights: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
  """[rows, max_length] decoder features of (prompt, target) token lists, each ending in EOS.

  Args:
    inputs_tokens: per example, the prompt's ids (with EOS), as a seqio task
      gives them after tokenize + append_eos.
    targets_tokens: per example, the target's ids (with EOS); never empty.
    max_length: the row length; an example longer than this is an error
      (truncating it would cut the target or its EOS).
    pack: several examples per row (greedy, in order), or one per row.
    example_weights: optional [n] non-negative per-example weights multiplied
      into the loss weights, which are then float32 (int32 otherwise).

  Returns:
    int32 arrays `decoder_target_tokens`, `decoder_input_tokens`,
    `decoder_loss_weights`, `decoder_segment_ids`, `decoder_positions`,
    `decoder_causal_attention`, all [rows, max_length].
  """
  n = len(inputs_tokens)
  if n != len(targets_tokens):
    raise FeatureError(f"prefix_lm_examples: {n} inputs but {len(targets_tokens)} targets")
  if n == 0:
    raise FeatureError("prefix_lm_examples: no examples")
  if not isinstance(max_length, (int, np.integer)) or max_length < 2:
    raise FeatureError(f"prefix_lm_examples: max_length={max_length!r} must be an int >= 2")
  input_lengths = np.asarray([len(x) for x in inputs_tokens], np.int64)  # [n]
  target_lengths = np.asarray([len(y) for y in targets_tokens], np.int64)  # [n]
  lengths = input_lengths + target_lengths  # [n]
  if np.any(target_lengths == 0):
    raise FeatureError(
        f"prefix_lm_examples: example {int(np.argmin(target_lengths))} has no target tokens")
  if np.any(lengths > max_length):
    i = int(np.argmax(lengths > max_length))
    raise FeatureError(
        f"prefix_lm_examples: example {i} has {input_lengths[i]} prompt + {target_lengths[i]} "
        f"target tokens, more than max_length={max_length}")
  pieces = itertools.chain.from_iterable(zip(inputs_tokens, targets_tokens))
  tokens = np.fromiter(itertools.chain.from_iterable(pieces), np.int64,
                       count=int(lengths.sum()))  # [tokens]
  if np.any(tokens == PAD_ID):
    raise FeatureError(
        f"prefix_lm_examples: example {int(np.repeat(np.arange(n), lengths)[tokens == PAD_ID][0])}"
        f" holds the padding id {PAD_ID} as a token")
  if example_weights is not None:
    example_weights = np.asarray(example_weights, np.float64)
    if example_weights.shape != (n,) or not np.all(np.isfinite(example_weights) &
                                                   (example_weights >= 0)):
      raise FeatureError(f"prefix_lm_examples: example_weights must be [{n}] finite and >= 0, "
                         f"got shape {example_weights.shape}")

  if pack:
    rows, starts = _next_fit_rows(lengths, int(max_length))  # [n], [n]
  else:
    rows, starts = np.arange(n), np.zeros(n, np.int64)
  num_rows = int(rows[-1]) + 1
  first_of_row = np.searchsorted(rows, np.arange(num_rows))  # [rows]
  segment = np.arange(n) - first_of_row[rows] + 1  # [n], 1-based within the row

  example = np.repeat(np.arange(n), lengths)  # [tokens]
  offset = np.arange(len(tokens)) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # [tokens]
  row, col = rows[example], starts[example] + offset  # [tokens]
  shape = (num_rows, int(max_length))
  targets = np.zeros(shape, np.int32)
  targets[row, col] = tokens
  positions = np.zeros(shape, np.int32)
  positions[row, col] = offset
  segment_ids = np.zeros(shape, np.int32)
  segment_ids[row, col] = segment[example]
  causal = np.zeros(shape, np.int32)
  causal[row, col] = offset <= input_lengths[example]
  on_target = offset >= input_lengths[example]  # [tokens]
  if example_weights is None:
    loss_weights = np.zeros(shape, np.int32)
    loss_weights[row, col] = on_target
  else:
    loss_weights = np.zeros(shape, np.float32)
    loss_weights[row, col] = on_target * example_weights[example]

  inputs = np.zeros(shape, np.int32)
  inputs[:, 1:] = targets[:, :-1]  # shifted right; column 0 is BOS
  if pack:
    previous_segment = np.zeros(shape, np.int32)
    previous_segment[:, 1:] = segment_ids[:, :-1]
    inputs[segment_ids != previous_segment] = BOS_ID  # each example starts afresh
  return {
      "decoder_target_tokens": targets,
      "decoder_input_tokens": inputs,
      "decoder_loss_weights": loss_weights,
      "decoder_segment_ids": segment_ids,
      "decoder_positions": positions,
      "decoder_causal_attention": causal,
  }


def with_bos(features: dict[str, np.ndarray], bos_id: int) -> dict[str, np.ndarray]:
  """`features` with `bos_id` as the first decoder input of every example.

  seqio starts each example with 0; a pretrained checkpoint was trained with
  its own BOS token (e.g. Llama's 1), which the `llm` stage puts there when
  it fine-tunes one. Returns a copy; other arrays are shared.
  """
  if not isinstance(bos_id, (int, np.integer)) or bos_id < 0:
    raise FeatureError(f"with_bos: bos_id={bos_id!r} must be a non-negative integer")
  inputs = features["decoder_input_tokens"].copy()  # [rows, length]
  first = (features["decoder_positions"] == 0) & (features["decoder_segment_ids"] > 0)
  inputs[first] = bos_id
  return {**features, "decoder_input_tokens": inputs}


def pair_repeats(count: np.ndarray, weight: np.ndarray, weighting: str) -> np.ndarray:
  """[m] int64: how many times each task-source pair is used as an example.

  "repeat_weight": round(weight) (half to even), at least once, so curated
  weights become example frequencies; "repeat_count": the raw count; "none"
  and "loss_weight": once (the latter puts the weight into the loss instead).
  The seqio task repeats pairs by the same rule.
  """
  if weighting not in WEIGHTINGS:
    raise FeatureError(f"weighting={weighting!r}, expected one of {WEIGHTINGS}")
  if weighting == "repeat_weight":
    return np.maximum(1, np.round(np.asarray(weight, np.float64))).astype(np.int64)
  if weighting == "repeat_count":
    return np.asarray(count, np.int64)
  return np.ones(len(count), np.int64)


def _encode_distinct(tokenizer: Tokenizer, texts: np.ndarray) -> list[list[int]]:
  """Ids + EOS of every text, tokenizing each distinct text once (prompts and targets repeat)."""
  distinct, index = np.unique(texts, return_inverse=True)
  encoded = tokenizer.encode_batch(distinct.tolist(), add_eos=True)
  return [encoded[i] for i in index.reshape(-1).tolist()]


@gin.configurable
def novel_interest_arrays(
    task_source_path: str | os.PathLike,
    tokenizer: Tokenizer,
    max_length: int = 128,
    pack: bool = True,
    weighting: str = "loss_weight",
    seed: int | None = 0,
    suffix_copies: float = 0.0,
    descriptions: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
  """Decoder features of one task-source TSV (train.tsv or test.tsv) for the numpy trainer.

  Each pair's prompt (`inputs`) and description (`targets`) are tokenized
  with EOS. `weighting` decides how the curated `weight` column counts:
  "loss_weight" (default) keeps each pair once and multiplies its loss
  weights by weight / mean(weight), so the loss follows the curation exactly
  at the scale of an unweighted run (float32 loss weights); the repeat modes
  and "none" follow `pair_repeats` (int32 loss weights, as seqio). Examples
  are shuffled with `seed` before packing (None keeps the file order, which
  is sorted by history tuple), so rows mix tuples and repeats of a pair.

  `suffix_copies` adds that many copies per example (0.5: half the
  examples, drawn at random; 1: each once) whose prompts keep only the
  latest j of the K clusters, j drawn uniformly from 1..K-1, each with its
  source example's target and weight (see `suffix_prompts`); it needs the
  cluster `descriptions` the prompts are written from.
  """
  columns = read_task_source(task_source_path)
  m = len(columns["next_id"])
  if m == 0:
    raise FeatureError(f"{task_source_path}: task source has no rows")
  weight = columns["weight"]
  if weighting == "loss_weight" and not (np.all(np.isfinite(weight) & (weight >= 0))
                                         and weight.sum() > 0):
    raise FeatureError(f"{task_source_path}: column 'weight' must be finite, >= 0 and not all 0")
  repeats = pair_repeats(columns["count"], weight, weighting)  # [m]
  if np.any(repeats < 0):
    raise FeatureError(f"{task_source_path}: column 'count' has negative values")
  inputs = _encode_distinct(tokenizer, columns["inputs"])
  targets = _encode_distinct(tokenizer, columns["targets"])
  too_long = [i for i in range(m) if len(inputs[i]) + len(targets[i]) > max_length]
  if too_long:
    i = too_long[0]
    raise FeatureError(
        f"{task_source_path}:{i + 2}: prompt ({len(inputs[i])} tokens) + target "
        f"({len(targets[i])} tokens) exceed max_length={max_length} "
        f"({len(too_long)} rows too long)")
  order = np.repeat(np.arange(m), repeats)  # [examples] pair of each example
  prompts = [inputs[i] for i in order]
  if suffix_copies:
    rng = np.random.default_rng([seed or 0, 1])  # a stream apart from the shuffle's
    source = order[_copy_sources(len(order), suffix_copies, descriptions, columns["history_ids"],
                                 task_source_path, rng)]
    order = np.concatenate([order, source])
    prompts += _encode_distinct(tokenizer, np.asarray(suffix_prompts(
        columns["history_ids"][source], descriptions, rng), dtype=str))
  if seed is not None:
    shuffle = np.random.default_rng(seed).permutation(len(order))
    order, prompts = order[shuffle], [prompts[i] for i in shuffle]
  example_weights = None
  if weighting == "loss_weight":
    example_weights = (weight / weight.mean())[order]
  return prefix_lm_examples(prompts, [targets[i] for i in order],
                            max_length, pack=pack, example_weights=example_weights)


def suffix_prompts(history: np.ndarray, descriptions: Sequence[str], rng: np.random.Generator
                   ) -> list[str]:
  """The prompt of each history row ([n, K], oldest first) cut to its latest j < K clusters.

  j is drawn uniformly from 1..K-1 per row. Fine-tuning on such prompts
  beside the full ones teaches the planner what the latest interests alone
  predict, which is what the last-cluster count planner knows and what an
  unseen K-tuple's older clusters cannot tell.
  """
  history = np.asarray(history)
  k = history.shape[1]
  keep = rng.integers(1, k, size=len(history))  # [n] in 1..K-1
  return [format_history_prompt([descriptions[c] for c in row[k - j:]])
          for row, j in zip(history.tolist(), keep.tolist())]


def _copy_sources(num_examples: int, suffix_copies: float, descriptions: Sequence[str] | None,
                  history: np.ndarray, path, rng: np.random.Generator) -> np.ndarray:
  """[round(suffix_copies * num_examples)] the examples to copy with cut prompts, checked."""
  where = f"novel_interest_arrays.suffix_copies={suffix_copies!r}"
  if not (np.isfinite(suffix_copies) and suffix_copies >= 0):
    raise FeatureError(f"{where} must be a finite number >= 0")
  if history.shape[1] < 2:
    raise FeatureError(f"{where}: {path} has histories of K={history.shape[1]} cluster; "
                       "cutting older clusters needs K >= 2 (set suffix_copies to 0)")
  if descriptions is None:
    raise FeatureError(f"{where} needs the cluster descriptions (pass descriptions=)")
  if history.size and history.max() >= len(descriptions):
    raise FeatureError(f"{where}: {path} names cluster {int(history.max())}, but "
                       f"{len(descriptions)} descriptions were given")
  count = int(round(suffix_copies * num_examples))
  whole, rest = divmod(count, num_examples)
  picks = np.repeat(np.arange(num_examples), whole)
  return np.concatenate([picks, np.sort(rng.choice(num_examples, rest, replace=False))])


def candidate_targets(tokenizer: Tokenizer, descriptions: Sequence[str], max_target_length: int
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Every cluster description + EOS as candidates to score after one prompt (hit@k).

  Returns (tokens [M, max_target_length] int32 padded with 0, lengths [M]
  int32 including EOS). A description that does not fit is an error (a
  truncated candidate would be scored as a different text).
  """
  encoded = tokenizer.encode_batch(descriptions, add_eos=True)
  if not encoded:
    raise FeatureError("candidate_targets: no descriptions")
  lengths = np.asarray([len(ids) for ids in encoded], np.int32)  # [M]
  if lengths.max() > max_target_length:
    c = int(np.argmax(lengths))
    raise FeatureError(
        f"candidate_targets: description of cluster {c} ({str(descriptions[c])!r}) has "
        f"{lengths[c]} tokens with EOS, more than max_target_length={max_target_length}")
  tokens = np.zeros((len(encoded), int(max_target_length)), np.int32)  # [M, T]
  for c, ids in enumerate(encoded):
    tokens[c, :len(ids)] = ids
  return tokens, lengths
