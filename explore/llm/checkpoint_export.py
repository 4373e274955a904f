"""Exports a `Decoder` as a Hugging Face Llama/Gemma checkpoint folder (the import's inverse).

The `pretrain` stage writes its model this way, so the `llm` stage fine-tunes
it through the same code path as an imported Llama/Gemma release
(`explore.llm.pretrained`): config.json, model.safetensors (float32, HF names
and [out, in] layouts, see `checkpoint_import.weight_mappings`) and the
SentencePiece tokenizer.model. The folder has no `bos_token_id`, so the
fine-tuning starts every example with seqio's 0, as the pretraining did.
"""

from __future__ import annotations

import os
from pathlib import Path
import shutil

from flax import nnx
import jax
import numpy as np

from explore import artifacts
from explore.llm import checkpoint_import
from explore.llm.decoder import Decoder
from explore.llm.decoder_config import DecoderConfig
from explore.llm.safetensors_reader import SINGLE_FILE

_ARCHITECTURES = {family: name for name, family in checkpoint_import.ARCHITECTURES.items()}
_ACTIVATIONS = {"silu": "silu", "gelu_tanh": "gelu_pytorch_tanh", "gelu": "gelu"}


def hf_config(config: DecoderConfig) -> dict:
  """config.json of `config` (what `checkpoint_import.decoder_config_from_hf` reads back)."""
  if config.rope_scaling:
    raise checkpoint_import.CheckpointImportError(
        f"export: DecoderConfig.rope_scaling={config.rope_scaling!r} is not exported")
  return dict(
      architectures=[_ARCHITECTURES[config.family]], model_type=config.family,
      vocab_size=config.vocab_size, hidden_size=config.d_model, intermediate_size=config.mlp_dim,
      num_hidden_layers=config.num_layers, num_attention_heads=config.num_heads,
      num_key_value_heads=config.num_kv_heads, head_dim=config.head_dim,
      rms_norm_eps=config.norm_eps,
      rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
      tie_word_embeddings=config.tied, hidden_act=_ACTIVATIONS[config.mlp_activation])


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


def export_hf_checkpoint(model: Decoder, config: DecoderConfig, tokenizer_model: str | os.PathLike,
                         directory: str | os.PathLike) -> Path:
  """Writes config.json, model.safetensors and tokenizer.model into `directory` (replaced)."""
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  directory = Path(directory)
  tmp = directory.with_name(directory.name + ".tmp")
  if tmp.exists():
    shutil.rmtree(tmp)
  tmp.mkdir(parents=True)
  artifacts.atomic_write_json(tmp / checkpoint_import.CONFIG_FILE, hf_config(config))
  save_file(hf_tensors(model, config), str(tmp / SINGLE_FILE))
  shutil.copyfile(tokenizer_model, tmp / "tokenizer.model")
  if directory.exists():
    shutil.rmtree(directory)
  tmp.rename(directory)
  return directory
