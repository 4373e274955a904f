"""BUILD files: every module and test has a target whose deps match its imports."""

import subprocess
import sys

import bazel_build  # tools/ is on sys.path (conftest.py)


def test_build_files_agree_with_imports():
  problems = bazel_build.check()
  assert not problems, "\n".join(problems + ["run: python3 tools/bazel_build.py --write"])


def test_check_catches_a_module_without_target_and_a_missing_dep(tmp_path, monkeypatch):
  pkg = tmp_path / "explore"
  pkg.mkdir()
  (pkg / "__init__.py").write_text("")
  (pkg / "a.py").write_text("import numpy\n")
  (pkg / "b.py").write_text("from explore import a\nimport gin\n")
  monkeypatch.setattr(bazel_build, "ROOT", tmp_path)
  monkeypatch.setattr(bazel_build, "PYTHON_FOLDERS", ("explore",))
  (pkg / "BUILD").write_text(bazel_build.render_build(pkg))
  assert bazel_build.check() == []
  (pkg / "c.py").write_text("")
  (pkg / "b.py").write_text("from explore import a\nimport gin\nimport jax\n")
  problems = bazel_build.check()
  assert "explore/c.py has no target in explore/BUILD" in problems
  assert any("b.py: deps disagree" in p and "jax" in p for p in problems)


def test_checker_command_exits_zero_on_this_repository():
  result = subprocess.run([sys.executable, "tools/bazel_build.py", "--check"],
                          cwd=bazel_build.ROOT, capture_output=True, text=True)
  assert result.returncode == 0, result.stdout
