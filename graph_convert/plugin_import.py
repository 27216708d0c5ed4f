"""Importing a plugin named with ``--plugin`` / ``plugins=[...]``: a module name (looked up on
the Python path, then in the current folder, as ``python -m`` would) or a file path
(``path/to/my_plugin.py``, or a package folder). Light (no graph, no TensorFlow), so the command
line checks that a plugin exists before any heavy import; :mod:`graph_convert.plugins` fills a
registry with what it imports."""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

from graph_convert.errors import ConvertError


def is_plugin_path(plugin: str) -> bool:
    """``--plugin path/to/my_plugin.py`` (or a package folder) rather than a module name."""
    return plugin.endswith(".py") or os.sep in plugin or (os.altsep is not None and os.altsep in plugin)


def plugin_location(plugin: str) -> str | None:
    """The file (or package folder) a plugin comes from, without importing it; None when it
    cannot be found (its load then says why)."""
    if is_plugin_path(plugin):
        return os.path.abspath(plugin) if os.path.exists(plugin) else None
    try:
        spec = importlib.util.find_spec(plugin)
    except Exception:  # a broken parent package is reported when the plugin is loaded
        spec = None
    if spec is None and not _cwd_searched():
        top = plugin.partition(".")[0]
        for cand in (os.path.join(os.getcwd(), top + ".py"), os.path.join(os.getcwd(), top)):
            if os.path.exists(cand):
                return os.path.abspath(cand)
    if spec is None or not spec.origin or not os.path.exists(spec.origin):
        return None
    return os.path.dirname(spec.origin) if spec.submodule_search_locations else spec.origin


def _cwd_searched() -> bool:
    """Whether imports already look in the current folder (``python -m``, ``python -c``)."""
    return "" in sys.path or os.getcwd() in sys.path


def import_plugin(plugin: str):
    """Import a plugin given as a module name or as a file path. A module name is looked up on
    the Python path, then in the current folder (as ``python -m`` would: the README's
    ``my_plugin.py`` beside the user works without PYTHONPATH); a path (``path/to/my_plugin.py``
    or a package folder) is imported from that file, under its own name."""
    if is_plugin_path(plugin):
        return _import_plugin_file(plugin)
    try:
        return importlib.import_module(plugin)
    except ModuleNotFoundError as e:
        if e.name != plugin.partition(".")[0] or _cwd_searched():
            raise
        cwd = os.getcwd()
        sys.path.insert(0, cwd)
        try:
            return importlib.import_module(plugin)
        except ModuleNotFoundError as e2:
            if e2.name != plugin.partition(".")[0]:
                raise
            raise ConvertError(f"plugin {plugin!r}: cannot import it (no module {plugin!r} on the Python path nor in the "
                               f"current folder {cwd}; a file elsewhere: --plugin path/to/{plugin.rpartition('.')[2]}.py)") from None
        finally:
            sys.path.remove(cwd)


def _import_plugin_file(path: str):
    folder = os.path.isdir(path)
    init = os.path.join(path, "__init__.py") if folder else path
    if not os.path.isfile(init):
        what = "no __init__.py in that folder" if folder and os.path.isdir(path) else "no such file"
        raise ConvertError(f"plugin {path!r}: {what}")
    name = os.path.basename(os.path.normpath(path))
    name = name[:-3] if name.endswith(".py") else name
    if not name.isidentifier():
        raise ConvertError(f"plugin {path!r}: {name!r} is not a Python module name (rename the file)")
    known = sys.modules.get(name)
    if known is not None:
        if os.path.abspath(getattr(known, "__file__", None) or "") == os.path.abspath(init):
            return known  # the same file, loaded earlier in this process
        raise ConvertError(f"plugin {path!r}: a module named {name!r} is already imported from elsewhere (rename the file)")
    spec = importlib.util.spec_from_file_location(name, init, submodule_search_locations=[os.path.abspath(path)] if folder else None)
    module = importlib.util.module_from_spec(spec)
    # in sys.modules under its own name, as an imported module would be (its classes' __module__
    # resolves; a package's submodules import); its folder on the path while it runs, so a
    # plugin file can import the helper modules beside it
    sys.modules[name] = module
    here = os.path.dirname(os.path.abspath(init if not folder else path))
    sys.path.insert(0, here)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(here)
    return module
