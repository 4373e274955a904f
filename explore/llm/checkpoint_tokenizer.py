"""The tokenizer a pretrained checkpoint brings: its SentencePiece model or its `tokenizer.json`.

An imported decoder only understands the ids it was trained on, so the `llm`
stage fine-tunes it with the checkpoint folder's own tokenizer:

  tokenizer.model  SentencePiece (Llama 1/2, TinyLlama, Gemma): loaded into
                   `explore.llm.tokenizer.Tokenizer` with the model's own ids;
                   preferred when both files exist (no extra package, and T5X
                   users can read it as a seqio vocabulary)
  tokenizer.json   Hugging Face `tokenizers` (Llama 3 byte-level BPE): loaded
                   into `HfTokenizer`; needs the `tokenizers` package

Texts are encoded without the checkpoint's BOS or other special tokens (the
decoder's first input is id 0, as for every run of the pipeline) and EOS is
appended where the pipeline asks for it. The EOS and padding ids of a
`tokenizer.json` come from the folder's `tokenizer_config.json` (`eos_token`,
`pad_token`), else from `config.json` (`eos_token_id`, `pad_token_id`).

`save_tokenizer` copies the tokenizer into a stage folder (with
`special_tokens.json` holding the resolved ids), so later stages and users
read it from the run directory with `load_saved_tokenizer`.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil
from typing import Any, Iterable, Sequence

from explore import artifacts
from explore.llm.tokenizer import TextTokenizer
from explore.llm.tokenizer import Tokenizer
from explore.llm.tokenizer import TokenizerError

SENTENCEPIECE_FILE = "tokenizer.model"
HF_TOKENIZER_FILE = "tokenizer.json"
HF_TOKENIZER_CONFIG = "tokenizer_config.json"
HF_MODEL_CONFIG = "config.json"
SPECIAL_TOKENS_FILE = "special_tokens.json"


class HfTokenizer:
  """A Hugging Face `tokenizer.json` (e.g. Llama 3's BPE) behind the `TextTokenizer` interface.

  `eos_id` ends every description the decoder learns; `pad_id` (-1 if none)
  is skipped when decoding. Texts are encoded without special tokens.
  """

  def __init__(self, path: str | os.PathLike, eos: int | str, pad: int | str | None = None):
    """`eos` and `pad` are token ids or token texts (e.g. "<|end_of_text|>"); pad may be None."""
    self.model_path = Path(path)
    try:
      import tokenizers  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise TokenizerError(
          f"{self.model_path}: reading a Hugging Face tokenizer.json needs the 'tokenizers' "
          "package (pip install tokenizers)") from None
    try:
      self._tokenizer = tokenizers.Tokenizer.from_file(str(self.model_path))
    except Exception as e:  # the Rust library raises plain Exceptions
      raise TokenizerError(f"{self.model_path}: not a Hugging Face tokenizer file ({e})"
                           ) from None
    ids = self._tokenizer.get_vocab(with_added_tokens=True).values()
    self._vocab_size = max(ids) + 1 if ids else 0
    self._eos_id = self._token_id(eos, "eos")
    self._pad_id = -1 if pad is None else self._token_id(pad, "pad")

  def _token_id(self, token: int | str, name: str) -> int:
    token_id = self._tokenizer.token_to_id(token) if isinstance(token, str) else token
    if token_id is None or not 0 <= int(token_id) < self._vocab_size:
      raise TokenizerError(f"{self.model_path}: the {name} token {token!r} is not a token of "
                           f"this tokenizer (ids 0..{self._vocab_size - 1})")
    return int(token_id)

  @property
  def vocab_size(self) -> int:
    """Largest id (model vocabulary or added token) + 1: the embedding rows it needs."""
    return self._vocab_size

  @property
  def eos_id(self) -> int:
    return self._eos_id

  @property
  def pad_id(self) -> int:
    return self._pad_id

  def encode(self, text: str, add_eos: bool = False) -> list[int]:
    ids = self._tokenizer.encode(str(text), add_special_tokens=False).ids
    return ids + [self.eos_id] if add_eos else ids

  def encode_batch(self, texts: Iterable[str], add_eos: bool = False) -> list[list[int]]:
    encodings = self._tokenizer.encode_batch([str(t) for t in texts], add_special_tokens=False)
    return [e.ids + [self.eos_id] if add_eos else e.ids for e in encodings]

  def decode(self, ids: Sequence[int]) -> str:
    """Text of `ids`, read up to the first EOS; padding is skipped."""
    ids = [int(i) for i in ids]
    if self.eos_id in ids:
      ids = ids[:ids.index(self.eos_id)]
    return self._tokenizer.decode([i for i in ids if i != self.pad_id],
                                  skip_special_tokens=False)


def _token_content(value: Any) -> str | None:
  """A special token of tokenizer_config.json: a string or {"content": ...}."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def config_token_id(value: Any) -> int | None:
  """An id of config.json: an int, or a list of ints (the first is the main one)."""
  if isinstance(value, list):
    value = value[0] if value else None
  return value if isinstance(value, int) and not isinstance(value, bool) else None


def _special_tokens(checkpoint_dir: Path, path: Path) -> tuple[int | str, int | str | None]:
  """(eos, pad) of a tokenizer.json in `checkpoint_dir`, as token texts or ids (pad may be None)."""
  tokenizer_config = checkpoint_dir / HF_TOKENIZER_CONFIG
  model_config = checkpoint_dir / HF_MODEL_CONFIG
  names = (artifacts.read_json(tokenizer_config, TokenizerError)
           if tokenizer_config.exists() else {})
  ids = artifacts.read_json(model_config, TokenizerError) if model_config.exists() else {}
  eos = _token_content(names.get("eos_token")) or config_token_id(ids.get("eos_token_id"))
  pad = _token_content(names.get("pad_token")) or config_token_id(ids.get("pad_token_id"))
  if eos is None:
    raise TokenizerError(
        f"{path}: no EOS token: set eos_token in {tokenizer_config} or eos_token_id in "
        f"{model_config}")
  return eos, pad


def checkpoint_tokenizer_file(checkpoint_dir: str | os.PathLike) -> Path:
  """The folder's tokenizer file: `tokenizer.model` if present, else `tokenizer.json`."""
  directory = Path(checkpoint_dir)
  for name in (SENTENCEPIECE_FILE, HF_TOKENIZER_FILE):
    if (directory / name).is_file():
      return directory / name
  raise TokenizerError(
      f"{directory}: no {SENTENCEPIECE_FILE} or {HF_TOKENIZER_FILE}; a pretrained checkpoint "
      "is fine-tuned with its own tokenizer (copy it from the model's release)")


def load_checkpoint_tokenizer(checkpoint_dir: str | os.PathLike) -> TextTokenizer:
  """The tokenizer of a Hugging Face checkpoint folder (see the module docstring)."""
  path = checkpoint_tokenizer_file(checkpoint_dir)
  if path.name == SENTENCEPIECE_FILE:
    return Tokenizer.from_file(path, seqio_ids=False)
  eos, pad = _special_tokens(Path(checkpoint_dir), path)
  return HfTokenizer(path, eos=eos, pad=pad)


def save_tokenizer(tokenizer: TextTokenizer, folder: str | os.PathLike) -> Path:
  """Copies a checkpoint tokenizer into `folder` (+ its special ids); returns the copy's path."""
  if tokenizer.model_path is None:
    raise TokenizerError("save_tokenizer: the tokenizer has no file to copy")
  folder = Path(folder)
  target = folder / tokenizer.model_path.name
  if target.resolve() != tokenizer.model_path.resolve():
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.tmp"
    shutil.copyfile(tokenizer.model_path, tmp)
    os.replace(tmp, target)
  artifacts.atomic_write_json(folder / SPECIAL_TOKENS_FILE, {
      "file": target.name, "eos_id": tokenizer.eos_id, "pad_id": tokenizer.pad_id,
      "vocab_size": tokenizer.vocab_size, "source": str(tokenizer.model_path)})
  return target


def load_saved_tokenizer(folder: str | os.PathLike) -> TextTokenizer:
  """The tokenizer `save_tokenizer` wrote into `folder`."""
  folder = Path(folder)
  special = artifacts.read_json(folder / SPECIAL_TOKENS_FILE, TokenizerError)
  path = folder / str(special.get("file", ""))
  if path.name == SENTENCEPIECE_FILE:
    return Tokenizer.from_file(path, seqio_ids=False)
  if path.name == HF_TOKENIZER_FILE:
    pad = int(special["pad_id"])
    return HfTokenizer(path, eos=int(special["eos_id"]), pad=None if pad < 0 else pad)
  raise TokenizerError(f"{folder / SPECIAL_TOKENS_FILE}: unknown tokenizer file "
                       f"{special.get('file')!r}")
