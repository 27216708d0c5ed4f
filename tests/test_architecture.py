"""Architecture rules that keep the code changeable: the layering of imports (every import, lazy
ones inside functions too), per-conversion emitter state, and ``convert`` as named stages."""
from __future__ import annotations

import ast
import os
import re
import threading

import numpy as np
import onnx
import pytest

import graph_convert
from graph_convert import ConvertError, ConvertOptions
from tests.helpers import Builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def imports_of(path: str, *, annotations: bool = True) -> list[tuple[int, str]]:
    """(line, module) of every import in the file, wherever it is (module level or in a function);
    ``from X import Y`` counts as both X and X.Y (Y may be a submodule). ``annotations=False``
    leaves out imports under ``if TYPE_CHECKING:`` (never run)."""
    with open(path) as f:
        tree = ast.parse(f.read(), path)
    skip: set[int] = set()
    if not annotations:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = ("." * node.level) + (node.module or "")
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{a.name}" if node.module else f"{base}{a.name}") for a in node.names]
    return out


def python_files(folder: str) -> list[str]:
    out = []
    for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
        out += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    return sorted(out)


def hits(folder: str, banned: tuple[str, ...]) -> list[str]:
    found = []
    for path in python_files(folder):
        for line, mod in imports_of(path, annotations=False):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                found.append(f"{os.path.relpath(path, ROOT)}:{line} imports {mod}")
    return found


def test_imports_are_read_lazy_ones_too(tmp_path):
    p = tmp_path / "m.py"
    p.write_text("import os\ndef f():\n    import tensorflow as tf\n    from graph_convert.backends.tensorflow import ops\n")
    mods = [m for _, m in imports_of(str(p))]
    assert "tensorflow" in mods and "graph_convert.backends.tensorflow" in mods and "graph_convert.backends.tensorflow.ops" in mods


# -- the rules table of docs/ARCHITECTURE.md, enforced row by row ---------------------------------

OURS = ("graph_convert", "graph_convert_passes", "graph_convert_models")
HEAVY = ("tensorflow", "ai_edge_litert", "onnxruntime", "torch", "networkx", "rich", "ray", "onnx2tf")


def rules() -> list[tuple[list[str], list[str]]]:
    """(places, allowed import prefixes) per row of the table between the ``rules`` markers."""
    text = open(os.path.join(ROOT, "docs", "ARCHITECTURE.md")).read()
    table = text.split("<!-- rules -->")[1].split("<!-- /rules -->")[0]
    rows = []
    for line in table.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append((re.findall(r"`([^`]+)`", cells[0]), re.findall(r"`([^`]+)`", cells[2])))
    return rows


def row_of(rel: str, table) -> tuple[str, list[str]] | None:
    """The longest place of the table that holds ``rel`` (a path from the repo root), and its row."""
    best = None
    for places, allowed in table:
        for place in places:
            if (rel == place or (place.endswith("/") and rel.startswith(place))) and (best is None or len(place) > len(best[0])):
                best = (place, allowed)
    return best


def test_the_rules_table_covers_every_module():
    table = rules()
    assert len(table) >= 15
    missing = [os.path.relpath(p, ROOT) for p in python_files("graph_convert") + python_files("passes")
               if row_of(os.path.relpath(p, ROOT), table) is None]
    assert missing == []
    places = [pl for places, _ in table for pl in places]
    gone = [pl for pl in places if not os.path.exists(os.path.join(ROOT, pl))]
    assert gone == [], "the table names places that no longer exist"


def test_every_import_is_allowed_by_its_row_of_the_table():
    table = rules()
    public = set(graph_convert.__all__)
    bad = []
    for path in python_files("graph_convert") + python_files("passes"):
        rel = os.path.relpath(path, ROOT)
        place, allowed = row_of(rel, table)
        for line, mod in imports_of(path, annotations=False):
            top = mod.split(".")[0]
            if top not in OURS + HEAVY or mod in OURS:
                continue  # the standard library, numpy, onnx; a bare package name
            if place == "graph_convert/cli/" and mod.startswith("graph_convert.") and mod.split(".")[1] in public:
                continue
            if not any(mod == a or mod.startswith(a + ".") for a in allowed):
                bad.append(f"{rel}:{line} imports {mod} (row {place}: {', '.join(allowed) or 'nothing of ours'})")
    assert bad == []


def test_the_conversion_never_imports_the_verify_command():
    assert hits("graph_convert/conversion", ("graph_convert.checks.foreign",)) == []
    assert hits("graph_convert/backends", ("graph_convert.checks.foreign", "graph_convert.conversion.pipeline")) == []


def test_batch_never_converts_in_its_own_process():
    """A batch runs each model's convert in a process of its own (a crash or a hang costs that
    model only): it never imports the stages, TensorFlow, torch or ONNX Runtime."""
    banned = ("graph_convert.conversion.pipeline", "graph_convert.conversion.source", "graph_convert.conversion.rewrite",
              "graph_convert.backends", "tensorflow", "torch", "onnxruntime", "graph_convert.cli")
    assert hits("graph_convert/batch", banned) == []


def module_of(rel: str) -> str:
    """``graph_convert/ir/graph.py`` -> ``graph_convert.ir.graph``; ``passes/x.py`` -> ``graph_convert_passes.x``."""
    mod = rel[:-3].replace(os.sep, ".")
    mod = mod[: -len(".__init__")] if mod.endswith(".__init__") else mod
    return "graph_convert_passes" + mod[len("passes"):] if mod.startswith("passes") else mod


def test_no_import_loops_lazy_imports_included():
    import networkx as nx

    files = {module_of(os.path.relpath(p, ROOT)): p for p in python_files("graph_convert") + python_files("passes")}
    g = nx.DiGraph()
    for mod, path in files.items():
        g.add_node(mod)
        for _, imp in imports_of(path, annotations=False):
            target = imp if imp in files else None
            if target is None and imp.rsplit(".", 1)[0] in files:
                target = imp.rsplit(".", 1)[0]  # ``from pkg.mod import name``
            if target and target != mod and not mod.startswith(target + "."):  # a package's own parent runs first anyway
                g.add_edge(mod, target)
    loops = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert loops == []


def test_no_import_of_another_modules_underscore_names():
    bad = []
    for path in python_files("graph_convert") + python_files("passes") + python_files("tests"):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS:
                bad += [f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert bad == []


def test_no_module_over_600_lines():
    big = [f"{os.path.relpath(p, ROOT)} ({n})" for p in python_files("graph_convert") + python_files("passes")
           if (n := sum(1 for _ in open(p))) > 600]
    assert big == []


def test_no_function_over_80_lines():
    long = []
    for path in python_files("graph_convert") + python_files("passes"):
        tree = ast.parse(open(path).read())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 80:
                    long.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} {node.name} ({n} lines)")
    assert long == []


# -- options -------------------------------------------------------------------------------------

def test_options_are_validated_once_and_frozen():
    o = ConvertOptions(atol=1e-3, seed=3, plugins=["a"], disable_passes="prune")
    assert o.plugins == ("a",) and o.disable_passes == ("prune",) and o.quant is None
    with pytest.raises(Exception):
        o.atol = 1.0  # frozen
    for bad in ({"atol": float("inf")}, {"atol": -1}, {"seed": -1}, {"seed": 1.5}, {"verify": "sometimes"}):
        with pytest.raises(ConvertError):
            ConvertOptions(**bad)
    with pytest.raises(ConvertError, match="unknown option.*heads_frist"):
        ConvertOptions.from_kwargs(heads_frist=True)


# -- per-conversion emitter state -------------------------------------------------------------------

def conv_model() -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])
    b.output(b.op("Relu", [y]))
    return b.model()


def test_a_plugin_emitter_that_replaces_a_layout_aware_one_sees_the_source_layout(tmp_path):
    """A plugin's Conv emitter does not inherit the built-in's layout-awareness: it is handed NCHW
    data and an OIHW weight, as the ONNX op defines them, and the conversion verifies."""
    from graph_convert.plugins import builtin_registry

    seen = {}

    def nchw_conv(node, inputs, ctx):
        import tensorflow as tf

        x, w, bias = inputs[0], inputs[1], inputs[2]
        seen["x"], seen["w"] = tuple(x.shape), tuple(w.shape)
        y = tf.nn.conv2d(tf.transpose(x, [0, 2, 3, 1]), tf.transpose(w, (2, 3, 1, 0)), 1, [[0, 0], [1, 1], [1, 1], [0, 0]])
        return tf.transpose(y + bias, [0, 3, 1, 2])

    def register(reg):
        reg.add_emitter("Conv", nchw_conv)

    assert "Conv" in builtin_registry().layout_aware
    mod = type(os)("gc_nchw_conv_plugin")
    mod.register = register
    import sys

    sys.modules["gc_nchw_conv_plugin"] = mod
    try:
        res = graph_convert.convert(conv_model(), None, tmp_path / "out", plugins=["gc_nchw_conv_plugin"])
    finally:
        del sys.modules["gc_nchw_conv_plugin"]
    assert seen == {"x": (1, 3, 8, 8), "w": (4, 3, 3, 3)}
    assert all(f["ok"] for f in res.report["verification"]["tflite_float32"].values())
    assert "Conv" in builtin_registry().layout_aware  # the built-in registry is untouched


def test_two_conversions_in_two_threads_do_not_interfere(tmp_path):
    """One model with a TFLite gap (float64) and one without, converted at the same time: the
    gap is reported for its own conversion only."""
    b = Builder()
    x = b.input("x", [1, 4], onnx.TensorProto.DOUBLE)
    b.output(b.op("Sqrt", [b.op("Mul", [x, x])]), onnx.TensorProto.DOUBLE)
    gap_model = b.model()
    results, errors = {}, {}

    def run(name, model, **kw):
        try:
            results[name] = graph_convert.convert(model, None, tmp_path / name, **kw)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors[name] = e

    threads = [threading.Thread(target=run, args=("gap", gap_model), kwargs={"tflite": False}),
               threading.Thread(target=run, args=("clean", conv_model()))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == {}
    assert results["gap"].report["tflite_gaps"] and results["clean"].report["tflite_gaps"] == []
    assert results["clean"].report["tflite"]["transpose_ops"] == 0


def _process_state() -> tuple:
    """What graph_convert.process says a conversion may change for a while: fds 1 and 2, Python's
    output streams, the exporters' logger levels, the warnings filters."""
    import logging
    import sys
    import warnings

    from graph_convert.process import EXPORT_LOGGERS

    fds = tuple((os.fstat(fd).st_dev, os.fstat(fd).st_ino) for fd in (1, 2))
    return fds, sys.stdout, sys.stderr, tuple(logging.getLogger(n).level for n in EXPORT_LOGGERS), tuple(warnings.filters)


def test_process_wide_changes_overlapping_in_two_threads_are_undone_by_the_last_one_out():
    """Thread A enters, B enters, A leaves, B leaves: with save-and-restore per user, B would put
    back A's redirection (fd 1 left on /dev/null, stdout left on a sink, loggers left at ERROR)."""
    from graph_convert.process import quiet_fds, quiet_python_output

    before = _process_state()
    for counted in (quiet_fds, quiet_python_output):
        a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()

        def a():
            with counted():
                a_in.set()
                b_in.wait(10)
            a_out.set()

        def b():
            a_in.wait(10)
            with counted():
                b_in.set()
                a_out.wait(10)

        threads = [threading.Thread(target=a), threading.Thread(target=b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        assert a_out.is_set() and _process_state() == before


def test_two_conversions_from_pytorch_in_two_threads_leave_the_process_as_it_was(tmp_path):
    """A PyTorch source (the exporter's quiet section) beside an ONNX one (TensorFlow's): both
    verify, and fds, streams, logger levels and warning filters are back as they were."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU())
    before = _process_state()
    results, errors = {}, {}

    def run(name, source, example):
        try:
            results[name] = graph_convert.convert(source, example, tmp_path / name)
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors[name] = e

    threads = [threading.Thread(target=run, args=("torch", net, (torch.randn(1, 3, 8, 8),))),
               threading.Thread(target=run, args=("onnx", conv_model(), None))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == {}
    assert all(f["ok"] for r in results.values() for f in r.report["verification"]["tflite_float32"].values())
    assert _process_state() == before


# -- transpose handlers say why they decline ----------------------------------------------------

def test_report_says_why_each_transpose_is_left(tmp_path):
    b = Builder(opset=11)
    x = b.input("x", [1, 4, 6])
    t = b.op("Transpose", [x], perm=[0, 2, 1])
    b.output(b.op("MatMul", [t, x]))  # no handler: MatMul is not layout-agnostic
    b.output(b.op("Softmax", [t], axis=2))  # before opset 13 Softmax flattens from the axis on
    res = graph_convert.convert(b.model(), None, tmp_path / "out")
    left = res.report["rewritten_graph"]["transposes_left"]
    assert len(left) == 1
    why = {k["op_type"]: k["reason"] for k in left[0]["kept_because"]}
    assert why == {"MatMul": "no transpose handler for MatMul",
                   "Softmax": "Softmax-like ops before opset 13 flatten from the axis on: the layout cannot move through"}


def test_declined_is_false_and_a_combined_handler_lists_every_attempt():
    from graph_convert.ir import from_onnx
    from graph_convert_passes.lib.transpose_handlers import HANDLERS, Declined

    b = Builder()
    x = b.input("x", [2, 3, 4])
    t = b.op("Transpose", [x], perm=[0, 2, 1])
    shape = b.const(np.array([2, -1], np.int64), dtype=np.int64)
    y = b.op("Reshape", [t, shape])
    b.output(b.op("MatMul", [y, x := b.input("w", [12, 5])]))
    g = from_onnx(b.model())
    node = next(n for n in g.nodes if n.op_type == "Reshape")
    r = HANDLERS["Reshape"](g, node, (0, 2, 1), "test")
    assert isinstance(r, Declined) and not r
    assert [part.split(":")[0] for part in r.reason.split("; ")] == ["reshape_like", "reshape_push", "absorb_into_matmul"]


# -- our packages cannot be shadowed -------------------------------------------------------------

def test_a_users_passes_and_models_never_shadow_ours(tmp_path):
    """From a folder holding its own passes.py, models.py and a passes/ package, the command
    lists and runs our built-in passes (the installed names are graph_convert_passes/_models)."""
    import subprocess
    import sys

    (tmp_path / "passes.py").write_text("raise ImportError('the user passes.py was imported')\n")
    (tmp_path / "models.py").write_text("raise ImportError('the user models.py was imported')\n")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "passes").mkdir()
    (tmp_path / "mine" / "passes" / "__init__.py").write_text("raise ImportError('the user passes/ was imported')\n")
    onnx.save(conv_model(), tmp_path / "m.onnx")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path / "mine"), str(tmp_path)]))
    for args in (["passes"], ["convert", "m.onnx", "-o", "out", "-q"]):
        proc = subprocess.run([sys.executable, "-m", "graph_convert.cli", *args], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        assert "user" not in proc.stderr
    listing = subprocess.run([sys.executable, "-m", "graph_convert.cli", "passes"], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=600).stdout
    assert "push_transposes" in listing and "graph_convert_passes" in listing


def test_every_package_folder_is_installed():
    import tomllib

    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        listed = set(tomllib.load(f)["tool"]["setuptools"]["packages"])
    found = set()
    for dirpath, _, files in os.walk(os.path.join(ROOT, "graph_convert")):
        if "__init__.py" in files:
            found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    assert found | {"graph_convert_passes", "graph_convert_passes.lib", "graph_convert_models"} == listed
