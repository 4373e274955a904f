"""Free-decode validity: how often the planner's output is a real cluster without the trie.

The planner generates a cluster's text under a trie, so every constrained
output is a valid cluster by construction. This measures what the trie is
worth: greedy decoding over the whole vocabulary (no trie, no exclusion;
`decoding.full_vocab_beam_search_chunk` with one beam) for each history
prompt, `max_target_tokens` steps (the longest cluster text + EOS), and an
output counts as

  valid        its tokens up to and including the first EOS are exactly one
               cluster's text ids + EOS (the trie's path of that cluster);
  valid_novel  valid, and the cluster is not one of the prompt's K history
               clusters (what the trie's exclusion enforces);
  hit@1        valid and the example's true next cluster.

Fractions are over examples (each distinct history tuple is decoded once, as
the exact scorer scores it once). `match_outputs` is the matching rule alone,
on token rows.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

from flax import nnx
import numpy as np

from explore.llm import decoding
from explore.llm import scoring


class FreeDecodeError(ValueError):
  """Inputs the free-decode metric cannot use."""


def match_outputs(tokens: np.ndarray, targets: Sequence[Sequence[int]], eos_id: int
                  ) -> np.ndarray:
  """[n] the cluster whose ids + EOS each output row is, -1 when none.

  Args:
    tokens: [n, T] generated ids; a row is read up to and including its first
      `eos_id` (a row without EOS matches nothing; ids after the EOS are ignored).
    targets: each cluster's ids, ending with `eos_id` (distinct sequences).
    eos_id: the end-of-sequence id.
  """
  tokens = np.asarray(tokens)
  if tokens.ndim != 2:
    raise FreeDecodeError(f"match_outputs: tokens must be [n, T], got shape {tokens.shape}")
  lookup: dict[tuple[int, ...], int] = {}
  for c, ids in enumerate(targets):
    ids = tuple(int(i) for i in ids)
    if not ids or ids[-1] != eos_id or eos_id in ids[:-1]:
      raise FreeDecodeError(f"match_outputs: target of cluster {c} ({list(ids)}) must end with "
                            f"the EOS id {eos_id} and hold it only there")
    other = lookup.setdefault(ids, c)
    if other != c:
      raise FreeDecodeError(f"match_outputs: clusters {other} and {c} have the same ids {ids}")
  matched = np.full(len(tokens), -1, np.int64)
  for i, row in enumerate(tokens.tolist()):
    if eos_id in row:
      matched[i] = lookup.get(tuple(row[:row.index(eos_id) + 1]), -1)
  return matched


def validity(matched: np.ndarray, history: np.ndarray, next_cluster: np.ndarray | None = None
             ) -> dict[str, float]:
  """Fractions of outputs that are a cluster, a novel cluster, and (with next) the true one."""
  matched, history = np.asarray(matched), np.asarray(history)
  if history.ndim != 2 or len(history) != len(matched):
    raise FreeDecodeError(f"validity: history must be [n={len(matched)}, K], got shape "
                          f"{history.shape}")
  if not len(matched):
    raise FreeDecodeError("validity: no outputs given")
  valid = matched >= 0
  novel = valid & ~np.any(history == matched[:, None], axis=1)
  result = {"valid": float(valid.mean()), "valid_novel": float(novel.mean())}
  if next_cluster is not None:
    result["hit@1"] = float((matched == np.asarray(next_cluster)).mean())
  return result


def greedy_tokens(model, prompts: np.ndarray, prompt_lengths: np.ndarray, num_steps: int,
                  bos_id: int, prompts_per_chunk: int = 64) -> np.ndarray:
  """[n, num_steps] greedy ids over the full vocabulary after each right-padded prompt."""
  prompts, prompt_lengths = scoring.check_prompts(prompts, prompt_lengths)
  if num_steps < 1:
    raise FreeDecodeError(f"greedy_tokens: num_steps={num_steps} must be >= 1")
  graphdef, state = nnx.split(model)

  def greedy(state, prompts, prompt_lengths):
    history, _ = decoding.full_vocab_beam_search_chunk(
        nnx.merge(graphdef, state), prompts, prompt_lengths, 1, num_steps, bos_id)
    return (history[:, 0],)

  call, shards = scoring.data_parallel_jit(greedy, state, in_ndims=(2, 1), out_ndims=(2,))
  chunk = -(-min(prompts_per_chunk, len(prompts)) // shards) * shards
  (tokens,) = scoring.run_in_chunks(lambda p, l: call(state, p, l), (prompts, prompt_lengths),
                                    chunk)
  return tokens


def free_decode_metrics(planner, history: np.ndarray, next_cluster: np.ndarray | None = None,
                        prompts_per_chunk: int = 64) -> dict[str, Any]:
  """Free-decode validity of an `LlmPlanner` over history rows [n, K] (see the module docstring)."""
  start = time.perf_counter()
  history = planner.check_history(history)
  if not len(history):
    raise FreeDecodeError("free_decode_metrics: no history rows given")
  tuples, inverse = np.unique(history, axis=0, return_inverse=True)
  targets = planner.description_ids()
  num_steps = max(len(t) for t in targets)
  prompts, lengths = planner.prompt_ids(tuples)
  tokens = greedy_tokens(planner.model, prompts, lengths, num_steps, planner.bos_id,
                         prompts_per_chunk)
  matched = match_outputs(tokens, targets, planner.tokenizer.eos_id)[inverse.reshape(-1)]
  return {**validity(matched, history, next_cluster), "examples": int(len(history)),
          "distinct_tuples": int(len(tuples)), "max_target_tokens": int(num_steps),
          "seconds": round(time.perf_counter() - start, 2)}


def run_dir_metrics(run_dir: str) -> dict[str, Any]:
  """Free-decode validity of a run directory's trained planner on its llm stage's test examples.

  For runs whose `llm/metrics.json` predates the metric:
  `python3 -m explore.llm.free_decode RUN_DIR` prints it as JSON.
  """
  from explore import rundir  # pylint: disable=g-import-not-at-top
  from explore.llm import stage as llm_stage  # pylint: disable=g-import-not-at-top
  from explore.transitions import stage as transitions_stage  # pylint: disable=g-import-not-at-top
  run = rundir.RunDir(run_dir)
  llm_path = run.complete_path("llm")
  examples, _ = llm_stage.load_eval_examples(llm_path)
  transitions = transitions_stage.load_transitions(run.complete_path("transitions"))
  planner = llm_stage.load_planner(llm_path)
  return free_decode_metrics(planner, transitions.history[examples],
                             transitions.next_cluster[examples])


if __name__ == "__main__":
  import json  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  if len(sys.argv) != 2:
    raise SystemExit("usage: python3 -m explore.llm.free_decode RUN_DIR")
  print(json.dumps(run_dir_metrics(sys.argv[1]), indent=1))
