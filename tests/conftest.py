"""Test setup: JAX on CPU with 8 emulated devices, set before JAX is imported."""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pathlib
import sys

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "tools"))  # developer tools tested here (bazel_build)
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
MOVIELENS_SMALL = SHARED_DATA / "ml-latest-small"


@pytest.fixture
def clean_gin():
  """An empty global gin config before and after the test."""
  import gin  # pylint: disable=g-import-not-at-top
  gin.clear_config()
  yield
  gin.clear_config()


@pytest.fixture
def movielens_small_dir():
  """The real MovieLens latest-small folder beside the checkout; skips where absent."""
  if not (MOVIELENS_SMALL / "ratings.csv").exists():
    pytest.skip(f"MovieLens latest-small not found at {MOVIELENS_SMALL} (../shared/data beside the checkout)")
  return MOVIELENS_SMALL


# Cluster descriptions for tokenizer tests: two share a prefix ("drama, war" / "warfare").
DESCRIPTIONS = ["hiking, trails, camping", "cooking, pasta, italian", "drama, war",
                "warfare, history, documentary", "empty cluster 017"]


@pytest.fixture
def tokenizer(tmp_path):
  """A SentencePiece tokenizer trained on DESCRIPTIONS and their prompts."""
  from explore.llm import tokenizer as tok_lib  # pylint: disable=g-import-not-at-top
  return tok_lib.train_sentencepiece(tok_lib.sentencepiece_corpus(DESCRIPTIONS),
                                     tmp_path / "sp.model", vocab_size=1000)
