"""The blended planner: LLM log-probability plus a tuned weight times log(1 + count).

  score(c | history) = llm(c | history) + weight * log(1 + count(last cluster -> c))

with the counts of the last-cluster planner (`planners.LastClusterCounts`).
It shows what the LLM adds on top of the counts as well as alone. The weight
is chosen on validation examples only, never on test ones: the latest
`validation_fraction` of the train examples by time (train examples precede
every test one, so this mimics the test split), with the counts refitted on
the train examples before them; the test scores then use counts from the
whole train split. Unless the `llm` stage holds the validation examples out
of fine-tuning (`LlmStageOptions.validation_fraction` > 0), the LLM was
trained on every train pair, so it has seen the validation pairs and looks
better there than on new tuples: the tuned weight then leans towards the LLM.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from explore.eval import hit_rate
from explore.eval.planners import PairCounts, Planner, _check_history, _check_pairs
from explore.transitions.examples import NovelTransitions, TRAIN

WEIGHTS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)


class BlendError(ValueError):
  """Blend settings or inputs that cannot be used."""


class BlendedPlanner(Planner):
  """LLM scores plus `weight` * log(1 + last-cluster counts); the `scores(history)` face."""

  name = "blend"

  def __init__(self, llm_scores: Callable[[np.ndarray], np.ndarray], history: np.ndarray,
               next_cluster: np.ndarray, num_clusters: int, weight: float):
    history, next_cluster = _check_pairs(history, next_cluster, num_clusters)
    super().__init__(num_clusters, history.shape[1])
    if not np.isfinite(weight) or weight < 0:
      raise BlendError(f"BlendedPlanner: weight={weight!r} must be finite and >= 0")
    self.llm_scores, self.weight = llm_scores, float(weight)
    self.last = PairCounts.fit(history[:, -1:], next_cluster, num_clusters)

  def blend(self, llm: np.ndarray, history: np.ndarray) -> np.ndarray:
    """[b, M] blended scores from precomputed [b, M] LLM scores of `history`."""
    history = _check_history(self.name, history, self.k, self.num_clusters)
    return llm + self.weight * np.log1p(self.last.scores(history[:, -1:]))  # [b, M]

  def _scores(self, history):
    return self.blend(self.llm_scores(history), history)


def validation_split(transitions: NovelTransitions, fraction: float = 0.1,
                     max_examples: int | None = None, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(fit, validation) train example indices: the latest `fraction` by time is validation.

  `max_examples` keeps a seeded uniform sample of the validation examples.
  """
  if not 0.0 < fraction < 1.0:
    raise BlendError(f"validation_fraction={fraction} must be in (0, 1)")
  train = transitions.indices(TRAIN)
  order = train[np.argsort(transitions.timestamp[train], kind="stable")]
  cut = int(round(len(order) * (1.0 - fraction)))
  fit, validation = np.sort(order[:cut]), np.sort(order[cut:])
  if not len(fit) or not len(validation):
    raise BlendError(f"validation_split: {len(train)} train examples are too few to hold out "
                     f"{fraction:.0%} by time")
  if max_examples is not None and len(validation) > max_examples:
    rng = np.random.default_rng(seed)
    validation = np.sort(rng.choice(validation, size=max_examples, replace=False))
  return fit, validation


def tune_weight(transitions: NovelTransitions, llm_scores: Callable[[np.ndarray], np.ndarray],
                weights: Sequence[float] = WEIGHTS, k: int = 5, fraction: float = 0.1,
                max_examples: int | None = 500, seed: int = 0) -> dict:
  """The weight with the best validation hit@k (ties: the smaller), and every weight's hit@k."""
  fit, validation = validation_split(transitions, fraction, max_examples, seed)
  return tune_weight_on(transitions, llm_scores(transitions.history[validation]), fit,
                        validation, weights, k)


def tune_weight_on(transitions: NovelTransitions, llm: np.ndarray, fit: np.ndarray,
                   validation: np.ndarray, weights: Sequence[float] = WEIGHTS, k: int = 5
                   ) -> dict:
  """`tune_weight` with the LLM's [v, M] scores of the `validation` examples given.

  The counts are fitted on the `fit` examples; each weight's hit@k is read on
  `validation`.
  """
  history = transitions.history[validation]  # [v, K]
  if llm.shape != (len(validation), transitions.num_clusters):
    raise BlendError(f"tune_weight_on: llm scores must be [{len(validation)}, "
                     f"{transitions.num_clusters}], got {llm.shape}")
  mask = transitions.previously_engaged_mask(validation)
  truth = transitions.next_cluster[validation]
  results = {}
  for weight in weights:
    planner = BlendedPlanner(lambda h: llm, transitions.history[fit],
                             transitions.next_cluster[fit], transitions.num_clusters, weight)
    ranks = hit_rate.novel_ranks(planner.blend(llm, history), truth, mask)
    results[float(weight)] = float(np.mean(ranks < k))
  best = max(results, key=lambda w: (results[w], -w))
  return {"weight": best, f"validation_hit@{k}": results, "validation_examples": len(validation),
          "fit_examples": int(len(fit))}
