"""Candidate scoring of a model placed on a device mesh (data-parallel scoring)."""

from __future__ import annotations

from flax import nnx
import jax
import numpy as np
import pytest

from explore import partitioning
from explore.llm import scoring
from explore.llm.decoder import Decoder
from explore.llm.decoder_config import DecoderConfig

CONFIG = DecoderConfig(vocab_size=128, family="llama", d_model=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, head_dim=16, mlp_dim=64)


def _token_lists(seed: int, n: int, low: int, high: int) -> list[list[int]]:
  rng = np.random.default_rng(seed)
  return [list(rng.integers(3, 120, rng.integers(low, high))) for _ in range(n)]


@pytest.fixture(scope="module")
def inputs():
  prompts = _token_lists(0, 13, 5, 12)
  candidates = _token_lists(1, 6, 2, 6)
  return prompts, candidates


def _mesh_model():
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=-1))
  return partitioning.create_sharded_module(lambda: Decoder(CONFIG, rngs=nnx.Rngs(0)), mesh,
                                            partitioning.logical_axis_rules())


def test_mesh_model_scores_equal_single_device(inputs):
  prompts, candidates = inputs
  single = scoring.score_prompts(Decoder(CONFIG, rngs=nnx.Rngs(0)), prompts, candidates,
                                 prompts_per_chunk=5)
  sharded = scoring.score_prompts(_mesh_model(), prompts, candidates, prompts_per_chunk=5)
  assert sharded.shape == (13, 6)
  np.testing.assert_allclose(sharded, single, rtol=1e-5, atol=1e-5)


def test_mesh_model_splits_prompts_over_devices(inputs):
  prompts, candidates = inputs
  cand, cand_lengths = scoring.pad_token_lists(candidates, "candidates")
  scorer = scoring.CandidateScorer(_mesh_model(), cand, cand_lengths, prompts_per_chunk=5)
  assert scorer.prompts_per_chunk == 8  # rounded up to the 8-way data-parallel size
  tokens, lengths = scoring.pad_token_lists(prompts[:8], "prompts")
  out = scorer._score(scorer._state, tokens, lengths, scorer.candidates,
                      scorer.candidate_lengths)
  # Each device holds (and so computed) only its own prompt's row of scores.
  assert len(out.sharding.device_set) == jax.device_count() == 8
  assert {shard.data.shape for shard in out.addressable_shards} == {(1, 6)}


def test_single_device_model_keeps_requested_chunk(inputs):
  _, candidates = inputs
  cand, cand_lengths = scoring.pad_token_lists(candidates, "candidates")
  scorer = scoring.CandidateScorer(Decoder(CONFIG, rngs=nnx.Rngs(0)), cand, cand_lengths,
                                   prompts_per_chunk=5)
  assert scorer.prompts_per_chunk == 5
