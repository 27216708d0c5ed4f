"""report.html, summary.html and the Model Explorer node data, seen the way a person sees them:
the pages rendered by a real headless Chromium (Debian's package, driven by playwright), their
charts counted against report.json / summary.json, and no console error or network request.

The browser is started by the test. CI (``.ci/run``) installs Chromium and sets
GRAPH_CONVERT_REQUIRE_BROWSER=1: then a missing browser or driver fails these tests; elsewhere
they skip, naming what is missing. ``GRAPH_CONVERT_WRITE_SCREENSHOTS=1`` copies the screenshots
into docs/ (the README's pictures are made that way)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest

from tests.helpers import Builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = os.environ.get("GRAPH_CONVERT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
REQUIRED = os.environ.get("GRAPH_CONVERT_REQUIRE_BROWSER") == "1"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]
WRITE_DOCS = os.environ.get("GRAPH_CONVERT_WRITE_SCREENSHOTS") == "1"


def _missing() -> str:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the python package playwright is not installed (pip install -e '.[test]')"
    if not os.path.exists(CHROMIUM):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return ""


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """A fresh headless Chromium (its own profile folder), shared by this module's tests."""
    why = _missing()
    if why:
        if REQUIRED:
            pytest.fail(f"GRAPH_CONVERT_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(str(tmp_path_factory.mktemp("chromium-profile")), executable_path=CHROMIUM,
                                                   headless=True, args=FLAGS, viewport={"width": 1150, "height": 900})
        try:
            yield ctx
        finally:
            ctx.close()


class Loaded:
    """A page loaded from disk, with what it said on the console and every request it made."""

    def __init__(self, ctx, path: str):
        self.page = ctx.new_page()
        self.console: list[tuple[str, str]] = []
        self.requests: list[str] = []
        self.page.on("console", lambda m: self.console.append((m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(("pageerror", str(e))))
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.goto("file://" + os.path.abspath(path))
        self.page.wait_for_load_state("load")

    def bars(self, chart_id: str) -> list[dict]:
        """Each bar of an SVG chart as the browser laid it out (its box and data attributes)."""
        return self.page.eval_on_selector_all(
            f"svg#{chart_id} rect.bar",
            "els => els.map(e => { const b = e.getBoundingClientRect();"
            " return {w: b.width, h: b.height, label: e.dataset.label, value: parseFloat(e.dataset.value)}; })")

    def rows(self, table_id: str) -> int:
        return self.page.eval_on_selector_all(f"table#{table_id} tbody tr", "els => els.length")

    def errors(self) -> list:
        return [m for m in self.console if m[0] in ("error", "pageerror", "warning")]


def _shuffle_net(path) -> None:
    """Conv -> Relu -> channel shuffle (a Transpose no pass can remove) -> Conv -> pooled head:
    random weights, so report.html has stages, a TRANSPOSE left with its reasons, and layers."""
    b = Builder(opset=17)
    b.rng = np.random.default_rng(1234)
    x = b.input("image", [1, 4, 12, 12])
    y = b.op("Relu", [b.op("Conv", [x, b.weight([8, 4, 3, 3]), b.weight([8])], pads=[1, 1, 1, 1])])
    y = b.op("Reshape", [y, b.const(np.array([1, 2, 4, 12, 12]), dtype=np.int64)])
    y = b.op("Transpose", [y], perm=[0, 2, 1, 3, 4])
    y = b.op("Reshape", [y, b.const(np.array([1, 8, 12, 12]), dtype=np.int64)])
    y = b.op("Conv", [y, b.weight([6, 8, 3, 3]), b.weight([6])], pads=[1, 1, 1, 1], strides=[2, 2])
    y = b.op("Flatten", [b.op("GlobalAveragePool", [y])])
    y = b.op("Gemm", [y, b.weight([5, 6]), b.weight([5])], transB=1)
    b.output(y)
    onnx.save(b.model(), str(path))


def _cli(*args, timeout=600, env=None) -> subprocess.CompletedProcess:
    exe = os.path.join(os.path.dirname(sys.executable), "graph-convert")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "graph_convert.cli"]
    return subprocess.run(cmd + list(args), cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """One conversion through the real CLI, with every quantized variant, the per-layer SQNR and
    the Model Explorer node data."""
    d = tmp_path_factory.mktemp("report_html")
    _shuffle_net(d / "shuffle.onnx")
    out = d / "out"
    proc = _cli("convert", str(d / "shuffle.onnx"), "-o", str(out), "--quantize", "fp16,int8,int8-full", "--calibration", "random",
                "--quant-debug", "--explorer")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "report.json") as f:
        return out, json.load(f), proc.stdout


def _tflite_ops(path) -> dict[str, int]:
    """The op histogram of a .tflite as LiteRT's interpreter lists its ops (not our report code)."""
    from ai_edge_litert.interpreter import Interpreter

    counts: dict[str, int] = {}
    for op in Interpreter(model_path=str(path))._get_ops_details():
        counts[op["op_name"]] = counts.get(op["op_name"], 0) + 1
    return counts


def _screenshot(page, name: str, tmp) -> str:
    path = os.path.join(str(tmp), name)
    page.screenshot(path=path, full_page=True)
    assert os.path.getsize(path) > 10_000  # a blank page compresses to a few hundred bytes
    if WRITE_DOCS:
        shutil.copy(path, os.path.join(ROOT, "docs", name))
    return path


def test_report_html_renders_with_every_chart(browser, converted, tmp_path):
    out, rep, _ = converted
    with open(out / ".graph-convert.json") as f:
        assert "report.html" in json.load(f)["entries"]  # part of the atomic output, ours to replace
    page = Loaded(browser, out / "report.html")
    assert page.errors() == [] and all(u.startswith("file://") for u in page.requests), (page.console, page.requests)
    assert "graph-convert report" in page.page.title()
    # stages: one bar per timed stage, in the order they ran
    stages = [k for k in rep["timings_seconds"] if k != "total"]
    bars = page.bars("chart-stages")
    assert [b["label"] for b in bars] == stages and all(b["w"] >= 1 and b["h"] > 5 for b in bars)
    # the op histogram is the one LiteRT reads from the file
    ops = _tflite_ops(out / "model_float32.tflite")
    bars = page.bars("chart-ops")
    assert {b["label"]: b["value"] for b in bars} == ops and all(b["w"] >= 1 for b in bars)
    assert ops.get("TRANSPOSE", 0) >= 1  # the channel shuffle's, with its reasons below
    # verification: a row per stage, output and input draw
    assert len(rep["verification"]["draws"]) == 2
    assert page.rows("table-verification") == 3 * 1 * 2
    left = rep["rewritten_graph"]["transposes_left"]
    assert page.rows("table-transposes") == len(left) >= 1
    text = page.page.inner_text("table#table-transposes")
    assert all(k["reason"].split(":")[0] in text for t in left for k in t["kept_because"])
    # per-layer SQNR of int8-full: one bar per layer the quantization debugger measured
    layers = rep["quantization"]["variants"]["int8-full"]["layers"]
    bars = page.bars("chart-sqnr-int8-full")
    assert len(bars) == layers["count"] == len(layers["all"]) and all(b["w"] >= 1 for b in bars)
    assert sorted(b["value"] for b in bars) == pytest.approx(sorted(x["sqnr_db"] for x in layers["all"]), abs=1e-3)
    assert page.rows("table-quantized") == 3
    _screenshot(page.page, "report_html.png", tmp_path)
    page.page.close()


def test_report_html_is_made_from_report_json_alone(converted):
    """The page is a function of report.json: remade from the file, it is the same page."""
    from graph_convert.conversion.report_html import render_report

    out, rep, _ = converted
    with open(out / "report.html", encoding="utf-8") as f:
        page = f.read()
    assert render_report(rep) == page
    assert "<script" not in page and 'src="http' not in page and 'href="http' not in page


def test_summary_html_renders_and_is_never_replaced_when_not_ours(browser, converted, tmp_path):
    out, rep, _ = converted
    src = out.parent / "shuffle.onnx"
    (tmp_path / "broken.onnx").write_text("not an onnx file")
    root = tmp_path / "batch"
    proc = _cli("batch", str(src), str(tmp_path / "broken.onnx"), "-o", str(root))
    assert proc.returncode == 1, proc.stderr[-2000:]  # one model failed
    with open(root / "summary.json") as f:
        summary = json.load(f)
    page = Loaded(browser, root / "summary.html")
    assert page.errors() == [] and all(u.startswith("file://") for u in page.requests), (page.console, page.requests)
    assert {b["label"]: b["value"] for b in page.bars("chart-status")} == {"ok": 1, "bad input": 1}
    assert [b["label"] for b in page.bars("chart-seconds")] == [r["name"] for r in summary["models"]]
    assert page.rows("table-models") == 2
    href = page.page.get_attribute("table#table-models a", "href")
    assert href == "shuffle/report.html" and os.path.isfile(root / "shuffle" / "report.html")
    _screenshot(page.page, "summary_html.png", tmp_path)
    page.page.close()
    # a re-run skips the complete output (report.html does not change what "complete" means)
    proc = _cli("batch", str(src), "-o", str(root))
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(root / "summary.json") as f:
        assert [r["run"] for r in json.load(f)["models"]] == ["skipped"]
    # a summary.html that a batch did not write is the user's: refused, untouched
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "summary.html").write_text("<html>my notes</html>")
    proc = _cli("batch", str(src), "-o", str(mine))
    assert proc.returncode == 2 and "summary.html there was not written by graph-convert batch" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert (mine / "summary.html").read_text() == "<html>my notes</html>" and sorted(os.listdir(mine)) == ["summary.html"]


def test_explorer_node_data(converted):
    """--explorer: node data keyed as Model Explorer's adapters key nodes (ONNX node names, TFLite
    tensor names), with the figures the report's own checks found."""
    from ai_edge_litert.interpreter import Interpreter

    out, rep, stdout = converted
    ex = out / "explorer"
    names = sorted(os.listdir(ex))
    assert names == ["model.rewritten.onnx.error.json", "model.rewritten.onnx.layout.json", "model_dynamic_range_quant.tflite.sqnr.json",
                     "model_float16.tflite.sqnr.json", "model_float32.tflite.error.json", "model_full_integer_quant.tflite.sqnr.json"]
    assert "explorer: 6 node-data files" in stdout
    load = lambda n: json.load(open(ex / n))  # noqa: E731
    rewritten = onnx.load(str(out / "model.rewritten.onnx"))
    nodes = {n.name: n for n in rewritten.graph.node}
    layout = load("model.rewritten.onnx.layout.json")["results"]
    assert set(layout) <= set(nodes)
    for t in rep["rewritten_graph"]["transposes_left"]:  # every Transpose left, with the handler's reason
        assert layout[t["node"]]["value"].startswith("transpose kept:")
        assert all(k["reason"] in layout[t["node"]]["value"] for k in t["kept_because"])
    convs = [n for n in nodes if nodes[n].op_type == "Conv"]
    assert len(convs) == 2 and all(layout[n]["value"].startswith("channels-last:") for n in convs)
    assert all(layout[f"{n}__in0_to_onnx"]["value"].startswith("lowering:") for n in convs)
    err = load("model.rewritten.onnx.error.json")["results"]
    assert set(err) <= set(nodes) and len(err) >= 6 and all(0 <= v["value"] < 1e-5 for v in err.values())
    tensors = {d["name"] for d in Interpreter(model_path=str(out / "model_float32.tflite")).get_tensor_details()}
    terr = load("model_float32.tflite.error.json")["results"]
    assert set(terr) <= tensors and len(terr) >= 4 and all(0 <= v["value"] < 1e-3 for v in terr.values())
    # the graph output's entry is of the size the verification measured on the same draw (not equal:
    # tensors are kept only without the XNNPACK delegate, whose kernels round differently)
    out_name = rep["io"]["outputs"][0]["name"]
    first = rep["verification"]["tflite_float32"][out_name]["per_draw"][0]
    out_tensor = [d["name"] for d in Interpreter(model_path=str(out / "model_float32.tflite")).get_output_details()][0]
    assert first["max_rel"] / 10 <= terr[out_tensor]["value"] <= first["max_rel"] * 10
    layers = rep["quantization"]["variants"]["int8-full"]["layers"]["all"]
    sq = load("model_full_integer_quant.tflite.sqnr.json")["results"]
    assert {k: v["value"] for k, v in sq.items()} == {x["tensor"]: pytest.approx(x["sqnr_db"]) for x in layers}
    fp16 = load("model_float16.tflite.sqnr.json")["results"]
    fp16_tensors = {d["name"] for d in Interpreter(model_path=str(out / "model_float16.tflite")).get_tensor_details()}
    assert fp16 and set(fp16) <= fp16_tensors and all(v["value"] > 40 for v in fp16.values())  # fp16 keeps ~11 bits


def test_view_says_in_one_line_what_is_missing(converted, tmp_path):
    out, _, _ = converted
    proc = _cli("view", str(tmp_path))
    assert proc.returncode == 2 and "no explorer/ node data there (convert with --explorer first)" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    # without Model Explorer (a module of that name that fails to import stands in for its absence)
    shim = tmp_path / "shim"
    shim.mkdir()
    (shim / "model_explorer.py").write_text("raise ImportError('not installed here')\n")
    proc = _cli("view", str(out), "--no-browser", env={**os.environ, "PYTHONPATH": os.pathsep.join([str(shim), ROOT])})
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Model Explorer is not installed (pip install 'graph-convert[explorer]')" in proc.stderr
    assert str(out / "explorer") in proc.stderr  # where the files are, for any copy of Model Explorer


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_model_explorer_shows_the_overlay(browser, converted, tmp_path):
    """``graph-convert view``: Model Explorer (the explorer extra) serves the .tflite with its
    node data on localhost, and the browser shows the overlay's values."""
    try:
        import model_explorer  # noqa: F401
    except ImportError:
        pytest.skip("Model Explorer is not installed (pip install -e '.[explorer]')")
    out, _, _ = converted
    port = _free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "graph-convert")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "graph_convert.cli"]
    proc = subprocess.Popen(cmd + ["view", str(out), "--no-browser", "--port", str(port)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        url = None
        deadline = time.time() + 120
        while url is None and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith(f"http://localhost:{port}/"):
                url = line.strip()
        assert url, "Model Explorer did not start"
        page = browser.new_page()
        page.set_viewport_size({"width": 1400, "height": 900})
        page.goto(url)
        # the node-data panel lists each file by the name it carries
        page.get_by_text("max error / scale vs source (ORT)").first.wait_for(timeout=60_000)
        time.sleep(2)  # the graph's WebGL canvas draws after the panel
        assert page.eval_on_selector_all("canvas", "els => els.length") >= 1
        _screenshot(page, "model_explorer.png", tmp_path)
        page.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
