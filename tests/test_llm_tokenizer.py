"""The LLM tokenizer: SentencePiece training, the TF-free wrapper and its checks."""

import csv
import io

import numpy as np
import pytest
import sentencepiece as spm

from explore.clusters.descriptions import describe_clusters
from explore.data.schema import ItemCatalog
from explore.llm import tokenizer as tok_lib
from explore.llm.tokenizer import Tokenizer
from explore.llm.tokenizer import TokenizerError

from conftest import DESCRIPTIONS  # noqa: F401  (and the `tokenizer` fixture)


def test_trained_model_uses_the_seqio_special_ids(tokenizer):
  assert (tokenizer.pad_id, tokenizer.eos_id, tokenizer.unk_id) == (0, 1, 2)
  processor = spm.SentencePieceProcessor(model_file=str(tokenizer.model_path))
  assert processor.bos_id() == -1
  assert [processor.id_to_piece(i) for i in range(3)] == ["<pad>", "</s>", "<unk>"]


def test_training_is_deterministic(tmp_path):
  corpus = tok_lib.sentencepiece_corpus(DESCRIPTIONS)
  first = tok_lib.train_sentencepiece(corpus, tmp_path / "a.model", vocab_size=40)
  second = tok_lib.train_sentencepiece(corpus, tmp_path / "b.model", vocab_size=40)
  assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
  assert first.encode("history: drama, war") == second.encode("history: drama, war")


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_too_large_vocab_size_is_capped_to_what_the_corpus_supports(tmp_path, model_type):
  tokenizer = tok_lib.train_sentencepiece(tok_lib.sentencepiece_corpus(DESCRIPTIONS),
                                          tmp_path / "sp.model", vocab_size=5000,
                                          model_type=model_type)
  assert 30 < tokenizer.vocab_size < 5000
  assert Tokenizer.from_file(tmp_path / "sp.model").vocab_size == tokenizer.vocab_size


def test_vocab_size_below_the_character_count_is_an_error(tmp_path):
  needed = len(set("".join(DESCRIPTIONS))) + 3  # characters (space as its own piece) + specials
  with pytest.raises(TokenizerError, match=f"vocab_size=10 is below the {needed} pieces"):
    tok_lib.train_sentencepiece(DESCRIPTIONS, tmp_path / "sp.model", vocab_size=10)
  assert not (tmp_path / "sp.model").exists()


def test_unknown_model_type_is_an_error(tmp_path):
  with pytest.raises(TokenizerError, match="model_type='word'"):
    tok_lib.train_sentencepiece(DESCRIPTIONS, tmp_path / "sp.model", model_type="word")


def test_empty_corpus_is_an_error(tmp_path):
  with pytest.raises(TokenizerError, match="texts is empty"):
    tok_lib.train_sentencepiece([], tmp_path / "sp.model")


def test_corpus_holds_descriptions_and_prompts():
  corpus = tok_lib.sentencepiece_corpus(DESCRIPTIONS, k=2)
  assert corpus[:len(DESCRIPTIONS)] == DESCRIPTIONS
  assert "history: drama, war | warfare, history, documentary" in corpus
  assert len(corpus) == 2 * len(DESCRIPTIONS)


def test_encode_decode_round_trip_with_eos_and_padding(tokenizer):
  text = "history: hiking, trails, camping | drama, war"
  ids = tokenizer.encode(text, add_eos=True)
  assert ids[-1] == tokenizer.eos_id and tokenizer.eos_id not in ids[:-1]
  assert tokenizer.decode(ids + [0, 0]) == text
  assert tokenizer.encode_batch([text, "drama, war"]) == [ids[:-1], tokenizer.encode("drama, war")]


def test_from_file_reads_the_same_model(tokenizer):
  loaded = Tokenizer.from_file(tokenizer.model_path)
  assert loaded.vocab_size == tokenizer.vocab_size
  assert loaded.encode("cooking, pasta") == tokenizer.encode("cooking, pasta")


def test_from_file_missing_file_names_it(tmp_path):
  with pytest.raises(TokenizerError, match="nowhere.model: sentencepiece model file not found"):
    Tokenizer.from_file(tmp_path / "nowhere.model")


def test_from_file_rejects_a_model_without_pad_id_zero(tmp_path):
  writer = io.BytesIO()
  spm.SentencePieceTrainer.train(  # Llama-style ids: unk 0, bos 1, eos 2, no pad
      sentence_iterator=iter(DESCRIPTIONS), model_writer=writer, vocab_size=35,
      unk_id=0, bos_id=1, eos_id=2, pad_id=-1, minloglevel=2)
  (tmp_path / "llama.model").write_bytes(writer.getvalue())
  with pytest.raises(TokenizerError, match="llama.model: pad_id=-1"):
    Tokenizer.from_file(tmp_path / "llama.model")


def test_from_file_rejects_a_file_that_is_not_a_model(tmp_path):
  (tmp_path / "junk.model").write_bytes(b"not a model")
  with pytest.raises(TokenizerError, match="junk.model: not a sentencepiece model"):
    Tokenizer.from_file(tmp_path / "junk.model")


def test_check_vocab_matches(tokenizer):
  tok_lib.check_vocab_matches(tokenizer, tokenizer.vocab_size)
  with pytest.raises(TokenizerError, match=f"has {tokenizer.vocab_size} token ids, the model's "
                     f"vocab_size is {tokenizer.vocab_size + 1}"):
    tok_lib.check_vocab_matches(tokenizer, tokenizer.vocab_size + 1)


def test_check_vocab_matches_with_padding_accepts_only_larger_models(tokenizer):
  tok_lib.check_vocab_matches(tokenizer, 128, allow_padding=True)
  with pytest.raises(TokenizerError, match="needs at least"):
    tok_lib.check_vocab_matches(tokenizer, tokenizer.vocab_size - 1, allow_padding=True)


def test_distinct_descriptions_pass_the_uniqueness_check(tokenizer):
  tok_lib.check_descriptions_tokenize_uniquely(tokenizer, DESCRIPTIONS)


def test_descriptions_merged_by_normalization_are_reported(tokenizer):
  texts = DESCRIPTIONS + ["drama,  war"]  # extra space: sentencepiece normalizes it away
  with pytest.raises(TokenizerError, match=r"clusters 2 \('drama, war'\) and 5 \('drama,  war'\)"):
    tok_lib.check_descriptions_tokenize_uniquely(tokenizer, texts)


def test_descriptions_merged_by_unknown_characters_are_reported(tokenizer):
  texts = ["caf\u00e9, jazz", "caf\u00e8, jazz"]  # neither accent is in the training text
  with pytest.raises(TokenizerError, match="clusters 0 .* and 1 .* tokenize to the same ids"):
    tok_lib.check_descriptions_tokenize_uniquely(tokenizer, texts)


def test_movielens_title_clusters_tokenize_uniquely(movielens_small_dir, tmp_path):
  with open(movielens_small_dir / "movies.csv", newline="", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  ids = np.asarray([int(r["movieId"]) for r in rows])
  catalog = ItemCatalog(item_ids=ids, title=np.asarray([r["title"] for r in rows]),
                        text={"genres": np.asarray([r["genres"].replace("|", " ") for r in rows])})
  num_clusters = 128
  descriptions = describe_clusters(catalog, ids % num_clusters, num_clusters).texts.tolist()
  tokenizer = tok_lib.train_sentencepiece(tok_lib.sentencepiece_corpus(descriptions),
                                          tmp_path / "sp.model", vocab_size=32000)
  assert 100 < tokenizer.vocab_size < 32000  # capped to the corpus
  tok_lib.check_descriptions_tokenize_uniquely(tokenizer, descriptions)
  assert all(tokenizer.decode(tokenizer.encode(t)) == t for t in descriptions)
