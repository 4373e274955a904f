"""Trie-constrained beam search, sampling and best-of-n against the exact scorer and brute force."""

from __future__ import annotations

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore import partitioning
from explore.llm import decoding
from explore.llm import scoring
from explore.llm.decoder import Decoder
from explore.llm.decoder_config import DecoderConfig
from explore.llm.trie import ClusterTrie

CONFIG = DecoderConfig(vocab_size=16, family="llama", d_model=32, num_layers=1, num_heads=2,
                       num_kv_heads=1, head_dim=16, mlp_dim=64)
EOS = 1
# 0 is a prefix of 1 and 1 of 2; 5 and 6 are the only clusters below token 4 -> 6.
PATHS = [[3, EOS], [3, 4, EOS], [3, 4, 5, EOS], [3, 5, EOS], [4, EOS], [4, 6, 7, 8, EOS],
         [4, 6, 7, 9, EOS], [5, 5, 5, EOS], [6, 3, EOS], [6, 4, EOS], [7, 2, 2, EOS]]
# Row 2 empties the subtree of 4 -> 6; row 4 leaves two clusters; row 5 excludes all but 8.
EXCLUDE = np.full((6, 10), -1, np.int32)
EXCLUDE[1, :2] = [0, 9]
EXCLUDE[2, :2] = [5, 6]
EXCLUDE[3, :3] = [2, 2, 10]
EXCLUDE[4, :9] = [0, 1, 2, 3, 4, 5, 6, 7, 8]
EXCLUDE[5, :10] = [0, 1, 2, 3, 4, 5, 6, 7, 9, 10]


@pytest.fixture(scope="module")
def model():
  return Decoder(CONFIG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def prompts():
  rng = np.random.default_rng(0)
  lists = [list(rng.integers(2, 16, rng.integers(2, 7))) + [EOS] for _ in range(6)]
  return lists, *scoring.pad_token_lists(lists, "prompts")


def _exact_top(exact: np.ndarray, exclude: np.ndarray, top_n: int):
  """The exact scorer's top-n clusters per prompt with `exclude` removed (-1 / -inf padding)."""
  exact = exact.copy()
  for i, row in enumerate(exclude):
    exact[i, row[row >= 0]] = -np.inf
  order = np.argsort(-exact, axis=1, kind="stable")[:, :top_n]
  scores = np.take_along_axis(exact, order, 1)
  return np.where(np.isfinite(scores), order, -1), scores


@pytest.mark.parametrize("dense_levels", [0, 1, 2])
def test_beam_search_with_enough_beams_equals_the_exact_ranking(model, prompts, dense_levels):
  lists, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size, dense_levels=dense_levels)
  clusters, scores = decoding.beam_search(model, trie, tokens, lengths, EXCLUDE, num_beams=11,
                                          top_n=4)
  want_clusters, want_scores = _exact_top(scoring.score_prompts(model, lists, PATHS), EXCLUDE, 4)
  np.testing.assert_array_equal(clusters, want_clusters)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
  assert list(clusters[5]) == [8, -1, -1, -1] and np.isneginf(scores[5, 1:]).all()


def test_length_normalized_beam_search_equals_the_exact_length_normalized_ranking(model, prompts):
  lists, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size)
  clusters, scores = decoding.beam_search(model, trie, tokens, lengths, EXCLUDE, num_beams=11,
                                          top_n=3, length_normalize=True)
  exact = scoring.score_prompts(model, lists, PATHS, length_normalize=True)
  want_clusters, want_scores = _exact_top(exact, EXCLUDE, 3)
  np.testing.assert_array_equal(clusters, want_clusters)
  np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)


def test_few_beams_return_valid_distinct_allowed_clusters(model, prompts):
  _, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size)
  clusters, scores = decoding.beam_search(model, trie, tokens, lengths, EXCLUDE, num_beams=2,
                                          top_n=2)
  for row, excluded, row_scores in zip(clusters, EXCLUDE, scores):
    found = row[row >= 0]
    assert len(set(found)) == len(found) and not set(found) & set(excluded)
    assert np.all(np.diff(row_scores[np.isfinite(row_scores)]) <= 0)
  assert (clusters[:4] >= 0).all()  # every prompt with >= 2 allowed clusters gets 2


def test_sharded_decoding_equals_single_device(model, prompts):
  _, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size)
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=-1))
  sharded_model = partitioning.create_sharded_module(
      lambda: Decoder(CONFIG, rngs=nnx.Rngs(0)), mesh, partitioning.logical_axis_rules())
  sharded = decoding.ConstrainedDecoder(sharded_model, trie, num_beams=4, top_n=3,
                                        prompts_per_chunk=3)
  assert sharded.prompts_per_chunk == 8 and jax.device_count() == 8
  single = decoding.ConstrainedDecoder(model, trie, num_beams=4, top_n=3, prompts_per_chunk=4)
  got, want = sharded(tokens, lengths, EXCLUDE), single(tokens, lengths, EXCLUDE)
  np.testing.assert_array_equal(got[0], want[0])
  np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-5)


def test_samples_are_allowed_clusters_scored_by_the_model(model, prompts):
  lists, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size)
  clusters, log_probs = decoding.constrained_sample(model, trie, tokens, lengths, EXCLUDE,
                                                    num_samples=16, temperature=1.5, rng=3)
  exact = scoring.score_prompts(model, lists, PATHS)
  for i in range(4):
    assert (clusters[i] >= 0).all() and not set(clusters[i]) & set(EXCLUDE[i])
    np.testing.assert_allclose(log_probs[i], exact[i, clusters[i]], rtol=1e-5, atol=1e-5)
  assert (clusters[5] == 8).all()


def _constrained_distribution(model, prompt: list[int], excluded: set[int]) -> np.ndarray:
  """Brute force: P(c) = prod over c's tokens of p(token) renormalised over allowed tokens."""
  probs = np.zeros(len(PATHS))
  for c, path in enumerate(PATHS):
    if c in excluded:
      continue
    p = 1.0
    for d, token in enumerate(path):
      prefix = tuple(path[:d])
      allowed = {q[d] for j, q in enumerate(PATHS) if j not in excluded and len(q) > d
                 and tuple(q[:d]) == prefix}
      logits = model(jnp.asarray([[0] + prompt + list(prefix)]))[0, -1]
      next_p = np.asarray(jax.nn.softmax(logits), np.float64)
      p *= next_p[token] / sum(next_p[t] for t in allowed)
    probs[c] = p
  return probs


def test_sampling_follows_the_constrained_distribution(model, prompts):
  lists, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size, dense_levels=1)
  clusters, _ = decoding.constrained_sample(model, trie, tokens[2:3], lengths[2:3],
                                            EXCLUDE[2:3], num_samples=4000, rng=7)
  empirical = np.bincount(clusters[0], minlength=len(PATHS)) / 4000
  want = _constrained_distribution(model, lists[2], set(EXCLUDE[2]))
  assert abs(want.sum() - 1) < 1e-6 and want[5] == want[6] == 0
  np.testing.assert_allclose(empirical, want, atol=0.03)


def test_best_of_n_ranks_samples_by_the_scorer(model, prompts):
  _, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size)
  samples, sample_scores = decoding.constrained_sample(model, trie, tokens, lengths, EXCLUDE,
                                                       num_samples=12, rng=5)
  best, best_scores = decoding.best_of_n(model, trie, tokens, lengths, EXCLUDE, n=12, rng=5,
                                         top_n=2)
  for i in range(4):
    order = np.argsort(-sample_scores[i], kind="stable")
    distinct = list(dict.fromkeys(samples[i][order]))[:2]
    assert list(best[i]) == distinct
  assert list(best[5]) == [8, -1] and np.isneginf(best_scores[5, 1])
  # A pluggable scorer: prefer the highest cluster id among the samples.
  table = np.tile(np.arange(len(PATHS), dtype=np.float32), (6, 1))  # [b, M]
  by_id, _ = decoding.best_of_n(model, trie, tokens, lengths, EXCLUDE, n=12, rng=5,
                                scorer=decoding.per_cluster_scorer(lambda p, l: table))
  np.testing.assert_array_equal(by_id[:, 0], samples.max(axis=1))


def test_full_vocab_beam_search_with_one_beam_is_greedy(model, prompts):
  lists, tokens, lengths = prompts
  history, _ = jax.jit(lambda p, l: decoding.full_vocab_beam_search_chunk(model, p, l, 1, 3))(
      tokens, lengths)
  greedy = []
  for _ in range(3):
    logits = model(jnp.asarray([[0] + lists[0] + greedy]))[0, -1]
    greedy.append(int(jnp.argmax(logits)))
  assert list(np.asarray(history[0, 0])) == greedy


@pytest.mark.parametrize("kwargs, match", [
    (dict(num_beams=2, top_n=3), "top_n <= num_beams"),
    (dict(exclude=np.full((6, 1), 11)), "outside"),
    (dict(exclude=np.full((5, 1), 0)), r"exclude must be \[n=6, E\]"),
])
def test_bad_decoding_inputs_are_rejected(model, prompts, kwargs, match):
  _, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size)
  with pytest.raises(decoding.DecodingError, match=match):
    decoding.beam_search(model, trie, tokens, lengths, **kwargs)


def test_bad_sampling_settings_are_rejected(model, prompts):
  _, tokens, lengths = prompts
  trie = ClusterTrie.build(PATHS, EOS, CONFIG.vocab_size)
  with pytest.raises(decoding.DecodingError, match="temperature > 0"):
    decoding.constrained_sample(model, trie, tokens, lengths, temperature=0.0)
