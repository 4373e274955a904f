"""The positive rule: which logged engagements count as a user liking an item.

Novel-interest transitions, the fine-tuning data and the enjoyment metrics are
all built from *positive* engagements only, so this one threshold decides what
the whole pipeline learns from. It is a gin-configurable function so that every
loader applies the same rule and a run file can change it in one place:

    positive_rule.threshold = 3.5             # MovieLens stars
    synthetic/positive_rule.threshold = 0.5   # a watch fraction, in a gin scope

The default (4.0) is the usual MovieLens convention: a rating of 4 or 5 stars.
Engagement on another scale (a watch fraction, a dwell time) needs its own
threshold; the synthetic platform binds one for its watch fraction.
"""

from __future__ import annotations

import math

import gin
import numpy as np


class PositiveRuleError(ValueError):
  """The positive rule was configured with an unusable threshold."""


@gin.configurable
def positive_rule(engagement: np.ndarray, threshold: float = 4.0) -> np.ndarray:
  """Marks engagements at or above `threshold` as positive.

  Args:
    engagement: [N] engagement values (a rating, a watch fraction, ...).
    threshold: the smallest engagement that counts as positive (inclusive).

  Returns:
    [N] bool; NaN engagement is never positive.
  """
  if not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
    raise PositiveRuleError(
        f"positive_rule: threshold must be a finite number, got {threshold!r}")
  engagement = np.asarray(engagement, np.float32)  # [N]
  return engagement >= np.float32(threshold)  # [N] bool; NaN compares False
