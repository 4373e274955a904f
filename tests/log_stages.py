"""A tiny stage that logs through absl and makes orbax log (for the terminal-output tests)."""

from absl import logging
import numpy as np

from explore import stages


@stages.register_stage("toy_logs")
def toy_logs(ctx):
  """Logs one line of its own and saves a tiny orbax checkpoint (orbax logs INFO lines)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  logging.info("toy_logs: the project's own info line")
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(ctx.path / "ckpt", {"w": np.arange(4.0)})
  checkpointer.wait_until_finished()
  return {"saved": 4}
