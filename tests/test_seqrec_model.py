"""The SASRec-style transformer: shapes, causality, padding, clusters, sharding, FLOPs."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore import partitioning
from explore.seqrec import model as model_lib
from explore.seqrec.model import SeqRecConfig, build_model

TINY = SeqRecConfig(num_items=20, max_len=6, embed_dim=8, num_blocks=2, num_heads=2,
                    dropout=0.3, item_rows_multiple=8)
HISTORIES = jnp.array([[0, 0, 3, 7, 1, 9], [4, 5, 6, 7, 8, 20]])  # [B=2, L=6]


def test_output_shapes():
  model = build_model(TINY)
  assert model(HISTORIES).shape == (2, 6, 8)
  assert model.user_vectors(HISTORIES).shape == (2, 8)
  assert model.items.decode(model.user_vectors(HISTORIES)).shape == (2, TINY.vocab_size)
  assert TINY.vocab_size == 24  # 21 rows (padding + 20 items) rounded up to a multiple of 8
  assert model.item_vectors().shape == (20, 8)


def test_item_vectors_are_the_table_rows_of_items_in_dense_order():
  model = build_model(TINY)
  np.testing.assert_array_equal(model.item_vectors()[4], model.items.table[...][5])


def test_changing_a_future_item_leaves_earlier_positions_unchanged():
  model = build_model(TINY)
  changed = HISTORIES.at[:, 4].set(12)
  before, after = model(HISTORIES), model(changed)
  np.testing.assert_allclose(before[:, :4], after[:, :4], rtol=1e-6, atol=1e-6)
  assert not np.allclose(before[:, 4:], after[:, 4:])


def test_left_padding_does_not_change_the_user_vector():
  model = build_model(TINY)
  short = jnp.array([[3, 7, 1, 9]])
  padded = jnp.array([[0, 0, 3, 7, 1, 9]])
  np.testing.assert_allclose(model(short)[:, -4:], model(padded)[:, -4:], rtol=1e-5, atol=1e-5)


def test_dropout_only_when_training():
  model = build_model(TINY)
  np.testing.assert_array_equal(model(HISTORIES), model(HISTORIES))
  assert not np.allclose(model(HISTORIES, train=True), model(HISTORIES, train=True))


def test_cluster_embeddings_are_added_and_required():
  config = SeqRecConfig(num_items=20, max_len=6, embed_dim=8, num_blocks=1, num_clusters=3,
                        dropout=0.0)
  model = build_model(config)
  clusters_a = jnp.where(HISTORIES > 0, 1, 0)
  clusters_b = jnp.where(HISTORIES > 0, 2, 0)
  assert not np.allclose(model(HISTORIES, clusters_a), model(HISTORIES, clusters_b))
  with pytest.raises(model_lib.SeqRecConfigError, match="no cluster ids"):
    model(HISTORIES)


def test_input_longer_than_max_len_is_an_error():
  model = build_model(TINY)
  with pytest.raises(model_lib.SeqRecConfigError, match="max_len=6"):
    model(jnp.ones((1, 7), jnp.int32))


@pytest.mark.parametrize("field, value, message", [
    ("num_items", 0, "num_items=0"),
    ("num_heads", 3, "not divisible by num_heads=3"),
    ("dropout", 1.0, "dropout=1.0"),
])
def test_bad_config_values_are_named(field, value, message):
  kwargs = dict(num_items=20, embed_dim=8, num_heads=2)
  kwargs[field] = value
  with pytest.raises(model_lib.SeqRecConfigError, match=message):
    SeqRecConfig(**kwargs)


def test_item_table_rows_shard_over_the_model_axis():
  mesh = partitioning.create_mesh(partitioning.MeshConfig(data=4, model=2),
                                  jax.devices()[:8])
  model = partitioning.create_sharded_module(lambda: build_model(TINY), mesh)
  table = model.items.table[...]
  assert table.sharding.spec[0] == "model"
  assert {s.data.shape for s in table.addressable_shards} == {(12, 8)}
  np.testing.assert_allclose(model(HISTORIES), build_model(TINY)(HISTORIES), rtol=1e-5,
                             atol=1e-5)


def test_forward_flops_count_matmuls():
  config = SeqRecConfig(num_items=20, max_len=4, embed_dim=8, num_blocks=1, num_heads=2,
                        mlp_dim=16)
  # Per token: 2 * (4 projections 8x8 + MLP 8x16 twice) + attention 2 * 2 * 4 * 8,
  # plus the output layer 2 * 8 * scored; times 4 tokens.
  per_token = 2 * (4 * 64 + 2 * 128) + 2 * 2 * 4 * 8 + 2 * 8 * 100
  assert model_lib.forward_flops_per_example(config, 100) == 4 * per_token
  # Scoring only the last position: the output layer once instead of 4 times.
  assert model_lib.forward_flops_per_example(config, 100, scored_positions=1) == (
      4 * per_token - 3 * 2 * 8 * 100)


def test_params_carry_logical_axes():
  model = build_model(TINY)
  axes = {jax.tree_util.keystr(p, simple=True, separator="/"): v.get_metadata()["out_sharding"]
          for p, v in jax.tree_util.tree_flatten_with_path(
              nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
  assert axes["items/table"] == ("items", "embed")
  assert axes["blocks/0/attention/q"] == ("embed", "heads", "kv")
  assert axes["blocks/1/mlp/up"] == ("embed", "mlp")
