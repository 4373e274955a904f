"""ClusterTrie: layout, per-step candidates against a brute-force trie, exclusion, artifact."""

from __future__ import annotations

import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore import artifacts
from explore.llm import trie as trie_lib

EOS, VOCAB = 1, 8
# Cluster 0 is a prefix of 1 and 2; 5's subtree (token 6) holds 5 and 6 only.
PATHS = [[3, EOS], [3, 4, EOS], [3, 4, 5, EOS], [3, 5, EOS], [4, EOS], [6, 7, 2, EOS],
         [6, 7, 3, EOS], [5, 5, 5, EOS], [2, 3, EOS], [EOS]]


def _allowed_next(prefix: tuple[int, ...], excluded: set[int]) -> set[int]:
  """Brute force: the next tokens of `prefix` that some allowed cluster's path continues with."""
  return {p[len(prefix)] for c, p in enumerate(PATHS)
          if c not in excluded and len(p) > len(prefix) and tuple(p[:len(prefix)]) == prefix}


def _prefixes() -> list[tuple[int, ...]]:
  return sorted({tuple(p[:d]) for p in PATHS for d in range(len(p))}, key=len)


def _candidates(arrays, level, prefix_nodes, exclude, log_probs=None):
  """Candidates of rows [1, R] at `level` with exclusion `exclude` (one request)."""
  nodes = jnp.asarray([prefix_nodes], jnp.int32)  # [1, R]
  if log_probs is None:
    log_probs = jnp.zeros((1, len(prefix_nodes), VOCAB), jnp.float32)
  allowed = arrays.exclusion(jnp.asarray([exclude], jnp.int32))
  return jax.tree.map(np.asarray, arrays.candidates(level, log_probs, nodes, allowed))


def _node_of(trie: trie_lib.ClusterTrie, prefix: tuple[int, ...]) -> int:
  node = 0
  for token in prefix:
    start, end = trie.numpy["row_start"][node:node + 2]
    row = list(trie.numpy["child_token"][start:end])
    node = int(trie.numpy["child_node"][start + row.index(token)])
  return node


@pytest.mark.parametrize("dense_levels", [0, 1, 2, 5])
def test_candidates_match_brute_force_trie_under_every_exclusion(dense_levels):
  trie = trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB, dense_levels=dense_levels)
  arrays = trie.arrays()
  assert trie.depth == 4 and trie.num_clusters == len(PATHS)
  exclusions = [[-1, -1], [0, 1], [5, 6], [5, 6], [2, 3], [0, 4], [7, 9], [6, -1]]
  exclusions += [list(x) for x in itertools.combinations(range(len(PATHS)), 2)][::7]
  for prefix in _prefixes():
    node = _node_of(trie, prefix)
    for exclude in exclusions:
      cand = _candidates(arrays, len(prefix), [node], exclude)
      ok = np.isfinite(cand.log_probs[0, 0])
      assert sorted(cand.tokens[0, 0][ok]) == sorted(_allowed_next(prefix, set(exclude)))
      for token, child in zip(cand.tokens[0, 0][ok], cand.nodes[0, 0][ok]):
        assert child == _node_of(trie, prefix + (int(token),))


def test_excluding_every_cluster_of_a_subtree_prunes_its_first_token():
  arrays = trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB).arrays()
  cand = _candidates(arrays, 0, [0], [5, 6])
  allowed = set(cand.tokens[0, 0][np.isfinite(cand.log_probs[0, 0])].tolist())
  assert 6 not in allowed and {2, 3, 4, 5, EOS} <= allowed


def test_candidates_keep_the_model_log_probs_of_allowed_tokens():
  trie = trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB, dense_levels=1)
  log_probs = jax.nn.log_softmax(jax.random.normal(jax.random.key(0), (1, 2, VOCAB)))
  for level, prefix in ((0, ()), (1, (3,))):
    cand = _candidates(trie.arrays(), level, [_node_of(trie, prefix)] * 2, [-1], log_probs)
    ok = np.isfinite(cand.log_probs)
    expect = np.take_along_axis(np.asarray(log_probs), cand.tokens, axis=-1)
    np.testing.assert_array_equal(cand.log_probs[ok], expect[ok])


def test_allowed_counts_count_repeated_exclusions_once():
  arrays = trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB).arrays()
  once = arrays.exclusion(jnp.asarray([[0, -1, -1]])).counts
  twice = arrays.exclusion(jnp.asarray([[0, 0, -1]])).counts
  np.testing.assert_array_equal(once, twice)
  assert int(once[0, 0]) == len(PATHS) - 1


def test_leaves_and_layout():
  trie = trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB)
  for c, path in enumerate(PATHS):
    assert trie.cluster_of_tokens(path) == c
    assert trie.numpy["leaf_cluster"][_node_of(trie, tuple(path))] == c
  assert trie.cluster_of_tokens([3, 4]) == -1 and trie.cluster_of_tokens([7, EOS]) == -1
  starts = trie.numpy["level_start"]
  assert starts[0] == 0 and starts[1] == 1  # the root alone on level 0
  np.testing.assert_array_equal(trie.numpy["max_branch"], [6, 3, 2, 1])
  assert trie.token_paths() == PATHS


@pytest.mark.parametrize("paths, match", [
    ([[3, EOS], [4, EOS], [3, EOS]], "clusters 0 and 2 have the same token path"),
    ([[3, 4]], "does not end with EOS"),
    ([[3, EOS, 4, EOS]], "EOS before its end"),
    ([[3, 9, EOS]], "outside the vocabulary"),
    ([[]], "does not end with EOS"),
    ([], "no cluster token paths"),
])
def test_bad_paths_are_rejected(paths, match):
  with pytest.raises(trie_lib.TrieError, match=match):
    trie_lib.ClusterTrie.build(paths, EOS, VOCAB)


def test_save_load_round_trip_and_fingerprint(tmp_path):
  trie = trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB, fingerprint_extra="tok-abc")
  trie.save(tmp_path / "trie")
  loaded = trie_lib.ClusterTrie.load(tmp_path / "trie", expected_fingerprint=trie.fingerprint)
  assert loaded.fingerprint == trie.fingerprint and loaded.dense_levels == trie.dense_levels
  for key, value in trie.numpy.items():
    np.testing.assert_array_equal(loaded.numpy[key], value)
  other = [trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB, fingerprint_extra="tok-xyz"),
           trie_lib.ClusterTrie.build(PATHS[:-1], EOS, VOCAB, fingerprint_extra="tok-abc"),
           trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB + 1, fingerprint_extra="tok-abc")]
  assert len({trie.fingerprint} | {t.fingerprint for t in other}) == 4
  assert trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB, dense_levels=0,
                                    fingerprint_extra="tok-abc").fingerprint == trie.fingerprint
  with pytest.raises(trie_lib.TrieError, match="other descriptions or tokenizer"):
    trie_lib.ClusterTrie.load(tmp_path / "trie", expected_fingerprint=other[0].fingerprint)


def test_load_refuses_a_trie_whose_paths_do_not_match_its_fingerprint(tmp_path):
  trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB).save(tmp_path / "trie")
  meta_path = tmp_path / "trie" / artifacts.META_FILE
  meta = json.loads(meta_path.read_text())
  meta["meta"]["fingerprint_extra"] = "edited"
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(trie_lib.TrieError, match="damaged"):
    trie_lib.ClusterTrie.load(tmp_path / "trie")


def test_dense_tables_shrink_to_fit_the_entry_budget(monkeypatch):
  monkeypatch.setattr(trie_lib, "MAX_DENSE_ENTRIES", 3 * VOCAB)
  trie = trie_lib.ClusterTrie.build(PATHS, EOS, VOCAB, dense_levels=2)
  assert trie.dense_levels == 1  # level 1 would need 1 + 6 rows
  assert trie.numpy["dense_next"].shape == (1, VOCAB)
