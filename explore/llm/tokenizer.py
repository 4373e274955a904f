"""The LLM's SentencePiece tokenizer: training for from-scratch runs, a TF-free wrapper, checks.

Ids follow the T5/seqio convention: pad = 0, eos = 1, unk = 2, no bos (the
decoder's first input is the pad id, as seqio's feature converters shift
right with 0). A model trained here is a plain `.model` file, so T5X users can
load it as `seqio.SentencePieceVocabulary(path)` (`seqio_vocabulary` does).

A pretrained checkpoint brings its own SentencePiece model with its own ids
(Llama 2: unk 0, bos 1, eos 2, no pad); `Tokenizer.from_file(path,
seqio_ids=False)` loads it as it is. Feature rows are still padded with id 0
(`explore.llm.features`), which is harmless as long as no text encodes to id 0
(`check_padding_id_unused`). `TextTokenizer` is what the pipeline needs of any
tokenizer; `explore.llm.checkpoint_tokenizer.HfTokenizer` (a Hugging Face
`tokenizer.json`) is the other implementation.

The planner generates a cluster description token by token under a trie, so
the tokenizer must keep the descriptions apart: each description + EOS must
give a token sequence of its own (`check_descriptions_tokenize_uniquely`).
Distinct texts can collide after tokenization when normalization merges them
(repeated spaces, full-width characters) or characters fall to <unk>.

Semantic-ID cluster texts ("<a3> <b28> <c115>", `explore.clusters.semantic_ids`)
are made of level tokens; `train_sentencepiece` finds every level token in its
texts and makes it a user-defined symbol, both with and without the word-start
marker ("▁<a3>" and "<a3>"), so each level token after a space, or at the start of
a text, is exactly one piece and a semantic-ID text of L levels is L tokens.
"""

from __future__ import annotations

import io
import numbers
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Protocol, Sequence

from absl import logging
import gin
import sentencepiece as spm

from explore import artifacts
from explore import extras
from explore.clusters.semantic_ids import level_tokens
from explore.transitions.task_source import format_history_prompt

if TYPE_CHECKING:
  import seqio

PAD_ID = 0
EOS_ID = 1
UNK_ID = 2
MODEL_TYPES = ("unigram", "bpe")

# SentencePiece's message when the corpus supports fewer pieces than asked for.
_TOO_HIGH = re.compile(r"Vocabulary size too high \((\d+)\)\. Please set it to a value <= (\d+)")
_TOO_LOW = re.compile(r"Vocabulary size is smaller than required_chars\. (\d+) vs (\d+)")


class TokenizerError(ValueError):
  """A tokenizer that cannot be trained or loaded, or that does not fit the model or clusters."""


class TextTokenizer(Protocol):
  """What the `llm` stage, the features and the scoring need of a tokenizer.

  `pad_id` is the tokenizer's own padding id (-1 when it has none); feature
  rows are padded with `explore.llm.features.PAD_ID` whatever it is.
  """

  model_path: Path | None

  @property
  def vocab_size(self) -> int: ...

  @property
  def eos_id(self) -> int: ...

  @property
  def pad_id(self) -> int: ...

  def encode(self, text: str, add_eos: bool = False) -> list[int]: ...

  def encode_batch(self, texts: Iterable[str], add_eos: bool = False) -> list[list[int]]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class Tokenizer:
  """A SentencePiece model, usable without TensorFlow.

  With `seqio_ids` (the default) the model must follow the seqio convention
  (pad 0 and an EOS id), as `train_sentencepiece` makes it; without, any
  model with an EOS piece is accepted (a pretrained checkpoint's
  `tokenizer.model`).
  """

  def __init__(self, model_proto: bytes, model_path: str | os.PathLike | None = None,
               seqio_ids: bool = True):
    self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
    self.model_path = None if model_path is None else Path(model_path)
    where = self.model_path or "sentencepiece model"
    if self._processor.eos_id() < 0:
      raise TokenizerError(f"{where}: the sentencepiece model has no EOS piece (eos_id=-1); "
                           "the decoder is trained to end every description with EOS")
    if seqio_ids and self._processor.pad_id() != PAD_ID:
      raise TokenizerError(
          f"{where}: pad_id={self._processor.pad_id()}, eos_id={self._processor.eos_id()}; "
          f"the seqio convention needs pad_id={PAD_ID} and an eos id (train with "
          "train_sentencepiece)")

  @classmethod
  def from_file(cls, path: str | os.PathLike, seqio_ids: bool = True) -> "Tokenizer":
    """Loads a `.model` file written by `train_sentencepiece` (or any pad=0 model with EOS).

    `seqio_ids=False` accepts a pretrained model's own ids (any model with EOS).
    """
    path = Path(path)
    try:
      proto = path.read_bytes()
    except FileNotFoundError:
      raise TokenizerError(f"{path}: sentencepiece model file not found") from None
    try:
      return cls(proto, path, seqio_ids=seqio_ids)
    except RuntimeError as e:
      raise TokenizerError(f"{path}: not a sentencepiece model ({e})") from None

  @property
  def vocab_size(self) -> int:
    return self._processor.get_piece_size()

  @property
  def pad_id(self) -> int:
    return self._processor.pad_id()

  @property
  def eos_id(self) -> int:
    return self._processor.eos_id()

  @property
  def unk_id(self) -> int:
    return self._processor.unk_id()

  def serialized_model(self) -> bytes:
    return self._processor.serialized_model_proto()

  def encode(self, text: str, add_eos: bool = False) -> list[int]:
    """Token ids of `text` (what seqio's tokenize preprocessor gives), optionally + EOS."""
    ids = self._processor.encode(str(text))
    return ids + [self.eos_id] if add_eos else ids

  def encode_batch(self, texts: Iterable[str], add_eos: bool = False) -> list[list[int]]:
    ids = self._processor.encode([str(t) for t in texts])
    return [row + [self.eos_id] for row in ids] if add_eos else ids

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, read up to the first EOS; padding is skipped."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._processor.decode([i for i in ids if i != self.pad_id])


def seqio_vocabulary(tokenizer: Tokenizer) -> "seqio.SentencePieceVocabulary":
  """The equivalent `seqio.SentencePieceVocabulary` (imports seqio, hence TensorFlow).

  Only SentencePiece tokenizers have one; a `tokenizer.json` (Hugging Face
  BPE) has no seqio vocabulary.
  """
  if not isinstance(tokenizer, Tokenizer):
    raise TokenizerError(
        f"seqio_vocabulary: {tokenizer.model_path or type(tokenizer).__name__} is not a "
        "SentencePiece model; seqio vocabularies exist only for SentencePiece tokenizers")
  seqio = extras.require(  # pylint: disable=redefined-outer-name
      "seqio", "seqio", "seqio_vocabulary")
  if tokenizer.model_path is None:
    raise TokenizerError("seqio_vocabulary: the tokenizer has no model file; save it first "
                         "(train_sentencepiece writes one, Tokenizer.from_file reads one)")
  return seqio.SentencePieceVocabulary(str(tokenizer.model_path))


def sentencepiece_corpus(descriptions: Sequence[str], k: int = 2) -> list[str]:
  """Training text for a from-scratch tokenizer: every description and prompts built from them.

  The prompts (`format_history_prompt` over windows of `k` consecutive
  descriptions, wrapping around) put the template's words and separators in
  the corpus as often as the descriptions themselves.
  """
  texts = [str(t) for t in descriptions]
  if not texts:
    raise TokenizerError("sentencepiece_corpus: no cluster descriptions given")
  prompts = [format_history_prompt([texts[(c + j) % len(texts)] for j in range(k)])
             for c in range(len(texts))]
  return texts + prompts


WORD_START = "\u2581"  # SentencePiece's marker of a word start (a space before it)


def level_token_symbols(texts: Sequence[str]) -> list[str]:
  """User-defined symbols for the semantic-ID level tokens in `texts` ([] when there are none)."""
  tokens = level_tokens(texts)
  return [WORD_START + t for t in tokens] + tokens


def _train_proto(texts: Sequence[str], vocab_size: int, model_type: str,
                 options: dict) -> bytes:
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(texts), model_writer=writer, vocab_size=vocab_size,
      model_type=model_type, pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
      character_coverage=1.0, input_sentence_size=0, shuffle_input_sentence=False,
      num_threads=1, minloglevel=2, **options)
  return writer.getvalue()


@gin.configurable
def train_sentencepiece(
    texts: Sequence[str],
    model_path: str | os.PathLike,
    vocab_size: int = 2048,
    model_type: str = "unigram",
    max_sentencepiece_length: int = 16,
    split_digits: bool = False,
) -> Tokenizer:
  """Trains a SentencePiece model on `texts`, writes it to `model_path`, returns it.

  Ids: pad 0, eos 1, unk 2, no bos; character coverage 1.0 (every character of
  the corpus gets a piece). Training is deterministic: one thread, every
  sentence used, no shuffling, so the same texts give the same model bytes.

  `vocab_size` is an upper bound: a small corpus (a few hundred cluster
  descriptions) supports fewer pieces than a typical vocabulary, and
  SentencePiece refuses a size it cannot fill. It then reports the largest
  size the corpus supports, and training is rerun with that size (logged);
  read the result's `vocab_size` to size the model's embedding. A size below
  the number of distinct characters + 3 special pieces is an error.
  Semantic-ID level tokens in `texts` become user-defined symbols (one piece
  each; see the module docstring).
  """
  texts = [str(t) for t in texts]
  if not texts or not any(texts):
    raise TokenizerError("train_sentencepiece: texts is empty; give the cluster descriptions "
                         "and prompts to train on")
  if model_type not in MODEL_TYPES:
    raise TokenizerError(
        f"train_sentencepiece: model_type={model_type!r}, expected one of {MODEL_TYPES}")
  if (isinstance(vocab_size, bool) or not isinstance(vocab_size, numbers.Integral)
      or vocab_size < 4):
    raise TokenizerError(f"train_sentencepiece: vocab_size={vocab_size!r} must be an int >= 4")
  options = dict(max_sentencepiece_length=max_sentencepiece_length, split_digits=split_digits)
  symbols = level_token_symbols(texts)
  if symbols:
    options["user_defined_symbols"] = symbols
  size = int(vocab_size)
  for _ in range(3):
    try:
      proto = _train_proto(texts, size, model_type, options)
      break
    except RuntimeError as e:
      too_high, too_low = _TOO_HIGH.search(str(e)), _TOO_LOW.search(str(e))
      if too_low:
        raise TokenizerError(
            f"train_sentencepiece: vocab_size={vocab_size} is below the {too_low.group(2)} pieces "
            "needed for every character of the texts plus the special ids") from None
      if not too_high or int(too_high.group(2)) >= size:
        raise TokenizerError(f"train_sentencepiece: sentencepiece failed ({e})") from None
      logging.info("train_sentencepiece: the corpus supports at most %s pieces; "
                   "vocab_size %d capped to it", too_high.group(2), size)
      size = int(too_high.group(2))
  else:
    raise TokenizerError(
        f"train_sentencepiece: no vocabulary size <= {vocab_size} could be trained")
  model_path = Path(model_path)
  artifacts.atomic_write_bytes(model_path, proto)
  return Tokenizer(proto, model_path)


def check_vocab_matches(tokenizer: TextTokenizer, model_vocab_size: int,
                        allow_padding: bool = False) -> None:
  """Raises TokenizerError unless the model's embedding has a row per token id.

  With `allow_padding`, a model vocabulary larger than the tokenizer's is
  accepted (embeddings padded to a multiple of 128, as in T5X and Gemma).
  """
  ok = (model_vocab_size >= tokenizer.vocab_size if allow_padding
        else model_vocab_size == tokenizer.vocab_size)
  if not ok:
    where = tokenizer.model_path or "the tokenizer"
    need = "at least" if allow_padding else "exactly"
    raise TokenizerError(
        f"vocabulary mismatch: {where} has {tokenizer.vocab_size} token ids, the model's "
        f"vocab_size is {model_vocab_size} (needs {need} {tokenizer.vocab_size})")


def check_descriptions_tokenize_uniquely(tokenizer: TextTokenizer, texts: Sequence[str]
                                         ) -> None:
  """Raises TokenizerError unless each description + EOS is a token sequence of its own.

  Every sequence ends in EOS, which never occurs inside one, so distinct
  sequences are also prefix-free: the decoding trie has one leaf per cluster.
  """
  seen: dict[tuple[int, ...], int] = {}
  for cluster, ids in enumerate(tokenizer.encode_batch(texts, add_eos=True)):
    other = seen.setdefault(tuple(ids), cluster)
    if other != cluster:
      raise TokenizerError(
          f"descriptions of clusters {other} ({str(texts[other])!r}) and {cluster} "
          f"({str(texts[cluster])!r}) tokenize to the same ids {ids}; the planner could not "
          "tell them apart (retrain the tokenizer on these descriptions, or make them differ)")


def check_padding_id_unused(tokenizer: TextTokenizer, texts: Sequence[str], what: str,
                            padding_id: int = PAD_ID) -> None:
  """Raises TokenizerError if a text encodes to `padding_id`, which fills feature rows.

  A pretrained tokenizer may give id 0 to a real token (Llama 3: "!"; Llama 2:
  <unk>); the features and the loss treat id 0 as padding, so no training
  text may contain it.
  """
  for i, ids in enumerate(tokenizer.encode_batch(texts)):
    if padding_id in ids:
      where = tokenizer.model_path or "the tokenizer"
      raise TokenizerError(
          f"{what} {i} ({str(texts[i])!r}) encodes to id {padding_id} with {where}, the id "
          "that pads feature rows; remove the character(s) it stands for from the text")
