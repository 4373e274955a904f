"""Does a decoder know the knowledge corpus's relations? A log-probability probe.

Pretraining on the knowledge corpus can fail to help the planner for two
reasons: the relations were never learned, or fine-tuning does not use (or
erases) them. This probe measures the first, separately from the second: it
asks a decoder (the `pretrain` stage's export, or the fine-tuned planner) for
the log-probability of every leaf topic's name after a prompt about a source
topic, and looks where the source's true affine topics rank among the topics
that are not affine to it:

  stated      true affinity edges the corpus states;
  unstated    true affinity edges the corpus leaves out (what the model could
              only infer from words, not memorise);
  false       the corpus's false statements (source -> a non-affine topic).

Prompt forms: "task" is the fine-tuning prompt (`format_history_prompt` over
"X" and the source, X a seeded other topic, names as in the corpus's task-form
statements); "sentence" is the corpus's first relation template ("people who
enjoy A often come to enjoy" -> "B."). For each edge (s, t) the percentile is
the fraction of topics non-affine to s (s itself excluded) that score below t
(0.5 is chance), and hit@5 whether fewer than 5 of them score at least as high.
Scores are centred per candidate (minus the candidate's mean over all
prompts), so that a name's overall likelihood does not decide its rank. A
model pretrained on the control corpus (the targets shuffled) is at chance on
`stated` when the probe works.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from explore.data import synthetic_corpus
from explore.data.synthetic_world import SyntheticWorld
from explore.llm import features
from explore.llm import scoring
from explore.llm import tokenizer as tokenizer_lib
from explore.llm.decoder import Decoder
from explore.transitions.task_source import format_history_prompt

FORMS = ("task", "sentence")


class RelationProbeError(ValueError):
  """A probe setting or input that cannot be used."""


def edge_groups(world: SyntheticWorld, config: synthetic_corpus.CorpusConfig
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """{group: (sources [e], targets [e])} for stated / unstated / false (the corpus's draw)."""
  rng = np.random.default_rng([config.seed, 7])  # as synthetic_corpus.generate_corpus
  relations = synthetic_corpus.stated_relations(world, config.coverage, config.noise, rng)
  stated = set(zip(relations.source[relations.true].tolist(),
                   relations.target[relations.true].tolist()))
  edges = [(s, int(t)) for s in range(world.num_topics) for t in world.affinity[s]]
  groups = {"stated": [e for e in edges if e in stated],
            "unstated": [e for e in edges if e not in stated],
            "false": list(zip(relations.source[~relations.true].tolist(),
                              relations.target[~relations.true].tolist()))}
  return {name: (np.asarray([s for s, _ in pairs], np.int64),
                 np.asarray([t for _, t in pairs], np.int64)) for name, pairs in groups.items()}


def prompts_and_candidates(world: SyntheticWorld, form: str, name_words: int = 3, seed: int = 0
                           ) -> tuple[list[str], list[str], bool]:
  """(one prompt per leaf, one candidate per leaf, whether prompts end in EOS)."""
  names = [synthetic_corpus.canonical_name(world, leaf, name_words)
           for leaf in range(world.num_topics)]
  if form == "task":
    rng = np.random.default_rng(seed)
    others = (np.arange(world.num_topics) + 1 + rng.integers(world.num_topics - 1,
                                                              size=world.num_topics))
    others %= world.num_topics  # never the source itself
    return [format_history_prompt([names[o], names[s]]) for s, o in enumerate(others.tolist())
            ], names, True
  if form == "sentence":
    return ([f"people who enjoy {n} often come to enjoy" for n in names],
            [f"{n}." for n in names], False)
  raise RelationProbeError(f"relation probe: form={form!r} must be one of {FORMS}")


def leaf_scores(model: Decoder, tokenizer: tokenizer_lib.TextTokenizer, world: SyntheticWorld,
                form: str, bos_id: int = features.BOS_ID, name_words: int = 3, seed: int = 0
                ) -> np.ndarray:
  """[L, L] log-likelihood of every leaf's name (+ EOS) after each leaf's probe prompt."""
  prompts, candidates, prompt_eos = prompts_and_candidates(world, form, name_words, seed)
  return scoring.score_prompts(model, tokenizer.encode_batch(prompts, add_eos=prompt_eos),
                               tokenizer.encode_batch(candidates, add_eos=True), bos_id=bos_id)


def edge_ranks(scores: np.ndarray, affinity: np.ndarray, sources: np.ndarray,
               targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """([e] percentile, [e] count of non-affine topics scoring >= the target) of each edge.

  `scores` [L, L] is centred per candidate first (minus its mean over the
  other prompts); the source itself and its affine topics are not compared.
  """
  num = scores.shape[0]
  if scores.shape != (num, num):
    raise RelationProbeError(f"relation probe: scores of shape {scores.shape} must be [L, L]")
  off_diagonal = ~np.eye(num, dtype=bool)
  mean = np.where(off_diagonal, scores, 0.0).sum(axis=0) / max(num - 1, 1)  # [L]
  centred = scores - mean[None, :]
  compare = off_diagonal.copy()
  compare[np.repeat(np.arange(num), affinity.shape[1]), affinity.reshape(-1)] = False  # [L, L]
  rows = centred[sources]  # [e, L]
  own = rows[np.arange(len(sources)), targets][:, None]  # [e, 1]
  allowed = compare[sources]  # [e, L]
  allowed[np.arange(len(sources)), targets] = False  # (a false statement's target is non-affine)
  below = ((rows < own) & allowed).sum(axis=1)
  at_least = ((rows >= own) & allowed).sum(axis=1)
  return below / np.maximum(allowed.sum(axis=1), 1), at_least


def probe(scores: np.ndarray, world: SyntheticWorld, config: synthetic_corpus.CorpusConfig,
          k: int = 5) -> dict[str, Any]:
  """{group: {edges, percentile, hit@k}} of the [L, L] scores (see the module docstring)."""
  out: dict[str, Any] = {}
  for name, (sources, targets) in edge_groups(world, config).items():
    if not len(sources):
      out[name] = {"edges": 0, "percentile": None, f"hit@{k}": None}
      continue
    percentile, at_least = edge_ranks(scores, world.affinity, sources, targets)
    out[name] = {"edges": int(len(sources)), "percentile": float(percentile.mean()),
                 f"hit@{k}": float(np.mean(at_least < k))}
  return out
