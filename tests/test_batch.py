"""``graph-convert batch``: the real command in a subprocess, each model's convert in a process of
its own, on the local engine and on a real local Ray instance the tests start (no mock).

One folder holds two good models, a corrupt file and a model with an op we cannot emit; a
manifest beside it adds a PyTorch model whose factory hangs (it gets its own --timeout) and a
good model with a memory limit far below what any conversion needs. The rows, the exit code, the
outputs, the re-run that skips the finished models and the summary files are checked.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from tests.test_trust import ROOT, cli, env_for, start

GOOD = ("conv_a", "conv_b")
HANG_PY = '''
import time
import torch.nn as nn


def make():
    time.sleep(600)  # a model whose construction hangs: the batch must stop it at its --timeout
    return nn.Identity()
'''


def conv_net(seed: int, channels: int, size: int) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w1 = helper.make_tensor("w1", TensorProto.FLOAT, [6, channels, 3, 3], rng.normal(0, 0.5, (6, channels, 3, 3)).astype(np.float32).ravel())
    b1 = helper.make_tensor("b1", TensorProto.FLOAT, [6], rng.normal(0, 0.5, 6).astype(np.float32))
    w2 = helper.make_tensor("w2", TensorProto.FLOAT, [4, 6, 1, 1], rng.normal(0, 0.5, (4, 6, 1, 1)).astype(np.float32).ravel())
    b2 = helper.make_tensor("b2", TensorProto.FLOAT, [4], rng.normal(0, 0.5, 4).astype(np.float32))
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], name="conv2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, size, size])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, size, size])], [w1, b1, w2, b2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def det_net() -> onnx.ModelProto:
    g = helper.make_graph([helper.make_node("Det", ["x"], ["y"], name="det0")], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.fixture
def zoo(tmp_path):
    folder = tmp_path / "zoo"
    folder.mkdir()
    onnx.save(conv_net(1, 3, 12), folder / "conv_a.onnx")
    onnx.save(conv_net(2, 5, 10), folder / "conv_b.onnx")
    (folder / "broken.onnx").write_bytes(b"\x08\x07 not a model" * 20)
    onnx.save(det_net(), folder / "det.onnx")
    (tmp_path / "hang.py").write_text(HANG_PY)
    (tmp_path / "list.txt").write_text("# models that need options of their own\n"
                                       "hang.py:make --input-shape 1,3,8,8 --timeout 8\n"
                                       "zoo/conv_a.onnx --name conv_a_small_memory --memory-limit 120M\n")
    return tmp_path


def summary(out) -> dict:
    with open(os.path.join(out, "summary.json")) as f:
        return json.load(f, parse_constant=lambda c: pytest.fail(f"summary.json is not strict JSON: {c}"))


def rows(out) -> dict[str, dict]:
    return {r["name"]: r for r in summary(out)["models"]}


def leftovers(folder) -> list[str]:
    return [n for n in os.listdir(folder) if ".tmp-" in n or n.startswith(".summary")]


def check_rows(r: dict[str, dict]) -> None:
    assert set(r) == {"conv_a", "conv_b", "broken", "det", "hang", "conv_a_small_memory"}
    for name in GOOD:
        assert r[name]["status"] == "ok" and r[name]["exit_code"] == 0, r[name]
        assert r[name]["transposes"] == 0 and 0 <= r[name]["max_error"] < 1e-4 and r[name]["tflite_bytes"] > 1000
        assert r[name]["output"] == name
    assert (r["broken"]["status"], r["broken"]["exit_code"]) == ("bad input", 2)
    assert "broken.onnx: not a valid ONNX model" in r["broken"]["reason"]
    assert (r["det"]["status"], r["det"]["exit_code"]) == ("unsupported ops", 2)
    assert "Det (node 'det0')" in r["det"]["reason"]
    assert r["hang"]["status"] == "timeout" and "--timeout of 8 s" in r["hang"]["reason"]
    assert 8 <= r["hang"]["seconds"] < 60
    assert r["conv_a_small_memory"]["status"] == "out of memory", r["conv_a_small_memory"]
    for name in ("broken", "det", "hang", "conv_a_small_memory"):
        assert r[name]["output"] is None


def tflite_matches_ort(onnx_path, out_dir) -> float:
    """The output's .tflite run by LiteRT against ONNX Runtime on the source (NHWC I/O)."""
    from ai_edge_litert.interpreter import Interpreter

    shape = [d.dim_value for d in onnx.load(onnx_path).graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(5).normal(size=shape).astype(np.float32)
    want = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    it = Interpreter(model_path=os.path.join(out_dir, "model_float32.tflite"))
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x.transpose(0, 2, 3, 1))
    it.invoke()
    got = it.get_tensor(it.get_output_details()[0]["index"]).transpose(0, 3, 1, 2)
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_local_batch_rows_outputs_and_rerun(zoo):
    out = zoo / "out"
    proc = cli(["batch", "zoo", "list.txt", "-o", out, "--jobs", "2"], zoo)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "", proc.stderr
    check_rows(rows(out))
    # plain lines (stdout is not a terminal): the plan, one line per model, the table and totals
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("batch: 6 models: 0 already done, 6 to convert, 2 at a time (engine local)")
    assert sum(1 for ln in lines if ln.startswith("[")) == 6
    assert "2/6 ok (2 converted now, 0 already done); 1 bad input, 1 out of memory, 1 timeout, 1 unsupported ops" in proc.stdout
    md = (out / "summary.md").read_text()
    assert md.startswith("# graph-convert batch: 2/6 ok") and "| det | unsupported ops | 2 |" in md
    # each output is what convert writes, and it computes what the source computes
    direct = zoo / "direct"
    assert cli(["convert", "zoo/conv_a.onnx", "-o", direct, "-q"], zoo).returncode == 0
    assert sorted(os.listdir(out / "conv_a")) == sorted(os.listdir(direct))
    assert tflite_matches_ort(zoo / "zoo" / "conv_b.onnx", out / "conv_b") < 1e-4
    assert sorted(os.listdir(out)) == ["conv_a", "conv_b", "summary.html", "summary.json", "summary.md"]
    assert not leftovers(zoo)  # no temporary folder of the killed runs
    # a second run skips the finished models and tries the others again
    mtime = os.stat(out / "conv_a" / "model_float32.tflite").st_mtime_ns
    again = cli(["batch", "zoo", "list.txt", "-o", out, "--jobs", "2"], zoo)
    assert again.returncode == 1
    assert again.stdout.splitlines()[0].startswith("batch: 6 models: 2 already done, 4 to convert")
    r = rows(out)
    check_rows(r)
    assert [r[n]["run"] for n in GOOD] == ["skipped", "skipped"] and r["det"]["run"] == "ran"
    assert os.stat(out / "conv_a" / "model_float32.tflite").st_mtime_ns == mtime
    # a changed source is converted again; --overwrite redoes everything
    m = onnx.load(zoo / "zoo" / "conv_b.onnx")
    m.doc_string = "retrained"
    onnx.save(m, zoo / "zoo" / "conv_b.onnx")
    third = cli(["batch", "zoo", "-o", out, "-q"], zoo)
    assert third.returncode == 1 and third.stdout == "" and third.stderr == ""
    r = rows(out)
    assert (r["conv_a"]["run"], r["conv_b"]["run"], r["conv_b"]["status"]) == ("skipped", "redone", "ok")


def test_all_good_exits_zero_and_specs(tmp_path):
    onnx.save(conv_net(3, 3, 8), tmp_path / "one.onnx")
    (tmp_path / "models.json").write_text(json.dumps([
        {"source": os.path.join(ROOT, "models", "se_block.py") + ":make", "name": "se", "input_shape": "1,3,16,16"},
        {"source": "one.onnx", "args": ["--keep-io-layout"]}]))
    proc = cli(["batch", "models.json", "-o", "out"], tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    r = rows(tmp_path / "out")
    assert [(n, v["status"]) for n, v in r.items()] == [("se", "ok"), ("one", "ok")]
    with open(tmp_path / "out" / "one" / "report.json") as f:
        report = json.load(f)
    assert report["io"]["keep_io_layout"] is True and report["io"]["inputs"][0]["shape"] == [1, 3, 8, 8]  # the entry's own option
    assert summary(tmp_path / "out")["totals"]["ok"] == 2


@pytest.mark.parametrize("manifest, args, message", [
    ("one.onnx --atol 0\n", [], "list.txt:1: --atol '0': must be a finite positive number"),
    ("one.onnx\nmissing.onnx\n", [], "list.txt:2: no such file missing.onnx"),
    ("one.onnx --name a\none.onnx --name a\n", [], "list.txt:2: name 'a' is already used by"),
    ("one.onnx --bogus\n", [], "list.txt:1: unrecognized arguments: --bogus"),
    ("one.onnx\n", ["--jobs", "0"], "--jobs '0': must be a positive integer"),
    ("one.onnx\n", ["--memory-limit", "lots"], "--memory-limit 'lots': give a size such as 8G"),
    ("one.onnx\n", ["--timeout", "-3"], "--timeout '-3': give a positive number of seconds"),
    ("one.onnx --timeout never\n", [], "list.txt:1: --timeout 'never': give a positive number of seconds"),
    ("one.onnx\n", ["--retries", "x"], "--retries 'x': must be a non-negative integer"),
    ("one.onnx\n", ["--cpus-per-model", "0"], "--cpus-per-model '0': must be a positive number"),
    ("one.onnx\n", ["--engine", "ray", "--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: cannot connect"),
])
def test_bad_batch_invocation_is_one_line_and_touches_nothing(tmp_path, manifest, args, message):
    onnx.save(conv_net(4, 3, 8), tmp_path / "one.onnx")
    (tmp_path / "list.txt").write_text(manifest)
    proc = cli(["batch", "list.txt", "-o", "out", *args], tmp_path, timeout=300)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr, proc.stderr
    if "--ray-address" not in args:
        assert not (tmp_path / "out").exists()


def test_foreign_summary_is_never_replaced(tmp_path):
    onnx.save(conv_net(4, 3, 8), tmp_path / "one.onnx")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "summary.json").write_text('{"mine": true}')
    proc = cli(["batch", "one.onnx", "-o", "out"], tmp_path)
    assert proc.returncode == 2 and "summary.json there was not written by graph-convert batch" in proc.stderr
    assert (tmp_path / "out" / "summary.json").read_text() == '{"mine": true}'
    assert os.listdir(tmp_path / "out") == ["summary.json"]


def _converts_under(root) -> list[int]:
    """Our conversions whose command line names ``root`` (a folder, or a unique file name)."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().split(b"\0")
        except OSError:
            continue
        if b"graph_convert.cli" in cmd and b"convert" in cmd and any(str(root).encode() in a for a in cmd):
            pids.append(int(pid))
    return pids


def test_sigterm_stops_running_models_and_writes_the_summary(zoo):
    out = zoo / "out"
    proc = start(["batch", "list.txt", "-o", out, "--jobs", "2"], zoo)
    t0 = time.time()
    while len(_converts_under(out)) < 2 and time.time() - t0 < 120:
        time.sleep(0.2)
    assert _converts_under(out), "the models never started"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, stderr
    assert "stopped by SIGTERM" in stderr
    assert not _converts_under(out)
    r = rows(out)
    assert {v["status"] for v in r.values()} <= {"interrupted", "out of memory", "not run"}
    assert r["hang"]["status"] == "interrupted"
    assert not leftovers(out)


# -- Ray ----------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A real local Ray instance (``ray start --head``), stopped at the end. It and its clients
    (the batch commands, which inherit this environment) share a token of their own, so a token
    left in ~/.ray by another Ray cluster on this machine cannot lock them out."""
    pytest.importorskip("ray", reason="ray is in the test extra: pip install -e '.[test]'")
    port = _free_port()
    work = tmp_path_factory.mktemp("ray")
    ray = os.path.join(os.path.dirname(sys.executable), "ray")
    saved = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=os.urandom(16).hex())
    env = env_for(work)
    up = subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
                         "--disable-usage-stats", "--object-store-memory=300000000"], env=env, capture_output=True,
                        text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    yield f"127.0.0.1:{port}"
    subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=300)
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def test_ray_engine_same_rows_and_rerun(zoo, ray_cluster):
    out = zoo / "out"
    proc = cli(["batch", "zoo", "list.txt", "-o", out, "--engine", "ray", "--ray-address", ray_cluster], zoo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "as Ray tasks (engine ray)" in proc.stdout
    check_rows(rows(out))
    assert summary(out)["engine"] == "ray"
    assert tflite_matches_ort(zoo / "zoo" / "conv_a.onnx", out / "conv_a") < 1e-4
    assert sorted(os.listdir(out)) == ["conv_a", "conv_b", "summary.html", "summary.json", "summary.md"]
    again = cli(["batch", "zoo", "list.txt", "-o", out, "--engine", "ray", "--ray-address", ray_cluster, "-q"], zoo)
    assert again.returncode == 1
    r = rows(out)
    assert [r[n]["run"] for n in GOOD] == ["skipped", "skipped"]
    shared = cli(["batch", "zoo/conv_b.onnx", "-o", zoo / "shared", "--engine", "ray", "--ray-address", ray_cluster,
                  "--ray-transfer", "shared", "-q"], zoo)
    assert shared.returncode == 0, shared.stderr
    assert rows(zoo / "shared")["conv_b"]["status"] == "ok"


def _ray_worker_of(out) -> int | None:
    for pid in _converts_under(out):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{ppid}/cmdline", "rb") as f:
                if f.read().startswith(b"ray::"):
                    return ppid
        except OSError:
            continue
    return None


def test_ray_task_is_retried_when_its_worker_dies(tmp_path, ray_cluster):
    name = f"retry_me_{os.getpid()}"  # the worker's convert runs on a shipped copy: found by this name
    onnx.save(conv_net(7, 3, 12), tmp_path / f"{name}.onnx")
    out = tmp_path / "out"
    proc = start(["batch", f"{name}.onnx", "-o", out, "--engine", "ray", "--ray-address", ray_cluster], tmp_path)
    t0, worker = time.time(), None
    while worker is None and time.time() - t0 < 180:
        worker = _ray_worker_of(name)
        time.sleep(0.2)
    assert worker is not None, "the task never started"
    first = _converts_under(name)
    os.kill(worker, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout + stderr
    assert rows(out)[name]["status"] == "ok"
    assert not set(first) & set(_converts_under(name))  # the first attempt's convert died with its worker


# -- progress ------------------------------------------------------------------------------------

def _run_on_terminal(args, work) -> tuple[int, str]:
    """The command with its stdout on a pseudo-terminal (what a user at a shell sees)."""
    import pty
    import re

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "graph_convert.cli", *map(str, args)], cwd=work, env=env_for(work),
                            stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=600)
    os.close(master)
    text = b"".join(chunks).decode("utf-8", "replace")
    return proc.returncode, re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def test_convert_shows_each_stage(tmp_path):
    onnx.save(conv_net(8, 3, 8), tmp_path / "m.onnx")
    plain = cli(["convert", "m.onnx", "-o", "plain"], tmp_path)
    assert plain.returncode == 0, plain.stderr
    stages = [ln for ln in plain.stdout.splitlines() if ln.startswith("[0:")]
    assert [s.split("] ")[1].rsplit(":", 1)[0] for s in stages[:3]] == ["load plugins", "load source", "check source"]
    assert any("] convert to TFLite: " in s for s in stages)
    quiet = cli(["convert", "m.onnx", "-o", "quiet", "-q"], tmp_path)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    rc, screen = _run_on_terminal(["convert", "m.onnx", "-o", "live"], tmp_path)
    assert rc == 0
    assert "convert: emit TensorFlow" in screen and "convert: verify TFLite" in screen  # the live line, stage by stage
    assert "wrote live/" in screen and "[0:" not in screen  # no plain lines on a terminal


def test_batch_live_display_on_a_terminal(tmp_path):
    onnx.save(conv_net(9, 3, 8), tmp_path / "a.onnx")
    (tmp_path / "b.onnx").write_bytes(b"junk")
    rc, screen = _run_on_terminal(["batch", "a.onnx", "b.onnx", "-o", "out"], tmp_path)
    assert rc == 1
    assert "running 1, failed 0" in screen and "1/2" in screen and "2/2" in screen  # the live bar
    assert "[1/2] " in screen and "[2/2] " in screen  # each finished model printed above it
    assert "1/2 ok (1 converted now, 0 already done); 1 bad input" in screen


def test_outroot_inside_the_input_folder_is_not_read_as_models(tmp_path):
    """``batch zoo -o zoo/converted``: the second run must not take the first run's
    model.rewritten.onnx files for models."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    onnx.save(conv_net(10, 3, 8), zoo / "a.onnx")
    assert cli(["batch", "zoo", "-o", "zoo/converted", "-q"], tmp_path).returncode == 0
    assert cli(["convert", "zoo/a.onnx", "-o", "zoo/elsewhere", "-q"], tmp_path).returncode == 0  # another output in it
    again = cli(["batch", "zoo", "-o", "zoo/converted"], tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    assert again.stdout.startswith("batch: 1 model: 1 already done, 0 to convert")
    assert list(rows(zoo / "converted")) == ["a"]


def test_ray_requests_no_node_can_meet_are_said_at_once(tmp_path, ray_cluster):
    onnx.save(conv_net(11, 3, 8), tmp_path / "a.onnx")
    big = cli(["batch", "a.onnx", "-o", "out", "--engine", "ray", "--ray-address", ray_cluster, "--memory-limit", "4000G"],
              tmp_path, timeout=300)
    assert big.returncode == 1, big.stdout + big.stderr
    row = rows(tmp_path / "out")["a"]
    assert row["status"] == "out of memory" and "request 4000.0 GiB of memory and the largest node offers" in row["reason"]
    cpus = cli(["batch", "a.onnx", "-o", "out2", "--engine", "ray", "--ray-address", ray_cluster, "--cpus-per-model", "64"],
               tmp_path, timeout=300)
    assert cpus.returncode == 2 and "--cpus-per-model 64: the largest Ray node has 2 CPUs" in cpus.stderr, cpus.stderr


def test_a_batch_killed_outright_leaves_a_summary_and_no_conversion_running(tmp_path):
    onnx.save(conv_net(12, 3, 8), tmp_path / "a.onnx")
    (tmp_path / "hang.py").write_text(HANG_PY)
    out = tmp_path / "out"
    proc = start(["batch", "a.onnx", "hang.py:make", "--input-shape", "1,3,8,8", "-o", out, "--jobs", "2"], tmp_path)
    t0 = time.time()
    while time.time() - t0 < 240 and not (os.path.exists(out / "summary.json") and rows(out).get("a", {}).get("status") == "ok"):
        assert proc.poll() is None, proc.stderr.read()
        time.sleep(0.2)
    assert rows(out)["a"]["status"] == "ok", "the first model never finished"
    hang = _converts_under(out)
    assert hang, "the hanging model is not running"
    proc.kill()  # SIGKILL: no handler runs in the batch
    proc.wait()
    t0 = time.time()
    while _converts_under(out) and time.time() - t0 < 60:
        time.sleep(0.2)
    assert not _converts_under(out)  # its conversion got SIGTERM when the batch died ...
    assert not leftovers(out)  # ... and removed its temporary folder
    r = rows(out)
    assert r["a"]["status"] == "ok" and r["hang"]["status"] == "not run"
    assert r["hang"]["reason"] == "not finished when this summary was written"


def test_engine_ray_without_ray_installed_is_one_line(tmp_path):
    onnx.save(conv_net(13, 3, 8), tmp_path / "a.onnx")
    shadow = tmp_path / "no_ray"
    shadow.mkdir()
    (shadow / "ray.py").write_text("raise ImportError('No module named ray')\n")  # as if it were not installed
    env = env_for(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([str(shadow), env["PYTHONPATH"]])
    proc = subprocess.run([sys.executable, "-m", "graph_convert.cli", "batch", "a.onnx", "-o", "out", "--engine", "ray"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "graph-convert: error: --engine ray: Ray is not installed (pip install 'graph-convert[ray]')"
    assert not (tmp_path / "out").exists()
