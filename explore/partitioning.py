"""Device meshes and logical-axis partitioning (T5X / MaxText conventions).

Models name the dimensions of their parameters and activations with *logical*
axes (`batch`, `embed`, `mlp`, `items`, ...), declared where a parameter is
declared (`nnx.with_partitioning(init, ('embed', 'mlp'))`). One table of rules,
`DEFAULT_LOGICAL_AXIS_RULES`, maps logical axes to the *mesh* axes
`('data', 'fsdp', 'model')`; gin can override it (`logical_axis_rules`). The
helpers here turn those names into `NamedSharding`s for `jax.jit` in/out
shardings, device placement and activation constraints.

Mesh sizes come from `MeshConfig` (ICI sizes within a slice, DCN sizes across
slices), bound in `configs/tpu/*.gin`.

Models are built with Flax's eager sharding switched off
(`nnx.use_eager_sharding(False)`, as `create_sharded_module` does) so that the
rules here are the only place logical names are resolved.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence, TypeVar

from flax import nnx
import gin
import jax
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

MESH_AXES = ("data", "fsdp", "model")

MeshAxes = str | tuple[str, ...] | None
LogicalAxisRules = tuple[tuple[str, MeshAxes], ...]
ModuleT = TypeVar("ModuleT", bound=nnx.Module)

# `batch` is split over both `data` and `fsdp` (as MaxText does): FSDP is data
# parallelism whose parameters are also sharded, so each fsdp shard sees its own
# examples. With fsdp=1 this is plain data parallelism.
DEFAULT_LOGICAL_AXIS_RULES: LogicalAxisRules = (
    ("batch", ("data", "fsdp")),
    ("vocab", "model"),
    ("mlp", "model"),
    ("heads", "model"),
    ("kv", None),
    ("kv_heads", "model"),  # GQA key/value heads: sharded where they divide (see below)
    ("embed", "fsdp"),
    ("length", None),
    ("layers", None),
    # Recommender tables: item rows over `model` so a large catalog is split
    # across chips; user rows follow the data split; clusters are few.
    ("items", "model"),
    ("users", "data"),
    ("clusters", None),
)


# Logical axes sharded only where their size divides the mesh axes and
# replicated otherwise, instead of being an error: GQA models have few key/value
# heads (often fewer than the model-parallel size), and replicating them is the
# standard fallback (each model shard then computes every key/value head).
SHARD_WHERE_DIVISIBLE = frozenset({"kv_heads"})


class MeshError(ValueError):
  """A requested mesh does not fit the available devices or slices."""


class LogicalAxisError(ValueError):
  """A logical axis name or rule cannot be mapped onto the mesh."""


# ----------------------------------------------------------------------------
# Mesh
# ----------------------------------------------------------------------------


@gin.configurable
@dataclasses.dataclass(frozen=True)
class MeshConfig:
  """Mesh axis sizes; exactly one ICI size (and one DCN size) may be -1 (fill).

  `data`, `fsdp`, `model` split the devices of one slice (fast ICI links);
  `dcn_data`, `dcn_fsdp`, `dcn_model` split the slices (slower DCN links) and
  multiply with the ICI sizes: the mesh axis `data` has `data * dcn_data`
  devices. Their product is the number of slices.
  """

  data: int = -1
  fsdp: int = 1
  model: int = 1
  dcn_data: int = 1
  dcn_fsdp: int = 1
  dcn_model: int = 1
  allow_split_physical_axes: bool = False

  def resolve(self, num_devices: int, num_slices: int | None = None
             ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Returns the (ici, dcn) shapes with -1 filled in, or raises MeshError.

    `num_slices` is the number of slices the devices span (None where devices
    carry no slice information, e.g. CPU or GPU: the DCN sizes then group
    contiguous devices into emulated slices and -1 means one slice).
    """
    dcn_names = ("dcn_data", "dcn_fsdp", "dcn_model")
    dcn_sizes = (self.dcn_data, self.dcn_fsdp, self.dcn_model)
    dcn = _resolve_sizes("dcn mesh", dcn_names, dcn_sizes, num_slices, "slices")
    slices = math.prod(dcn)
    if num_devices % slices:
      raise MeshError(f"dcn mesh {_shape_str(dcn_names, dcn_sizes)} needs {slices} slices but"
                      f" {num_devices} devices cannot be split into {slices} equal slices")
    ici = _resolve_sizes("mesh", MESH_AXES, (self.data, self.fsdp, self.model),
                         num_devices // slices, "devices" if slices == 1 else "devices per slice")
    return ici, dcn


def _shape_str(names: Sequence[str], sizes: Sequence[int]) -> str:
  return " x ".join(f"{n}={s}" for n, s in zip(names, sizes))


def _resolve_sizes(what: str, names: Sequence[str], sizes: Sequence[int],
                   available: int | None, unit: str) -> tuple[int, int, int]:
  """Fills the one -1 in `sizes` so their product is `available`."""
  shape = f"{what} {_shape_str(names, sizes)}"
  for n, s in zip(names, sizes):
    if not isinstance(s, (int, np.integer)) or isinstance(s, bool) or (s < 1 and s != -1):
      raise MeshError(f"{shape}: {n}={s!r} is invalid; sizes must be positive integers"
                      " or -1 (fill the rest)")
  if list(sizes).count(-1) > 1:
    raise MeshError(f"{shape}: at most one size may be -1 (fill the rest)")
  known = math.prod(s for s in sizes if s != -1)
  if available is None:  # No slice information: DCN sizes are taken as given.
    return tuple(1 if s == -1 else int(s) for s in sizes)
  if -1 in sizes:
    if available % known:
      raise MeshError(f"{shape} cannot fill {available} {unit}: {available} is not"
                      f" divisible by {known}")
    return tuple(available // known if s == -1 else int(s) for s in sizes)
  if known != available:
    raise MeshError(f"{shape} needs {known} {unit} but {available} are available")
  return tuple(int(s) for s in sizes)


def _num_slices(devices: Sequence[Any]) -> int | None:
  """Distinct `slice_index` values of the devices, None where they have none."""
  if not all(hasattr(d, "slice_index") for d in devices):
    return None
  return len({d.slice_index for d in devices})


def create_device_array(config: MeshConfig, devices: Sequence[Any]) -> np.ndarray:
  """Lays `devices` out as a [data, fsdp, model] array for `config`.

  Uses `mesh_utils` for a topology-aware layout (ICI axes over physical links,
  DCN axes over slices); CPU devices that mesh_utils cannot place, and slices
  that exist only in emulation, are laid out by a plain reshape in device order.
  """
  devices = list(devices)
  num_slices = _num_slices(devices)
  ici, dcn = config.resolve(len(devices), num_slices)
  on_cpu = devices[0].platform == "cpu"
  try:
    if math.prod(dcn) == 1:
      return mesh_utils.create_device_mesh(
          ici, devices, allow_split_physical_axes=config.allow_split_physical_axes)
    if num_slices is not None:
      return mesh_utils.create_hybrid_device_mesh(
          ici, dcn, devices, allow_split_physical_axes=config.allow_split_physical_axes)
    if jax.process_count() > 1 and math.prod(dcn) == jax.process_count():
      return mesh_utils.create_hybrid_device_mesh(
          ici, dcn, devices, process_is_granule=True,
          allow_split_physical_axes=config.allow_split_physical_axes)
  except (ValueError, NotImplementedError, AssertionError) as e:
    if not on_cpu:
      raise MeshError(f"mesh {_shape_str(MESH_AXES, ici)} with dcn"
                      f" {_shape_str(MESH_AXES, dcn)} cannot be laid out over"
                      f" {len(devices)} {devices[0].platform} devices: {e}") from e
  # Emulated slices: contiguous groups of devices, each reshaped to the ICI
  # shape, then tiled with the DCN axis outermost on each mesh axis.
  grid = np.asarray(devices, dtype=object).reshape(*dcn, *ici)  # [dd, df, dm, d, f, m]
  grid = grid.transpose(0, 3, 1, 4, 2, 5)  # [dd, d, df, f, dm, m]
  return grid.reshape(tuple(i * s for i, s in zip(ici, dcn)))  # [data, fsdp, model]


def create_mesh(config: MeshConfig | None = None,
                devices: Sequence[Any] | None = None) -> Mesh:
  """Builds the ('data', 'fsdp', 'model') mesh for `config` (gin's by default)."""
  config = MeshConfig() if config is None else config
  devices = jax.devices() if devices is None else devices
  if not len(devices):
    raise MeshError("create_mesh: no devices given")
  array = create_device_array(config, devices)
  return Mesh(array, MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES))


def describe_mesh(mesh: Mesh) -> str:
  """One line for logs, e.g. 'mesh data=2 fsdp=1 model=4 over 8 cpu devices'."""
  devices = list(mesh.devices.flat)
  axes = " ".join(f"{n}={s}" for n, s in mesh.shape.items())
  line = f"mesh {axes} over {len(devices)} {devices[0].platform} devices"
  slices = _num_slices(devices)
  if slices and slices > 1:
    line += f" in {slices} slices"
  processes = len({d.process_index for d in devices})
  if processes > 1:
    line += f" on {processes} processes"
  return line


# ----------------------------------------------------------------------------
# Logical axis rules
# ----------------------------------------------------------------------------


def _normalize_rules(rules: Sequence[Sequence[Any]], argument: str) -> LogicalAxisRules:
  """Validates (name, mesh axes) pairs; lists (as gin writes them) become tuples."""
  out = []
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise LogicalAxisError(f"{argument}: rule {rule!r} is not a (logical name, mesh axes)"
                             " pair")
    name, target = rule
    if isinstance(target, (tuple, list)):
      if not all(isinstance(a, str) for a in target):
        raise LogicalAxisError(f"{argument}: rule {rule!r} maps to non-string mesh axes")
      target = tuple(target) or None
    elif target is not None and not isinstance(target, str):
      raise LogicalAxisError(f"{argument}: rule {rule!r} maps to {target!r}; expected a mesh"
                             " axis name, a tuple of them, or None")
    out.append((name, target))
  return tuple(out)


@gin.configurable
def logical_axis_rules(
    rules: Sequence[Sequence[Any]] = DEFAULT_LOGICAL_AXIS_RULES,
    additional_rules: Sequence[Sequence[Any]] = (),
) -> LogicalAxisRules:
  """The logical-to-mesh axis rules; `additional_rules` replace rules of the same name.

  A name may have several rules (kept in order): a dimension takes the first
  whose mesh axes are still free in that array (see `logical_to_mesh_axes`).
  Gin: `logical_axis_rules.additional_rules = [('embed', None)]`.
  """
  base = _normalize_rules(rules, "logical_axis_rules.rules")
  extra = _normalize_rules(additional_rules, "logical_axis_rules.additional_rules")
  overridden = {name for name, _ in extra}
  return extra + tuple(r for r in base if r[0] not in overridden)


def _as_axes(target: MeshAxes) -> tuple[str, ...]:
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


@functools.lru_cache(maxsize=1024)
def _logical_to_spec(logical_axes: tuple[Any, ...], rules: LogicalAxisRules) -> PartitionSpec:
  candidates: dict[str, list[MeshAxes]] = {}
  for name, target in rules:
    candidates.setdefault(name, []).append(target)
  used: set[str] = set()
  spec: list[Any] = []
  for name in logical_axes:
    if name is None or name is PartitionSpec.UNCONSTRAINED:
      spec.append(name)
      continue
    if not isinstance(name, str) or name not in candidates:
      raise LogicalAxisError(
          f"unknown logical axis name {name!r} in {logical_axes}; known names:"
          f" {sorted(candidates)} (add one with logical_axis_rules.additional_rules)")
    target = next((t for t in candidates[name] if not used & set(_as_axes(t))), None)
    used.update(_as_axes(target))
    spec.append(target)
  return PartitionSpec(*spec)


def logical_to_mesh_axes(logical_axes: Sequence[str | None] | None,
                         rules: Sequence[Sequence[Any]] | None = None) -> PartitionSpec:
  """Maps logical axis names (one per dimension) to a mesh PartitionSpec.

  A mesh axis is used at most once per array: a later dimension whose rule
  names an axis already taken falls back to its next rule, else is replicated
  (for activations like [batch, length, embed], batch keeps `fsdp`).
  `rules` defaults to gin's `logical_axis_rules()`.
  """
  rules = logical_axis_rules() if rules is None else _normalize_rules(rules, "rules")
  if logical_axes is None:
    return PartitionSpec()
  return _logical_to_spec(tuple(logical_axes), rules)


def _check_spec_axes(mesh: Mesh, spec: PartitionSpec, logical_axes: Any) -> None:
  for entry in spec:
    for axis in _as_axes(entry) if entry is not PartitionSpec.UNCONSTRAINED else ():
      if axis not in mesh.axis_names:
        raise LogicalAxisError(f"logical axes {tuple(logical_axes)} map to mesh axis {axis!r},"
                               f" which the mesh lacks (it has {mesh.axis_names})")


def logical_sharding(mesh: Mesh, logical_axes: Sequence[str | None] | None,
                     rules: Sequence[Sequence[Any]] | None = None) -> NamedSharding:
  """The NamedSharding of an array whose dimensions carry `logical_axes`."""
  spec = logical_to_mesh_axes(logical_axes, rules)
  _check_spec_axes(mesh, spec, logical_axes or ())
  return NamedSharding(mesh, spec)


def batch_sharding(mesh: Mesh, rules: Sequence[Sequence[Any]] | None = None,
                   ndim: int = 2) -> NamedSharding:
  """Sharding of an input array whose leading dimension is the batch."""
  if ndim < 1:
    raise LogicalAxisError(f"batch_sharding: ndim={ndim} must be >= 1 (leading dim is batch)")
  return logical_sharding(mesh, ("batch",) + (None,) * (ndim - 1), rules)


def _fit_to_shape(mesh: Mesh, sharding: NamedSharding, shape: tuple[int, ...],
                  logical_axes: Sequence[Any], replicate: Callable[[Any], bool],
                  where: str) -> NamedSharding:
  """`sharding` with each dimension its mesh axes do not divide replicated.

  `replicate(name)` says whether a dimension of that logical name may fall back
  to replication; any other uneven dimension is an error naming `where`.
  """
  spec = list(sharding.spec) + [None] * (len(shape) - len(sharding.spec))
  uneven = False
  for dim, (size, entry) in enumerate(zip(shape, spec)):
    if entry is PartitionSpec.UNCONSTRAINED:
      continue
    shards = math.prod(mesh.shape[a] for a in _as_axes(entry))
    if size % shards == 0:
      continue
    if not replicate(logical_axes[dim]):
      raise LogicalAxisError(
          f"{where}: dimension {dim} ({logical_axes[dim]}) of size {size} is not divisible by"
          f" mesh axes {entry} ({shards} shards); pad it or change the rule")
    spec[dim], uneven = None, True
  return NamedSharding(mesh, PartitionSpec(*spec)) if uneven else sharding


def with_logical_constraint(x: jax.Array, logical_axes: Sequence[str | None],
                            mesh: Mesh, rules: Sequence[Sequence[Any]] | None = None
                            ) -> jax.Array:
  """Constrains an activation's sharding inside jit by its logical axes.

  A dimension its mesh axes do not divide (e.g. 2 kv heads over model=4, or a
  batch of 1 while decoding) is left replicated rather than sharded unevenly.
  """
  if len(logical_axes) != x.ndim:
    raise LogicalAxisError(f"with_logical_constraint: logical axes {tuple(logical_axes)}"
                           f" do not match an array of shape {x.shape}")
  sharding = _fit_to_shape(mesh, logical_sharding(mesh, logical_axes, rules), x.shape,
                           logical_axes, lambda name: True, "with_logical_constraint")
  return jax.lax.with_sharding_constraint(x, sharding)


# ----------------------------------------------------------------------------
# NNX state
# ----------------------------------------------------------------------------


def variable_logical_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  """Logical axes stored by `nnx.with_partitioning` (None where none were given)."""
  metadata = variable.get_metadata()
  for key in ("out_sharding", "sharding_names", "sharding"):
    if metadata.get(key):
      return metadata[key]
  return None


def _leaf_sharding(mesh: Mesh, rules: LogicalAxisRules, path: str, shape: tuple[int, ...],
                   logical_axes: Any) -> NamedSharding:
  if isinstance(logical_axes, NamedSharding):
    return logical_axes
  if logical_axes is None:
    return NamedSharding(mesh, PartitionSpec())
  if len(logical_axes) != len(shape):
    raise LogicalAxisError(f"{path}: logical axes {tuple(logical_axes)} do not match its"
                           f" shape {shape}")
  return _fit_to_shape(mesh, logical_sharding(mesh, logical_axes, rules), shape, logical_axes,
                       lambda name: name in SHARD_WHERE_DIVISIBLE, path)


def state_shardings(mesh: Mesh, state: Any, rules: Sequence[Sequence[Any]] | None = None
                    ) -> Any:
  """A pytree matching `state` (NNX State or module) with a NamedSharding per array.

  Variables keep their structure (the sharding replaces the value) so the result
  serves as `jax.jit` in/out shardings or `jax.device_put` target for the state.
  Arrays without logical axes are replicated.
  """
  if isinstance(state, nnx.Module):
    state = nnx.state(state)
  rules = logical_axis_rules() if rules is None else _normalize_rules(rules, "rules")

  def leaf(path, x):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    if isinstance(x, nnx.Variable):
      shape = tuple(getattr(x.get_value(), "shape", ()))
      return x.replace(_leaf_sharding(mesh, rules, name, shape, variable_logical_axes(x)))
    if hasattr(x, "shape"):
      return NamedSharding(mesh, PartitionSpec())
    return None

  return jax.tree_util.tree_map_with_path(
      leaf, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_module(module: ModuleT, mesh: Mesh,
                 rules: Sequence[Sequence[Any]] | None = None) -> ModuleT:
  """Places `module`'s state on `mesh` as its logical axes say; returns the module."""
  state = nnx.state(module)
  nnx.update(module, jax.device_put(state, state_shardings(mesh, state, rules)))
  return module


def create_sharded_module(module_fn: Callable[[], ModuleT], mesh: Mesh,
                          rules: Sequence[Sequence[Any]] | None = None) -> ModuleT:
  """Builds `module_fn()` under jit with sharded outputs, so no device holds it whole.

  `module_fn` constructs the module (including its `nnx.Rngs`); it is traced
  twice, once abstractly for shapes and logical axes and once to initialise.
  """
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(module_fn)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(mesh, abstract_state, rules)

  @functools.partial(jax.jit, out_shardings=shardings)
  def init_state():
    with nnx.use_eager_sharding(False):
      return nnx.state(module_fn())

  return nnx.merge(graphdef, init_state())
