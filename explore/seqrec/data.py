"""Per-user item sequences, the leave-last-two-out split, and training windows.

Every interaction counts as implicit feedback (rated, watched, clicked: the
rating or watch fraction is not used). A user's sequence is their items in time
order, ties in log order (the order `Interactions` keeps). Items become tokens
`item + 1` so that 0 can pad.

The split is the one of the sequential-recommendation literature (SASRec,
BERT4Rec): a user's last item is the test target, the one before it the
validation target, the rest is training. Users with fewer than 3 items have no
targets and are used for training only.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from explore.data.schema import Interactions
from explore.seqrec.model import PAD

MIN_EVAL_LENGTH = 3  # items a user needs to give a validation and a test target


class SequenceDataError(ValueError):
  """Interactions or settings that cannot make training sequences or eval examples."""


@dataclasses.dataclass(frozen=True)
class UserSequences:
  """Every user's tokens (item + 1) in time order, as CSR rows."""

  offsets: np.ndarray  # [num_users + 1] int64: user u's tokens are tokens[offsets[u]:offsets[u+1]]
  tokens: np.ndarray  # [num_interactions] int32 in [1, num_items]
  num_items: int

  @property
  def num_users(self) -> int:
    return len(self.offsets) - 1

  @property
  def lengths(self) -> np.ndarray:
    return np.diff(self.offsets)  # [num_users]

  def user_tokens(self, user: int) -> np.ndarray:
    return self.tokens[self.offsets[user]:self.offsets[user + 1]]


def user_sequences(interactions: Interactions) -> UserSequences:
  """The users' item sequences of an interaction log (rows already in user, time order)."""
  if len(interactions) == 0:
    raise SequenceDataError("Interactions: the log has no rows, so there are no user histories "
                            "to train a sequence recommender on")
  if interactions.num_items < 1:
    raise SequenceDataError("Interactions: the catalog (item_ids) is empty")
  return UserSequences(offsets=interactions.user_offsets(),
                       tokens=interactions.item.astype(np.int32) + 1,
                       num_items=interactions.num_items)


@dataclasses.dataclass(frozen=True)
class LeaveLastOutSplit:
  """Which part of each sequence is training, validation target and test target."""

  sequences: UserSequences
  train_length: np.ndarray  # [num_users] training prefix length (all items if no targets)
  eval_users: np.ndarray  # [num_eval_users] int64: users with >= 3 items, ascending

  def train_sequences(self) -> UserSequences:
    """Only the training prefixes (what the model and the baselines may learn from)."""
    seq = self.sequences
    keep = np.arange(len(seq.tokens)) - np.repeat(seq.offsets[:-1], seq.lengths)  # [N] position
    keep = keep < np.repeat(self.train_length, seq.lengths)
    offsets = np.concatenate([[0], np.cumsum(self.train_length)]).astype(np.int64)
    return UserSequences(offsets=offsets, tokens=seq.tokens[keep], num_items=seq.num_items)

  def target_counts(self) -> np.ndarray:
    """[num_items + 1] training interactions per token (index 0, padding, is 0)."""
    train = self.train_sequences()
    return np.bincount(train.tokens, minlength=self.sequences.num_items + 1).astype(np.int64)


def leave_last_out(sequences: UserSequences) -> LeaveLastOutSplit:
  """Last item: test target; second to last: validation target; the rest: training."""
  lengths = sequences.lengths
  has_targets = lengths >= MIN_EVAL_LENGTH
  train_length = np.where(has_targets, lengths - 2, lengths)
  eval_users = np.flatnonzero(has_targets).astype(np.int64)
  if not len(eval_users):
    raise SequenceDataError(
        f"Interactions: no user has at least {MIN_EVAL_LENGTH} interactions (longest history: "
        f"{int(lengths.max()) if len(lengths) else 0}), so there are no validation or test targets")
  return LeaveLastOutSplit(sequences=sequences, train_length=train_length, eval_users=eval_users)


def _left_padded(tokens: np.ndarray, ends: np.ndarray, lengths: np.ndarray,
                 max_len: int) -> np.ndarray:
  """Rows of the `max_len` tokens before each end (fewer where `lengths` is shorter), left-padded.

  Row r holds tokens[ends[r] - n : ends[r]] with n = min(lengths[r], max_len) in its last n
  columns and PAD before them.
  """
  take = np.minimum(lengths, max_len)  # [rows]
  column = np.arange(max_len)[None, :]  # [1, L]
  index = ends[:, None] - max_len + column  # [rows, L]
  valid = column >= (max_len - take)[:, None]  # [rows, L]
  return np.where(valid, tokens[np.where(valid, index, 0)], PAD).astype(np.int32)


def left_padded_histories(sequences: UserSequences, users: np.ndarray,
                          prefix_lengths: np.ndarray, max_len: int) -> np.ndarray:
  """[len(users), max_len] the newest `max_len` tokens of each user's first `prefix_lengths`."""
  ends = sequences.offsets[users] + prefix_lengths
  return _left_padded(sequences.tokens, ends, prefix_lengths, max_len)


def encode_histories(histories: Sequence[Sequence[int]], num_items: int, max_len: int
                     ) -> np.ndarray:
  """Model inputs [len(histories), max_len] from lists of dense item ids (oldest first).

  For histories that do not come from a checked `Interactions` log (serving,
  notebooks): an empty history or an id outside [0, num_items) is an error.
  """
  rows = np.zeros((len(histories), max_len), np.int32)
  for row, items in enumerate(histories):
    items = np.asarray(items, np.int64).reshape(-1)
    if not len(items):
      raise SequenceDataError(f"history {row} is empty; the recommender needs at least one item")
    bad = items[(items < 0) | (items >= num_items)]
    if len(bad):
      raise SequenceDataError(f"history {row}: item id {int(bad[0])} is out of range "
                              f"[0, {num_items}) (dense item indices of the catalog)")
    newest = items[-max_len:]
    rows[row, max_len - len(newest):] = newest + 1
  return rows


def training_windows(split: LeaveLastOutSplit, max_len: int, stride: int | None = None,
                     max_windows_per_user: int | None = None) -> dict[str, np.ndarray]:
  """Training rows that give every (input, next item) pair of a training prefix its context.

  Row r reads the `max_len` inputs before its end (left-padded) and is scored
  only on its newest `stride` pairs (default `max_len`: non-overlapping
  windows, every position scored). Rows end at the newest pair and step back
  by `stride` until the oldest pair is covered (or `max_windows_per_user`
  rows; 1 with stride = max_len is the original SASRec's one sequence per
  user). So every pair is scored exactly once, reading min(all earlier items,
  at least max_len - stride + 1) items: stride 1 is the last window of every
  prefix. The rows number about pairs / stride and each costs the same, so an
  epoch costs max_len / stride transformer positions and one output-layer
  scoring per pair: linear in the number of pairs.

  Returns {"inputs": [rows, max_len], "targets": [rows, stride]} int32; the
  targets are the next items of the last `stride` input positions, 0 where
  there is no pair.
  """
  stride = max_len if stride is None else stride
  if not isinstance(max_len, int) or max_len < 1:
    raise SequenceDataError(f"training_windows: max_len={max_len!r} must be a positive integer")
  if not isinstance(stride, int) or not 1 <= stride <= max_len:
    raise SequenceDataError(f"training_windows: stride={stride!r} must be an integer in "
                            f"[1, max_len={max_len}]")
  if max_windows_per_user is not None and (not isinstance(max_windows_per_user, int)
                                           or max_windows_per_user < 1):
    raise SequenceDataError(f"training_windows: max_windows_per_user={max_windows_per_user!r} "
                            "must be None or a positive integer")
  seq = split.sequences
  pairs = np.maximum(split.train_length - 1, 0)  # [users]
  windows = -(-pairs // stride)  # [users] ceil(pairs / stride)
  if max_windows_per_user is not None:
    windows = np.minimum(windows, max_windows_per_user)
  if windows.sum() == 0:
    raise SequenceDataError("training_windows: no user has 2 or more training items, so there "
                            "is no (input, next item) pair to train on")
  user = np.repeat(np.arange(seq.num_users), windows)  # [W]
  first = np.concatenate([[0], np.cumsum(windows)[:-1]])
  k = np.arange(windows.sum()) - np.repeat(first, windows)  # [W] window index, newest first
  end_pair = pairs[user] - k * stride  # [W] pairs before the window's end
  start = seq.offsets[:-1][user]  # [W]
  inputs = _left_padded(seq.tokens, start + end_pair, end_pair, max_len)  # [W, L]
  targets = _left_padded(seq.tokens, start + end_pair + 1, end_pair, stride)  # [W, S]
  return {"inputs": inputs, "targets": targets}


def mean_context(windows: dict[str, np.ndarray]) -> float:
  """Mean number of items the scored positions read (their input and the earlier ones)."""
  inputs, targets = windows["inputs"], windows["targets"]
  scored = inputs[:, -targets.shape[1]:]  # [W, S]
  context = np.cumsum(inputs != PAD, axis=1)[:, -targets.shape[1]:]  # [W, S]
  keep = (targets != PAD) & (scored != PAD)
  return float(context[keep].mean())


@dataclasses.dataclass(frozen=True)
class RankingExamples:
  """One next-item ranking case per evaluated user (validation or test)."""

  users: np.ndarray  # [E] int64 dense user index
  inputs: np.ndarray  # [E, max_len] int32 left-padded history tokens
  targets: np.ndarray  # [E] int32 target token
  history_start: np.ndarray  # [E] int64: seen tokens are sequences.tokens[start:start+length]
  history_length: np.ndarray  # [E] int64
  tokens: np.ndarray  # the sequences' tokens the history ranges point into

  def __len__(self) -> int:
    return len(self.users)

  def history_matrix(self, rows: np.ndarray, width: int) -> np.ndarray:
    """[len(rows), width] seen tokens of `rows`, PAD beyond each history (width >= longest)."""
    column = np.arange(width)[None, :]
    valid = column < self.history_length[rows][:, None]
    index = self.history_start[rows][:, None] + column
    return np.where(valid, self.tokens[np.where(valid, index, 0)], PAD).astype(np.int32)


def ranking_examples(split: LeaveLastOutSplit, which: str, max_len: int) -> RankingExamples:
  """Validation (`which='val'`) or test (`'test'`) cases of the evaluated users.

  Validation: history = training prefix, target = second to last item.
  Test: history = training prefix + validation item, target = last item.
  The model reads the last `max_len` items of the history; ranking excludes
  every item of the whole history.
  """
  if which not in ("val", "test"):
    raise SequenceDataError(f"ranking_examples: which={which!r} must be 'val' or 'test'")
  seq, users = split.sequences, split.eval_users
  start = seq.offsets[users]  # [E]
  history = split.train_length[users] + (1 if which == "test" else 0)  # [E]
  inputs = left_padded_histories(seq, users, history, max_len)
  return RankingExamples(users=users, inputs=inputs, targets=seq.tokens[start + history],
                         history_start=start, history_length=history, tokens=seq.tokens)
