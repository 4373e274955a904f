"""Shared pieces of the logit-parity tests against Hugging Face `transformers` (torch, CPU).

The tests that use them skip where torch or transformers cannot be imported:
request the `hf` fixture (import it into the test module:
`from hf_parity import hf  # noqa: F401`).
"""

from __future__ import annotations

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

VOCAB, LENGTH = 128, 16
TOKENS = np.random.RandomState(0).randint(0, VOCAB, (2, LENGTH))
# Logits of the same weights in float32 agree to this (JAX vs torch on CPU).
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf():
  """(torch, transformers), or the test skips naming what to install."""
  torch = pytest.importorskip("torch", reason="parity tests need torch (pip install torch==2.13.0)")
  transformers = pytest.importorskip(
      "transformers", reason="parity tests need transformers (pip install transformers)")
  torch.manual_seed(0)
  return torch, transformers


@nnx.jit
def _forward(model, tokens):
  return model(tokens)


def our_logits(model, tokens=TOKENS) -> np.ndarray:
  """[b, L, V] float32 logits of our `Decoder`."""
  return np.asarray(_forward(model, jnp.asarray(tokens)), np.float32)


def hf_logits(hf, model, tokens=TOKENS) -> np.ndarray:
  """[b, L, V] float32 logits of a transformers causal LM."""
  torch, _ = hf
  with torch.no_grad():
    return model(torch.tensor(np.asarray(tokens))).logits.float().numpy()


def hf_model(hf, family: str, vocab_size: int = VOCAB, **config_kwargs):
  """A tiny random transformers Llama/Gemma model whose norms are not the identity."""
  torch, transformers = hf
  kwargs = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                **config_kwargs)
  if family == "llama":
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs))
  else:
    model = transformers.GemmaForCausalLM(transformers.GemmaConfig(**kwargs))
  with torch.no_grad():  # HF initialises norms at the identity; make them matter
    for name, param in model.named_parameters():
      if "norm" in name:
        param.add_(0.2 * torch.randn_like(param))
  return model.eval()


def load_hf_folder(hf, folder):
  """The folder loaded as users load it: `AutoModelForCausalLM.from_pretrained`, float32, eval."""
  _, transformers = hf
  return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype="float32").eval()


def assert_logits_match(ours: np.ndarray, theirs: np.ndarray, tolerance: float = TOLERANCE):
  assert ours.shape == theirs.shape, (ours.shape, theirs.shape)
  np.testing.assert_array_less(np.abs(ours - theirs), tolerance)
