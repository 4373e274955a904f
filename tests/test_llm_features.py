"""Decoder-only features in numpy (no TensorFlow): conversion, packing, task-source arrays."""

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from explore.llm import features
from explore.llm.features import FeatureError
from explore.transitions import TaskSourceError
from explore.transitions import TupleCounts
from explore.transitions import export_task_source

from conftest import DESCRIPTIONS  # noqa: F401  (and the `tokenizer` fixture)


@pytest.fixture
def train_tsv(tmp_path):
  counts = TupleCounts(history=np.asarray([[0, 1], [0, 1], [2, 3]], np.int32),
                       next_cluster=np.asarray([2, 4, 0], np.int32),
                       count=np.asarray([3, 1, 2], np.int64),
                       weight=np.asarray([2.4, 0.3, 1.5]))
  return export_task_source(tmp_path / "task_source", counts, counts, DESCRIPTIONS)["train"]


def test_packed_examples_follow_seqio_prefix_lm_layout():
  out = features.prefix_lm_examples([[7, 8, 5, 1], [8, 4, 9, 3, 1]], [[3, 9, 1], [4, 1]],
                                    max_length=15, pack=True)
  np.testing.assert_array_equal(out["decoder_target_tokens"],
                                [[7, 8, 5, 1, 3, 9, 1, 8, 4, 9, 3, 1, 4, 1, 0]])
  np.testing.assert_array_equal(out["decoder_input_tokens"],
                                [[0, 7, 8, 5, 1, 3, 9, 0, 8, 4, 9, 3, 1, 4, 0]])
  np.testing.assert_array_equal(out["decoder_loss_weights"],
                                [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 1, 1, 0]])
  np.testing.assert_array_equal(out["decoder_segment_ids"],
                                [[1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 0]])
  np.testing.assert_array_equal(out["decoder_positions"],
                                [[0, 1, 2, 3, 4, 5, 6, 0, 1, 2, 3, 4, 5, 6, 0]])
  np.testing.assert_array_equal(out["decoder_causal_attention"],
                                [[1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]])
  assert all(a.dtype == np.int32 for a in out.values())


def test_unpacked_example_is_shifted_without_resetting_after_its_end():
  out = features.prefix_lm_examples([[9, 4, 6, 1]], [[3, 9, 1]], max_length=10, pack=False)
  np.testing.assert_array_equal(out["decoder_target_tokens"], [[9, 4, 6, 1, 3, 9, 1, 0, 0, 0]])
  np.testing.assert_array_equal(out["decoder_input_tokens"], [[0, 9, 4, 6, 1, 3, 9, 1, 0, 0]])
  np.testing.assert_array_equal(out["decoder_loss_weights"], [[0, 0, 0, 0, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(out["decoder_segment_ids"], [[1, 1, 1, 1, 1, 1, 1, 0, 0, 0]])
  np.testing.assert_array_equal(out["decoder_positions"], [[0, 1, 2, 3, 4, 5, 6, 0, 0, 0]])


def test_unpacked_gives_one_row_per_example():
  out = features.prefix_lm_examples([[5, 1], [6, 1], [7, 1]], [[3, 1], [4, 1], [8, 1]],
                                    max_length=8, pack=False)
  assert out["decoder_target_tokens"].shape == (3, 8)


def test_packing_keeps_order_and_starts_a_row_when_an_example_does_not_fit():
  # lengths 7, 6, 3 in rows of 10: next fit gives [7], [6, 3]; first fit would give [7, 3], [6].
  out = features.prefix_lm_examples([[5] * 5 + [1], [6] * 3 + [1], [7, 1]],
                                    [[1], [4, 1], [1]], max_length=10)
  np.testing.assert_array_equal(out["decoder_segment_ids"],
                                [[1, 1, 1, 1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1, 2, 2, 2, 0]])
  assert out["decoder_target_tokens"][1, 6] == 7


def test_example_longer_than_max_length_is_an_error():
  with pytest.raises(FeatureError, match="example 1 has 3 prompt \\+ 2 target tokens, more than "
                                         "max_length=4"):
    features.prefix_lm_examples([[5, 1], [5, 6, 1]], [[3, 1], [4, 1]], max_length=4)


def test_padding_id_inside_an_example_is_an_error():
  with pytest.raises(FeatureError, match="example 1 holds the padding id 0"):
    features.prefix_lm_examples([[5, 1], [5, 0, 1]], [[3, 1], [4, 1]], max_length=8)


def test_empty_target_is_an_error():
  with pytest.raises(FeatureError, match="example 0 has no target tokens"):
    features.prefix_lm_examples([[5, 1]], [[]], max_length=8)


def test_example_weights_scale_the_target_loss_weights():
  out = features.prefix_lm_examples([[5, 1], [6, 1]], [[3, 1], [4, 9, 1]], max_length=12,
                                    example_weights=np.asarray([0.5, 2.0]))
  assert out["decoder_loss_weights"].dtype == np.float32
  np.testing.assert_allclose(out["decoder_loss_weights"],
                             [[0, 0, 0.5, 0.5, 0, 0, 2, 2, 2, 0, 0, 0]])


def test_pair_repeats_rounds_weights_half_to_even_and_keeps_every_pair():
  count = np.asarray([3, 1, 2, 7])
  weight = np.asarray([2.4, 0.3, 2.5, 3.5])
  np.testing.assert_array_equal(features.pair_repeats(count, weight, "repeat_weight"), [2, 1, 2, 4])
  np.testing.assert_array_equal(features.pair_repeats(count, weight, "repeat_count"), count)
  np.testing.assert_array_equal(features.pair_repeats(count, weight, "none"), [1, 1, 1, 1])
  with pytest.raises(FeatureError, match="weighting='often'"):
    features.pair_repeats(count, weight, "often")


def _segments(out):
  """(prompt ids, target ids, loss weight of the target) of every packed example."""
  found = []
  for row in range(out["decoder_target_tokens"].shape[0]):
    seg = out["decoder_segment_ids"][row]
    for s in range(1, seg.max() + 1):
      tokens = out["decoder_target_tokens"][row, seg == s]
      loss = out["decoder_loss_weights"][row, seg == s]
      on_target = loss > 0
      found.append((tokens[~on_target].tolist(), tokens[on_target].tolist(),
                    float(loss[on_target][0])))
  return found


def test_novel_interest_arrays_weight_each_pair_once_in_the_loss(tokenizer, train_tsv):
  out = features.novel_interest_arrays(train_tsv, tokenizer, max_length=96, seed=None)
  found = _segments(out)
  assert [tokenizer.decode(target) for _, target, _ in found] == [
      "drama, war", "empty cluster 017", "hiking, trails, camping"]
  prompt = "history: hiking, trails, camping | cooking, pasta, italian"
  assert tokenizer.decode(found[0][0]) == prompt
  np.testing.assert_allclose([w for _, _, w in found], np.asarray([2.4, 0.3, 1.5]) / 1.4,
                             rtol=1e-6)


def test_novel_interest_arrays_repeat_pairs_by_rounded_weight(tokenizer, train_tsv):
  out = features.novel_interest_arrays(train_tsv, tokenizer, max_length=96,
                                       weighting="repeat_weight", seed=None)
  targets = [tokenizer.decode(t) for _, t, _ in _segments(out)]
  assert targets == ["drama, war"] * 2 + ["empty cluster 017"] + ["hiking, trails, camping"] * 2
  assert out["decoder_loss_weights"].dtype == np.int32


def test_novel_interest_arrays_repeat_pairs_by_count(tokenizer, train_tsv):
  out = features.novel_interest_arrays(train_tsv, tokenizer, max_length=96,
                                       weighting="repeat_count", seed=None)
  assert len(_segments(out)) == 3 + 1 + 2


def test_novel_interest_arrays_shuffle_is_seeded(tokenizer, train_tsv):
  a = features.novel_interest_arrays(train_tsv, tokenizer, 48, weighting="repeat_count", seed=3)
  b = features.novel_interest_arrays(train_tsv, tokenizer, 48, weighting="repeat_count", seed=3)
  in_file_order = features.novel_interest_arrays(train_tsv, tokenizer, 48,
                                                 weighting="repeat_count", seed=None)
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
  assert sorted(map(str, _segments(a))) == sorted(map(str, _segments(in_file_order)))


def test_suffix_copies_add_examples_that_keep_only_the_latest_cluster(tokenizer, train_tsv):
  out = features.novel_interest_arrays(train_tsv, tokenizer, max_length=96, seed=None,
                                       suffix_copies=1.0, descriptions=DESCRIPTIONS)
  found = [(tokenizer.decode(p), tokenizer.decode(t), w) for p, t, w in _segments(out)]
  # Each pair once in full, then once with its older cluster cut (K=2 keeps the latest one),
  # with the same target and loss weight.
  weights = np.asarray([2.4, 0.3, 1.5]) / 1.4
  full = [("history: hiking, trails, camping | cooking, pasta, italian", "drama, war"),
          ("history: hiking, trails, camping | cooking, pasta, italian", "empty cluster 017"),
          ("history: drama, war | warfare, history, documentary", "hiking, trails, camping")]
  cut = [("history: cooking, pasta, italian", "drama, war"),
         ("history: cooking, pasta, italian", "empty cluster 017"),
         ("history: warfare, history, documentary", "hiking, trails, camping")]
  assert [(p, t) for p, t, _ in found] == full + cut
  np.testing.assert_allclose([w for _, _, w in found], np.tile(weights, 2), rtol=1e-6)


def test_suffix_copies_fraction_draws_that_many_copies_seeded(tokenizer, train_tsv):
  def run(seed):
    return features.novel_interest_arrays(train_tsv, tokenizer, 96, weighting="repeat_count",
                                          seed=seed, suffix_copies=0.5,
                                          descriptions=DESCRIPTIONS)
  found = _segments(run(4))
  assert len(found) == 6 + 3  # 3 + 1 + 2 examples, half of them copied
  cut = [p for p, _, _ in found if "|" not in tokenizer.decode(p)]
  assert len(cut) == 3
  for name, array in run(4).items():
    np.testing.assert_array_equal(array, run(4)[name])


def test_suffix_prompts_keep_between_one_and_k_minus_one_latest_clusters():
  history = np.tile(np.asarray([[0, 1, 2, 3]]), (200, 1))
  prompts = features.suffix_prompts(history, DESCRIPTIONS, np.random.default_rng(0))
  assert set(prompts) == {"history: warfare, history, documentary",
                          "history: drama, war | warfare, history, documentary",
                          "history: cooking, pasta, italian | drama, war | "
                          "warfare, history, documentary"}


@pytest.mark.parametrize("kwargs, match", [
    ({"suffix_copies": -0.5, "descriptions": DESCRIPTIONS}, r"suffix_copies=-0.5 must be"),
    ({"suffix_copies": float("nan"), "descriptions": DESCRIPTIONS}, r"must be a finite"),
    ({"suffix_copies": 0.5}, r"needs the cluster descriptions"),
    ({"suffix_copies": 0.5, "descriptions": DESCRIPTIONS[:3]},
     r"names cluster 3, but 3 descriptions"),
])
def test_suffix_copies_bad_settings_are_errors(tokenizer, train_tsv, kwargs, match):
  with pytest.raises(FeatureError, match=match):
    features.novel_interest_arrays(train_tsv, tokenizer, max_length=96, **kwargs)


def test_suffix_copies_need_histories_of_two_clusters(tokenizer, tmp_path):
  counts = TupleCounts(history=np.asarray([[0], [1]], np.int32),
                       next_cluster=np.asarray([2, 3], np.int32),
                       count=np.asarray([1, 1], np.int64), weight=np.asarray([1.0, 1.0]))
  path = export_task_source(tmp_path / "k1", counts, counts, DESCRIPTIONS)["train"]
  with pytest.raises(FeatureError, match=r"train.tsv has histories of K=1.*needs K >= 2"):
    features.novel_interest_arrays(path, tokenizer, max_length=96, suffix_copies=1.0,
                                   descriptions=DESCRIPTIONS)


def test_novel_interest_arrays_too_long_row_names_the_line(tokenizer, train_tsv):
  with pytest.raises(FeatureError, match=r"train.tsv:2: prompt \(\d+ tokens\) \+ target"):
    features.novel_interest_arrays(train_tsv, tokenizer, max_length=20)


def test_novel_interest_arrays_header_only_source_is_an_error(tokenizer, tmp_path):
  empty = TupleCounts(history=np.zeros((0, 2), np.int32), next_cluster=np.zeros(0, np.int32),
                      count=np.zeros(0, np.int64), weight=np.zeros(0))
  path = export_task_source(tmp_path / "empty", empty, empty, DESCRIPTIONS)["train"]
  with pytest.raises(FeatureError, match="train.tsv: task source has no rows"):
    features.novel_interest_arrays(path, tokenizer)


def test_novel_interest_arrays_missing_file_names_it(tokenizer, tmp_path):
  with pytest.raises(TaskSourceError, match="missing.tsv: task source file not found"):
    features.novel_interest_arrays(tmp_path / "missing.tsv", tokenizer)


def test_candidate_targets_hold_every_description_with_eos(tokenizer):
  tokens, lengths = features.candidate_targets(tokenizer, DESCRIPTIONS, max_target_length=16)
  assert tokens.shape == (5, 16) and tokens.dtype == np.int32
  for c, text in enumerate(DESCRIPTIONS):
    assert tokens[c, lengths[c] - 1] == tokenizer.eos_id
    assert np.all(tokens[c, lengths[c]:] == 0)
    assert tokenizer.decode(tokens[c]) == text


def test_candidate_target_too_long_names_the_cluster(tokenizer):
  lengths = [len(tokenizer.encode(t, add_eos=True)) for t in DESCRIPTIONS]
  longest = int(np.argmax(lengths))
  with pytest.raises(FeatureError, match=f"description of cluster {longest} "
                     f"\\({DESCRIPTIONS[longest]!r}\\) has {lengths[longest]} tokens"):
    features.candidate_targets(tokenizer, DESCRIPTIONS, max_target_length=lengths[longest] - 1)


def test_numpy_path_does_not_import_tensorflow_or_seqio():
  code = ("import sys, explore.llm.features, explore.llm.tokenizer; "
          "print(sorted(m for m in ('tensorflow', 'seqio') if m in sys.modules))")
  result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=pathlib.Path(__file__).resolve().parents[1])
  assert result.stdout.strip() == "[]"


def test_with_bos_starts_every_packed_example_with_the_given_id():
  base = features.prefix_lm_examples([[5, 1], [6, 7, 1], [8, 1]], [[9, 1], [3, 1], [4, 1]],
                                     max_length=8, pack=True)
  out = features.with_bos(base, 1)
  starts = (base["decoder_positions"] == 0) & (base["decoder_segment_ids"] > 0)
  assert starts.sum() == 3
  assert np.all(out["decoder_input_tokens"][starts] == 1)
  np.testing.assert_array_equal(out["decoder_input_tokens"][~starts],
                                base["decoder_input_tokens"][~starts])
  assert np.all(base["decoder_input_tokens"][starts] == features.BOS_ID)  # input unchanged
  for name in base:
    if name != "decoder_input_tokens":
      assert out[name] is base[name]
  with pytest.raises(FeatureError, match="bos_id=-1"):
    features.with_bos(base, -1)
