"""Optional dependencies, installed with an extra of the package (`pip install 'explore[NAME]'`).

The core install runs every stage; heavier ecosystems (seqio, which brings
TensorFlow) come with an extra and are imported only by the modules that use
them, through `require`, so a missing one is one clear error naming the extra.
"""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
  """An optional dependency that is not installed, with the extra that installs it."""


def require(module: str, extra: str, needed_by: str) -> ModuleType:
  """Imports `module`, or raises `MissingExtraError` naming `extra` and what needs it."""
  try:
    return importlib.import_module(module)
  except ImportError as e:
    raise MissingExtraError(
        f"{needed_by} needs {module!r}, which is not installed ({e}); install it with: "
        f"pip install 'explore[{extra}]'") from None
