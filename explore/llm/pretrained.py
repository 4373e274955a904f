"""Starting the `llm` stage from a pretrained Hugging Face checkpoint: config, tokenizer, weights.

What comes from where when `LlmStageOptions.pretrained_checkpoint` names a
Llama/Gemma-family folder (config.json, safetensors, tokenizer):

  config.json    the model's shape and conventions (`CHECKPOINT_FIELDS`) and
                 `vocab_size`; a gin binding of one of these fields must agree
                 with the checkpoint, else `CheckpointImportError` names the
                 field (a gin `vocab_size` is ignored, as in from-scratch runs
                 where the trained tokenizer sets it)
  gin            how the model is trained and run (`GIN_FIELDS`): dtype,
                 param_dtype, remat and the LoRA adapters (rank, alpha, targets)
  tokenizer      the folder's own `tokenizer.model` / `tokenizer.json`
                 (`explore.llm.checkpoint_tokenizer`); its ids must fit the
                 embedding (fewer ids than rows is fine: padded embeddings)

The weights are imported once into `<stage>/pretrained/checkpoint_0`
(weights only), from which the trainer starts with `restore_weights_only`;
new LoRA adapters start fresh (B = 0, so step 0 is exactly the imported
model). `checkpoint_fingerprint` identifies the folder's contents, so a stage
folder made from other weights is never resumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from pathlib import Path
import shutil
from typing import Any, Mapping

from absl import logging
import gin

from explore import artifacts
from explore import rundir
from explore.llm import checkpoint_import
from explore.llm import checkpoint_tokenizer
from explore.llm import tokenizer as tokenizer_lib
from explore.llm.checkpoint_import import CheckpointImportError
from explore.llm.decoder_config import DecoderConfig
from explore.llm.safetensors_reader import INDEX_FILE

# DecoderConfig fields read from the checkpoint's config.json.
CHECKPOINT_FIELDS = (
    "family", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "mlp_dim",
    "rope_theta", "rope_scaling", "rope_scaling_factor", "rope_low_freq_factor",
    "rope_high_freq_factor", "rope_original_max_length", "norm_eps", "tie_embeddings",
    "activation")
# DecoderConfig fields kept from the gin config (bindings or code defaults).
GIN_FIELDS = ("dtype", "param_dtype", "remat", "lora_rank", "lora_alpha", "lora_targets")
# Set by the stage from the checkpoint; a gin binding is ignored.
STAGE_FIELDS = ("vocab_size",)

SOURCE_FILE = "source.json"  # the fingerprint of the folder an initial checkpoint came from
# Small files whose bytes are hashed; weight files count by name, size and mtime.
_HASHED_FILES = (checkpoint_import.CONFIG_FILE, INDEX_FILE,
                 checkpoint_tokenizer.SENTENCEPIECE_FILE, checkpoint_tokenizer.HF_TOKENIZER_FILE,
                 checkpoint_tokenizer.HF_TOKENIZER_CONFIG, "special_tokens_map.json",
                 "generation_config.json")


def bound_decoder_fields() -> dict[str, Any]:
  """The DecoderConfig parameters bound in the current gin config (macros resolved)."""
  try:
    return dict(gin.get_bindings("DecoderConfig"))
  except ValueError:
    return {}


def _effective(config: DecoderConfig, field: str) -> Any:
  """A field as the model uses it (None for tie_embeddings / activation is the family's)."""
  if field == "tie_embeddings":
    return config.tied
  if field == "activation":
    return config.mlp_activation
  return getattr(config, field)


def _agrees(checkpoint: DecoderConfig, field: str, value: Any) -> bool:
  try:
    probe = dataclasses.replace(checkpoint, **{field: value})
  except (ValueError, TypeError):
    return False
  ours, theirs = _effective(probe, field), _effective(checkpoint, field)
  if isinstance(ours, float) or isinstance(theirs, float):
    return (isinstance(ours, (int, float)) and isinstance(theirs, (int, float))
            and math.isclose(ours, theirs, rel_tol=1e-9))
  return ours == theirs


def merge_decoder_config(checkpoint: DecoderConfig, configured: DecoderConfig,
                         bound: Mapping[str, Any], where: str | os.PathLike) -> DecoderConfig:
  """The checkpoint's shape with the gin config's training fields (see the module docstring).

  Args:
    checkpoint: the config read from the checkpoint's config.json.
    configured: the gin-built DecoderConfig (its GIN_FIELDS are kept).
    bound: the DecoderConfig parameters bound in gin (`bound_decoder_fields()`);
      a bound CHECKPOINT_FIELDS value that differs from the checkpoint's raises.
    where: the config.json path, for the error message.
  """
  conflicts = [f"DecoderConfig.{field} = {value!r} (the checkpoint has "
               f"{_effective(checkpoint, field)!r})"
               for field, value in sorted(bound.items())
               if field in CHECKPOINT_FIELDS and not _agrees(checkpoint, field, value)]
  if conflicts:
    raise CheckpointImportError(
        f"{where}: the gin config binds DecoderConfig fields that differ from the pretrained "
        f"checkpoint: {'; '.join(conflicts)}. The model's shape comes from the checkpoint: "
        "drop these bindings (a model preset such as models/tiny.gin, which "
        "configs/quickstart.gin includes through llm/quickstart.gin; start from "
        "configs/llm/import_quickstart.gin instead)")
  ignored = {f: v for f, v in bound.items() if f in STAGE_FIELDS
             and v != getattr(checkpoint, f)}
  if ignored:
    logging.info("llm: gin's DecoderConfig %s ignored; the checkpoint's is used (%s)", ignored,
                 {f: getattr(checkpoint, f) for f in ignored})
  return dataclasses.replace(checkpoint, **{f: getattr(configured, f) for f in GIN_FIELDS})


def checkpoint_fingerprint(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """What identifies a checkpoint folder's contents: {"path", "files", "hash"}.

  Config, index and tokenizer files count by their bytes (sha256); the
  safetensors weight files by name, size and modification time (hashing
  gigabytes on every run would cost seconds to minutes).
  """
  directory = Path(checkpoint_dir)
  files: dict[str, str] = {}
  for path in sorted(directory.iterdir()):
    if path.name in _HASHED_FILES and path.is_file():
      files[path.name] = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    elif path.suffix == ".safetensors" and path.is_file():
      stat = path.stat()
      files[path.name] = f"{stat.st_size} bytes, mtime_ns {stat.st_mtime_ns}"
  return {"path": str(directory.resolve()), "files": files, "hash": rundir.fingerprint(files)}


@dataclasses.dataclass(frozen=True)
class PretrainedStart:
  """What the stage fine-tunes from: the merged config, the copied tokenizer, the source."""

  directory: Path
  config: DecoderConfig
  tokenizer: tokenizer_lib.TextTokenizer  # read from the stage folder's copy
  fingerprint: dict[str, Any]
  bos_id: int | None = None  # config.json's bos_token_id: the first decoder input


def _bos_token_id(hf_config: Mapping[str, Any], vocab_size: int, where: Path) -> int | None:
  """config.json's `bos_token_id` (the first of a list), None where it has none."""
  value = checkpoint_tokenizer.config_token_id(hf_config.get("bos_token_id"))
  if value is not None and not 0 <= value < vocab_size:
    raise CheckpointImportError(f"{where}: bos_token_id={value!r} is not a token id in "
                                f"[0, {vocab_size})")
  return value


def prepare_pretrained(checkpoint_dir: str | os.PathLike, configured: DecoderConfig,
                       bound: Mapping[str, Any], tokenizer_dir: str | os.PathLike
                       ) -> PretrainedStart:
  """Reads and checks config and tokenizer (no weights yet); copies the tokenizer.

  Raises (naming the file or field) on a missing folder or config.json, an
  unsupported config, a gin conflict, or a tokenizer with more ids than the
  embedding has rows.
  """
  directory = Path(checkpoint_dir)
  if not directory.is_dir():
    raise CheckpointImportError(
        f"LlmStageOptions.pretrained_checkpoint={str(checkpoint_dir)!r} is not a folder (a "
        "Hugging Face checkpoint folder with config.json, *.safetensors and a tokenizer)")
  where = directory / checkpoint_import.CONFIG_FILE
  hf_config = checkpoint_import.read_hf_config(directory)
  checkpoint = checkpoint_import.decoder_config_from_hf(hf_config, where=str(where))
  config = merge_decoder_config(checkpoint, configured, bound, where)
  tokenizer = checkpoint_tokenizer.load_checkpoint_tokenizer(directory)
  if tokenizer.vocab_size > config.vocab_size:
    raise tokenizer_lib.TokenizerError(
        f"{tokenizer.model_path}: the tokenizer has {tokenizer.vocab_size} token ids but "
        f"{where} gives the embedding vocab_size={config.vocab_size} rows; every id needs a row")
  copy = checkpoint_tokenizer.save_tokenizer(tokenizer, tokenizer_dir)
  tokenizer = checkpoint_tokenizer.load_saved_tokenizer(copy.parent)
  logging.info("llm: fine-tuning %s (%s, %d parameters) with its tokenizer %s (%d ids, eos %d)",
               directory, config.family, config.num_params(), copy.name, tokenizer.vocab_size,
               tokenizer.eos_id)
  return PretrainedStart(directory=directory, config=config, tokenizer=tokenizer,
                         fingerprint=checkpoint_fingerprint(directory),
                         bos_id=_bos_token_id(hf_config, config.vocab_size, where))


def write_initial_checkpoint_once(start: PretrainedStart, initial_dir: str | os.PathLike,
                                  mesh=None, stale: tuple[str | os.PathLike, ...] = ()) -> bool:
  """Imports the weights into `initial_dir/checkpoint_0` unless it holds them already.

  A resumed stage reuses the import when `initial_dir/source.json` records
  the same fingerprint; otherwise `initial_dir` and the `stale` folders (the
  fine-tuning model_dir, whose checkpoints grew from other weights) are
  removed first. The imported model is freed before returning, so only the
  trainer's copy of the weights stays in memory. Returns True when imported.
  """
  initial_dir = Path(initial_dir)
  source = initial_dir / SOURCE_FILE
  if source.exists():
    previous = artifacts.read_json(source, CheckpointImportError)
    if previous.get("hash") == start.fingerprint["hash"]:
      logging.info("llm: %s already holds the weights of %s", initial_dir, start.directory)
      return False
    logging.warning("llm: %s was imported from other weights (%s); importing %s again and "
                    "discarding the fine-tuning checkpoints made from them", initial_dir,
                    previous.get("path"), start.directory)
  for folder in (initial_dir, *map(Path, stale)):
    if folder.exists():
      shutil.rmtree(folder)
  imported = checkpoint_import.import_hf_checkpoint(
      start.directory, dtype=start.config.dtype, param_dtype=start.config.param_dtype, mesh=mesh,
      allow_vocab_padding=True)
  checkpoint_import.write_initial_checkpoint(imported.model, initial_dir)
  del imported
  artifacts.atomic_write_json(source, start.fingerprint)
  return True
