"""Imports Hugging Face Llama- and Gemma-family safetensors checkpoints into the NNX `Decoder`.

A checkpoint folder holds `config.json`, the weights (`model.safetensors`, or
shards `model-0000x-of-0000y.safetensors` listed in
`model.safetensors.index.json`) and the tokenizer files (`tokenizer.json`
and/or SentencePiece `tokenizer.model`). Weights are read in numpy by
`SafetensorsReader`; torch is never imported.

Layout changes (HF stores `nn.Linear` weights as [out, in]):

  model.embed_tokens.weight [V, D]               -> embedder.table [V, D]
  layers.i.self_attn.q_proj.weight [N*H, D]      -> blocks.i.attention.query [D, N, H]
  layers.i.self_attn.{k,v}_proj.weight [K*H, D]  -> blocks.i.attention.{key,value} [D, K, H]
  layers.i.self_attn.o_proj.weight [D, N*H]      -> blocks.i.attention.out [N, H, D]
  layers.i.mlp.{gate,up}_proj.weight [F, D]      -> blocks.i.mlp.{gate,up} [D, F]
  layers.i.mlp.down_proj.weight [D, F]           -> blocks.i.mlp.down [F, D]
  layers.i.input_layernorm.weight [D]            -> blocks.i.pre_attention_norm.scale
  layers.i.post_attention_layernorm.weight [D]   -> blocks.i.pre_mlp_norm.scale
  model.norm.weight [D]                          -> final_norm.scale
  lm_head.weight [V, D] (untied only)            -> unembed [D, V]

Rotary positions: HF's Llama and Gemma rotate dimension i with i + H/2
("rotate_half"), and so does our `apply_rope`, so q/k weights need no
permutation. Gemma's norm weights are stored as w in x * (1 + w), which is
what our Gemma-family RMSNorm keeps.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from absl import logging
from flax import nnx
import jax
import numpy as np

from explore import artifacts
from explore import partitioning
from explore.llm.decoder import Decoder
from explore.llm.decoder_config import DecoderConfig
from explore.llm.safetensors_reader import SafetensorsError
from explore.llm.safetensors_reader import SafetensorsReader

CONFIG_FILE = "config.json"
ARCHITECTURES = {"LlamaForCausalLM": "llama", "GemmaForCausalLM": "gemma"}
MODEL_TYPES = {"llama": "llama", "gemma": "gemma"}
_HF_ACTIVATIONS = {"silu": "silu", "swish": "silu", "gelu_pytorch_tanh": "gelu_tanh",
                   "gelu_new": "gelu_tanh", "gelu_fast": "gelu_tanh", "gelu": "gelu"}


class CheckpointImportError(ValueError):
  """A pretrained checkpoint folder that cannot be imported: names the file and the problem."""


# ----------------------------------------------------------------------------
# Config


def read_hf_config(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
  """The folder's `config.json` as a dict."""
  return artifacts.read_json(Path(checkpoint_dir) / CONFIG_FILE, CheckpointImportError)


def decoder_config_from_hf(hf_config: Mapping[str, Any], *, dtype: str = "float32",
                           param_dtype: str = "float32", where: str = CONFIG_FILE
                           ) -> DecoderConfig:
  """Maps a HF Llama/Gemma `config.json` to a `DecoderConfig`; unsupported features raise."""
  architectures = list(hf_config.get("architectures") or [])
  model_type = hf_config.get("model_type")
  family = next((ARCHITECTURES[a] for a in architectures if a in ARCHITECTURES), None)
  if family is None and not architectures:
    family = MODEL_TYPES.get(model_type)
  if family is None:
    raise CheckpointImportError(
        f"{where}: unsupported architecture {architectures or model_type!r}; supported:"
        f" {sorted(ARCHITECTURES)}")

  def get(name: str, default: Any = KeyError) -> Any:
    value = hf_config.get(name)
    if value is None:
      if default is KeyError:
        raise CheckpointImportError(f"{where}: missing field {name!r}")
      return default
    return value

  for flag in ("attention_bias", "mlp_bias"):
    if hf_config.get(flag):
      raise CheckpointImportError(f"{where}: {flag}=true is not supported (biases)")
  for name in ("sliding_window", "attn_logit_softcapping", "final_logit_softcapping"):
    if hf_config.get(name) is not None:
      raise CheckpointImportError(f"{where}: {name}={hf_config[name]!r} is not supported")
  if hf_config.get("pretraining_tp", 1) != 1:
    raise CheckpointImportError(f"{where}: pretraining_tp={hf_config['pretraining_tp']} is"
                                " not supported")

  hidden, heads = get("hidden_size"), get("num_attention_heads")
  act_name = hf_config.get("hidden_activation") or get("hidden_act", "silu")
  if family == "gemma" and act_name == "gelu":
    act_name = "gelu_pytorch_tanh"  # HF's reading of the legacy value in Gemma releases
  if act_name not in _HF_ACTIVATIONS:
    raise CheckpointImportError(f"{where}: hidden_act={act_name!r} is not supported; known:"
                                f" {sorted(_HF_ACTIVATIONS)}")
  rope = dict(hf_config.get("rope_parameters") or hf_config.get("rope_scaling") or {})
  rope_theta = rope.get("rope_theta", hf_config.get("rope_theta", 10_000.0))
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  scaling: dict[str, Any] = {}
  if rope_type == "llama3":
    scaling = dict(
        rope_scaling="llama3", rope_scaling_factor=float(rope["factor"]),
        rope_low_freq_factor=float(rope["low_freq_factor"]),
        rope_high_freq_factor=float(rope["high_freq_factor"]),
        rope_original_max_length=int(rope["original_max_position_embeddings"]))
  elif rope_type != "default":
    raise CheckpointImportError(f"{where}: rope type {rope_type!r} is not supported (default"
                                " or llama3)")
  if rope.get("partial_rotary_factor", 1.0) != 1.0:
    raise CheckpointImportError(f"{where}: partial_rotary_factor is not supported")
  tied_default = family == "gemma"
  # Every other field at its code default, passed explicitly: a config read from a
  # checkpoint takes nothing from gin bindings (e.g. a bound lora_rank or rope_scaling).
  defaults = {f.name: f.default for f in dataclasses.fields(DecoderConfig)
              if f.default is not dataclasses.MISSING}
  try:
    values = dict(
        family=family, vocab_size=int(get("vocab_size")), d_model=int(hidden),
        num_layers=int(get("num_hidden_layers")), num_heads=int(heads),
        num_kv_heads=int(get("num_key_value_heads", heads)),
        head_dim=int(get("head_dim", hidden // heads)), mlp_dim=int(get("intermediate_size")),
        rope_theta=float(rope_theta), norm_eps=float(get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf_config.get("tie_word_embeddings", tied_default)),
        activation=_HF_ACTIVATIONS[act_name], dtype=dtype, param_dtype=param_dtype, **scaling)
    return DecoderConfig(**{**defaults, **values})
  except ValueError as e:
    raise CheckpointImportError(f"{where}: {e}") from None


# ----------------------------------------------------------------------------
# Weight mapping


@dataclasses.dataclass(frozen=True)
class TensorMapping:
  """One HF tensor, its expected HF shape, and how it becomes our parameter."""

  hf_name: str
  hf_shape: tuple[int, ...]
  to_param: Callable[[np.ndarray], np.ndarray]


def weight_mappings(config: DecoderConfig) -> dict[tuple[Any, ...], TensorMapping]:
  """Our parameter path (as in `nnx.state(Decoder)`) -> its HF tensor and transform."""
  d, v, f = config.d_model, config.vocab_size, config.mlp_dim
  n, k, h = config.num_heads, config.num_kv_heads, config.head_dim
  same = lambda w: w
  mappings = {
      ("embedder", "table"): TensorMapping("model.embed_tokens.weight", (v, d), same),
      ("final_norm", "scale"): TensorMapping("model.norm.weight", (d,), same),
  }
  if not config.tied:
    mappings[("unembed",)] = TensorMapping("lm_head.weight", (v, d), lambda w: w.T)
  for i in range(config.num_layers):
    hf, ours = f"model.layers.{i}.", ("blocks", i)
    mappings.update({
        ours + ("attention", "query"): TensorMapping(
            hf + "self_attn.q_proj.weight", (n * h, d), lambda w: w.T.reshape(d, n, h)),
        ours + ("attention", "key"): TensorMapping(
            hf + "self_attn.k_proj.weight", (k * h, d), lambda w: w.T.reshape(d, k, h)),
        ours + ("attention", "value"): TensorMapping(
            hf + "self_attn.v_proj.weight", (k * h, d), lambda w: w.T.reshape(d, k, h)),
        ours + ("attention", "out"): TensorMapping(
            hf + "self_attn.o_proj.weight", (d, n * h), lambda w: w.T.reshape(n, h, d)),
        ours + ("mlp", "gate"): TensorMapping(hf + "mlp.gate_proj.weight", (f, d), lambda w: w.T),
        ours + ("mlp", "up"): TensorMapping(hf + "mlp.up_proj.weight", (f, d), lambda w: w.T),
        ours + ("mlp", "down"): TensorMapping(hf + "mlp.down_proj.weight", (d, f), lambda w: w.T),
        ours + ("pre_attention_norm", "scale"): TensorMapping(
            hf + "input_layernorm.weight", (d,), same),
        ours + ("pre_mlp_norm", "scale"): TensorMapping(
            hf + "post_attention_layernorm.weight", (d,), same),
    })
  return mappings


def _path_key(path: Sequence[Any]) -> tuple[Any, ...]:
  """A jax key path as plain names and indices, e.g. ('blocks', 0, 'mlp', 'up')."""
  out = []
  for entry in path:
    for attr in ("key", "idx", "name"):
      if hasattr(entry, attr):
        out.append(getattr(entry, attr))
        break
  return tuple(out)


# ----------------------------------------------------------------------------
# Tokenizer


def tokenizer_vocab_size(checkpoint_dir: str | os.PathLike) -> tuple[Path, int] | None:
  """(file, number of token ids) of the folder's tokenizer, or None when it has none.

  `tokenizer.json` counts the model vocabulary and added tokens (largest id + 1);
  a SentencePiece `tokenizer.model` counts its pieces.
  """
  directory = Path(checkpoint_dir)
  path = directory / "tokenizer.json"
  if path.exists():
    try:
      data = json.loads(path.read_text())
      vocab = data["model"]["vocab"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointImportError(f"{path}: no readable model vocabulary ({e})") from None
    ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
    ids += [t["id"] for t in data.get("added_tokens") or []]
    return path, (max(ids) + 1 if ids else 0)
  path = directory / "tokenizer.model"
  if path.exists():
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    processor = spm.SentencePieceProcessor()
    try:
      processor.LoadFromSerializedProto(path.read_bytes())
    except (RuntimeError, OSError) as e:
      raise CheckpointImportError(f"{path}: not a SentencePiece model ({e})") from None
    return path, processor.get_piece_size()
  return None


def check_tokenizer(checkpoint_dir: str | os.PathLike, config: DecoderConfig,
                    allow_vocab_padding: bool = False) -> tuple[Path, int] | None:
  """Raises unless the tokenizer's ids fit the embedding (exactly, or fewer when padded)."""
  found = tokenizer_vocab_size(checkpoint_dir)
  if found is None:
    logging.warning("%s: no tokenizer.json or tokenizer.model; vocabulary not checked",
                    checkpoint_dir)
    return None
  path, size = found
  if size > config.vocab_size or (size < config.vocab_size and not allow_vocab_padding):
    need = "at most" if allow_vocab_padding else "exactly"
    raise CheckpointImportError(
        f"{path}: the tokenizer has {size} token ids but the model's embedding has"
        f" vocab_size={config.vocab_size} rows (needs {need} {config.vocab_size})")
  return found


# ----------------------------------------------------------------------------
# Import


@dataclasses.dataclass
class ImportedCheckpoint:
  model: Decoder
  config: DecoderConfig
  tokenizer_file: Path | None  # tokenizer.json or tokenizer.model, None when absent
  tokenizer_vocab_size: int | None


def import_hf_checkpoint(checkpoint_dir: str | os.PathLike, *, dtype: str = "float32",
                         param_dtype: str = "float32",
                         mesh: jax.sharding.Mesh | None = None, rules=None,
                         allow_vocab_padding: bool = False) -> ImportedCheckpoint:
  """Builds a `Decoder` holding the weights of a HF Llama/Gemma safetensors folder.

  The model is built abstractly and each tensor is read, checked, transposed
  and placed once (sharded by its logical axes when `mesh` is given), so
  memory holds one copy of the weights.
  """
  directory = Path(checkpoint_dir)
  config = decoder_config_from_hf(read_hf_config(directory), dtype=dtype,
                                  param_dtype=param_dtype, where=str(directory / CONFIG_FILE))
  tokenizer = check_tokenizer(directory, config, allow_vocab_padding)
  try:
    reader = SafetensorsReader(directory)
  except SafetensorsError as e:
    raise CheckpointImportError(str(e)) from None
  mappings = weight_mappings(config)
  used = {m.hf_name for m in mappings.values()}
  if config.tied:
    used.add("lm_head.weight")  # some tied checkpoints store the shared matrix twice
  unused = [n for n in reader.names() if n not in used]
  if unused:
    logging.warning("%s: ignoring %d tensors not used by the decoder, e.g. %s", directory,
                    len(unused), unused[:3])

  abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract)
  shardings = (partitioning.state_shardings(mesh, abstract_state, rules)
               if mesh is not None else None)
  flat_shardings = {}
  if shardings is not None:
    for path, sharding in jax.tree_util.tree_leaves_with_path(
        shardings, is_leaf=lambda x: isinstance(x, nnx.Variable)):
      flat_shardings[_path_key(path)] = sharding.get_value()

  def load(path, variable: nnx.Variable) -> nnx.Variable:
    key = _path_key(path)
    if key not in mappings:
      raise CheckpointImportError(f"{directory}: no HF tensor maps to parameter {key}")
    mapping = mappings[key]
    if mapping.hf_name not in reader:
      raise CheckpointImportError(f"{directory}: missing tensor {mapping.hf_name!r} (for"
                                  f" {'/'.join(map(str, key))})")
    found = reader.shape(mapping.hf_name)
    if found != mapping.hf_shape:
      raise CheckpointImportError(
          f"{reader.file_of(mapping.hf_name)}: tensor {mapping.hf_name!r} has shape {found},"
          f" expected {mapping.hf_shape} from {CONFIG_FILE}")
    target = variable.get_value()
    value = np.asarray(mapping.to_param(reader.read(mapping.hf_name))).astype(target.dtype)
    assert value.shape == target.shape, (key, value.shape, target.shape)
    placed = (jax.device_put(value, flat_shardings[key]) if key in flat_shardings
              else jax.numpy.asarray(value))
    return variable.replace(placed)

  state = jax.tree_util.tree_map_with_path(
      load, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  model = nnx.merge(graphdef, state)
  logging.info("imported %s (%s, %d parameters)", directory, config.family, config.num_params())
  return ImportedCheckpoint(model=model, config=config,
                            tokenizer_file=None if tokenizer is None else tokenizer[0],
                            tokenizer_vocab_size=None if tokenizer is None else tokenizer[1])


def write_initial_checkpoint(model: Decoder, model_dir: str | os.PathLike, step: int = 0
                             ) -> Path:
  """Saves `model`'s parameters (no optimizer state) as `model_dir/checkpoint_<step>`.

  Fine-tune from it with `TrainerConfig.initial_checkpoint_path = model_dir`
  and `restore_weights_only = True`; `planner.restore_decoder` reopens it.
  """
  from explore.train import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.save_weights(model, model_dir, step)
