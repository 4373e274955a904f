"""Weight-space interpolation of the fine-tuned planner with its start (`explore.llm.interpolation`)."""

import jax.numpy as jnp
import numpy as np
import pytest

from explore.llm import interpolation


def test_check_options_sorts_the_alphas_largest_first():
  assert interpolation.check_options((0.7, 0.9, 0.7), 0.1, lora_rank=0) == (0.9, 0.7)
  assert interpolation.check_options([0.5], 0.1, lora_rank=0) == (0.5,)
  assert interpolation.check_options((), 0.0, lora_rank=8) == ()


@pytest.mark.parametrize("alphas, fraction, rank, message", [
    ((1.0,), 0.1, 0, r"\[1.0\] are not in \(0, 1\)"),
    ((0.0, 0.5), 0.1, 0, r"\[0.0\] are not in \(0, 1\)"),
    ((True,), 0.1, 0, "are not in"),
    (0.8, 0.1, 0, "must be a tuple of fractions"),
    ((0.8,), 0.0, 0, "set LlmStageOptions.validation_fraction > 0"),
    ((0.8,), 0.1, 4, "DecoderConfig.lora_rank=4"),
])
def test_bad_options_are_named(alphas, fraction, rank, message):
  with pytest.raises(interpolation.InterpolationError, match=message):
    interpolation.check_options(alphas, fraction, rank)


def test_mix_interpolates_every_leaf():
  start = {"a": jnp.zeros((2,)), "b": {"c": jnp.full((3,), 4.0)}}
  tuned = {"a": jnp.ones((2,)), "b": {"c": jnp.full((3,), 8.0)}}
  mixed = interpolation.mix(start, tuned, 0.25)
  np.testing.assert_allclose(mixed["a"], 0.25)
  np.testing.assert_allclose(mixed["b"]["c"], 5.0)
  with pytest.raises(interpolation.InterpolationError, match="different parameter trees"):
    interpolation.mix(start, {"a": tuned["a"]}, 0.5)


def test_choose_scores_the_fine_tuned_planner_first_and_keeps_it_on_ties():
  asked = []
  hit5 = {1.0: 0.30, 0.9: 0.40, 0.8: 0.40, 0.7: 0.10}

  def validate(alpha):
    asked.append(alpha)
    return {"all": {"hit@5": hit5[alpha]}, "unseen": {"hit@5": 1.0 - hit5[alpha]}}

  chosen, candidates = interpolation.choose((0.7, 0.8, 0.9), validate, "hit@5", "all")
  assert asked == [1.0, 0.9, 0.8, 0.7] == [c["alpha"] for c in candidates]
  assert chosen["alpha"] == 0.9  # the tie with 0.8 keeps the larger alpha
  assert interpolation.choose((0.9,), validate, "hit@5", "unseen")[0]["alpha"] == 1.0
  tie = {1.0: 0.5, 0.9: 0.5}
  assert interpolation.choose((0.9,), lambda a: {"all": {"hit@5": tie[a]}}, "hit@5",
                              "all")[0]["alpha"] == 1.0
