"""Serving: a run's table, vectors and model behind a recommend API, a CLI and an HTTP server.

`Explorer.load(run_dir)` reads the run once; `recommend` / `recommend_batch`
answer exploration slates (docs/serving.md). Exports are resolved lazily so
that `explore.main` can import the command-line module without starting JAX.
"""

import importlib

_EXPORTS = {
    "Explorer": "explore.serving.explorer",
    "ServingConfig": "explore.serving.explorer",
    "SlateBatch": "explore.serving.explorer",
    "ServingError": "explore.serving.histories",
    "UnknownIdError": "explore.serving.histories",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name in _EXPORTS:
    return getattr(importlib.import_module(_EXPORTS[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
