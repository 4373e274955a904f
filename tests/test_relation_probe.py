"""The relation probe: edge groups, prompts, ranks and a decoder's scores of every topic name."""

import numpy as np
import pytest

from explore.data import synthetic_corpus
from explore.data.synthetic_config import SyntheticConfig
from explore.data.synthetic_world import build_world
from explore.llm import relation_probe
from explore.llm import tokenizer as tokenizer_lib
from explore.llm.decoder import build_decoder
from explore.llm.decoder_config import DecoderConfig

WORLD = build_world(SyntheticConfig(num_users=50, num_items=400, branching=(4, 4, 4)))
CONFIG = synthetic_corpus.CorpusConfig(coverage=0.5, noise=0.25)


def test_edge_groups_split_the_affinity_edges_and_the_false_statements():
  groups = relation_probe.edge_groups(WORLD, CONFIG)
  stated, unstated = (set(zip(*(a.tolist() for a in groups[g]))) for g in ("stated", "unstated"))
  edges = {(s, int(t)) for s in range(WORLD.num_topics) for t in WORLD.affinity[s]}
  assert stated | unstated == edges and not stated & unstated
  relations = synthetic_corpus.stated_relations(WORLD, 0.5, 0.25, np.random.default_rng([0, 7]))
  assert len(stated) == relations.true.sum() and len(groups["false"][0]) == (~relations.true).sum()
  sources, targets = groups["false"]
  assert not any(t in WORLD.affinity[s] for s, t in zip(sources.tolist(), targets.tolist()))


def test_prompts_are_the_task_prompt_or_the_corpus_sentence():
  prompts, candidates, eos = relation_probe.prompts_and_candidates(WORLD, "task")
  names = [synthetic_corpus.canonical_name(WORLD, leaf) for leaf in range(WORLD.num_topics)]
  assert eos and candidates == names
  for source, prompt in enumerate(prompts):
    older, last = prompt[len("history: "):].split(" | ")
    assert last == names[source] and older != names[source]
  prompts, candidates, eos = relation_probe.prompts_and_candidates(WORLD, "sentence")
  assert not eos and prompts[3] == f"people who enjoy {names[3]} often come to enjoy"
  with pytest.raises(relation_probe.RelationProbeError, match="form='web'"):
    relation_probe.prompts_and_candidates(WORLD, "web")


def test_a_model_that_knows_exactly_the_stated_edges_ranks_them_first():
  groups = relation_probe.edge_groups(WORLD, CONFIG)
  scores = np.zeros((WORLD.num_topics, WORLD.num_topics))
  for group in ("stated", "false"):
    sources, targets = groups[group]
    scores[sources, targets] = 5.0
  result = relation_probe.probe(scores, WORLD, CONFIG)
  assert result["stated"]["percentile"] == pytest.approx(1.0, abs=0.02)
  assert result["stated"]["hit@5"] == 1.0
  assert result["unstated"]["percentile"] < 0.6  # not known: about chance, not first
  assert result["false"]["hit@5"] > 0.9
  # Centring: a candidate liked after every prompt does not rank first anywhere.
  liked = np.zeros_like(scores)
  liked[:, 7] = 10.0
  sources, targets = groups["stated"]
  percentile, _ = relation_probe.edge_ranks(liked, WORLD.affinity, sources, targets)
  assert percentile.max() == 0.0
  with pytest.raises(relation_probe.RelationProbeError, match="must be"):
    relation_probe.edge_ranks(np.zeros((3, 4)), WORLD.affinity, sources, targets)


def test_leaf_scores_are_a_decoders_log_likelihoods(tmp_path):
  prompts, names, _ = relation_probe.prompts_and_candidates(WORLD, "task")
  tokenizer = tokenizer_lib.train_sentencepiece(prompts + names, tmp_path / "spm.model",
                                                vocab_size=300)
  config = DecoderConfig(vocab_size=tokenizer.vocab_size, d_model=16, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=8, mlp_dim=32)
  scores = relation_probe.leaf_scores(build_decoder(config), tokenizer, WORLD, "task")
  assert scores.shape == (WORLD.num_topics, WORLD.num_topics)
  assert np.all(np.isfinite(scores)) and np.all(scores < 0)
