"""The README's Python is run, so its names and defaults cannot drift from the code: every fenced
```python block runs in a process of its own in a fresh folder, the plugin skeleton runs through
the command as a user would copy it, and every ``convert(...)``/``convert_batch(...)`` signature
the prose gives matches the function's defaults."""
from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest

import graph_convert
from tests.helpers import Builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def python_blocks() -> list[str]:
    with open(README) as f:
        text = f.read()
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def env() -> dict:
    e = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    e["PYTHONPATH"] = ROOT
    return e


@pytest.mark.quick
def test_the_readme_has_python_blocks():
    names = [b.splitlines()[0] for b in python_blocks()]
    assert len(names) >= 2 and "# my_plugin.py" in names


@pytest.mark.parametrize("index", range(len(python_blocks())))
def test_each_python_block_runs(tmp_path, index):
    """Run as written, in an empty folder (a block that converts writes its output there). A
    block that names its file (``# my_plugin.py``) is written to that file and imported."""
    block = python_blocks()[index]
    first = block.splitlines()[0]
    named = re.fullmatch(r"#\s*(\w+)\.py", first.strip())
    if named:
        (tmp_path / f"{named.group(1)}.py").write_text(block)
        code = f"import {named.group(1)}"
    else:
        code = block
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"README block {index} ({first!r}) failed:\n{proc.stderr[-3000:]}"


def small_model() -> onnx.ModelProto:
    b = Builder()
    b.rng = np.random.default_rng(11)
    x = b.input("x", [1, 3, 8, 8])
    b.output(b.op("Relu", [b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])]))
    return b.model()


@pytest.mark.quick
def test_the_plugin_skeleton_through_the_command(tmp_path):
    """Copied as it is (``changed = ...`` left in): exit 4 naming the pass, not a pass recorded as
    having changed the graph. With ``changed`` computed (nothing to do: False) it converts, found
    in the current folder by its module name."""
    skeleton = next(b for b in python_blocks() if b.startswith("# my_plugin.py"))
    (tmp_path / "my_plugin.py").write_text(skeleton)
    onnx.save(small_model(), tmp_path / "m.onnx")
    command = [sys.executable, "-P", "-m", "graph_convert", "convert", "m.onnx", "-o", "out", "-q", "--plugin", "my_plugin"]
    left_in = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert left_in.returncode == 4, left_in.stderr
    assert left_in.stderr.strip().splitlines() == [
        "graph-convert: pass 'my_pass' failed: TypeError: PassResult.changed must be True or False, got Ellipsis "
        "(ellipsis) (passes run before it: " + left_in.stderr.split("(passes run before it: ", 1)[1].strip()]
    assert not (tmp_path / "out").exists()
    (tmp_path / "my_plugin.py").write_text(skeleton.replace("changed = ...", "changed = False"))
    done = subprocess.run(command, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model_float32.tflite").exists()


# the functions whose signature the README spells out in its prose, and where they live
DOCUMENTED = {"convert": "graph_convert.conversion.pipeline", "convert_batch": "graph_convert.batch",
              "verify_file": "graph_convert.checks.foreign"}


def documented_calls() -> list[tuple[str, str]]:
    """(function, argument text) of every inline-code ``name(...)`` of DOCUMENTED in the README
    that gives at least one default (``name=value``)."""
    with open(README) as f:
        text = re.sub(r"^```.*?^```", "", f.read(), flags=re.S | re.M)  # the prose only
    out = []
    for span in re.findall(r"`([^`]+)`", text.replace("\n", " ")):
        m = re.match(r"(?:graph_convert\.)?(\w+)\((.*)\)", span.strip())
        if m and m.group(1) in DOCUMENTED and "=" in m.group(2):
            out.append((m.group(1), m.group(2)))
    return out


@pytest.mark.quick
def test_signatures_in_the_prose_match_the_code():
    calls = documented_calls()
    assert {"convert", "convert_batch"} <= {name for name, _ in calls}
    for name, args in calls:
        impl = getattr(__import__(DOCUMENTED[name], fromlist=[name]), name)
        params = inspect.signature(impl).parameters
        for part in [p.strip() for p in args.split(",")]:
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq and key in params:  # a parameter named without its default: it must have none
                assert params[key].default is inspect.Parameter.empty, \
                    f"README: {name}({key}, ...) but the code's default is {params[key].default!r}"
            if not eq or key.startswith("*") or value.strip() in ("...", "[...]"):
                continue
            if key not in params:  # a keyword taken through **kwargs: a ConvertOptions field
                fields = {f.name for f in __import__("dataclasses").fields(graph_convert.ConvertOptions)}
                assert any(p.kind is p.VAR_KEYWORD for p in params.values()) and key in fields, \
                    f"README: {name}() has no parameter {key!r}"
                continue
            default = params[key].default
            try:
                literal = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                continue  # a value the prose gives as an example (a name, a call), not a default
            documented_default = tuple(literal) if isinstance(literal, list) else literal
            if default is not inspect.Parameter.empty:
                assert documented_default == default, f"README: {name}({key}={value.strip()}) but the code's default is {default!r}"
    # and the public wrapper takes the documented positional order
    assert list(inspect.signature(graph_convert.convert).parameters)[:4] == ["source", "example_inputs", "output_dir", "options"]
