"""Gin configuration in the T5X convention.

- `--gin_file` is repeatable; later files win. Each is resolved against the
  search paths, which always include the package's `configs/` folder.
- `--gin_bindings` and the shorthand `--gin.NAME=VALUE` apply after the files.
- Values a run file must supply are macros set to `%gin.REQUIRED`; a missing one
  is reported with the file that declares it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import gin

from explore import artifacts

# configs/ beside the package in a checkout or editable install; under
# sys.prefix after a plain install (setup.py ships it as data files).
CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"
INSTALLED_CONFIGS_DIR = Path(sys.prefix) / "explore" / "configs"
_GIN_SHORTHAND = "--gin."
_REQUIRED_MACRO = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*=\s*%gin\.REQUIRED\s*(#.*)?$",
                             re.MULTILINE)
_INCLUDE = re.compile(r"^\s*include\s+['\"]([^'\"]+)['\"]", re.MULTILINE)


class ConfigError(ValueError):
  """A gin file, binding or flag that cannot be used, with the culprit named."""


def rewrite_gin_args(argv: Sequence[str]) -> list[str]:
  """Turns T5X-style `--gin.NAME=VALUE` arguments into `--gin_bindings=NAME = VALUE`."""
  out = []
  for arg in argv:
    if not arg.startswith(_GIN_SHORTHAND):
      out.append(arg)
      continue
    name, sep, value = arg[len(_GIN_SHORTHAND):].partition("=")
    if not sep or not name or not value:
      raise ConfigError(
          f"malformed flag {arg!r}: expected --gin.NAME=VALUE, e.g. --gin.RUN_DIR=\"'/tmp/run'\"")
    out.append(f"--gin_bindings={name} = {value}")
  return out


def search_paths(extra: Iterable[str] = ()) -> list[Path]:
  """User search paths first, then the package's `configs/` (always present)."""
  paths = [Path(p) for p in extra if p]
  for configs in (CONFIGS_DIR, INSTALLED_CONFIGS_DIR):
    if configs not in paths and configs.is_dir():
      paths.append(configs)
  return paths


def resolve_gin_file(name: str, paths: Sequence[Path]) -> Path:
  """Finds a gin file as given, or relative to each search path in order."""
  candidates = [Path(name)] + [p / name for p in paths]
  if Path(name).is_absolute():
    candidates = candidates[:1]
  for candidate in candidates:
    if candidate.is_file():
      return candidate.resolve()
  raise ConfigError(
      f"gin file {name!r} not found (looked in: {', '.join(str(c) for c in candidates)})")


def _required_macro_sources(path: Path, paths: Sequence[Path], out: dict[str, str],
                            seen: set[Path]) -> None:
  """Records, for each macro declared `%gin.REQUIRED`, the file that declares it."""
  if path in seen:
    return
  seen.add(path)
  text = path.read_text()
  for included in _INCLUDE.findall(text):
    try:
      _required_macro_sources(resolve_gin_file(included, [path.parent, *paths]), paths, out, seen)
    except ConfigError:
      pass  # gin itself reports a missing include when parsing.
  for match in _REQUIRED_MACRO.finditer(text):
    out.setdefault(match.group(1), str(path))


def _is_required(value: Any) -> bool:
  return (isinstance(value, gin.config.ConfigurableReference)
          and value.scoped_selector.split("/")[0] == "gin.REQUIRED")


@contextlib.contextmanager
def _quiet_gin_file_search():
  """Gin logs an ERROR for every search path a file is not in; missing files raise anyway."""
  logger = logging.getLogger()
  level = logger.level
  logger.setLevel(logging.CRITICAL)
  try:
    yield
  finally:
    logger.setLevel(level)


def parse_gin(gin_files: Sequence[str], gin_bindings: Sequence[str],
              gin_search_paths: Sequence[str] = (), check_required: bool = True) -> list[Path]:
  """Parses files then bindings into the global gin config; returns the files used.

  `check_required=False` accepts required macros left unset (for `explore help`).

  Raises:
    ConfigError: naming the file or binding that failed, or a required macro
      left unset together with the file that declares it.
  """
  paths = search_paths(gin_search_paths)
  for p in paths:
    gin.add_config_file_search_path(str(p))
  resolved = [resolve_gin_file(f, paths) for f in gin_files]
  declared: dict[str, str] = {}
  seen: set[Path] = set()
  for path in resolved:
    _required_macro_sources(path, paths, declared, seen)
    try:
      with _quiet_gin_file_search():
        gin.parse_config_file(str(path))
    except (ValueError, KeyError, IOError, SyntaxError) as e:
      raise ConfigError(f"gin file {path}: {e}") from None
  for binding in gin_bindings:
    try:
      gin.parse_config(binding)
    except (ValueError, KeyError, SyntaxError) as e:
      raise ConfigError(f"gin binding {binding!r}: {_first_line(e)}") from None
  if check_required:
    check_required_macros(declared)
  return resolved


def _first_line(e: Exception) -> str:
  return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_required_macros(declared: dict[str, str]) -> None:
  """Fails on the first macro that is still `%gin.REQUIRED` after all bindings."""
  missing = []
  for name, source in declared.items():
    try:
      value = gin.query_parameter(f"%{name}")
    except ValueError:
      continue
    if _is_required(value):
      missing.append((name, source))
  if missing:
    lines = [f"required gin macro {name} is not set (declared %gin.REQUIRED in {source}); "
             f"set it in a gin file or with --gin.{name}=VALUE" for name, source in missing]
    raise ConfigError("\n".join(lines))


def canonical_value(value: Any) -> Any:
  """A JSON-able form of a gin value, with macros resolved and references expanded.

  Used to fingerprint a stage's configuration: two configs that differ only in
  how a value was spelled (a macro, a literal) give the same form.
  """
  if isinstance(value, gin.config.ConfigurableReference):
    selector = value.scoped_selector
    if selector.endswith("gin.macro"):
      macro = selector[: -len("/gin.macro")]
      return canonical_value(gin.query_parameter(f"%{macro}"))
    name = selector.split("/")[-1]
    return {"@" + name + ("()" if value.evaluate else ""): configurable_bindings(selector)}
  if isinstance(value, (list, tuple)):
    return [canonical_value(v) for v in value]
  if isinstance(value, dict):
    return {str(k): canonical_value(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
  if value is None or isinstance(value, (bool, int, float, str)):
    return value
  return repr(value)


def is_registered(name: str) -> bool:
  return gin.config._REGISTRY.get_match(name) is not None  # pylint: disable=protected-access


def configurable_bindings(name: str) -> dict[str, Any]:
  """A configurable's parameters in canonical form: code defaults overlaid with bindings.

  Defaults count, so a changed default in the code is seen as a changed config,
  and binding a parameter to its default value changes nothing.
  """
  params: dict[str, Any] = {}
  configurable = gin.config._REGISTRY.get_match(name)  # pylint: disable=protected-access
  if configurable is not None:
    for param in inspect.signature(configurable.wrapped).parameters.values():
      if param.default is not inspect.Parameter.empty and param.default is not gin.REQUIRED:
        params[param.name] = param.default
  try:
    params.update(gin.get_bindings(name, resolve_references=False))
  except ValueError:
    pass
  return {k: canonical_value(v) for k, v in sorted(params.items())}


def _references(value: Any):
  """The gin references (configurables and macros) inside a binding value, nested ones too."""
  if isinstance(value, gin.config.ConfigurableReference):
    yield value
  elif isinstance(value, (list, tuple)):
    for v in value:
      yield from _references(v)
  elif isinstance(value, dict):
    for v in value.values():
      yield from _references(v)


def configurables_config_str(names: Sequence[str]) -> str:
  """Gin text that sets `names` (and what their values reference) as they are now.

  Each configurable's parameters are its code defaults overlaid with its
  bindings, as `configurable_bindings` reads them, so parsing the text
  reproduces the same stage config; configurables and macros referenced by a
  value are written too. The operative config of one stage, unlike
  `gin.operative_config_str()`, which covers whatever ran in this process.
  """
  # pylint: disable=protected-access
  subset: dict[tuple[str, str], dict[str, Any]] = {}
  pending = [("", name) for name in names]
  while pending:
    scope, name = pending.pop()
    configurable = gin.config._REGISTRY.get_match(name)
    if configurable is None or (scope, configurable.selector) in subset:
      continue
    key = (scope, configurable.selector)
    params: dict[str, Any] = {}
    if configurable.wrapped is not gin.config.macro:
      for param in inspect.signature(configurable.wrapped).parameters.values():
        bindable = (param.name not in (configurable.denylist or ())
                    and (not configurable.allowlist or param.name in configurable.allowlist))
        if (bindable and param.default is not inspect.Parameter.empty
            and param.default is not gin.REQUIRED):
          params[param.name] = param.default
    params.update(gin.config._CONFIG.get(key, {}))
    subset[key] = params
    for reference in _references(list(params.values())):
      ref_scope, _, ref_name = reference.scoped_selector.rpartition("/")
      if ref_name == "gin.macro":
        pending.append((ref_scope, "gin.macro"))
      else:
        pending.append(("", ref_name))
  return gin.config._config_str(subset)
  # pylint: enable=protected-access
