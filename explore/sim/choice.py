"""How a simulated user responds to a slate: a logit choice with a no-click option.

The user sees a slate of S items and picks at most one (multinomial logit):

  utility(item j)   = click_scale * (perceived_j + quality_j)
  utility(no click) = click_scale * (no_click_level - satisfaction_weight * satisfaction)
  perceived_j       = strength of topic_j if it is a *known* interest (core or discovered),
                      else `curiosity` (what an unfamiliar topic promises before it is tried)

Clicks follow what the user knows; enjoyment follows the truth. The consumed item's
expected watch fraction is the world's `expected_watch` (hidden interests included,
`base_enjoyment` off-interest, plus quality), and the engagement is positive with the
probability that a Beta(m k, (1 - m) k) watch fraction reaches `positive_threshold`,
exactly as in the synthetic logs. A positive engagement with a hidden interest
discovers it: it becomes known, and stays known.

Satisfaction is an exponential moving average of (watch - positive_threshold) over
rounds (0 in rounds without a click): enjoyable picks raise it, disappointing ones
lower it, and a less satisfied user skips more slates (the no-click utility rises).

Everything here is a pure function of arrays with the users on the leading axes, so
it vectorises over users and policies and runs inside `lax.scan`.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import gin
import jax
import jax.numpy as jnp

_WATCH_EPS = 0.02  # as `synthetic_world`: expected watch fractions stay inside (0, 1)


class ChoiceModelError(ValueError):
  """A choice-model parameter the simulator cannot use."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ChoiceModel:
  """The simulated users' choice and satisfaction parameters (gin: `ChoiceModel.x`).

  click_scale: inverse temperature of the logit (higher: choices follow utility closely).
  curiosity: perceived level of a topic that is not a known interest.
  no_click_level: level of skipping the slate at zero satisfaction.
  satisfaction_weight: how much satisfaction lowers the no-click level.
  satisfaction_decay: weight of the previous satisfaction in the moving average.
  """

  click_scale: float = 5.0
  curiosity: float = 0.4
  no_click_level: float = 0.5
  satisfaction_weight: float = 1.0
  satisfaction_decay: float = 0.8

  def __post_init__(self):
    if not self.click_scale > 0:
      raise ChoiceModelError(f"ChoiceModel.click_scale={self.click_scale!r} must be > 0")
    if not 0.0 <= self.satisfaction_decay < 1.0:
      raise ChoiceModelError(
          f"ChoiceModel.satisfaction_decay={self.satisfaction_decay!r} must be in [0, 1)")
    for name in ("curiosity", "no_click_level", "satisfaction_weight"):
      if not isinstance(getattr(self, name), (int, float)):
        raise ChoiceModelError(f"ChoiceModel.{name}={getattr(self, name)!r} must be a number")


class Engagement(NamedTuple):
  """The world's engagement constants (from `SyntheticConfig`)."""

  base_enjoyment: float
  concentration: float  # Beta concentration k
  positive_threshold: float


class SlateResponse(NamedTuple):
  """Choice probabilities and the truth about each slate item, [..., S] per user."""

  click_probability: jax.Array  # [..., S] P(choose item j)
  no_click_probability: jax.Array  # [...]
  expected_watch: jax.Array  # [..., S] true expected watch fraction of each item
  positive_probability: jax.Array  # [..., S] P(watch >= threshold | item consumed)
  interest_slot: jax.Array  # [..., S] the user's interest slot of the item's topic, -1 if none


def interest_match(interest_topic: jax.Array, item_topic: jax.Array) -> jax.Array:
  """[..., S, I] whether slate item j's topic is the user's interest slot i."""
  return (interest_topic[..., None, :] == item_topic[..., :, None]) & (
      interest_topic[..., None, :] >= 0)


def positive_probability(watch: jax.Array, engagement: Engagement) -> jax.Array:
  """P(Beta(m k, (1 - m) k) >= threshold) for expected watch fractions m."""
  k = engagement.concentration
  return 1.0 - jax.scipy.special.betainc(watch * k, (1.0 - watch) * k,
                                         engagement.positive_threshold)


def slate_response(model: ChoiceModel, engagement: Engagement, interest_topic: jax.Array,
                   interest_strength: jax.Array, known: jax.Array, satisfaction: jax.Array,
                   item_topic: jax.Array, item_quality: jax.Array) -> SlateResponse:
  """Exact choice probabilities and outcomes of each user's slate.

  Args:
    interest_topic, interest_strength, known: [..., I] the users' interest slots
      (-1 pads), their strengths and whether each is known.
    satisfaction: [...] current satisfaction.
    item_topic, item_quality: [..., S] the slate items' topics and quality.
  """
  match = interest_match(interest_topic, item_topic)  # [..., S, I]
  strength = interest_strength[..., None, :]  # [..., 1, I]
  true_level = jnp.where(match.any(-1), jnp.where(match, strength, 0.0).max(-1),
                         engagement.base_enjoyment)  # [..., S]
  known_match = match & known[..., None, :]  # [..., S, I]
  perceived = jnp.where(known_match.any(-1), jnp.where(known_match, strength, 0.0).max(-1),
                        model.curiosity)  # [..., S]
  item_logit = model.click_scale * (perceived + item_quality)  # [..., S]
  skip_logit = model.click_scale * (model.no_click_level
                                    - model.satisfaction_weight * satisfaction)  # [...]
  logits = jnp.concatenate([skip_logit[..., None], item_logit], axis=-1)  # [..., S + 1]
  probability = jax.nn.softmax(logits, axis=-1)
  watch = jnp.clip(true_level + item_quality, _WATCH_EPS, 1.0 - _WATCH_EPS)  # [..., S]
  slot = jnp.where(match.any(-1), jnp.argmax(match, axis=-1), -1)  # [..., S]
  return SlateResponse(click_probability=probability[..., 1:],
                       no_click_probability=probability[..., 0], expected_watch=watch,
                       positive_probability=positive_probability(watch, engagement),
                       interest_slot=slot.astype(jnp.int32))


class Outcome(NamedTuple):
  """What one user did this round (realised from the shared uniforms)."""

  choice: jax.Array  # [...] int32 slate position chosen, -1 for no click
  positive: jax.Array  # [...] bool positive engagement with the chosen item
  watch: jax.Array  # [...] expected watch fraction of the chosen item (0 without a click)


def realise(response: SlateResponse, u_choice: jax.Array, u_positive: jax.Array) -> Outcome:
  """The user's choice by inverse CDF of `u_choice` and positivity from `u_positive`.

  Both uniforms are per user and round, shared by every policy (common random
  numbers): with the same slate probabilities two policies make the same draw.
  """
  cumulative = jnp.cumsum(response.click_probability, axis=-1)  # [..., S]
  threshold = response.no_click_probability[..., None] + cumulative  # [..., S]
  past = jnp.sum(threshold <= u_choice[..., None], axis=-1)  # [...] items whose mass ends <= u
  clicked = u_choice >= response.no_click_probability
  choice = jnp.where(clicked, jnp.minimum(past, threshold.shape[-1] - 1), -1)
  picked = jnp.maximum(choice, 0)[..., None]
  p_positive = jnp.take_along_axis(response.positive_probability, picked, -1)[..., 0]
  watch = jnp.take_along_axis(response.expected_watch, picked, -1)[..., 0]
  return Outcome(choice=choice.astype(jnp.int32), positive=clicked & (u_positive < p_positive),
                 watch=jnp.where(clicked, watch, 0.0))


def next_satisfaction(model: ChoiceModel, engagement: Engagement, satisfaction: jax.Array,
                      outcome: Outcome) -> jax.Array:
  """[...] the moving average of (watch - threshold), 0 for a round without a click."""
  signal = jnp.where(outcome.choice >= 0, outcome.watch - engagement.positive_threshold, 0.0)
  return model.satisfaction_decay * satisfaction + (1.0 - model.satisfaction_decay) * signal
