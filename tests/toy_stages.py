"""Two tiny stages for CLI and pipeline tests (imported from a gin file or a test)."""

import json

import gin

from explore import stages


@gin.configurable
def toy_alpha_values(size: int = 3, fail: bool = False):
  if fail:
    raise RuntimeError("toy_alpha failed on purpose")
  return list(range(size))


@stages.register_stage("toy_alpha", configurables=("toy_alpha_values",))
def toy_alpha(ctx):
  """Writes a list of integers."""
  values = toy_alpha_values()
  (ctx.path / "values.json").write_text(json.dumps(values))
  return {"count": len(values)}


@gin.configurable
def toy_beta_scale(scale: int = 10):
  return scale


@stages.register_stage("toy_beta", deps=("toy_alpha",), configurables=("toy_beta_scale",))
def toy_beta(ctx):
  """Reads toy_alpha's integers and writes them scaled."""
  values = json.loads((ctx.input_path("toy_alpha") / "values.json").read_text())
  scaled = [v * toy_beta_scale() for v in values]
  (ctx.path / "scaled.json").write_text(json.dumps(scaled))
  return {"sum": sum(scaled)}
