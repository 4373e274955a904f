"""The fused score-and-select kernel, the bfloat16 table and the GPU plan of the bench.

The semantic cases (uneven and empty clusters, k beyond the valid items,
repeated clusters, seen items, ties) run for "pallas_fused" in
tests/test_retrieval.py; here: what is specific to the new variants.
"""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from explore.retrieval import RestrictedRetriever
from explore.retrieval import RetrievalInputError
from explore.retrieval import brute_force_top_k
from explore.retrieval import pallas_fused
from explore.retrieval import pallas_select
from explore.retrieval import pallas_topk
from explore.retrieval import restricted_top_k

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _problem(seed, num_items=400, dim=16, num_clusters=9, num_users=24, per_user=2,
             integer=True):
  rng = np.random.default_rng(seed)
  draw = ((lambda *s: rng.integers(-3, 4, s).astype(np.float32)) if integer
          else (lambda *s: rng.standard_normal(s).astype(np.float32)))
  return dict(users=draw(num_users, dim), items=draw(num_items, dim),
              item_to_cluster=rng.integers(0, num_clusters, num_items).astype(np.int32),
              chosen=rng.integers(-1, num_clusters, (num_users, per_user)).astype(np.int32),
              seen=rng.integers(-1, num_items, (num_users, 6)).astype(np.int32),
              num_clusters=num_clusters)


def _search(p, k, **options):
  return tuple(np.asarray(a) for a in restricted_top_k(
      p["users"], p["items"], p["chosen"], p["item_to_cluster"], k, seen_items=p["seen"],
      num_clusters=p["num_clusters"], **options))


def _bf16(values):
  return np.asarray(jnp.asarray(values).astype(jnp.bfloat16).astype(jnp.float32))


def test_bfloat16_table_scores_are_those_of_the_rounded_table():
  p = _problem(seed=0, integer=False)
  expected = brute_force_top_k(p["users"], _bf16(p["items"]), p["chosen"], p["item_to_cluster"],
                               12, p["seen"])
  for options in ({"implementation": "contiguous"},
                  {"implementation": "pallas_fused", "interpret": True}):
    scores, ids = _search(p, 12, table_dtype="bfloat16", **options)
    np.testing.assert_array_equal(ids, expected[1])
    np.testing.assert_allclose(scores, expected[0], rtol=1e-6, atol=1e-5)


def test_bfloat16_rounding_changes_the_scores_of_general_floats():
  """The option is not a no-op: float32 and rounded-table scores differ."""
  p = _problem(seed=1, integer=False)
  exact, _ = _search(p, 5, implementation="contiguous")
  rounded, _ = _search(p, 5, implementation="contiguous", table_dtype="bfloat16")
  assert not np.array_equal(exact, rounded)


@pytest.mark.parametrize("implementation", ["pallas", "pallas_fused"])
def test_bfloat16_table_is_stored_in_two_bytes_by_the_pallas_paths(implementation):
  p = _problem(seed=2)
  retriever = RestrictedRetriever(p["items"], p["item_to_cluster"], implementation=implementation,
                                  interpret=True, table_dtype="bfloat16")
  assert retriever._arrays[0].dtype == jnp.bfloat16  # pylint: disable=protected-access
  plain = RestrictedRetriever(p["items"], p["item_to_cluster"], table_dtype="bfloat16")
  assert plain._arrays[0].dtype == jnp.float32  # pylint: disable=protected-access


def test_pallas_path_with_a_bfloat16_table_matches_the_brute_force():
  p = _problem(seed=3)  # small integers: exact in bfloat16
  expected = brute_force_top_k(p["users"], p["items"], p["chosen"], p["item_to_cluster"], 10,
                               p["seen"])
  actual = _search(p, 10, implementation="pallas", interpret=True, table_dtype="bfloat16")
  np.testing.assert_array_equal(actual[1], expected[1])
  np.testing.assert_array_equal(actual[0], expected[0])


def test_unknown_table_dtype_is_rejected():
  p = _problem(seed=4)
  with pytest.raises(RetrievalInputError, match="table_dtype: 'float16' is not one of"):
    RestrictedRetriever(p["items"], p["item_to_cluster"], table_dtype="float16")


@pytest.mark.parametrize("options", [
    {"users_in_kernel": False, "skip_empty": False, "merge": "pallas"},
    {"block_items": 64, "search": "bits", "num_warps": 4},
])
def test_fused_kernel_options_agree_with_brute_force(options):
  p = _problem(seed=5, num_clusters=4, num_users=40)  # several tiles per cluster
  expected = brute_force_top_k(p["users"], p["items"], p["chosen"], p["item_to_cluster"], 30,
                               p["seen"])
  actual = _search(p, 30, implementation="pallas_fused", interpret=True,
                   pallas_options=options)
  np.testing.assert_array_equal(actual[1], expected[1])
  np.testing.assert_array_equal(actual[0], expected[0])


def test_score_of_key_inverts_the_order_key():
  scores = jnp.array([-jnp.inf, -3.5, -1e-30, 0.0, 1e-30, 2.25, 3e38], jnp.float32)
  keys = pallas_select.order_key(scores)
  assert np.all(np.diff(np.asarray(keys)) > 0)  # the keys keep the order
  np.testing.assert_array_equal(np.asarray(pallas_fused.score_of_key(keys)), np.asarray(scores))


def _triton_kernels(fn, *args) -> int:
  """Triton kernels in the program lowered for an NVIDIA GPU (lowering needs no GPU)."""
  text = jax.jit(fn).trace(*args).lower(lowering_platforms=("cuda",)).as_text()
  return text.count("stablehlo.custom_call @__gpu$xla.gpu.triton")


@pytest.mark.parametrize("table_dtype", [jnp.float32, jnp.bfloat16])
def test_fused_path_lowers_to_one_triton_kernel_for_the_gpu(table_dtype):
  """Triton lowering runs on CPU: catches primitives Triton lacks before a GPU session."""
  users, dim, width, items, clusters = 64, 128, 256, 3000, 16
  args = (jnp.zeros((users, dim)), jnp.zeros((items + width, dim), table_dtype),
          jnp.zeros(items + width, jnp.int32), jnp.zeros(items, jnp.int32),
          jnp.zeros(clusters + 1, jnp.int32), jnp.zeros((users, 2), jnp.int32),
          jnp.zeros((users, 3), jnp.int32))
  common = dict(k=100, slab_width=width, dot_precision="tf32x3")
  assert _triton_kernels(functools.partial(pallas_fused.fused_top_k, **common), *args) == 1
  assert _triton_kernels(functools.partial(pallas_topk.pallas_top_k, **common), *args) == 2


def test_gpu_plan_runs_without_gin_flax_or_seqio(tmp_path):
  """The device image has only jax, so `--gpu_plan` must not import gin, flax or seqio."""
  out = tmp_path / "plan.json"
  code = (
      "import sys, runpy\n"
      "for name in ('gin', 'flax', 'seqio', 'tensorflow'):\n"
      "  sys.modules[name] = None  # any import of them fails\n"
      f"sys.path.insert(0, {str(REPO_ROOT / 'bench')!r})\n"
      f"sys.argv = ['retrieval.py', '--gpu_plan', '--size=tiny', '--interpret', '--repeats=1',\n"
      f"            '--warmup=1', '--plan_variants=fused_bf16', '--out={out}']\n"
      f"runpy.run_path({str(REPO_ROOT / 'bench' / 'retrieval.py')!r}, run_name='__main__')\n")
  result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  plan = json.loads(out.read_text())["gpu_plan"]
  assert plan["dense_equals_brute_force"]
  (row,) = plan["variants"]
  assert row["variant"] == "fused_bf16" and row["check"] == "PASS", row
  assert row["launches"]["total"] > 0 and row["queued_s"] > 0
