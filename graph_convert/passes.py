"""Deprecated name of :mod:`graph_convert.pass_manager` (the pass framework), kept so that plugins
written against 0.1 (``from graph_convert.passes import Pass``) keep working. New code imports
``from graph_convert import Pass, PassResult, Registry`` (or from ``graph_convert.pass_manager``);
the built-in passes themselves are the ``graph_convert_passes`` package (``passes/`` in the repo)."""
from __future__ import annotations

from graph_convert.pass_manager import *  # noqa: F401,F403
from graph_convert.pass_manager import PassManager, PassRecord, builtin_registry  # noqa: F401
