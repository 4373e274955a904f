"""Tests for explore.partitioning on 8 emulated CPU devices."""

from __future__ import annotations

import functools
import pathlib
import types

from flax import nnx
import gin
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from explore import partitioning
from explore.partitioning import (DEFAULT_LOGICAL_AXIS_RULES, LogicalAxisError, MeshConfig,
                                  MeshError)

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"
MESH_SHAPES = [(1, 8), (2, 4), (8, 1)]  # (data, model)
D_EMBED, D_MLP, BATCH = 8, 16, 16

_kernel_init = nnx.initializers.lecun_normal()


class TinyMLP(nnx.Module):
  """Two dense layers with T5X logical axes on their kernels."""

  def __init__(self, rngs: nnx.Rngs, up_axes=("embed", "mlp")):
    self.up = nnx.Linear(
        D_EMBED, D_MLP, rngs=rngs,
        kernel_init=nnx.with_partitioning(_kernel_init, up_axes),
        bias_init=nnx.with_partitioning(nnx.initializers.normal(1.0), ("mlp",)))
    self.down = nnx.Linear(
        D_MLP, D_EMBED, rngs=rngs, kernel_init=nnx.with_partitioning(_kernel_init, ("mlp", "embed")))

  def __call__(self, x):  # [batch, embed]
    return self.down(jax.nn.relu(self.up(x)))  # [batch, embed]


@pytest.fixture
def clean_gin():
  gin.clear_config()
  yield
  gin.clear_config()


def _mesh(data: int, model: int):
  return partitioning.create_mesh(MeshConfig(data=data, model=model))


def _model(mesh):
  return partitioning.create_sharded_module(lambda: TinyMLP(nnx.Rngs(0)), mesh,
                                            DEFAULT_LOGICAL_AXIS_RULES)


@pytest.mark.parametrize("data,model", MESH_SHAPES)
def test_create_mesh_has_requested_shape_over_all_devices(data, model):
  mesh = _mesh(data, model)
  assert mesh.axis_names == ("data", "fsdp", "model")
  assert dict(mesh.shape) == {"data": data, "fsdp": 1, "model": model}
  assert sorted(d.id for d in mesh.devices.flat) == list(range(8))


@pytest.mark.parametrize("data,model", MESH_SHAPES)
def test_kernel_is_split_over_model_axis_as_rules_say(data, model):
  mesh = _mesh(data, model)
  kernel = _model(mesh).up.kernel.get_value()  # [embed, mlp]
  assert kernel.sharding.spec == P("fsdp", "model")
  chunk = D_MLP // model
  starts = set()
  for shard in kernel.addressable_shards:
    assert shard.data.shape == (D_EMBED, chunk)
    # The shard's columns are those of the device's coordinate on the model axis.
    coord = np.argwhere(mesh.devices == shard.device)[0]  # [data, fsdp, model]
    start = shard.index[1].indices(D_MLP)[0]
    assert start == coord[2] * chunk
    starts.add(start)
  assert len(starts) == model


def test_parameters_without_axes_are_replicated():
  mesh = _mesh(2, 4)
  bias = _model(mesh).down.bias.get_value()
  assert bias.sharding.spec == P()
  assert all(s.data.shape == (D_EMBED,) for s in bias.addressable_shards)


def test_shard_module_places_an_existing_module():
  mesh = _mesh(2, 4)
  with nnx.use_eager_sharding(False):
    module = TinyMLP(nnx.Rngs(0))
  expected = np.asarray(module.down.kernel.get_value())
  partitioning.shard_module(module, mesh, DEFAULT_LOGICAL_AXIS_RULES)
  kernel = module.down.kernel.get_value()  # [mlp, embed]
  assert kernel.sharding.spec == P("model", "fsdp")
  assert len({s.index[0].indices(D_MLP) for s in kernel.addressable_shards}) == 4
  np.testing.assert_array_equal(np.asarray(kernel), expected)


@pytest.mark.parametrize("data,model", MESH_SHAPES)
def test_sharded_forward_equals_unsharded(data, model):
  mesh = _mesh(data, model)
  rules = DEFAULT_LOGICAL_AXIS_RULES
  module = _model(mesh)
  graphdef, state = nnx.split(module)
  x = np.random.default_rng(0).normal(size=(BATCH, D_EMBED)).astype(np.float32)

  @functools.partial(
      jax.jit,
      in_shardings=(partitioning.state_shardings(mesh, state, rules),
                    partitioning.batch_sharding(mesh, rules, ndim=2)),
      out_shardings=partitioning.logical_sharding(mesh, ("batch", "embed"), rules))
  def forward(state, x):
    m = nnx.merge(graphdef, state)
    h = partitioning.with_logical_constraint(jax.nn.relu(m.up(x)), ("batch", "mlp"), mesh, rules)
    return m.down(h)

  out = forward(state, x)
  assert out.sharding.spec == P(("data", "fsdp"), None)
  w1, b1 = np.asarray(module.up.kernel.get_value()), np.asarray(module.up.bias.get_value())
  w2, b2 = np.asarray(module.down.kernel.get_value()), np.asarray(module.down.bias.get_value())
  expected = np.maximum(x @ w1 + b1, 0.0) @ w2 + b2
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("config,shape", [
    (MeshConfig(), (8, 1, 1)),
    (MeshConfig(data=2, model=-1), (2, 1, 4)),
    (MeshConfig(data=2, fsdp=-1, model=2), (2, 2, 2)),
])
def test_minus_one_fills_the_remaining_devices(config, shape):
  mesh = partitioning.create_mesh(config)
  assert tuple(mesh.shape.values()) == shape


def test_mesh_not_dividing_device_count_names_shape_and_count():
  with pytest.raises(MeshError, match="mesh data=3 x fsdp=1 x model=1 needs 3 devices but 8"
                     " are available"):
    partitioning.create_mesh(MeshConfig(data=3))


def test_fill_that_does_not_divide_is_rejected():
  with pytest.raises(MeshError, match="cannot fill 8 devices: 8 is not divisible by 3"):
    partitioning.create_mesh(MeshConfig(data=-1, model=3))


def test_two_fills_are_rejected():
  with pytest.raises(MeshError, match="at most one size may be -1"):
    partitioning.create_mesh(MeshConfig(data=-1, model=-1))


@pytest.mark.parametrize("config", [MeshConfig(fsdp=0), MeshConfig(model=-2)])
def test_zero_and_negative_sizes_are_rejected(config):
  with pytest.raises(MeshError, match="sizes must be positive integers or -1"):
    partitioning.create_mesh(config)


def test_unknown_logical_axis_is_named():
  with pytest.raises(LogicalAxisError, match="unknown logical axis name 'hidden'"):
    partitioning.logical_to_mesh_axes(("batch", "hidden"), DEFAULT_LOGICAL_AXIS_RULES)


def test_unknown_logical_axis_on_a_parameter_is_rejected():
  mesh = _mesh(2, 4)
  with pytest.raises(LogicalAxisError, match="'hidden'"):
    partitioning.create_sharded_module(lambda: TinyMLP(nnx.Rngs(0), up_axes=("embed", "hidden")),
                                       mesh, DEFAULT_LOGICAL_AXIS_RULES)


def test_mesh_axis_is_used_once_per_array():
  spec = partitioning.logical_to_mesh_axes(("batch", "length", "embed"), DEFAULT_LOGICAL_AXIS_RULES)
  assert spec == P(("data", "fsdp"), None, None)
  assert partitioning.logical_to_mesh_axes(("embed", "mlp"), DEFAULT_LOGICAL_AXIS_RULES) == P(
      "fsdp", "model")


def test_recommender_axes_follow_the_rules():
  spec = partitioning.logical_to_mesh_axes(("items", "embed"), DEFAULT_LOGICAL_AXIS_RULES)
  assert spec == P("model", "fsdp")
  assert partitioning.logical_to_mesh_axes(("users", "clusters"),
                                           DEFAULT_LOGICAL_AXIS_RULES) == P("data", None)


def test_dimension_not_divisible_by_its_shards_names_the_parameter():
  mesh = _mesh(2, 4)

  class Odd(nnx.Module):
    def __init__(self):
      self.table = nnx.Param(jnp.zeros((6, 4)), out_sharding=("items", "embed"))

  with pytest.raises(LogicalAxisError, match="table: dimension 0 \\(items\\) of size 6"):
    partitioning.create_sharded_module(Odd, mesh, DEFAULT_LOGICAL_AXIS_RULES)


def test_gin_additional_rules_override_defaults(clean_gin):
  gin.parse_config("logical_axis_rules.additional_rules = [('embed', None), ('tokens', 'data')]")
  rules = partitioning.logical_axis_rules()
  assert partitioning.logical_to_mesh_axes(("embed", "mlp"), rules) == P(None, "model")
  assert partitioning.logical_to_mesh_axes(("tokens",)) == P("data")


def test_gin_binds_mesh_config(clean_gin):
  gin.parse_config("MeshConfig.data = 2\nMeshConfig.model = 4")
  assert partitioning.describe_mesh(partitioning.create_mesh()) == (
      "mesh data=2 fsdp=1 model=4 over 8 cpu devices")


@pytest.mark.parametrize("name,chips,ici,dcn", [
    ("v4-8", 4, (4, 1, 1), (1, 1, 1)),
    ("v5e-16", 16, (4, 4, 1), (1, 1, 1)),
    ("v5p-128", 64, (8, 8, 1), (1, 1, 1)),
])
def test_tpu_topology_files_resolve_to_their_chip_count(clean_gin, name, chips, ici, dcn):
  gin.parse_config_file(str(CONFIGS / "tpu" / f"{name}.gin"))
  assert MeshConfig().resolve(chips, num_slices=1) == (ici, dcn)


def test_dcn_arithmetic_multiplies_slices_into_mesh_axes():
  config = MeshConfig(data=-1, fsdp=8, dcn_data=2)
  assert config.resolve(128, num_slices=2) == ((8, 8, 1), (2, 1, 1))
  with pytest.raises(MeshError, match="needs 2 slices but 3 are available"):
    config.resolve(192, num_slices=3)


def test_emulated_slices_are_contiguous_device_groups():
  mesh = partitioning.create_mesh(MeshConfig(data=-1, model=2, dcn_data=2))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  assert sorted(d.id for d in mesh.devices[:2].flat) == [0, 1, 2, 3]  # slice 0 first on data


def test_emulated_dcn_model_puts_each_slice_in_one_model_half():
  mesh = partitioning.create_mesh(MeshConfig(data=-1, dcn_model=2))
  assert dict(mesh.shape) == {"data": 4, "fsdp": 1, "model": 2}
  assert sorted(d.id for d in mesh.devices[:, :, 0].flat) == [0, 1, 2, 3]
  assert sorted(d.id for d in mesh.devices[:, :, 1].flat) == [4, 5, 6, 7]


def _fake_devices(n, slices):
  return [types.SimpleNamespace(id=i, slice_index=i % slices, process_index=0,
                                platform="cpu", device_kind="cpu") for i in range(n)]


def test_devices_with_slice_index_are_grouped_by_slice():
  array = partitioning.create_device_array(MeshConfig(data=-1, model=2, dcn_data=2),
                                           _fake_devices(8, slices=2))
  assert array.shape == (4, 1, 2)
  assert {d.slice_index for d in array[:2].flat} == {0}
  assert {d.slice_index for d in array[2:].flat} == {1}


def test_dcn_not_matching_slice_count_is_rejected():
  with pytest.raises(MeshError, match="dcn mesh .* needs 1 slices but 2 are available"):
    partitioning.create_device_array(MeshConfig(), _fake_devices(8, slices=2))


def test_optimizer_moments_are_sharded_like_their_parameters():
  mesh = _mesh(2, 4)
  optimizer = partitioning.create_sharded_module(
      lambda: nnx.Optimizer(TinyMLP(nnx.Rngs(0)), optax.adam(1e-3), wrt=nnx.Param), mesh,
      DEFAULT_LOGICAL_AXIS_RULES)
  moments = optimizer.opt_state[0]
  assert moments.mu["up"]["kernel"].get_value().sharding.spec == P("fsdp", "model")
  assert moments.nu["down"]["kernel"].get_value().sharding.spec == P("model", "fsdp")


def test_kv_heads_shard_where_they_divide_and_replicate_otherwise():
  mesh = _mesh(2, 4)

  class Attention(nnx.Module):
    def __init__(self, kv_heads: int):
      self.key = nnx.Param(jnp.zeros((8, kv_heads, 4)), out_sharding=("embed", "kv_heads", "kv"))

  even = partitioning.create_sharded_module(lambda: Attention(4), mesh, DEFAULT_LOGICAL_AXIS_RULES)
  assert even.key.get_value().sharding.spec == P("fsdp", "model", None)
  few = partitioning.create_sharded_module(lambda: Attention(2), mesh, DEFAULT_LOGICAL_AXIS_RULES)
  assert few.key.get_value().sharding.spec == P("fsdp", None, None)
