"""The precompute's shard plan, shard files and top-n generators (no model needed)."""

import numpy as np
import pytest

from explore.precompute import generators
from explore.precompute import quality
from explore.precompute import shards as shards_lib
from explore.precompute.table import TupleTable, distinct_tuples


def test_two_processes_split_the_shards_without_overlap_or_gap():
  plan = shards_lib.ShardPlan(num_tuples=65_280, tuples_per_shard=4096, num_processes=2)
  first, second = plan.owned(0), plan.owned(1)
  assert plan.num_shards == 16
  assert [s.index for s in first] == list(range(0, 16, 2))
  assert [s.index for s in second] == list(range(1, 16, 2))
  covered = np.zeros(65_280, int)
  for shard in first + second:
    covered[shard.start:shard.stop] += 1
  assert (covered == 1).all()
  assert sum(s.size for s in first) == 8 * 4096
  assert plan.shards()[-1].size == 65_280 - 15 * 4096


def test_more_processes_than_shards_leaves_some_idle():
  plan = shards_lib.ShardPlan(num_tuples=5, tuples_per_shard=4, num_processes=3)
  assert [len(plan.owned(p)) for p in range(3)] == [1, 1, 0]
  with pytest.raises(shards_lib.ShardError, match="process_index 3 is outside"):
    plan.owned(3)
  with pytest.raises(shards_lib.ShardError, match=">= 1"):
    shards_lib.ShardPlan(num_tuples=5, tuples_per_shard=0)


def _write(folder, plan, tuples, shard):
  rows = tuples[shard.start:shard.stop]
  shards_lib.save_shard(folder, shard, rows, np.zeros((len(rows), 3)), np.zeros((len(rows), 3)))


def test_pending_shards_are_those_without_a_file(tmp_path):
  tuples = distinct_tuples(6, 2)  # 30 tuples
  plan = shards_lib.ShardPlan(len(tuples), 7, num_processes=2)
  assert [s.index for s in shards_lib.pending(plan, 0, tmp_path)] == [0, 2, 4]
  _write(tmp_path, plan, tuples, plan.shard(2))
  (tmp_path / "shards" / ".shard_000004.npz.x.tmp").write_bytes(b"half")  # a killed write
  assert [s.index for s in shards_lib.pending(plan, 0, tmp_path)] == [0, 4]
  assert [s.index for s in shards_lib.pending(plan, 1, tmp_path)] == [1, 3]


def test_loading_shards_names_a_missing_or_foreign_shard(tmp_path):
  tuples = distinct_tuples(5, 2)  # 20 tuples
  plan = shards_lib.ShardPlan(len(tuples), 8)
  for shard in plan.shards()[:2]:
    _write(tmp_path, plan, tuples, shard)
  with pytest.raises(shards_lib.ShardError, match="shard 2 of 3 is missing"):
    shards_lib.load_shards(tmp_path, plan, tuples)
  shard = plan.shard(2)
  shards_lib.save_shard(tmp_path, shard, tuples[:shard.size], np.zeros((4, 3)), np.zeros((4, 3)))
  with pytest.raises(shards_lib.ShardError, match="holds other tuples than shard 2"):
    shards_lib.load_shards(tmp_path, plan, tuples)
  _write(tmp_path, plan, tuples, shard)
  history, clusters, _ = shards_lib.load_shards(tmp_path, plan, tuples)
  np.testing.assert_array_equal(history, tuples)
  assert clusters.shape == (20, 3)


def test_top_n_novel_drops_the_history_and_breaks_ties_by_id():
  scores = np.array([[5.0, 1.0, 5.0, 3.0, 5.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
  history = np.array([[2, 3], [0, 4]])
  clusters, best = generators.top_n_novel(scores, history, 3)
  np.testing.assert_array_equal(clusters, [[0, 4, 1], [1, 2, 3]])
  np.testing.assert_array_equal(best, [[5, 5, 1], [0, 0, 0]])


def test_top_n_pads_when_fewer_clusters_are_left():
  clusters, best = generators.top_n_novel(np.ones((1, 4)), np.array([[0, 1]]), 3)
  np.testing.assert_array_equal(clusters, [[2, 3, -1]])
  assert np.isneginf(best[0, 2])


class _Planted:
  """scores[c] = -|c - (sum of the tuple) mod M|: a known ranking for every tuple."""

  num_clusters = 7

  def scores(self, history):
    target = history.sum(axis=1) % self.num_clusters
    return -np.abs(np.arange(self.num_clusters)[None, :] - target[:, None]).astype(float)


def test_exact_generator_and_quality_checks():
  tuples = distinct_tuples(7, 2)
  generate = generators.exact_top_n(_Planted(), 4)
  table = TupleTable.empty(7, 2, 4)
  table.set_rows(tuples, *generate(tuples))
  validity = quality.output_validity(table, tuples)
  assert validity["fraction_valid"] == 1.0 and validity["fraction_history"] == 0.0
  assert validity["tuples_with_repeated_cluster"] == 0 and validity["outputs"] == 42 * 4
  agreement = quality.top1_agreement(table, generators.exact_top_n(_Planted(), 1), tuples)
  assert agreement == {"tuples": 42, "top1_agreement": 1.0}
  bad = table.clusters.copy()
  bad[tuple(tuples[0] @ [7, 1] for _ in [0])] = [tuples[0][0], 3, 3, -1]
  broken = TupleTable(bad, table.scores, 7, 2)
  validity = quality.output_validity(broken, tuples)
  assert validity["fraction_history"] == pytest.approx(1 / 168)
  assert validity["fraction_valid"] == pytest.approx(167 / 168)
  assert validity["tuples_with_repeated_cluster"] == 1


def test_generator_rows_are_checked():
  with pytest.raises(generators.GeneratorError, match="expected \\(2, 3\\)"):
    generators.check_rows(np.zeros((2, 2)), np.zeros((2, 2)), np.zeros((2, 2)), 3, 5)
  with pytest.raises(generators.GeneratorError, match="outside \\[-1, 5\\)"):
    generators.check_rows(np.zeros((1, 2)), np.array([[5]]), np.zeros((1, 1)), 1, 5)
