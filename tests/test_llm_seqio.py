"""The seqio Task and Mixture of the novel-interest data, and parity with the numpy features.

All seqio (TensorFlow) tests live in this file: importing TensorFlow costs seconds.
"""

import numpy as np
import pytest

seqio = pytest.importorskip("seqio")

from explore.llm import features  # pylint: disable=g-import-not-at-top
from explore.llm import seqio_tasks
from explore.llm import tokenizer as tok_lib
from explore.transitions import TaskSourceError
from explore.transitions import TupleCounts
from explore.transitions import export_task_source
from explore.transitions import format_history_prompt

DESCRIPTIONS = ["hiking, trails, camping", "cooking, pasta, italian", "drama, war",
                "warfare, history, documentary", "empty cluster 017"]
LENGTHS = {"inputs": 64, "targets": 16}
WEIGHTS = [2.4, 0.3, 1.5]  # repeated 2, 1 and 2 times
COUNTS = [3, 1, 2]


def _counts(history, next_cluster, count, weight):
  return TupleCounts(history=np.asarray(history, np.int32),
                     next_cluster=np.asarray(next_cluster, np.int32),
                     count=np.asarray(count, np.int64), weight=np.asarray(weight, np.float64))


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tokenizer") / "sp.model"
  return tok_lib.train_sentencepiece(tok_lib.sentencepiece_corpus(DESCRIPTIONS), path,
                                     vocab_size=1000)


@pytest.fixture(scope="module")
def vocabulary(tokenizer):
  return tok_lib.seqio_vocabulary(tokenizer)


@pytest.fixture(scope="module")
def source_dir(tmp_path_factory):
  train = _counts([[0, 1], [0, 1], [2, 3]], [2, 4, 0], COUNTS, WEIGHTS)
  test = _counts([[3, 4]], [1], [1], [1.0])
  directory = tmp_path_factory.mktemp("transitions") / "task_source"
  export_task_source(directory, train, test, DESCRIPTIONS)
  return directory


@pytest.fixture(scope="module")
def task(source_dir, vocabulary):
  return seqio_tasks.register_novel_interest_tasks(source_dir, vocabulary)


@pytest.fixture(scope="module")
def packed_rows(task):
  """The train split through seqio.DecoderFeatureConverter(pack=True) (traced once: slow)."""
  return _converted(task, pack=True)


def _converted(task, pack):
  ds = seqio.get_mixture_or_task(task.name).get_dataset(LENGTHS, split="train", shuffle=False)
  return list(seqio.DecoderFeatureConverter(pack=pack)(ds, LENGTHS).as_numpy_iterator())


def _examples(name, split="train", lengths=LENGTHS):
  ds = seqio.get_mixture_or_task(name).get_dataset(lengths, split=split, shuffle=False)
  return list(ds.as_numpy_iterator())


def test_seqio_vocabulary_encodes_like_the_tokenizer(tokenizer, vocabulary):
  text = format_history_prompt(DESCRIPTIONS[:2])
  assert vocabulary.vocab_size == tokenizer.vocab_size
  assert (vocabulary.pad_id, vocabulary.eos_id) == (tokenizer.pad_id, tokenizer.eos_id)
  assert list(vocabulary.encode(text)) == tokenizer.encode(text)
  assert vocabulary.encode_tf(text).numpy().tolist() == tokenizer.encode(text)


def test_train_split_repeats_pairs_by_rounded_weight(task, tokenizer):
  examples = _examples(task.name)
  targets = [tokenizer.decode(e["targets"]) for e in examples]
  assert targets == ["drama, war"] * 2 + ["empty cluster 017"] + ["hiking, trails, camping"] * 2
  prompt = format_history_prompt(DESCRIPTIONS[:2])
  assert examples[0]["inputs"].tolist() == tokenizer.encode(prompt, add_eos=True)
  assert examples[0]["targets"].tolist() == tokenizer.encode("drama, war", add_eos=True)


def test_test_split_reads_test_tsv(task, tokenizer):
  (example,) = _examples(task.name, split="test")
  assert tokenizer.decode(example["targets"]) == DESCRIPTIONS[1]
  assert tokenizer.decode(example["inputs"]) == format_history_prompt(DESCRIPTIONS[3:5])


def test_mixture_serves_the_task(task):
  mixture = seqio.get_mixture_or_task(task.name + "_mixture")
  assert [t.name for t in mixture.tasks] == [task.name]
  ds = mixture.get_dataset(LENGTHS, split="train", shuffle=False, num_epochs=1)
  assert len(list(ds.as_numpy_iterator())) == 5


def test_trimmed_sequences_still_end_in_eos(task, tokenizer):
  examples = _examples(task.name, lengths={"inputs": 6, "targets": 3})
  for e in examples:
    assert len(e["inputs"]) == 6 and e["inputs"][-1] == tokenizer.eos_id
    assert len(e["targets"]) == 3 and e["targets"][-1] == tokenizer.eos_id


def test_registering_again_replaces_task_and_mixture(source_dir, vocabulary, tmp_path):
  other = _counts([[4, 3]], [2], [5], [1.0])
  export_task_source(tmp_path, other, other, DESCRIPTIONS)
  seqio_tasks.register_novel_interest_tasks(source_dir, vocabulary, name="replaced_sft")
  seqio_tasks.register_novel_interest_tasks(tmp_path, vocabulary, name="replaced_sft",
                                            weighting="repeat_count")
  assert len(_examples("replaced_sft")) == 5
  assert len(_examples("replaced_sft", split="test")) == 5
  mixture = seqio.get_mixture_or_task("replaced_sft_mixture")
  assert mixture.tasks[0] is seqio.get_mixture_or_task("replaced_sft")


def test_decoder_feature_converter_puts_loss_on_targets_only(packed_rows, tokenizer):
  rows = packed_rows
  first = rows[0]
  prompt = tokenizer.encode(format_history_prompt(DESCRIPTIONS[:2]), add_eos=True)
  target = tokenizer.encode("drama, war", add_eos=True)
  n = len(prompt) + len(target)
  assert first["decoder_target_tokens"][:n].tolist() == prompt + target
  assert first["decoder_input_tokens"][:n].tolist() == [0] + prompt + target[:-1]
  assert first["decoder_loss_weights"][:n].tolist() == [0] * len(prompt) + [1] * len(target)
  assert first["decoder_positions"][:n].tolist() == list(range(n))
  assert set(first["decoder_segment_ids"][:n].tolist()) == {1}
  assert first["decoder_segment_ids"].max() == 2  # two examples packed into the first row
  assert sum(int(r["decoder_segment_ids"].max()) for r in rows) == 5


def _numpy_features(examples, max_length, pack):
  return features.prefix_lm_examples([e["inputs"].tolist() for e in examples],
                                     [e["targets"].tolist() for e in examples], max_length,
                                     pack=pack)


@pytest.mark.parametrize("pack", [True, False])
def test_numpy_features_equal_seqio_decoder_feature_converter(task, packed_rows, pack):
  rows = packed_rows if pack else _converted(task, pack=False)
  ours = _numpy_features(_examples(task.name), sum(LENGTHS.values()), pack)
  for name in rows[0]:
    np.testing.assert_array_equal(ours[name], np.stack([r[name] for r in rows]), err_msg=name)
  assert (ours.keys() >= rows[0].keys()) and (len(rows[0]) == (6 if pack else 4))


def test_numpy_arrays_of_the_task_source_equal_seqio(packed_rows, source_dir, tokenizer):
  rows = packed_rows
  ours = features.novel_interest_arrays(source_dir / "train.tsv", tokenizer, sum(LENGTHS.values()),
                                        weighting="repeat_weight", seed=None)
  for name in rows[0]:
    np.testing.assert_array_equal(ours[name], np.stack([r[name] for r in rows]), err_msg=name)


def test_missing_split_file_is_named(tmp_path, vocabulary):
  export_task_source(tmp_path, _counts([[0, 1]], [2], [1], [1.0]),
                     _counts([[0, 1]], [2], [1], [1.0]), DESCRIPTIONS)
  (tmp_path / "test.tsv").unlink()
  for validate_rows in (True, False):
    with pytest.raises(TaskSourceError, match="test.tsv: task source file not found"):
      seqio_tasks.register_novel_interest_tasks(tmp_path, vocabulary, name="broken_sft",
                                                validate_rows=validate_rows)


def test_bad_header_is_named(source_dir, vocabulary, tmp_path):
  (tmp_path / "train.tsv").write_text("inputs\ttargets\nhistory: a | b\tc\n")
  (tmp_path / "test.tsv").write_text((source_dir / "test.tsv").read_text())
  for validate_rows in (True, False):
    with pytest.raises(TaskSourceError, match="train.tsv: header must be"):
      seqio_tasks.register_novel_interest_tasks(tmp_path, vocabulary, name="broken_sft",
                                                validate_rows=validate_rows)


def test_header_only_source_is_an_error(source_dir, vocabulary, tmp_path):
  header = (source_dir / "train.tsv").read_text().split("\n")[0]
  (tmp_path / "train.tsv").write_text(header + "\n")
  (tmp_path / "test.tsv").write_text((source_dir / "test.tsv").read_text())
  for validate_rows in (True, False):
    with pytest.raises(TaskSourceError, match="train.tsv: task source has a header but no rows"):
      seqio_tasks.register_novel_interest_tasks(tmp_path, vocabulary, name="broken_sft",
                                                validate_rows=validate_rows)


def test_malformed_row_is_named_with_its_line(source_dir, vocabulary, tmp_path):
  lines = (source_dir / "train.tsv").read_text().split("\n")
  lines[2] = lines[2].replace("\t", " ", 1)
  (tmp_path / "train.tsv").write_text("\n".join(lines))
  (tmp_path / "test.tsv").write_text((source_dir / "test.tsv").read_text())
  with pytest.raises(TaskSourceError, match="train.tsv:3: expected 6 tab-separated fields"):
    seqio_tasks.register_novel_interest_tasks(tmp_path, vocabulary, name="broken_sft")
  assert "broken_sft" not in seqio.TaskRegistry.names()


def test_loss_weight_weighting_is_refused(source_dir, vocabulary):
  with pytest.raises(TaskSourceError, match="weighting='loss_weight'"):
    seqio_tasks.register_novel_interest_tasks(source_dir, vocabulary, name="broken_sft",
                                              weighting="loss_weight")


# ----------------------------------------------------------------------------
# explore.llm.t5x_tasks: MIXTURE_OR_TASK_MODULE for T5X


def _import_t5x_tasks():
  import importlib  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  sys.modules.pop("explore.llm.t5x_tasks", None)
  return importlib.import_module("explore.llm.t5x_tasks")  # what T5X does with the module name


def test_t5x_task_module_registers_the_run_dirs_tasks_on_import(tmp_path, monkeypatch,
                                                                source_dir, tokenizer):
  import shutil  # pylint: disable=g-import-not-at-top
  run = tmp_path / "run"
  shutil.copytree(source_dir, run / "transitions" / "task_source")
  (run / "llm" / "tokenizer").mkdir(parents=True)
  shutil.copyfile(tokenizer.model_path, run / "llm" / "tokenizer" / "spm.model")
  monkeypatch.setenv("EXPLORE_RUN_DIR", str(run))
  monkeypatch.setenv("EXPLORE_TASK_NAME", "t5x_sft")
  module = _import_t5x_tasks()
  assert module.TASK.name == "t5x_sft"
  examples = list(seqio.get_mixture_or_task("t5x_sft_mixture").get_dataset(
      LENGTHS, split="test", shuffle=False, num_epochs=1).as_numpy_iterator())
  prompt = format_history_prompt([DESCRIPTIONS[3], DESCRIPTIONS[4]])
  assert [e["inputs"].tolist() for e in examples] == [tokenizer.encode(prompt, add_eos=True)]
  assert [e["targets"].tolist() for e in examples] == [
      tokenizer.encode(DESCRIPTIONS[1], add_eos=True)]


def test_t5x_task_module_names_what_is_missing(tmp_path, monkeypatch):
  monkeypatch.delenv("EXPLORE_RUN_DIR", raising=False)
  with pytest.raises(ValueError, match="set EXPLORE_RUN_DIR to the run directory"):
    _import_t5x_tasks()
  monkeypatch.setenv("EXPLORE_RUN_DIR", str(tmp_path))
  with pytest.raises(ValueError, match=r"transitions/task_source does not exist; run the"
                     " transitions stage"):
    _import_t5x_tasks()
  (tmp_path / "transitions" / "task_source").mkdir(parents=True)
  with pytest.raises(ValueError, match="EXPLORE_VOCABULARY is not set and .*llm/tokenizer does"
                     " not exist"):
    _import_t5x_tasks()
