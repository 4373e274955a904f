"""A lighter install: seqio (TensorFlow) is an extra; the stages never import it."""

import ast
import pathlib
import sys

import pytest

from explore import extras
from test_cli import modules_imported_by

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _setup_kwargs():
  tree = ast.parse((REPO_ROOT / "setup.py").read_text())
  call = next(node for node in ast.walk(tree) if isinstance(node, ast.Call)
              and getattr(node.func, "attr", "") == "setup")
  return {kw.arg: kw.value for kw in call.keywords}


def _names(requirements):
  return {r.split(">")[0].split("=")[0].split("[")[0] for r in requirements}


def test_core_install_has_no_seqio_tensorflow_or_grain_and_declares_minimums():
  kwargs = _setup_kwargs()
  core = ast.literal_eval(kwargs["install_requires"])
  assert not _names(core) & {"seqio", "tensorflow", "grain"}
  assert all(">=" in r for r in core), [r for r in core if ">=" not in r]
  extras_require = ast.literal_eval(kwargs["extras_require"])
  assert _names(extras_require["seqio"]) == {"seqio"}
  assert {"seqio", "pytest", "pytest-xdist", "tokenizers"} <= _names(extras_require["dev"])


def test_running_every_stage_module_imports_no_tensorflow():
  code = ("from explore import stages; stages.load_builtin_stages(); "
          "from explore.llm import tokenizer")
  assert modules_imported_by(code, ("tensorflow", "seqio")) == "[]"


def test_seqio_tasks_without_seqio_names_the_extra(monkeypatch):
  monkeypatch.setitem(sys.modules, "seqio", None)  # as if not installed
  monkeypatch.delitem(sys.modules, "explore.llm.seqio_tasks", raising=False)
  with pytest.raises(extras.MissingExtraError,
                     match=r"explore.llm.seqio_tasks needs 'seqio'.*pip install 'explore\[seqio\]'"):
    import explore.llm.seqio_tasks  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
