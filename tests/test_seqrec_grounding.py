"""Grounding evaluation: retrieval inside the test item's cluster, checked by brute force."""

import numpy as np
import pytest

from explore.data.schema import Interactions
from explore.seqrec import data as data_lib
from explore.seqrec import grounding

NUM_ITEMS = 40
NUM_CLUSTERS = 5


def random_split(num_users=30, seed=0):
  """Users with 4-12 random items (repeats allowed), in time order."""
  rng = np.random.default_rng(seed)
  lengths = rng.integers(4, 13, size=num_users)
  user = np.repeat(np.arange(num_users), lengths)
  item = rng.integers(0, NUM_ITEMS, size=user.size)
  time = np.concatenate([np.arange(n) for n in lengths])
  log = Interactions.from_columns(user, item, time, np.ones(user.size), np.ones(user.size, bool),
                                  user_ids=np.arange(num_users), item_ids=np.arange(NUM_ITEMS))
  return data_lib.leave_last_out(data_lib.user_sequences(log))


def brute_force_rank(scores, candidates, target):
  """Rank of `target` among `candidates` by (score desc, id asc)."""
  ahead = [i for i in candidates if scores[i] > scores[target]
           or (scores[i] == scores[target] and i < target)]
  return len(ahead)


def brute_force(split, user_vectors, item_vectors, item_to_cluster, counts, k, weight=0.0,
                which="test"):
  """Per case: (full-catalog rank, in-cluster rank, popular in-cluster rank, novel,
  in-cluster rank by u . v + weight * log(1 + count))."""
  seq = split.sequences
  prior = np.log1p(counts.astype(np.float64)).astype(np.float32).astype(np.float64)
  rows = []
  for e, user in enumerate(split.eval_users):
    items = seq.user_tokens(user) - 1
    if which == "val":
      items = items[:-1]
    history, target = items[:-1], int(items[-1])
    seen = set(history.tolist()) - {target}
    scores = item_vectors.astype(np.float64) @ user_vectors[e].astype(np.float64)
    everything = [i for i in range(NUM_ITEMS) if i not in seen]
    plan = [i for i in everything if item_to_cluster[i] == item_to_cluster[target]]
    rows.append((brute_force_rank(scores, everything, target),
                 brute_force_rank(scores, plan, target),
                 brute_force_rank(counts.astype(np.float64), plan, target),
                 item_to_cluster[target] not in set(item_to_cluster[history].tolist()),
                 brute_force_rank(scores + weight * prior, plan, target)))
  return rows


def hr_ndcg(ranks, k):
  ranks = np.asarray(ranks, float)
  hit = ranks < k
  return hit.mean(), np.where(hit, 1 / np.log2(ranks + 2), 0).mean()


@pytest.fixture
def world():
  rng = np.random.default_rng(1)
  split = random_split()
  # Small integers: exact float32 dot products, and many ties to break by item id.
  user_vectors = rng.integers(-2, 3, size=(len(split.eval_users), 4)).astype(np.float32)
  item_vectors = rng.integers(-2, 3, size=(NUM_ITEMS, 4)).astype(np.float32)
  item_to_cluster = rng.integers(0, NUM_CLUSTERS, size=NUM_ITEMS)
  counts = split.target_counts()[1:]
  return split, user_vectors, item_vectors, item_to_cluster, counts


def test_cases_hold_the_test_target_its_cluster_and_the_history_without_it(world):
  split, _, _, item_to_cluster, _ = world
  cases = grounding.grounding_cases(split, item_to_cluster)
  seq = split.sequences
  for e, user in enumerate(split.eval_users):
    items = seq.user_tokens(user) - 1
    assert cases.targets[e] == items[-1]
    assert cases.target_clusters[e] == item_to_cluster[items[-1]]
    kept = cases.history[e][cases.history[e] >= 0]
    assert sorted(kept.tolist()) == sorted(i for i in items[:-1].tolist() if i != items[-1])
  assert cases.novel.any() and not cases.novel.all()


def test_validation_cases_hold_the_validation_target_and_the_training_items(world):
  split, _, _, item_to_cluster, _ = world
  cases = grounding.grounding_cases(split, item_to_cluster, "val")
  for e, user in enumerate(split.eval_users):
    items = split.sequences.user_tokens(user) - 1
    assert cases.targets[e] == items[-2]
    kept = cases.history[e][cases.history[e] >= 0]
    assert sorted(kept.tolist()) == sorted(i for i in items[:-2].tolist() if i != items[-2])


@pytest.mark.parametrize("k", [1, 3])
def test_metrics_match_a_brute_force_ranking(world, k):
  split, user_vectors, item_vectors, item_to_cluster, counts = world
  cases = grounding.grounding_cases(split, item_to_cluster)
  got = grounding.grounding_metrics(user_vectors, item_vectors, item_to_cluster, cases, counts,
                                    k=k)
  rows = brute_force(split, user_vectors, item_vectors, item_to_cluster, counts, k)
  novel = np.array([r[3] for r in rows])
  np.testing.assert_array_equal(cases.novel, novel)
  assert got["k"] == k
  for part, keep in (("all", np.ones(len(rows), bool)), ("novel", novel)):
    assert got[part]["users"] == keep.sum()
    for column, name in enumerate(("model_full_catalog", "model_in_cluster",
                                   "most_popular_in_cluster")):
      hr, ndcg = hr_ndcg([r[column] for r, kept in zip(rows, keep) if kept], k)
      assert got[part][name][f"hr@{k}"] == pytest.approx(hr, abs=1e-12), (part, name)
      assert got[part][name][f"ndcg@{k}"] == pytest.approx(ndcg, abs=1e-6), (part, name)


@pytest.mark.parametrize("weight", [0.5, 3.0])
def test_the_prior_blend_matches_a_brute_force_ranking(world, weight):
  split, user_vectors, item_vectors, item_to_cluster, counts = world
  cases = grounding.grounding_cases(split, item_to_cluster)
  got = grounding.grounding_metrics(user_vectors, item_vectors, item_to_cluster, cases, counts,
                                    k=3, prior_weight=weight)
  rows = brute_force(split, user_vectors, item_vectors, item_to_cluster, counts, 3, weight)
  hr, ndcg = hr_ndcg([r[4] for r in rows], 3)
  blend = got["all"]["model_prior_in_cluster"]
  assert {name: blend[name] for name in ("hr@3", "ndcg@3")} == {
      "hr@3": pytest.approx(hr, abs=1e-12), "ndcg@3": pytest.approx(ndcg, abs=1e-6)}
  without = grounding.grounding_metrics(user_vectors, item_vectors, item_to_cluster, cases,
                                        counts, k=3)
  assert "model_prior_in_cluster" not in without["all"]
  zero = grounding.grounding_metrics(user_vectors, item_vectors, item_to_cluster, cases, counts,
                                     k=3, prior_weight=0.0)
  assert zero["all"]["model_prior_in_cluster"] == zero["all"]["model_in_cluster"]


def test_the_prior_weight_is_tuned_by_in_cluster_ndcg(world):
  split, user_vectors, item_vectors, item_to_cluster, counts = world
  cases = grounding.grounding_cases(split, item_to_cluster, "val")
  weights = (0.0, 0.5, 2.0, 8.0)
  got = grounding.tune_prior_weight(user_vectors, item_vectors, item_to_cluster, cases, counts,
                                    weights, k=3)
  expected = {}
  for weight in weights:
    rows = brute_force(split, user_vectors, item_vectors, item_to_cluster, counts, 3, weight,
                       which="val")
    expected[str(weight)] = hr_ndcg([r[4] for r in rows], 3)[1]
  assert got["ndcg@3"] == pytest.approx(expected, abs=1e-6)
  best = max(weights, key=lambda w: (expected[str(w)], -w))
  assert got["weight"] == best


def test_popular_targets_pull_the_weight_up_and_exact_vectors_keep_it_at_zero(world):
  """Users who pick the most popular item of a cluster want the prior; users whose
  vectors already point at their target do not (ties go to the smaller weight)."""
  split, user_vectors, item_vectors, item_to_cluster, _ = world
  cases = grounding.grounding_cases(split, item_to_cluster)
  counts = np.zeros(NUM_ITEMS, np.int64)
  counts[cases.targets] = 50  # every target is the most popular item of its cluster
  weights = (0.0, 1.0, 4.0, 16.0)
  random = grounding.tune_prior_weight(user_vectors, item_vectors, item_to_cluster, cases,
                                       counts, weights, k=1)
  assert random["weight"] > 0.0
  assert random["ndcg@1"][str(random["weight"])] > random["ndcg@1"]["0.0"]
  exact = np.eye(NUM_ITEMS, dtype=np.float32)[cases.targets] * 100  # [E, N]: one-hot targets
  oracle = grounding.tune_prior_weight(exact, np.eye(NUM_ITEMS, dtype=np.float32),
                                       item_to_cluster, cases, counts, weights, k=1)
  assert oracle["weight"] == 0.0 and oracle["ndcg@1"]["0.0"] == 1.0


def test_in_cluster_and_full_catalog_are_measured_separately(world):
  """The plan leaves fewer competitors, so it usually helps, but each number is measured:
  user vectors that point away from their target lose in both."""
  split, user_vectors, item_vectors, item_to_cluster, counts = world
  cases = grounding.grounding_cases(split, item_to_cluster)
  random = grounding.grounding_metrics(user_vectors, item_vectors, item_to_cluster, cases,
                                       counts, k=3)["all"]
  assert random["model_in_cluster"]["hr@3"] > random["model_full_catalog"]["hr@3"]
  adverse = -item_vectors[cases.targets] * 100  # [E, D]: the target scores lowest everywhere
  got = grounding.grounding_metrics(adverse, item_vectors, item_to_cluster, cases, counts,
                                    k=3)["all"]
  assert got["model_full_catalog"]["hr@3"] == 0.0
  assert got["model_in_cluster"]["hr@3"] < random["model_in_cluster"]["hr@3"]
  assert got["most_popular_in_cluster"] == random["most_popular_in_cluster"]


def test_a_part_without_users_reports_none(world):
  split, user_vectors, item_vectors, _, counts = world
  one_cluster = np.zeros(NUM_ITEMS, np.int64)  # every target's cluster is in the history
  cases = grounding.grounding_cases(split, one_cluster)
  got = grounding.grounding_metrics(user_vectors, item_vectors, one_cluster, cases, counts, k=3)
  assert got["novel"] == {"users": 0, "model_full_catalog": None, "model_in_cluster": None,
                          "most_popular_in_cluster": None}
  assert got["all"]["model_in_cluster"] == got["all"]["model_full_catalog"]


def test_mismatched_inputs_are_named(world):
  split, user_vectors, item_vectors, item_to_cluster, counts = world
  with pytest.raises(grounding.GroundingError, match="item_to_cluster has shape \\(39,\\)"):
    grounding.grounding_cases(split, item_to_cluster[:-1])
  cases = grounding.grounding_cases(split, item_to_cluster)
  with pytest.raises(grounding.GroundingError, match="user_vectors has shape"):
    grounding.grounding_metrics(user_vectors[:-1], item_vectors, item_to_cluster, cases, counts)
  with pytest.raises(grounding.GroundingError, match="item_counts has shape"):
    grounding.grounding_metrics(user_vectors, item_vectors, item_to_cluster, cases, counts[:-1])
  with pytest.raises(grounding.GroundingError, match="weights=\\(\\) must be"):
    grounding.tune_prior_weight(user_vectors, item_vectors, item_to_cluster, cases, counts, ())
  with pytest.raises(grounding.GroundingError, match="weights=\\('1',\\) must be"):
    grounding.tune_prior_weight(user_vectors, item_vectors, item_to_cluster, cases, counts, ("1",))
  with pytest.raises(grounding.GroundingError, match="weights=\\(nan,\\) must be"):
    grounding.tune_prior_weight(user_vectors, item_vectors, item_to_cluster, cases, counts,
                                (float("nan"),))
