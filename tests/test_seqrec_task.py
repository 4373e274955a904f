"""SeqRecTask: the full softmax loss, the sampled softmax with log-Q correction, training."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from explore.seqrec import sampling
from explore.seqrec import task as task_lib
from explore.seqrec.model import SeqRecConfig, build_model
from explore.seqrec.task import SeqRecTask, SoftmaxConfig

CONFIG = SeqRecConfig(num_items=12, max_len=5, embed_dim=8, num_blocks=1, dropout=0.0,
                      item_rows_multiple=8)
BATCH = {"inputs": jnp.array([[0, 1, 2, 3, 4], [0, 0, 7, 8, 9]]),
         "targets": jnp.array([[0, 2, 3, 4, 5], [0, 0, 8, 9, 10]])}


def numpy_full_softmax_loss(model, batch):
  hidden = np.asarray(model(batch["inputs"])).reshape(-1, CONFIG.embed_dim)
  table = np.asarray(model.items.table[...], np.float64)[:CONFIG.num_items + 1]
  targets = np.asarray(batch["targets"]).reshape(-1)
  losses = []
  for h, t in zip(hidden, targets):
    if t == 0:
      continue
    logits = table[1:] @ h  # items only: padding and round-up rows are not classes
    losses.append(np.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[t - 1])
  return np.mean(losses), len(losses)


def test_full_softmax_matches_a_numpy_cross_entropy_over_items():
  model = build_model(CONFIG, seed=3)
  loss, metrics = SeqRecTask(CONFIG).loss(model, BATCH, train=False)
  expected, count = numpy_full_softmax_loss(model, BATCH)
  assert float(metrics["weight"]) == count == 7
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["loss_sum"]), expected * count, rtol=1e-5)


def test_narrow_targets_score_only_the_last_positions():
  model = build_model(CONFIG, seed=3)
  narrow = {"inputs": BATCH["inputs"], "targets": BATCH["targets"][:, -2:]}  # [B, 2]
  masked = {"inputs": BATCH["inputs"], "targets": BATCH["targets"].at[:, :-2].set(0)}  # [B, L]
  for softmax in (SoftmaxConfig(), SoftmaxConfig(kind="sampled", negatives_per_example=0)):
    counts = np.ones(CONFIG.num_items + 1)
    loss, metrics = SeqRecTask(CONFIG, softmax, counts).loss(model, narrow, train=False)
    expected, expected_metrics = SeqRecTask(CONFIG, softmax, counts).loss(model, masked,
                                                                          train=False)
    assert float(metrics["weight"]) == 4
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-6)
  full = SeqRecTask(CONFIG).flops_per_example()
  assert SeqRecTask(CONFIG, scored_positions=2).flops_per_example() < full


def sampled_loss(model, counts, sampler_kind, draws, seed):
  """Mean sampled-softmax loss with `draws` proposal negatives (no in-batch negatives)."""
  softmax = SoftmaxConfig(kind="sampled", in_batch_negatives=False, sampler=sampler_kind,
                          popularity_power=1.0, negatives_per_example=draws // 2)
  task = SeqRecTask(CONFIG, softmax, counts)
  negatives = task.sampler.sample(np.random.default_rng(seed), (2, draws // 2))
  loss, _ = task.loss(model, {**BATCH, "negatives": jnp.asarray(negatives)}, train=False)
  return float(loss)


def test_sampled_softmax_with_log_q_tends_to_the_full_softmax():
  model = build_model(CONFIG, seed=3)
  full, _ = SeqRecTask(CONFIG).loss(model, BATCH, train=False)
  counts = np.array([0, 40, 20, 10, 5, 3, 2, 1, 1, 1, 1, 1, 1])  # skewed popularity
  for kind in ("uniform", "popularity"):
    estimate = np.mean([sampled_loss(model, counts, kind, 4000, seed) for seed in range(3)])
    assert estimate == pytest.approx(float(full), abs=0.02), kind


def test_sampled_softmax_drops_copies_of_the_positive_from_the_pool():
  model = build_model(CONFIG, seed=3)
  counts = np.ones(CONFIG.num_items + 1)
  softmax = SoftmaxConfig(kind="sampled", in_batch_negatives=False, negatives_per_example=3)
  task = SeqRecTask(CONFIG, softmax, counts)
  one = {"inputs": BATCH["inputs"][:1], "targets": jnp.array([[0, 0, 0, 0, 5]])}
  only_positive = task.loss(model, {**one, "negatives": jnp.full((1, 3), 5)}, train=False)[0]
  np.testing.assert_allclose(float(only_positive), 0.0, atol=1e-6)  # no negative left


def cyclic_batch(rng, batch_size, num_items=12, length=5):
  """Histories where item i is always followed by item i + 1 (cyclically)."""
  start = rng.integers(0, num_items, size=(batch_size, 1))
  items = (start + np.arange(length + 1)[None, :]) % num_items + 1  # tokens 1..num_items
  return {"inputs": items[:, :-1].astype(np.int32), "targets": items[:, 1:].astype(np.int32)}


def train_steps(task, steps, negatives=0, seed=0):
  model = build_model(CONFIG, seed=seed)
  optimizer = nnx.Optimizer(model, optax.adam(0.02), wrt=nnx.Param)

  @nnx.jit
  def step(model, optimizer, batch):
    def loss_fn(model):
      return task.loss(model, batch, train=True)
    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss

  rng = np.random.default_rng(seed)
  losses = []
  for _ in range(steps):
    batch = cyclic_batch(rng, 16)
    if negatives:
      batch["negatives"] = task.sampler.sample(rng, (16, negatives))
    losses.append(float(step(model, optimizer, {k: jnp.asarray(v) for k, v in batch.items()})))
  return model, losses


def full_accuracy(model):
  batch = cyclic_batch(np.random.default_rng(99), 32)
  _, metrics = SeqRecTask(CONFIG).loss(model, jax.tree.map(jnp.asarray, batch), train=False)
  return float(metrics["correct"] / metrics["weight"])


def test_full_softmax_training_lowers_the_loss():
  model, losses = train_steps(SeqRecTask(CONFIG), 60)
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
  assert full_accuracy(model) > 0.9


def test_sampled_softmax_training_learns_the_full_catalog_ranking():
  counts = np.ones(CONFIG.num_items + 1)
  softmax = SoftmaxConfig(kind="sampled", in_batch_negatives=True, negatives_per_example=2,
                          sampler="popularity")
  task = SeqRecTask(CONFIG, softmax, counts, batch_size=16)
  model, losses = train_steps(task, 60, negatives=2)
  assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
  assert full_accuracy(model) > 0.9


def test_batch_features_and_flops_follow_the_softmax():
  full = SeqRecTask(CONFIG)
  assert set(full.batch_logical_axes()) == {"inputs", "targets"}
  sampled = SeqRecTask(CONFIG, SoftmaxConfig(kind="sampled", negatives_per_example=4),
                       np.ones(13), batch_size=16)
  assert sampled.batch_logical_axes()["negatives"] == ("batch", None)
  assert full.flops_per_example() > 0 and sampled.flops_per_example() > 0


def test_sampled_softmax_needs_counts_for_every_item():
  with pytest.raises(task_lib.SoftmaxConfigError, match="length num_items \\+ 1 = 13"):
    SeqRecTask(CONFIG, SoftmaxConfig(kind="sampled"), np.ones(5))


def test_unknown_softmax_kind_is_named():
  with pytest.raises(task_lib.SoftmaxConfigError, match="'hierarchical'"):
    SoftmaxConfig(kind="hierarchical")


def test_unknown_sampler_is_named():
  with pytest.raises(sampling.SamplerError, match="'zipf'"):
    sampling.ProposalSampler.create("zipf", np.ones(4))
