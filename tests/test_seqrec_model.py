"""The SASRec-style transformer: shapes, causality, padding, clusters, sharding, FLOPs."""

import dataclasses
import math

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
  # Scoring only the last position: the output layer once instead of 4 times, and the (last)
  # block's queries, output projection, MLP and attention for 1 position instead of 4.
  per_query = 2 * (2 * 64 + 2 * 128) + 2 * 2 * 4 * 8
  assert model_lib.forward_flops_per_example(config, 100, scored_positions=1) == (
      4 * per_token - 3 * 2 * 8 * 100 - 3 * per_query)
  two_blocks = dataclasses.replace(config, num_blocks=2)
  assert model_lib.forward_flops_per_example(two_blocks, 100, scored_positions=1) == (
      model_lib.forward_flops_per_example(config, 100, scored_positions=1)
      + 4 * (per_token - 2 * 8 * 100))


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("outputs", [1, 2, 5])
def test_outputs_computes_the_newest_positions_of_the_full_pass(norm, outputs):
  config = dataclasses.replace(TINY, norm=norm, num_clusters=3, attention_bias=True)
  model = build_model(config, seed=4)
  clusters = jnp.where(HISTORIES > 0, HISTORIES % 3 + 1, 0)
  full = model(HISTORIES, clusters)  # [B, L, D]
  newest = model(HISTORIES, clusters, outputs=outputs)
  assert newest.shape == (2, outputs, 8)
  np.testing.assert_allclose(newest, full[:, -outputs:], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(model.user_vectors(HISTORIES, clusters), full[:, -1],
                             rtol=1e-5, atol=1e-6)
  # Every position is the full pass itself.
  np.testing.assert_array_equal(model(HISTORIES, clusters, outputs=6), full)


@pytest.mark.parametrize("outputs", [0, 7, 2.0])
def test_bad_outputs_are_named(outputs):
  with pytest.raises(model_lib.SeqRecConfigError, match=f"outputs={outputs!r}"):
    build_model(TINY)(HISTORIES, outputs=outputs)


def test_params_carry_logical_axes():
  model = build_model(TINY)
  axes = {jax.tree_util.keystr(p, simple=True, separator="/"): v.get_metadata()["out_sharding"]
          for p, v in jax.tree_util.tree_flatten_with_path(
              nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
  assert axes["items/table"] == ("items", "embed")
  assert axes["blocks/0/attention/q"] == ("embed", "heads", "kv")
  assert axes["blocks/1/mlp/up"] == ("embed", "mlp")


POST = SeqRecConfig(num_items=20, max_len=6, embed_dim=8, num_blocks=2, num_heads=2, mlp_dim=12,
                    dropout=0.3, item_rows_multiple=8, norm="post", init="normal",
                    layer_norm_epsilon=1e-12)


def _reference_post_ln(model, tokens: np.ndarray, epsilon: float,
                       exact_gelu: bool = False) -> np.ndarray:
  """RecBole's SASRec forward in numpy (eval mode), from the model's weights.

  Attention biases are added where the model has them; `exact_gelu`: the erf GELU.
  """
  p = jax.tree_util.tree_map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))

  def layer_norm(x, norm):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * norm["scale"] + norm["bias"]

  def gelu(x):  # the tanh approximation, as jax.nn.gelu, or the exact erf form
    if exact_gelu:
      return 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))
    return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))

  valid = tokens != 0
  length = tokens.shape[1]
  x = p["items"]["table"][tokens] * valid[..., None] + p["positions"][-length:]
  x = layer_norm(x, p["input_norm"]) * valid[..., None]
  for block in p["blocks"].values():
    att = block["attention"]
    heads = att["q"].shape[1:]  # (H, K); the biases are 0 where the model has none
    bias = {name: att.get(f"{name}_bias", np.zeros(heads)) for name in ("q", "k", "v")}
    q = np.einsum("btd,dhk->bhtk", x, att["q"]) + bias["q"][:, None]
    k = np.einsum("bsd,dhk->bhsk", x, att["k"]) + bias["k"][:, None]
    v = np.einsum("bsd,dhk->bhsk", x, att["v"]) + bias["v"][:, None]
    logits = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    allowed = np.tril(np.ones((length, length), bool))[None, None] & valid[:, None, None, :]
    logits = np.where(allowed, logits, -1e9)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    attended = np.einsum("bhts,bhsk,hkd->btd", weights, v, att["out"]) + att.get("out_bias", 0.0)
    x = layer_norm(x + attended, block["attention_norm"])
    mlp = block["mlp"]
    hidden = gelu(x @ mlp["up"] + mlp["up_bias"]) @ mlp["down"] + mlp["down_bias"]
    x = layer_norm(x + hidden, block["mlp_norm"]) * valid[..., None]
  return x


@pytest.mark.parametrize("parity", [{}, {"attention_bias": True, "gelu": "erf"}])
def test_post_ln_forward_matches_a_hand_written_reference(parity):
  model = build_model(dataclasses.replace(POST, **parity))
  # Move the norms and biases off their identity / zero init so that they are exercised.
  rng = np.random.default_rng(0)
  for path, variable in nnx.iter_graph(model):
    if isinstance(variable, nnx.Param) and any("norm" in str(k) or "bias" in str(k)
                                               for k in path):
      variable.value = jnp.asarray(rng.normal(1.0 if path[-1] == "scale" else 0.0, 0.1,
                                              variable.shape), jnp.float32)
  expected = _reference_post_ln(model, np.asarray(HISTORIES), POST.layer_norm_epsilon,
                                exact_gelu=parity.get("gelu") == "erf")
  np.testing.assert_allclose(model(HISTORIES), expected, rtol=2e-4, atol=2e-4)
  assert model.final_norm is None and model.input_norm is not None


def test_pre_ln_keeps_its_parameters_and_post_ln_swaps_the_final_norm_for_an_input_norm():
  def names(config):
    return {jax.tree_util.keystr(path, simple=True, separator="/") for path, _ in
            jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(
                build_model(config), nnx.Param)))[0]}
  pre, post = names(TINY), names(POST)
  assert "final_norm/scale" in pre and "input_norm/scale" not in pre
  assert pre - post == {"final_norm/scale", "final_norm/bias"}
  assert post - pre == {"input_norm/scale", "input_norm/bias"}


def test_post_ln_has_no_dropout_inside_the_mlp():
  model = build_model(POST)
  x = jnp.ones((1, 6, 8))
  np.testing.assert_array_equal(model.blocks[0].mlp(x, train=True),
                                model.blocks[0].mlp(x, train=False))
  pre = build_model(TINY)
  assert not np.allclose(pre.blocks[0].mlp(x, train=True), pre.blocks[0].mlp(x, train=False))


def test_normal_init_draws_every_weight_with_init_stddev_and_does_not_scale_inputs():
  config = SeqRecConfig(num_items=2000, max_len=50, embed_dim=64, num_blocks=1, num_heads=2,
                        mlp_dim=256, init="normal", init_stddev=0.05, dropout=0.0)
  model = build_model(config)
  for weight in (model.items.table, model.positions, model.blocks[0].attention.q,
                 model.blocks[0].attention.out, model.blocks[0].mlp.up, model.blocks[0].mlp.down):
    assert abs(float(jnp.std(weight[...])) - 0.05) < 0.005
  tokens = jnp.array([[1, 2]])
  np.testing.assert_allclose(model.items.encode(tokens)[0], model.items.table[...][1:3])
  scaled = build_model(SeqRecConfig(num_items=2000, embed_dim=64, num_heads=2, mlp_dim=256))
  assert abs(float(jnp.std(scaled.items.table[...])) - 1 / 8) < 0.01
  assert abs(float(jnp.std(scaled.blocks[0].mlp.down[...])) - 1 / 16) < 0.005
  np.testing.assert_allclose(scaled.items.encode(tokens)[0], scaled.items.table[...][1:3] * 8,
                             rtol=1e-6)


@pytest.mark.parametrize("field, value, message", [
    ("norm", "rms", "norm='rms' is not one of \\('pre', 'post'\\)"),
    ("init", "xavier", "init='xavier' is not one of \\('scaled', 'normal'\\)"),
    ("init_stddev", 0.0, "init_stddev=0.0 must be a positive number"),
    ("layer_norm_epsilon", -1.0, "layer_norm_epsilon=-1.0 must be a positive number"),
    ("positions", "relative", "positions='relative' is not one of \\('from_end', 'from_start'\\)"),
    ("gelu", "relu", "gelu='relu' is not one of \\('tanh', 'erf'\\)"),
    ("gelu", None, "gelu=None is not one of"),
    ("attention_bias", "yes", "attention_bias='yes' must be True or False"),
    ("attention_bias", 1, "attention_bias=1 must be True or False"),
])
def test_bad_norm_and_init_options_are_named(field, value, message):
  with pytest.raises(model_lib.SeqRecConfigError, match=message):
    SeqRecConfig(num_items=20, embed_dim=8, num_heads=2, **{field: value})


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_positions_from_start_give_each_position_the_state_of_its_own_prefix(norm):
  # A row scored at every position: with positions counted from the oldest item, position t
  # reads what the newest item of the prefix ending at t reads as a user's history (left-padded);
  # counted from the end, the prefix's newest item gets another embedding than in the row.
  row = jnp.array([[0, 4, 5, 6, 7, 8]])
  prefixes = jnp.array([[0, 0, 0, 0, 4, 5], [0, 0, 0, 4, 5, 6], [0, 0, 4, 5, 6, 7]])
  for positions, same in (("from_start", True), ("from_end", False)):
    config = dataclasses.replace(TINY, norm=norm, positions=positions)
    model = build_model(config)
    states = model(row)[0]  # [L, D]
    close = np.allclose(states[2:5], model.user_vectors(prefixes), rtol=1e-5, atol=1e-5)
    assert close == same, positions
    np.testing.assert_allclose(states[-1], model.user_vectors(row)[0], rtol=1e-6, atol=1e-6)


def _param_shapes(config: SeqRecConfig) -> dict[str, tuple[int, ...]]:
  state = nnx.to_pure_dict(nnx.state(build_model(config), nnx.Param))
  return {jax.tree_util.keystr(path, simple=True, separator="/"): tuple(value.shape)
          for path, value in jax.tree_util.tree_flatten_with_path(state)[0]}


def test_attention_bias_adds_zero_biases_on_q_k_v_and_out_and_keeps_other_params():
  config = dataclasses.replace(POST, attention_bias=True)
  plain, biased = _param_shapes(POST), _param_shapes(config)
  # TINY/POST: 2 heads of 4 (embed 8).
  expected = {f"blocks/{b}/attention/{name}": shape for b in (0, 1)
              for name, shape in (("q_bias", (2, 4)), ("k_bias", (2, 4)), ("v_bias", (2, 4)),
                                  ("out_bias", (8,)))}
  assert {name: biased[name] for name in set(biased) - set(plain)} == expected
  assert set(plain) <= set(biased)
  model, reference = build_model(config), build_model(POST)
  attention = model.blocks[0].attention
  for name in ("q_bias", "k_bias", "v_bias", "out_bias"):
    np.testing.assert_array_equal(getattr(attention, name)[...], 0.0)
  # Zero biases draw no keys: every other parameter starts as without them, same output.
  np.testing.assert_array_equal(model.blocks[1].mlp.up[...], reference.blocks[1].mlp.up[...])
  np.testing.assert_allclose(model(HISTORIES), reference(HISTORIES), rtol=1e-6, atol=1e-6)
  axes = {jax.tree_util.keystr(p, simple=True, separator="/"): v.get_metadata()["out_sharding"]
          for p, v in jax.tree_util.tree_flatten_with_path(
              nnx.state(model, nnx.Param), is_leaf=lambda x: isinstance(x, nnx.Variable))[0]}
  assert axes["blocks/0/attention/q_bias"] == ("heads", "kv")
  assert axes["blocks/1/attention/out_bias"] == ("embed",)


def test_a_nonzero_query_bias_changes_the_output():
  model = build_model(dataclasses.replace(POST, attention_bias=True))
  before = model(HISTORIES)
  attention = model.blocks[0].attention
  attention.q_bias.value = jnp.asarray(
      np.random.default_rng(1).normal(0.0, 1.0, attention.q_bias.shape), jnp.float32)
  assert not np.allclose(model(HISTORIES), before, atol=1e-4)


def test_erf_gelu_is_the_exact_gelu_and_differs_from_tanh():
  x = jnp.asarray(np.random.default_rng(2).normal(0.0, 2.0, (1, 6, 8)), jnp.float32)
  tanh = build_model(POST).blocks[0].mlp
  erf = build_model(dataclasses.replace(POST, gelu="erf")).blocks[0].mlp
  np.testing.assert_array_equal(erf.up[...], tanh.up[...])  # same weights
  erf.up_bias.value = tanh.up_bias.value = jnp.full(tanh.up_bias.shape, 0.3)
  hidden = jnp.einsum("BTD,DF->BTF", x, erf.up[...]) + erf.up_bias[...]
  expected = jnp.einsum("BTF,FD->BTD", jax.nn.gelu(hidden, approximate=False),
                        erf.down[...]) + erf.down_bias[...]
  np.testing.assert_allclose(erf(x, train=False), expected, rtol=1e-6, atol=1e-7)
  assert not np.allclose(erf(x, train=False), tanh(x, train=False), rtol=0, atol=1e-7)
  assert SeqRecConfig(num_items=20).gelu == "tanh" and not SeqRecConfig(num_items=20).attention_bias
