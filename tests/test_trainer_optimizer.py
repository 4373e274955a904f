"""make_optimizer: warmup then decay, clipping, and clear errors."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from explore.train import OptimizerConfigError, make_optimizer
from explore.train import optimizer as optimizer_lib


def test_cosine_schedule_warms_up_then_decays_to_the_end_fraction():
  _, schedule = make_optimizer(total_steps=100, learning_rate=1.0, warmup_steps=10,
                               end_learning_rate_fraction=0.1)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(100)) == pytest.approx(0.1)
  assert float(schedule(55)) == pytest.approx(0.55, abs=1e-6)  # cosine midpoint


def test_linear_and_constant_schedules():
  _, linear = make_optimizer(total_steps=10, learning_rate=2.0, warmup_steps=0,
                             schedule="linear", end_learning_rate_fraction=0.5)
  assert float(linear(5)) == pytest.approx(1.5)
  _, constant = make_optimizer(total_steps=10, learning_rate=2.0, warmup_steps=0,
                               schedule="constant")
  assert float(constant(9)) == pytest.approx(2.0)


def test_gradients_are_clipped_to_the_global_norm():
  tx, _ = make_optimizer(total_steps=10, learning_rate=1.0, warmup_steps=0,
                         schedule="constant", clip_norm=1.0, b1=0.0, b2=0.0)
  params = {"w": jnp.zeros(2)}
  grads = {"w": jnp.array([300.0, 400.0])}
  clipped = optax.clip_by_global_norm(1.0).update(grads, None)[0]
  np.testing.assert_allclose(clipped["w"], [0.6, 0.8], rtol=1e-6)
  updates, _ = tx.update(grads, tx.init(params), params)
  # Adam with b1 = b2 = 0 moves each coordinate by -lr * sign(clipped grad).
  np.testing.assert_allclose(updates["w"], [-1.0, -1.0], rtol=1e-4)


@pytest.mark.parametrize("kwargs, message", [
    ({"total_steps": 0}, "total_steps=0"),
    ({"total_steps": 10, "schedule": "exp"}, "schedule='exp'"),
    ({"total_steps": 10, "learning_rate": -1.0}, "learning_rate=-1.0"),
    ({"total_steps": 10, "clip_norm": 0.0}, "clip_norm=0.0"),
    ({"total_steps": 10, "param_average_decay": 1.0}, "param_average_decay=1.0"),
])
def test_bad_settings_name_the_value(kwargs, message):
  with pytest.raises(OptimizerConfigError, match=message):
    make_optimizer(**kwargs)


def test_parameter_average_follows_the_updated_parameters():
  tx, _ = make_optimizer(10, learning_rate=0.1, warmup_steps=0, schedule="constant",
                         clip_norm=None, param_average_decay=0.75)
  params = {"w": jnp.array([1.0, -2.0])}
  state = tx.init(params)
  np.testing.assert_array_equal(optimizer_lib.averaged_params(state)["w"], params["w"])
  expected = params["w"]
  for grad in ([1.0, 1.0], [-3.0, 0.5]):
    updates, state = tx.update({"w": jnp.array(grad)}, state, params)
    params = optax.apply_updates(params, updates)
    expected = 0.75 * expected + 0.25 * params["w"]
    np.testing.assert_allclose(optimizer_lib.averaged_params(state)["w"], expected, rtol=1e-6)
  plain, _ = make_optimizer(10)
  assert optimizer_lib.averaged_params(plain.init(params)) is None
  average = optimizer_lib.param_average(0.5)
  with pytest.raises(OptimizerConfigError, match="needs the parameters"):
    average.update({"w": jnp.ones(2)}, average.init(params))
