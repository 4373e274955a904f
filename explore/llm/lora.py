"""LoRA fine-tuning of the decoder: which variables train, and folding adapters into kernels.

With `DecoderConfig.lora_rank = r > 0` every projection named in
`lora_targets` computes base(x) + (alpha / r) * (x A) B (`layers.LoraAdapter`),
with A [in, r] random and B [r, out] zero, so a fresh adapter changes nothing.
The adapter weights are `nnx.LoRAParam` variables: passing
`trainable_filter(config)` to `Trainer(..., trainable=...)` makes them the only
trained (and optimizer-tracked) parameters while the base weights stay frozen.
The base keeps its parameter names, so a checkpoint made without LoRA (e.g. an
imported one) restores into it with fresh adapters.

`merge_lora(model)` folds the adapters into their kernels and returns a plain
decoder (`lora_rank = 0`) with the same outputs, e.g. for export or serving.
"""

from __future__ import annotations

import dataclasses

from flax import nnx
import jax
import jax.numpy as jnp

from explore.llm import layers
from explore.llm.decoder import Decoder
from explore.llm.decoder_config import DecoderConfig

# The variable type of adapter weights (a subclass of nnx.Param).
LoraParam = nnx.LoRAParam


def trainable_filter(config: DecoderConfig) -> nnx.filterlib.Filter:
  """What the trainer should train: the adapters under LoRA, else every parameter."""
  return LoraParam if config.lora_rank else nnx.Param


def merge_lora(model: Decoder) -> Decoder:
  """A decoder without adapters whose kernels are base + (alpha / rank) * A B.

  Arrays keep their dtype and sharding; `model` is left unchanged. A model
  without adapters is returned as it is.
  """
  if not model.config.lora_rank:
    return model
  config = dataclasses.replace(model.config, lora_rank=0)
  deltas = {}
  for path, node in nnx.iter_graph(model):
    if isinstance(node, layers.LoraAdapter):
      kernel = path[-1].removesuffix("_lora")
      deltas[tuple(path[:-1]) + (kernel,)] = node.delta()  # [*in_shape, *out_shape]
  base = dict(nnx.to_flat_state(nnx.state(model, nnx.Not(LoraParam))))
  merged = {}
  for key, variable in base.items():
    value = variable.get_value()
    if key in deltas:
      sharding = getattr(value, "sharding", None)
      value = (value.astype(jnp.float32) + deltas[key]).astype(value.dtype)
      if sharding is not None:
        value = jax.device_put(value, sharding)
    merged[key] = variable.replace(value)
  abstract = nnx.eval_shape(lambda: Decoder(config, rngs=nnx.Rngs(params=0)))
  graphdef, _ = nnx.split(abstract)
  return nnx.merge(graphdef, nnx.from_flat_state(merged))

