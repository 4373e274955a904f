r"""Keeps the Bazel BUILD files in step with the Python imports.

  python3 tools/bazel_build.py --check   # exit 1 listing every mismatch
  python3 tools/bazel_build.py --write   # regenerate BUILD files from imports

One BUILD file per Python folder (explore/**, tests, bench). Each module is a
`py_library` (tests are `py_test`, bench scripts and the CLI `py_binary`); its
deps are the project modules it imports (`//explore/data:schema`) and
`requirement("pkg")` for third-party packages. The check parses BUILD files as
Starlark (a Python subset) and compares each target's deps with the imports of
its sources, so a new module without a target, or an import without a dep,
fails `tests/test_bazel_build.py`.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PYTHON_FOLDERS = ("explore", "tests", "bench", "tools")
CLI_MODULE = "explore/main.py"

# Import name -> pip distribution (the rules_python `requirement()` name).
THIRD_PARTY = {
    "absl": "absl-py", "flax": "flax", "gin": "gin-config", "grain": "grain", "jax": "jax",
    "jaxlib": "jax", "numpy": "numpy", "optax": "optax", "orbax": "orbax-checkpoint",
    "pyarrow": "pyarrow", "pytest": "pytest", "scipy": "scipy", "seqio": "seqio",
    "sentencepiece": "sentencepiece", "tensorflow": "tensorflow", "safetensors": "safetensors",
    "torch": "torch", "transformers": "transformers", "sklearn": "scikit-learn",
    "ml_dtypes": "ml-dtypes", "tokenizers": "tokenizers", "tqdm": "tqdm",
    "starlette": "starlette", "uvicorn": "uvicorn", "matplotlib": "matplotlib",
    "recbole": "recbole",
}
# Files a module reads at run time besides Python (the serving page's HTML and JS).
DATA_GLOBS = {"explore/serving/server.py": 'glob(["static/*"])'}
HEADER = ('load("@rules_python//python:defs.bzl", "py_binary", "py_library", "py_test")\n'
          'load("@pip//:requirements.bzl", "requirement")\n\n'
          'package(default_visibility = ["//visibility:public"])\n')


class BuildError(ValueError):
  pass


def python_files() -> list[Path]:
  files = []
  for folder in PYTHON_FOLDERS:
    files.extend(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)
  return sorted(files)


def _module_file(dotted: str) -> Path | None:
  """The file of a project module name (a module or a package), if any."""
  base = ROOT.joinpath(*dotted.split("."))
  if base.with_suffix(".py").is_file():
    return base.with_suffix(".py")
  if (base / "__init__.py").is_file():
    return base / "__init__.py"
  return None


def target_of(path: Path) -> str:
  """The Bazel label of a source file's target."""
  rel = path.relative_to(ROOT)
  package = rel.parent.as_posix()
  name = rel.parent.name if rel.name == "__init__.py" else rel.stem
  return f"//{package}:{name}"


def _imported_names(path: Path) -> list[str]:
  """Dotted names a file imports; `from a import b` gives a.b when b is a module, else a.

  Optional dependencies imported through `explore.extras.require` count as imports.
  """
  tree = ast.parse(path.read_text(), filename=str(path))
  names: list[str] = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      names.extend(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for alias in node.names:
        full = f"{node.module}.{alias.name}"
        names.append(full if _module_file(full) is not None else node.module)
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "require" and getattr(node.func.value, "id", "") == "extras"
          and node.args and isinstance(node.args[0], ast.Constant)):
      names.append(node.args[0].value)  # an optional import: extras.require("seqio", ...)
  return names


def imported_deps(path: Path) -> set[str]:
  """Labels of the targets a file's imports need (project targets and requirements)."""
  deps: set[str] = set()
  for name in _imported_names(path):
    top = name.split(".")[0]
    if top in THIRD_PARTY:
      deps.add(f'requirement("{THIRD_PARTY[top]}")')
    elif top in sys.stdlib_module_names or top == "__future__":
      continue
    elif top in PYTHON_FOLDERS and _module_file(name) is not None:
      deps.add(target_of(_module_file(name)))
    elif (path.parent / f"{top}.py").is_file():  # a helper module beside the file (tests)
      deps.add(target_of(path.parent / f"{top}.py"))
    elif (ROOT / "tools" / f"{top}.py").is_file():  # developer tools, on the tests' path
      deps.add(target_of(ROOT / "tools" / f"{top}.py"))
    elif (ROOT / "bench" / f"{top}.py").is_file():  # a benchmark a test imports
      deps.add(target_of(ROOT / "bench" / f"{top}.py"))
    else:
      raise BuildError(f"{path.relative_to(ROOT)}: import {name!r} is neither the project, the "
                       "standard library nor a known package; add it to THIRD_PARTY in "
                       "tools/bazel_build.py")
  deps.discard(target_of(path))
  return deps


def _local(label: str, package: str) -> str:
  prefix = f"//{package}:"
  return ":" + label[len(prefix):] if label.startswith(prefix) else label


def _starlark_label(dep: str) -> str:
  return dep if dep.startswith("requirement(") else f'"{dep}"'


def _rule_for(path: Path) -> str:
  rel = path.relative_to(ROOT)
  if rel.parts[0] == "tests" and rel.name.startswith("test_"):
    return "py_test"
  if rel.parts[0] in ("bench", "tools"):
    return "py_binary"
  return "py_library"


def render_build(folder: Path) -> str:
  """The BUILD file text for one folder, from its sources' imports."""
  package = folder.relative_to(ROOT).as_posix()
  blocks = [HEADER]
  for path in sorted(folder.glob("*.py")):
    name = target_of(path).split(":")[1]
    deps = sorted(_local(d, package) for d in imported_deps(path))
    rules = [(_rule_for(path), name)]
    if path.relative_to(ROOT).as_posix() == CLI_MODULE:
      rules.append(("py_binary", "cli"))  # the `explore` command (//:explore)
    for rule, target in rules:
      if rule == "py_test" and (folder / "conftest.py").exists():
        deps = sorted(set(deps) | {":conftest"})
      lines = [f"{rule}(", f'    name = "{target}",', f'    srcs = ["{path.name}"],']
      if rule == "py_binary":
        lines.append(f'    main = "{path.name}",')
      if rule == "py_test":
        lines.append('    data = ["//:configs"],')
      if path.relative_to(ROOT).as_posix() in DATA_GLOBS:
        lines.append(f"    data = {DATA_GLOBS[path.relative_to(ROOT).as_posix()]},")
      if deps:
        lines.append("    deps = [")
        lines.extend(f"        {_starlark_label(d)}," for d in deps)
        lines.append("    ],")
      lines.append(")")
      blocks.append("\n".join(lines) + "\n")
  return "\n".join(blocks)


def python_folders() -> list[Path]:
  return sorted({p.parent for p in python_files()})


def parse_build(path: Path) -> dict[str, dict]:
  """Targets of a BUILD file: name -> {rule, srcs, deps} (deps as label strings)."""
  tree = ast.parse(path.read_text(), filename=str(path))
  targets = {}
  for node in tree.body:
    if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call)
            and isinstance(node.value.func, ast.Name)):
      continue
    call = node.value
    if call.func.id not in ("py_library", "py_binary", "py_test"):
      continue
    kwargs = {kw.arg: kw.value for kw in call.keywords}
    name = ast.literal_eval(kwargs["name"])
    srcs = ast.literal_eval(kwargs.get("srcs", ast.List(elts=[])))
    deps = set()
    for elt in getattr(kwargs.get("deps"), "elts", []):
      deps.add(ast.unparse(elt).replace("'", '"') if isinstance(elt, ast.Call)
               else ast.literal_eval(elt))
    targets[name] = {"rule": call.func.id, "srcs": srcs, "deps": deps}
  return targets


def check() -> list[str]:
  """Every mismatch between BUILD files and the code, one line each."""
  problems = []
  for folder in python_folders():
    build = folder / "BUILD"
    package = folder.relative_to(ROOT).as_posix()
    if not build.exists():
      problems.append(f"{package}/BUILD is missing")
      continue
    targets = parse_build(build)
    for path in sorted(folder.glob("*.py")):
      owners = [t for t in targets.values() if path.name in t["srcs"]]
      if not owners:
        problems.append(f"{package}/{path.name} has no target in {package}/BUILD")
        continue
      want = {_local(d, package) for d in imported_deps(path)} - {":conftest"}
      for target in owners:
        have = {d for d in target["deps"] if d != ":conftest"}  # pytest loads conftest itself
        if have != want:
          missing, extra = sorted(want - have), sorted(have - want)
          problems.append(f"{package}/BUILD target for {path.name}: deps disagree with imports "
                          f"(missing {missing}, not imported {extra})")
  return problems


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write", action="store_true", help="regenerate the BUILD files")
  parser.add_argument("--check", action="store_true", help="report mismatches (default)")
  args = parser.parse_args()
  if args.write:
    for folder in python_folders():
      (folder / "BUILD").write_text(render_build(folder))
  problems = check()
  for line in problems:
    print(line)
  return 1 if problems else 0


if __name__ == "__main__":
  sys.exit(main())
