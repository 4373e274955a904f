"""A readable terminal: third-party libraries log at WARNING unless --verbosity asks for more.

Orbax (through absl), JAX, Flax, TensorFlow and friends log many INFO lines
per checkpoint or compile. `quiet_third_party(verbosity)` keeps the
project's own INFO lines (and those of user modules, e.g. a gin-imported
stage) and drops INFO and DEBUG records that come from an installed
third-party package, unless `verbosity >= 1` (`--verbosity=1`). Warnings
and errors always pass.

A record is third-party when its logger is one of `THIRD_PARTY_LOGGERS` (or a
child of one), or when the file that logged it lies under an installed
`site-packages`/`dist-packages` folder and not inside the `explore` package.
"""

from __future__ import annotations

import logging
import os

from absl import logging as absl_logging

THIRD_PARTY_LOGGERS = ("jax", "jaxlib", "flax", "orbax", "optax", "tensorflow", "tensorstore",
                       "etils", "grain", "seqio", "absl.testing", "urllib3", "httpx",
                       "transformers", "torch", "matplotlib", "PIL", "uvicorn")
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
_INSTALLED = (os.sep + "site-packages" + os.sep, os.sep + "dist-packages" + os.sep)


def is_third_party(record: logging.LogRecord) -> bool:
  """Whether `record` was logged by an installed library rather than by explore or the user."""
  path = os.path.abspath(record.pathname or "")
  if path.startswith(_PACKAGE_DIR):
    return False
  name = record.name or ""
  if any(name == n or name.startswith(n + ".") for n in THIRD_PARTY_LOGGERS):
    return True
  return any(marker in path for marker in _INSTALLED)


class ThirdPartyInfoFilter(logging.Filter):
  """Drops third-party records below WARNING."""

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or not is_third_party(record)


_FILTER = ThirdPartyInfoFilter()


def quiet_third_party(verbosity: int) -> bool:
  """Installs the filter on absl's handler unless `verbosity >= 1`; True when installed.

  Calling it again with `verbosity >= 1` removes the filter.
  """
  handler = absl_logging.get_absl_handler()
  if verbosity >= 1:
    handler.removeFilter(_FILTER)
    return False
  if _FILTER not in handler.filters:
    handler.addFilter(_FILTER)
  return True
