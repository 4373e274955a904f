"""Exports a `Decoder` as a Hugging Face Llama/Gemma checkpoint folder (the import's inverse).

`export_planner` (what `explore export --format=hf` runs) writes a trained
planner: LoRA merged, config.json with its token ids, float32 weights and the
tokenizer files `transformers.AutoTokenizer` reads (`export_tokenizer`).
`export_decoder` writes config.json and the weights only.

The `pretrain` stage writes its model this way, so the `llm` stage fine-tunes
it through the same code path as an imported Llama/Gemma release
(`explore.llm.pretrained`): config.json, model.safetensors (float32, HF names
and [out, in] layouts, see `checkpoint_import.weight_mappings`) and the
SentencePiece tokenizer.model. The folder has no `bos_token_id`, so the
fine-tuning starts every example with seqio's 0, as the pretraining did.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
import shutil
from typing import Any, Callable

from flax import nnx
import jax
import numpy as np

from explore import artifacts
from explore.llm import checkpoint_import
from explore.llm import checkpoint_tokenizer
from explore.llm import lora
from explore.llm.decoder import Decoder
from explore.llm.decoder_config import DecoderConfig
from explore.llm.safetensors_reader import SINGLE_FILE

_ARCHITECTURES = {family: name for name, family in checkpoint_import.ARCHITECTURES.items()}
_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def hf_config(config: DecoderConfig, bos_id: int | None = None, eos_id: int | None = None,
              pad_id: int | None = None) -> dict:
  """config.json of `config` (what `checkpoint_import.decoder_config_from_hf` reads back).

  Token ids are written when given (a negative `pad_id` means none). Gemma
  reads its activation from `hidden_activation`, Llama from `hidden_act`: both
  are written.
  """
  rope: dict = {"rope_type": "default", "rope_theta": config.rope_theta}
  if config.rope_scaling == "llama3":
    rope.update(rope_type="llama3", factor=config.rope_scaling_factor,
                low_freq_factor=config.rope_low_freq_factor,
                high_freq_factor=config.rope_high_freq_factor,
                original_max_position_embeddings=config.rope_original_max_length)
  elif config.rope_scaling:
    raise checkpoint_import.CheckpointImportError(
        f"export: DecoderConfig.rope_scaling={config.rope_scaling!r} is not exported")
  activation = _ACTIVATIONS[config.mlp_activation]
  out = dict(
      architectures=[_ARCHITECTURES[config.family]], model_type=config.family,
      vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
      rms_norm_eps=config.norm_eps, rope_parameters=rope,
      tie_word_embeddings=config.tied, hidden_act=activation, dtype="float32")
  if config.family == "gemma":
    out["hidden_activation"] = activation
  for name, value in (("bos_token_id", bos_id), ("eos_token_id", eos_id),
                      ("pad_token_id", pad_id)):
    if value is not None and value >= 0:
      out[name] = int(value)
  return out


def hf_tensors(model: Decoder, config: DecoderConfig) -> dict[str, np.ndarray]:
  """The model's parameters under their HF names, in HF layouts, float32."""
  key = checkpoint_import._path_key  # pylint: disable=protected-access
  flat = {key(path): np.asarray(v.get_value(), np.float32)
          for path, v in jax.tree_util.tree_leaves_with_path(
              nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))}
  tensors = {}
  for key, mapping in checkpoint_import.weight_mappings(config).items():
    ours = flat[key]
    if len(mapping.hf_shape) == 1 or mapping.hf_name.endswith("embed_tokens.weight"):
      hf = ours
    else:
      rows, cols = mapping.hf_shape
      hf = ours.reshape(cols, rows).T  # our [in..., out...] -> HF [out, in]
    tensors[mapping.hf_name] = np.ascontiguousarray(hf)
  return tensors


def _write_folder(directory: str | os.PathLike, write: Callable[[Path], None]) -> Path:
  """Runs `write(tmp)` on a fresh sibling folder, then renames it to `directory` (replaced)."""
  directory = Path(directory)
  tmp = directory.with_name(directory.name + ".tmp")
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  try:
    write(tmp)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  if directory.exists():
    shutil.rmtree(directory)
  tmp.rename(directory)
  return directory


def _write_weights(folder: Path, model: Decoder, config: DecoderConfig, **token_ids) -> None:
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  artifacts.atomic_write_json(folder / checkpoint_import.CONFIG_FILE,
                              hf_config(config, **token_ids))
  save_file(hf_tensors(model, config), str(folder / SINGLE_FILE), metadata={"format": "pt"})


def export_hf_checkpoint(model: Decoder, config: DecoderConfig, tokenizer_model: str | os.PathLike,
                         directory: str | os.PathLike) -> Path:
  """Writes config.json, model.safetensors and tokenizer.model into `directory` (replaced)."""
  def write(tmp: Path) -> None:
    _write_weights(tmp, model, config)
    shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")
  return _write_folder(directory, write)


# ----------------------------------------------------------------------------
# A trained planner as a Hugging Face folder (`explore export --format=hf`)

TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
_SPM_UNIGRAM, _SPM_BPE = 1, 2
_TOKENIZER_CLASSES = {"llama": "LlamaTokenizer", "gemma": "GemmaTokenizer"}


class ExportError(ValueError):
  """A model or tokenizer that cannot be exported: names the input and the problem."""


def _spm_model_type(path: Path) -> int:
  from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(path.read_bytes())
  return int(proto.trainer_spec.model_type)


def _spm_tokenizer_json(path: Path, target: Path) -> None:
  """Writes the `tokenizer.json` of a SentencePiece unigram model (transformers' converter)."""
  try:
    converters = importlib.import_module("transformers.convert_slow_tokenizer")
  except ImportError:
    raise ExportError(
        f"{path}: a SentencePiece unigram tokenizer is exported as a tokenizer.json, which needs"
        " the 'transformers' package (pip install transformers)") from None

  class _Original:  # what the converter reads of a slow tokenizer
    vocab_file = str(path)

  converter = converters.SpmConverter(_Original())
  spec = json.loads(converter.converted().to_str())
  # The converter makes SentencePiece's user-defined pieces (the semantic-ID level tokens,
  # '▁<a3>' and '<a3>') added tokens, which match the raw text before the word-start marker
  # exists, so '<a3>' after a space became the bare piece. The unigram model holds them at
  # the highest score and segments them as SentencePiece does; only special tokens stay added.
  spec["added_tokens"] = [t for t in spec["added_tokens"] if t["special"]]
  target.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")


def export_tokenizer(tokenizer: Any, family: str, bos_id: int, folder: Path) -> dict[str, int]:
  """Writes the tokenizer files transformers' `AutoTokenizer` loads; returns the special ids.

  The decoder's own ids are kept: texts encode as in the pipeline, without
  special tokens (`add_bos_token` and `add_eos_token` are false); `bos_token`
  names the decoder's first input (`bos_id`), as config.json's `bos_token_id`.

    spm.model (trained here) unigram  tokenizer.model + tokenizer.json (converted)
    spm.model (trained here) BPE      tokenizer.model, read by LlamaTokenizer
    tokenizer.model (pretrained)      tokenizer.model, read by the family's tokenizer class
    tokenizer.json (pretrained)       tokenizer.json, read by PreTrainedTokenizerFast
  """
  source = Path(tokenizer.model_path)
  if source.suffix == ".json":
    import tokenizers  # pylint: disable=g-import-not-at-top
    shutil.copyfile(source, folder / checkpoint_tokenizer.HF_TOKENIZER_FILE)
    piece = tokenizers.Tokenizer.from_file(str(source)).id_to_token
    tokenizer_class = "PreTrainedTokenizerFast"
    unk = None
  else:
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    processor = spm.SentencePieceProcessor(model_file=str(source))
    piece = processor.id_to_piece
    unk = processor.unk_id()
    shutil.copyfile(source, folder / checkpoint_tokenizer.SENTENCEPIECE_FILE)
    trained_here = source.name != checkpoint_tokenizer.SENTENCEPIECE_FILE
    model_type = _spm_model_type(source)
    if model_type == _SPM_UNIGRAM:
      _spm_tokenizer_json(source, folder / checkpoint_tokenizer.HF_TOKENIZER_FILE)
      tokenizer_class = "PreTrainedTokenizerFast"
    elif model_type == _SPM_BPE:
      tokenizer_class = "LlamaTokenizer" if trained_here else _TOKENIZER_CLASSES[family]
    else:
      raise ExportError(f"{source}: SentencePiece model type {model_type} is not exported"
                        " (unigram or BPE)")
  ids = {"bos": int(bos_id), "eos": int(tokenizer.eos_id), "pad": int(tokenizer.pad_id)}
  if unk is not None:
    ids["unk"] = int(unk)
  special = {f"{name}_token": piece(i) for name, i in ids.items() if i >= 0}
  artifacts.atomic_write_json(folder / SPECIAL_TOKENS_MAP, special)
  artifacts.atomic_write_json(folder / TOKENIZER_CONFIG, {
      "tokenizer_class": tokenizer_class, **special, "add_bos_token": False,
      "add_eos_token": False, "clean_up_tokenization_spaces": False,
      "legacy": True})
  return ids


def export_decoder(model: Decoder, directory: str | os.PathLike) -> Path:
  """Writes only config.json and model.safetensors of `model` (LoRA merged) into `directory`."""
  model = lora.merge_lora(model)
  return _write_folder(directory, lambda tmp: _write_weights(tmp, model, model.config))


def check_export_target(out: str | os.PathLike) -> Path:
  """`out` as a Path, or ExportError when it exists and is not an empty folder."""
  out = Path(out)
  if out.exists() and (not out.is_dir() or any(out.iterdir())):
    raise ExportError(f"--out={out}: exists and is not empty; export into a new or empty"
                      " folder (nothing was written)")
  return out


def export_planner(planner: Any, out: str | os.PathLike) -> Path:
  """Writes a trained `LlmPlanner` as a Hugging Face folder `out` (new or empty).

  LoRA adapters are merged into the base weights first (`lora.merge_lora`);
  weights are written as float32 safetensors with config.json and the
  tokenizer files (`export_tokenizer`), so `AutoModelForCausalLM` and
  `AutoTokenizer.from_pretrained(out)` load them.
  """
  out = check_export_target(out)
  model = lora.merge_lora(planner.model)
  config = model.config

  def write(tmp: Path) -> None:
    ids = export_tokenizer(planner.tokenizer, config.family, planner.bos_id, tmp)
    _write_weights(tmp, model, config, bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"])

  if out.exists():
    out.rmdir()  # empty (checked): replaced by the written folder
  return _write_folder(out, write)
