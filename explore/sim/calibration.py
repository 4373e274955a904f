"""Calibration: what discovering a hidden interest is worth, computed from the world's truth.

Printed before any comparison, so the reader sees whether the simulated world is one
in which exploration can pay at all, and by how much (the oracle policy is the
empirical bound). Per simulated user, at the end of their log:
  undiscovered     hidden interests not yet enjoyed in the log (what exploration can find)
  hit_chance       the chance that a uniformly random novel cluster holds one of them
  watch / positive the expected watch fraction and positive probability of an average
                   item of an undiscovered interest, against an item off every interest
  click_odds       how much more likely the user is to click an item of the interest
                   once it is discovered: exp(click_scale * (strength - curiosity))
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import special

from explore.sim.choice import ChoiceModel


def _positive(watch: np.ndarray, concentration: float, threshold: float) -> np.ndarray:
  return 1.0 - special.betainc(watch * concentration, (1.0 - watch) * concentration, threshold)


def discovery_value(world, known: np.ndarray, engaged: np.ndarray, users: np.ndarray,
                    model: ChoiceModel) -> dict[str, Any]:
  """The calibration numbers above for `users` with their [B, I] known and [B, M] engaged."""
  c = world.config
  topics = world.interest_topic[users]  # [B, I]
  strength = world.interest_strength[users].astype(np.float64)  # [B, I]
  hidden = (topics >= 0) & ~np.asarray(known, bool)  # [B, I]
  undiscovered = hidden.sum(1)  # [B]
  novel = np.maximum((~np.asarray(engaged, bool)).sum(1), 1)  # [B]
  mean_quality = float(np.mean(world.item_quality))
  watch_hidden = np.clip(strength[hidden] + mean_quality, 0.02, 0.98)
  watch_off = float(np.clip(c.base_enjoyment + mean_quality, 0.02, 0.98))
  k, threshold = c.engagement_concentration, c.positive_threshold
  odds = np.exp(model.click_scale * (strength[hidden] - model.curiosity))
  return {
      "users": int(len(users)),
      "hidden_per_user": float(((topics >= 0).sum(1) - world.num_core[users]).mean()),
      "undiscovered_per_user": float(undiscovered.mean()),
      "users_with_undiscovered": float((undiscovered > 0).mean()),
      "hit_chance_random_novel_cluster": float((undiscovered / novel).mean()),
      "watch_undiscovered_interest": float(watch_hidden.mean()) if hidden.any() else None,
      "watch_off_interest": watch_off,
      "positive_undiscovered_interest": (float(_positive(watch_hidden, k, threshold).mean())
                                         if hidden.any() else None),
      "positive_off_interest": float(_positive(np.array(watch_off), k, threshold)),
      "click_odds_after_discovery": float(odds.mean()) if hidden.any() else None,
  }


def format_calibration(values: dict[str, Any]) -> str:
  """Readable lines of `discovery_value`."""
  def num(x):
    return "n/a" if x is None else f"{x:.3f}"

  return "\n".join([
      f"users simulated: {values['users']}; hidden interests per user "
      f"{num(values['hidden_per_user'])}, still undiscovered when the log ends "
      f"{num(values['undiscovered_per_user'])} ({100 * values['users_with_undiscovered']:.1f}% "
      "of users have one)",
      f"a random novel cluster holds an undiscovered interest with chance "
      f"{num(values['hit_chance_random_novel_cluster'])}",
      f"an item of an undiscovered interest: expected watch {num(values['watch_undiscovered_interest'])}"
      f", positive {num(values['positive_undiscovered_interest'])}; off every interest: watch "
      f"{num(values['watch_off_interest'])}, positive {num(values['positive_off_interest'])}",
      f"once discovered, its items are clicked {num(values['click_odds_after_discovery'])}x as "
      "often (odds against the same item before)",
  ])
