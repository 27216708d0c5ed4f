"""Back ends: what makes the output files from the (rewritten) graph, one folder each behind the
interface of :mod:`graph_convert.backends.base`. :data:`BACKENDS` is the one place a back end is
registered (by a "module:attribute" path, imported only when that back end is used, so choosing
one loads nothing of another); :func:`register` adds one at run time (tests, plugins)."""
from __future__ import annotations

import importlib

from graph_convert.backends.base import Backend, Stage

# name -> its Backend, or "module:attribute" where it is; the first is the default, ``auto``
# tries them in this order
BACKENDS: dict[str, str | Backend] = {
    "graph-convert": "graph_convert.backends.tensorflow.backend:BACKEND",
    "onnx2tf": "graph_convert.backends.onnx2tf.backend:BACKEND",
}
DEFAULT = "graph-convert"
AUTO = "auto"


def names() -> tuple[str, ...]:
    """Every ``--backend`` value: the registered back ends and ``auto``."""
    return (*BACKENDS, AUTO)


def get(name: str) -> Backend:
    """The back end registered as ``name`` (imported on first use)."""
    entry = BACKENDS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = getattr(importlib.import_module(module), attr)
        if not isinstance(entry, Backend) or entry.name != name:
            raise TypeError(f"back end {name!r}: {BACKENDS[name]} is not a Backend named {name!r}")
        BACKENDS[name] = entry
    return entry


def register(name: str, backend: str | Backend | None) -> str | Backend | None:
    """Add (or replace) the back end ``name`` ("module:attribute", or the Backend itself; None
    removes it). Returns what was registered as ``name`` before, to put it back."""
    before = BACKENDS.get(name)
    if backend is None:
        BACKENDS.pop(name, None)
    else:
        BACKENDS[name] = backend
    return before


__all__ = ["AUTO", "BACKENDS", "DEFAULT", "Backend", "Stage", "get", "names", "register"]
