"""Weight-space interpolation of the fine-tuned planner with its pretrained start.

Fine-tuning on a few thousand interaction pairs at a high learning rate
demotes what pretraining taught (`docs/llm_results.md`, the relation probe).
Interpolating every parameter between the weights the fine-tuning started
from (the pretrain stage's export or an imported checkpoint: the stage's
`pretrained/checkpoint_0`) and the fine-tuned ones,

    theta(alpha) = (1 - alpha) * theta_start + alpha * theta_tuned,

keeps part of the start's knowledge at no training cost (the weight-space
ensembles of robust fine-tuning, WiSE-FT). With
`LlmStageOptions.interpolate = (a1, a2, ...)` and a held-out validation split
the stage scores the validation examples with the fine-tuned planner
(alpha 1) and with each alpha, keeps the best on validation hit@k
(`select_metric` on `select_bucket`; ties keep the larger alpha, so the
fine-tuned planner wins a tie), and writes the chosen weights to `merged/`;
`planner.json` then names that folder, so precompute, serving, export and
the simulator reopen the interpolated planner. Test examples are scored with
the chosen weights only.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax

from explore.llm import selection

MERGED_DIR = "merged"
START_CHECKPOINT = 0  # the step of the start's weights in `pretrained/`


class InterpolationError(ValueError):
  """Interpolation settings that cannot work."""


def check_options(alphas: Sequence[float], validation_fraction: float, lora_rank: int
                  ) -> tuple[float, ...]:
  """The candidate alphas, largest first, or InterpolationError naming the problem."""
  if isinstance(alphas, (str, bytes)) or not isinstance(alphas, (tuple, list)):
    raise InterpolationError(f"LlmStageOptions.interpolate={alphas!r} must be a tuple of"
                             " fractions in (0, 1), e.g. (0.9, 0.8, 0.7)")
  if not alphas:
    return ()
  bad = [a for a in alphas if isinstance(a, bool) or not isinstance(a, (int, float))
         or not 0.0 < a < 1.0]
  if bad:
    raise InterpolationError(f"LlmStageOptions.interpolate={tuple(alphas)!r}: {bad} are not in"
                             " (0, 1) (the fine-tuned planner, alpha 1, is always a candidate)")
  if not validation_fraction:
    raise InterpolationError(f"LlmStageOptions.interpolate={tuple(alphas)!r} chooses the weights"
                             " on held-out validation examples: set"
                             " LlmStageOptions.validation_fraction > 0 (e.g. 0.1)")
  if lora_rank:
    raise InterpolationError(f"LlmStageOptions.interpolate={tuple(alphas)!r} with"
                             f" DecoderConfig.lora_rank={lora_rank}: the adapters start at zero,"
                             " so interpolating only rescales them; lower"
                             " DecoderConfig.lora_alpha instead, or unbind one of the two")
  return tuple(sorted({float(a) for a in alphas}, reverse=True))


def mix(start: Any, tuned: Any, alpha: float) -> Any:
  """(1 - alpha) * start + alpha * tuned, leaf by leaf (same tree structure and shapes)."""
  if jax.tree.structure(start) != jax.tree.structure(tuned):
    raise InterpolationError("the start and the fine-tuned weights have different parameter"
                             " trees; the pretrained checkpoint is from another model")
  return jax.tree.map(lambda s, t: (1.0 - alpha) * s + alpha * t, start, tuned)


def choose(alphas: Sequence[float], validate: Callable[[float], dict[str, Any]], metric: str,
           bucket: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
  """(the chosen candidate, every candidate): {"alpha", "validation"} for 1.0 and each alpha.

  `validate(alpha)` returns the validation report ({bucket: {hit@k: rate}}) of
  the planner with `mix(start, tuned, alpha)`'s weights.
  """
  candidates = [{"alpha": alpha, "validation": validate(alpha)}
                for alpha in (1.0, *sorted(alphas, reverse=True))]
  return selection.best_round(candidates, metric, bucket), candidates
