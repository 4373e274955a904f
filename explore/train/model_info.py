"""`model_dir/model-info.txt`: every model variable with shape, dtype, logical axes, sharding."""

from __future__ import annotations

import os
from typing import Any

from flax import nnx
import jax
import numpy as np

from explore import artifacts
from explore import partitioning


def describe_variables(state: nnx.State, shardings: nnx.State, title: str) -> list[str]:
  """One line per variable of `state`; `shardings` mirrors it with NamedShardings."""
  is_var = lambda x: isinstance(x, nnx.Variable)
  flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=is_var)[0]
  flat_shardings = jax.tree.leaves(shardings, is_leaf=is_var)
  lines, total = [], 0
  for (path, var), sharding in zip(flat, flat_shardings):
    name = jax.tree_util.keystr(path, simple=True, separator="/")
    value = var.get_value() if is_var(var) else var
    spec = sharding.get_value() if is_var(sharding) else sharding
    axes = partitioning.variable_logical_axes(var) if is_var(var) else None
    size = int(np.prod(value.shape))
    total += size
    lines.append(f"{title} {name}  {type(var).__name__}  dtype={value.dtype}"
                 f"  shape={tuple(value.shape)}  size={size}"
                 f"  logical_axes={tuple(axes) if axes else None}"
                 f"  partition_spec={getattr(spec, 'spec', None)}")
  lines.append(f"Total {title} size: {total}")
  return lines


def write_model_info(path: str | os.PathLike, mesh: jax.sharding.Mesh,
                     groups: list[tuple[str, nnx.State, Any]]) -> None:
  """Writes the info file for (title, state, shardings) groups, e.g. params and extras."""
  lines = [partitioning.describe_mesh(mesh), ""]
  for title, state, shardings in groups:
    lines.extend(describe_variables(state, shardings, title))
    lines.append("")
  artifacts.atomic_write_text(path, "\n".join(lines))
