"""TrainCheckpoints: weights-only checkpoints (imports) and where a checkpoint path points."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore import partitioning
from explore.train import checkpoints as checkpoints_lib
from explore.train import train_step
import trainer_fixtures as fixtures


@pytest.fixture(scope="module")
def state():
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=1), jax.devices()[:1])
  model = partitioning.create_sharded_module(fixtures.make_model, mesh)
  _, params, extras = train_step.split_model(model)
  return train_step.TrainState(params=params, extras=extras, opt_state={},
                               step=jnp.zeros((), jnp.int32))


def test_a_weights_only_checkpoint_restores_params_and_refuses_a_full_restore(state, tmp_path):
  saver = checkpoints_lib.TrainCheckpoints(tmp_path, keep=None, async_save=False)
  saver.save(state, data_state=None)
  saver.close()
  reader = checkpoints_lib.TrainCheckpoints(tmp_path / "other")
  restored, step, data = reader.restore(state, path=tmp_path, weights_only=True)
  assert step == 0 and data is None
  np.testing.assert_array_equal(restored["params"]["w_in"][...], state.params["w_in"][...])
  with pytest.raises(checkpoints_lib.CheckpointError, match="restore_weights_only = True"):
    reader.restore(state, path=tmp_path / "checkpoint_0")


def test_checkpoint_paths_resolve_to_a_step_or_fail_clearly(tmp_path):
  (tmp_path / "checkpoint_3").mkdir()
  (tmp_path / "checkpoint_12").mkdir()
  (tmp_path / "checkpoint_20.orbax-checkpoint-tmp-1").mkdir()  # an unfinished save
  assert checkpoints_lib.resolve_checkpoint(tmp_path) == (tmp_path, 12)
  assert checkpoints_lib.resolve_checkpoint(tmp_path / "checkpoint_3") == (tmp_path, 3)
  with pytest.raises(checkpoints_lib.CheckpointError, match="does not exist"):
    checkpoints_lib.resolve_checkpoint(tmp_path / "missing")
  (tmp_path / "empty").mkdir()
  with pytest.raises(checkpoints_lib.CheckpointError, match="neither a checkpoint_<step>"):
    checkpoints_lib.resolve_checkpoint(tmp_path / "empty")


def test_docs_plain_orbax_snippet_opens_a_checkpoint(tmp_path, capsys):
  """Runs the python block of docs/training.md's plain-orbax section on a decoder checkpoint."""
  import pathlib  # pylint: disable=g-import-not-at-top
  import re  # pylint: disable=g-import-not-at-top
  from explore.llm import checkpoint_import  # pylint: disable=g-import-not-at-top
  from explore.llm.decoder import build_decoder  # pylint: disable=g-import-not-at-top
  from explore.llm.decoder_config import DecoderConfig  # pylint: disable=g-import-not-at-top

  doc = (pathlib.Path(__file__).parents[1] / "docs" / "training.md").read_text()
  section = doc[doc.index("### Opening a checkpoint with plain orbax"):]
  code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
  assert 'model_dir = "/tmp/explore/llm/model"' in code
  config = DecoderConfig(vocab_size=32)
  model = build_decoder(config, seed=0)
  checkpoint_import.write_initial_checkpoint(model, tmp_path / "model")
  scope = {}
  exec(code.replace("/tmp/explore/llm/model", str(tmp_path / "model")), scope)  # pylint: disable=exec-used
  assert scope["step"] == 0 and scope["restored"].train == {"step": 0, "format_version": 1}
  np.testing.assert_array_equal(np.asarray(scope["table"]),
                                np.asarray(model.embedder.table.get_value()))
  assert "0 {'step': 0, 'format_version': 1}" in capsys.readouterr().out
