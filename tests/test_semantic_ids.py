"""Semantic-ID cluster texts: the texts, their tokens, the trie, the llm stage, free-decode validity."""

import gin
import numpy as np
import pytest

from explore import gin_config
from explore import main  # noqa: F401  (registers RunConfig)
from explore import partitioning  # noqa: F401  (registers MeshConfig)
from explore import rundir
from explore import stages
from explore.clusters import semantic_ids
from explore.clusters import stage as clusters_stage
from explore.llm import free_decode
from explore.llm import stage as llm_stage
from explore.llm import tokenizer as tok_lib
from explore.llm.trie import ClusterTrie
from explore.precompute import beam
from explore.transitions.task_source import read_task_source
from test_llm_planner import TINY  # the tiny synthetic run's settings

stages.load_builtin_stages()

LEVELS = (8, 64, 256)
PARENTS = (np.full(8, -1), np.arange(64) // 8, np.arange(256) // 4)


def test_texts_are_paths_of_level_tokens():
  texts = semantic_ids.semantic_id_texts(LEVELS, PARENTS, 2)
  assert texts[0] == "<a0> <b0> <c0>"
  assert texts[115] == "<a3> <b28> <c115>"  # 115 // 4 = 28, 28 // 8 = 3
  parent = semantic_ids.semantic_id_texts(LEVELS, PARENTS, 2, indexing="parent")
  assert parent[115] == "<a3> <b4> <c3>"  # 28 % 8, 115 % 4
  assert semantic_ids.semantic_id_texts(LEVELS, PARENTS, 1)[28] == "<a3> <b28>"
  for t in (texts, parent):
    assert len(set(t)) == 256
    semantic_ids.check_texts(t, 256)


def test_paths_follow_an_unordered_tree():
  """Parents need not be contiguous: the path reads each ancestor from the parent arrays."""
  parents = (np.full(2, -1), np.array([1, 0, 1, 0]))
  assert semantic_ids.semantic_id_texts((2, 4), parents, 1) == [
      "<a1> <b0>", "<a0> <b1>", "<a1> <b2>", "<a0> <b3>"]


def test_keywords_follow_the_path():
  keywords = [("hiking", "trails", "camping"), ("drama",)]
  texts = semantic_ids.semantic_id_texts((2,), (np.full(2, -1),), 0, keywords=keywords,
                                         num_keywords=2)
  assert texts == ["<a0> hiking, trails", "<a1> drama"]
  with pytest.raises(semantic_ids.VocabularyError, match="num_keywords=2 needs keywords"):
    semantic_ids.semantic_id_texts((2,), (np.full(2, -1),), 0, num_keywords=2)


def test_bad_options_are_named():
  with pytest.raises(semantic_ids.VocabularyError, match="vocabulary='ids'"):
    semantic_ids.cluster_vocabulary(vocabulary="ids")
  with pytest.raises(semantic_ids.VocabularyError, match="indexing='local'"):
    semantic_ids.cluster_vocabulary(vocabulary="semantic_ids", indexing="local")
  with pytest.raises(semantic_ids.VocabularyError, match="num_keywords=-1"):
    semantic_ids.cluster_vocabulary(num_keywords=-1)
  with pytest.raises(semantic_ids.VocabularyError, match="same text"):
    semantic_ids.check_texts(["<a0>", "<a0>"], 2)


def test_texts_round_trip(tmp_path):
  texts = semantic_ids.ClusterTexts(("<a0> <b0>", "<a0> <b1>"), "semantic_ids",
                                    {"indexing": "global"})
  texts.save(tmp_path / "texts")
  loaded = semantic_ids.ClusterTexts.load(tmp_path / "texts")
  assert loaded == texts


@pytest.mark.parametrize("indexing", ["global", "parent"])
def test_one_token_per_level_and_trie_depth(tmp_path, indexing):
  texts = semantic_ids.semantic_id_texts(LEVELS, PARENTS, 2, indexing=indexing)
  corpus = tok_lib.sentencepiece_corpus(texts)
  tokenizer = tok_lib.train_sentencepiece(corpus, tmp_path / "sp.model", vocab_size=1024)
  ids = tokenizer.encode_batch(texts)
  assert {len(row) for row in ids} == {3}
  tok_lib.check_descriptions_tokenize_uniquely(tokenizer, texts)
  # In a prompt, each level token is one piece too.
  prompt_ids = tokenizer.encode(corpus[len(texts)])
  assert [i for i in ids[0] + ids[1]] == [i for i in prompt_ids if i in set(ids[0] + ids[1])]
  trie = ClusterTrie.build(tokenizer.encode_batch(texts, add_eos=True), tokenizer.eos_id,
                           tokenizer.vocab_size)
  assert trie.depth == len(LEVELS) + 1
  assert trie.num_clusters == 256


def test_keyword_texts_get_no_symbols():
  assert tok_lib.level_token_symbols(["hiking, trails", "history: a | b"]) == []
  assert tok_lib.level_token_symbols(["<b2> <a10>", "<a2> x"]) == [
      "\u2581<a2>", "\u2581<a10>", "\u2581<b2>", "<a2>", "<a10>", "<b2>"]


def test_match_outputs_reads_up_to_the_first_eos():
  eos = 1
  targets = [[5, 7, 1], [5, 8, 1], [6, 1]]
  tokens = np.array([
      [5, 7, 1, 9],  # cluster 0, ids after EOS ignored
      [6, 1, 6, 1],  # cluster 2
      [5, 1, 0, 0],  # a prefix of cluster 0 + EOS: not a cluster
      [5, 7, 9, 1],  # cluster 0 with an extra token: not a cluster
      [5, 8, 4, 4],  # no EOS
  ])
  np.testing.assert_array_equal(free_decode.match_outputs(tokens, targets, eos),
                                [0, 2, -1, -1, -1])
  with pytest.raises(free_decode.FreeDecodeError, match="must end with the EOS"):
    free_decode.match_outputs(tokens, [[5, 7]], eos)
  with pytest.raises(free_decode.FreeDecodeError, match="same ids"):
    free_decode.match_outputs(tokens, [[6, 1], [6, 1]], eos)


def test_validity_fractions():
  matched = np.array([0, 2, -1, 3])
  history = np.array([[1, 2], [1, 2], [0, 1], [0, 1]])
  result = free_decode.validity(matched, history, next_cluster=np.array([0, 2, 1, 1]))
  assert result == {"valid": 0.75, "valid_novel": 0.5, "hit@1": 0.5}
  with pytest.raises(free_decode.FreeDecodeError, match="history must be"):
    free_decode.validity(matched, history[:2])




@pytest.fixture(scope="module")
def semantic_run(tmp_path_factory):
  run_dir = tmp_path_factory.mktemp("run")
  gin.clear_config()
  gin_config.parse_gin(["quickstart.gin"], [f"RUN_DIR = '{run_dir}'", *TINY,
                                            "cluster_vocabulary.vocabulary = 'semantic_ids'"])
  try:
    stages.run_stages(["llm"], rundir.RunDir(run_dir), seed=0)
  finally:
    gin.clear_config()
  return rundir.RunDir(run_dir)


def test_llm_stage_runs_on_semantic_ids(semantic_run):
  clusters = clusters_stage.load_exploration_clusters(semantic_run.complete_path("clusters"))
  assert clusters.vocabulary == "semantic_ids"
  assert clusters.texts[0] == "<a0> <b0>" and len(set(clusters.texts)) == 32
  assert clusters.display_texts()[0].startswith("<a0> <b0> (")
  # The task source's prompts and targets are the semantic IDs.
  rows = read_task_source(semantic_run.complete_path("transitions") / "task_source" / "train.tsv")
  assert len(rows["targets"]) and all(str(t) in clusters.texts for t in rows["targets"])
  assert all(str(p).count("<a") == 2 for p in rows["inputs"])
  path = semantic_run.complete_path("llm")
  planner = llm_stage.load_planner(path)
  assert planner.descriptions == list(clusters.texts)
  assert {len(ids) for ids in planner.description_ids()} == {3}  # 2 level tokens + EOS
  assert beam.planner_trie(planner).depth == 3
  metrics = llm_stage.load_metrics(path)
  decoded = metrics["free_decode"]
  assert decoded["examples"] == metrics["evaluated_examples"]
  assert decoded["max_target_tokens"] == 3
  assert 0.0 <= decoded["valid_novel"] <= decoded["valid"] <= 1.0
  assert 0.0 <= decoded["hit@1"] <= decoded["valid"]
  assert "hit@5" in metrics["planners"]["llm"]["all"]


def test_free_decode_matches_the_planner_greedy_outputs(semantic_run):
  """The metric agrees with a token-by-token greedy decode of the trained model."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  planner = llm_stage.load_planner(semantic_run.complete_path("llm"))
  history = np.array([[0, 1], [5, 4], [0, 1]])
  prompts, lengths = planner.prompt_ids(history)
  tokens = free_decode.greedy_tokens(planner.model, prompts, lengths, 3, planner.bos_id)
  # Reference: prefill, then feed the argmax one token at a time through the full sequence.
  for row in range(len(history)):
    seq = list(prompts[row, :lengths[row]])
    out = []
    for _ in range(3):
      inputs = jnp.asarray([[planner.bos_id] + seq + out])
      logits = planner.model(inputs)
      out.append(int(jnp.argmax(logits[0, -1])))
    assert out == tokens[row].tolist()
  targets = planner.description_ids()
  matched = free_decode.match_outputs(tokens, targets, planner.tokenizer.eos_id)
  metrics = free_decode.free_decode_metrics(planner, history)
  assert metrics["valid"] == pytest.approx(float(np.mean(matched >= 0)))


def test_precompute_beam_table_on_semantic_ids(semantic_run, tmp_path):
  """The trie-constrained table over semantic IDs: every output a novel, valid cluster."""
  import shutil  # pylint: disable=g-import-not-at-top
  from explore.precompute import stage as precompute_stage  # pylint: disable=g-import-not-at-top
  run_dir = tmp_path / "run"
  shutil.copytree(semantic_run.root, run_dir)
  gin.clear_config()
  gin_config.parse_gin(["quickstart.gin"], [
      f"RUN_DIR = '{run_dir}'", *TINY, "cluster_vocabulary.vocabulary = 'semantic_ids'",
      "PrecomputeOptions.top_n = 10", "PrecomputeOptions.agreement_sample = 20"])
  try:
    stages.run_stages(["precompute"], rundir.RunDir(run_dir), seed=0)
  finally:
    gin.clear_config()
  metrics = precompute_stage.load_metrics(rundir.RunDir(run_dir).complete_path("precompute"))
  assert metrics["validity"]["fraction_valid"] == 1.0
  assert metrics["validity"]["fraction_history"] == 0.0
