"""The beam generator: the trained planner's trie-constrained beam search over history tuples.

Each tuple's prompt is decoded by `explore.llm.decoding.ConstrainedDecoder`
under the `ClusterTrie` of the planner's descriptions (each ending with EOS),
with the tuple's own clusters excluded inside the search: every output is a
real cluster and never a history cluster, by construction. Prompts are padded
to a multiple of `PROMPT_BUCKET` tokens, so a whole table compiles the
decoder once or twice instead of once per distinct prompt length.
"""

from __future__ import annotations

import numpy as np

from explore.llm import decoding
from explore.llm.planner import LlmPlanner
from explore.llm.trie import ClusterTrie
from explore.precompute import generators

PROMPT_BUCKET = 16


def planner_trie(planner: LlmPlanner) -> ClusterTrie:
  """The trie of the planner's descriptions (ids + EOS) in its tokenizer's vocabulary."""
  return ClusterTrie.build(planner.description_ids(), planner.tokenizer.eos_id,
                           planner.tokenizer.vocab_size)


def bucketed(prompts: np.ndarray, bucket: int = PROMPT_BUCKET) -> np.ndarray:
  """[b, P'] prompts right-padded with 0 to the next multiple of `bucket` tokens."""
  width = -(-prompts.shape[1] // bucket) * bucket
  return np.pad(prompts, ((0, 0), (0, width - prompts.shape[1])))


def beam_top_n(planner: LlmPlanner, top_n: int, num_beams: int, prompts_per_chunk: int
               ) -> generators.TopN:
  """history [b, K] -> the beam search's ([b, n] clusters, [b, n] log-probs), history excluded."""
  decoder = decoding.ConstrainedDecoder(
      planner.model, planner_trie(planner), num_beams=num_beams, top_n=top_n,
      bos_id=planner.bos_id, prompts_per_chunk=prompts_per_chunk,
      length_normalize=planner.length_normalize)

  def generate(history: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prompts, lengths = planner.prompt_ids(history)  # [b, P], [b]
    return decoder(bucketed(prompts), lengths, exclude=np.asarray(history, np.int32))

  return generate
