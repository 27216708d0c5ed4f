"""Plugin discovery: a conversion's :class:`~graph_convert.pass_manager.Registry` filled with the
built-in passes and transpose handlers (``passes/``, installed as ``graph_convert_passes``), the
TensorFlow back end's emitter table, installed entry-point plugins (group ``graph_convert.plugins``)
and the ``--plugin`` modules, in that order (later entries win)."""
from __future__ import annotations

import importlib
import importlib.metadata
from typing import Callable

from graph_convert.errors import ConvertError
from graph_convert.pass_manager import Registry, one_line

ENTRY_POINT_GROUP = "graph_convert.plugins"


def load_entry_point(ep) -> Callable[[Registry], None]:
    try:
        return ep.load()
    except (Exception, SystemExit) as e:
        raise ConvertError(f"plugin {ep.value!r} (entry point {ep.name!r}): cannot import it ({one_line(e)})") from e


def builtin_passes():
    """The built-in passes: in a source checkout ``passes/`` beside ``graph_convert/`` (imported
    under its installed name, so a worktree uses its own), else the installed
    ``graph_convert_passes``; never a ``passes`` module from the user's path."""
    import sys

    if "graph_convert_passes" not in sys.modules:
        load_checkout_package("graph_convert_passes", "passes")
    return importlib.import_module("graph_convert_passes")


def load_checkout_package(name: str, folder_name: str) -> None:
    """Import ``folder_name/`` of the checkout holding this ``graph_convert`` as package ``name``
    (nothing when this is an installed copy without that folder)."""
    import importlib.util
    import os
    import sys

    folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), folder_name)
    init = os.path.join(folder, "__init__.py")
    if name in sys.modules or not os.path.isfile(init):
        return
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def builtin_registry(plugins: list[str] | tuple[str, ...] = (), *, entry_points: bool = True) -> Registry:
    """Registry with the built-in passes, installed entry-point plugins, then ``plugins``."""
    reg = Registry()
    eps = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)) if entry_points else []
    # the built-ins always come from our own package (the "builtin" entry point names it for
    # discovery; loading it by that name could pick up a stale install or another checkout)
    reg.load("graph_convert_passes", builtin_passes().register)
    # the built-in emitters are the TensorFlow back end's table, registered like a plugin's
    from graph_convert.backends.tensorflow import ops as tf_ops

    reg.load("graph_convert.backends.tensorflow.ops", tf_ops.register)
    for ep in eps:
        if ep.name != "builtin":
            reg.load(f"{ep.value} (entry point {ep.name})", load_entry_point(ep))
    for mod in plugins:
        reg.load(mod)
    return reg
