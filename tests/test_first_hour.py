"""A new user's first hour (issue 23), each case through the real command in a process of its
own, as a user runs it: the console script (or ``python -P -m graph_convert``, which like the
script does not search the current folder), a private ``TMPDIR`` for every run, stderr a pipe."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.helpers import Builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(os.path.dirname(sys.executable), "graph-convert")
# the installed command when there is one, else the module run the way the script runs it
COMMAND = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-P", "-m", "graph_convert"]

HONEST_PLUGIN = '''
from graph_convert import Pass, PassResult


class MyPass(Pass):
    name, phase = "my_pass", "canonicalize"

    def run(self, graph, ctx):
        return PassResult(False)


def register(registry):
    registry.add_pass(MyPass)
'''

BAD_RESULT_PLUGIN = HONEST_PLUGIN.replace("PassResult(False)", "PassResult(1)")
# holds the run inside its passes (TensorFlow and ONNX Runtime loaded) until it is stopped
SLOW_PLUGIN = HONEST_PLUGIN.replace("        return PassResult(False)", """        import os, time
        open(os.environ["GC_STARTED"], "w").close()
        time.sleep(120)
        return PassResult(False)""")

# a small torch net; SEED is replaced by a seed, or by nothing for an unseeded factory
NET_PY = '''
import torch


def make():
    SEED
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 1))
'''


def env_for(tmpdir) -> dict:
    """Our checkout first on the path (not the test's folder: the command must find what it
    needs by itself), and a private TMPDIR to count what a run leaves there."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TF_CPP_MIN_LOG_LEVEL")}
    env["PYTHONPATH"] = ROOT
    env["TMPDIR"] = str(tmpdir)
    return env


def run(args, cwd, tmpdir, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *map(str, args)], cwd=cwd, env=env_for(tmpdir), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def one_line(proc) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "\x1b" not in proc.stderr and "Traceback" not in proc.stderr
    return lines[0]


def conv_model() -> onnx.ModelProto:
    b = Builder()
    b.rng = np.random.default_rng(23)
    x = b.input("x", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])
    b.output(b.op("Relu", [y]))
    return b.model()


@pytest.fixture
def work(tmp_path):
    """(folder with m.onnx, a private TMPDIR)."""
    (tmp_path / "work").mkdir()
    (tmp_path / "tmp").mkdir()
    onnx.save(conv_model(), tmp_path / "work" / "m.onnx")
    return tmp_path / "work", tmp_path / "tmp"


@pytest.mark.quick
def test_plugin_from_the_current_folder_and_by_file_path(work):
    folder, tmp = work
    (folder / "my_plugin.py").write_text(HONEST_PLUGIN)
    ok = run(["convert", "m.onnx", "-o", "out", "-q", "--plugin", "my_plugin"], folder, tmp)
    assert ok.returncode == 0, ok.stderr
    passes = json.loads((folder / "out" / "report.json").read_text())["passes"]
    assert {"my_pass": "my_plugin"}.items() <= {p["name"]: p["source"] for p in passes}.items()
    # from another folder, by its path
    (folder / "elsewhere").mkdir()
    by_path = run(["passes", "--plugin", "../my_plugin.py"], folder / "elsewhere", tmp)
    assert by_path.returncode == 0, by_path.stderr
    assert "my_pass" in by_path.stdout and "(from ../my_plugin.py)" in by_path.stdout
    missing = run(["passes", "--plugin", "not_there"], folder, tmp)
    assert missing.returncode == 2
    assert "current folder" in one_line(missing) and "--plugin path/to/not_there.py" in missing.stderr
    gone = run(["passes", "--plugin", "sub/not_there.py"], folder, tmp)
    assert gone.returncode == 2 and one_line(gone) == "graph-convert: error: plugin 'sub/not_there.py': no such file"
    helptext = run(["convert", "--help"], folder, tmp).stdout
    assert "current folder" in helptext and "path/to/my_plugin.py" in helptext


@pytest.mark.quick
def test_version_and_python_m(work):
    folder, tmp = work
    script = run(["--version"], folder, tmp)
    import graph_convert

    assert script.returncode == 0 and script.stdout.startswith(f"graph-convert {graph_convert.__version__} from ")
    module = subprocess.run([sys.executable, "-m", "graph_convert", "--version"], cwd=folder, env=env_for(tmp),
                            capture_output=True, text=True, timeout=120)
    assert module.returncode == 0 and module.stdout == script.stdout
    helped = subprocess.run([sys.executable, "-m", "graph_convert", "--help"], cwd=folder, env=env_for(tmp),
                            capture_output=True, text=True, timeout=120)
    assert helped.returncode == 0 and "convert" in helped.stdout and "--version" in helped.stdout


def float64_model() -> onnx.ModelProto:
    """TF runs it, TFLite has no kernel for it: the run fails after the TensorFlow trace."""
    b = Builder()
    x = b.input("x", [1, 4], TensorProto.DOUBLE)
    b.output(b.op("Sqrt", [b.op("Mul", [x, x])]), TensorProto.DOUBLE)
    return b.model()


def test_nothing_left_in_tmpdir_by_a_run_a_failed_run_or_a_killed_run(work):
    folder, tmp = work
    ok = run(["convert", "m.onnx", "-o", "out", "-q"], folder, tmp)
    assert ok.returncode == 0, ok.stderr
    assert os.listdir(tmp) == []  # was: __autograph_generated_file*.py and .ses
    onnx.save(float64_model(), folder / "f64.onnx")
    failed = run(["convert", "f64.onnx", "-o", "out64"], folder, tmp)
    assert failed.returncode == 2 and "TFLite has no builtin kernel" in one_line(failed)
    assert os.listdir(tmp) == []
    # SIGTERM while the passes run (ONNX Runtime loaded: the run's scratch folder holds what it
    # wrote there, e.g. its telemetry .ses where telemetry is on)
    (folder / "slow_plugin.py").write_text(SLOW_PLUGIN)
    started = folder / "started"
    proc = _start(["convert", "m.onnx", "-o", "out2", "-q", "--plugin", "slow_plugin"], folder, tmp, started)
    scratch = _wait_for_scratch(tmp, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert os.listdir(tmp) == [] and not os.path.exists(scratch)
    # SIGKILL leaves its scratch folder; the next run of any command removes it (its lock is free)
    started.unlink()
    proc = _start(["convert", "m.onnx", "-o", "out3", "-q", "--plugin", "slow_plugin"], folder, tmp, started)
    scratch = _wait_for_scratch(tmp, proc)
    proc.kill()
    proc.communicate(timeout=120)
    assert os.listdir(tmp) == [os.path.basename(scratch)]
    assert run(["--version"], folder, tmp).returncode == 0  # argparse answers before any scratch folder
    assert run(["passes"], folder, tmp).returncode == 0
    assert os.listdir(tmp) == []


def _start(args, folder, tmp, started) -> subprocess.Popen:
    """The command running, once its plugin pass has started."""
    proc = subprocess.Popen([*COMMAND, *args], cwd=folder, env=dict(env_for(tmp), GC_STARTED=str(started)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while not started.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < 300, "the run never reached the plugin pass"
        time.sleep(0.05)
    return proc


def _wait_for_scratch(tmp, proc, seconds: float = 300.0) -> str:
    """The run's scratch folder in ``tmp`` (not ONNX Runtime's telemetry .ses in it: a CI run
    finished without one appearing)."""
    t0 = time.time()
    while True:
        found = [os.path.join(tmp, d) for d in os.listdir(tmp) if os.path.isdir(os.path.join(tmp, d))]
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        assert time.time() - t0 < seconds, os.listdir(tmp)
        time.sleep(0.05)


def test_pytorch_source_with_a_wrong_rank_shape_is_one_plain_line(work):
    folder, tmp = work
    (folder / "net.py").write_text(NET_PY.replace("SEED", "torch.manual_seed(0)"))
    proc = run(["convert", "net.py:make", "--input-shape", "1,3,16", "-o", "out"], folder, tmp)
    assert proc.returncode == 2
    line = one_line(proc)  # was: two torch log lines, then this one with colour codes
    assert line.startswith("graph-convert: error: torch.onnx.export failed with both exporters")
    assert not (folder / "out").exists() and os.listdir(tmp) == []


@pytest.mark.quick
def test_a_pass_result_that_is_not_a_bool_names_the_pass(work):
    folder, tmp = work
    (folder / "my_plugin.py").write_text(BAD_RESULT_PLUGIN)
    proc = run(["convert", "m.onnx", "-o", "out", "--plugin", "my_plugin"], folder, tmp)
    assert proc.returncode == 4
    line = one_line(proc)
    assert "pass 'my_pass' failed" in line and "PassResult.changed must be True or False, got 1" in line


@pytest.mark.skipif(shutil.which("onnx2tf") is not None or __import__("importlib").util.find_spec("onnx2tf") is not None,
                    reason="onnx2tf is installed in this interpreter")
def test_onnx2tf_backend_names_exactly_what_is_missing(work):
    folder, tmp = work
    proc = run(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf"], folder, tmp)
    assert proc.returncode == 2
    line = one_line(proc)
    # what onnx2tf 1.28.8 imports at start and this interpreter (graph-convert's) lacks, and the commands
    for pkg in ("onnx2tf==1.28.8", "tf-keras", "onnx-graphsurgeon", "sng4onnx"):
        assert pkg in line
    assert "pip install 'graph-convert[onnx2tf]' && pip install --no-deps 'tf-keras==" in line
    assert not (folder / "out").exists()


def lp_pool_model() -> onnx.ModelProto:
    """GlobalLpPool: onnx2tf has a converter for it, our emitter has none (GridSample was the
    example until issue 22 gave it an emitter)."""
    b = Builder(opset=16)
    b.rng = np.random.default_rng(5)
    x = b.input("x", [1, 2, 6, 6])
    b.output(b.op("GlobalLpPool", [x], p=2))
    return b.model()


def test_unsupported_ops_point_at_backend_auto_when_onnx2tf_takes_them(work):
    folder, tmp = work
    onnx.save(lp_pool_model(), folder / "lp.onnx")
    proc = run(["convert", "lp.onnx", "-o", "out"], folder, tmp)
    assert proc.returncode == 2
    line = one_line(proc)
    assert "unsupported ops for the TF emitter: GlobalLpPool" in line and "--backend auto" in line
    # an op of a custom domain no converter knows: no such hint
    m = conv_model()
    m.graph.node.append(helper.make_node("Foo", [m.graph.output[0].name], ["foo"], name="the_foo", domain="acme"))
    m.graph.output[0].name = "foo"
    m.opset_import.append(helper.make_opsetid("acme", 1))
    onnx.save(m, folder / "custom.onnx")
    proc = run(["convert", "custom.onnx", "-o", "out"], folder, tmp)
    assert proc.returncode == 2 and "acme::Foo" in one_line(proc) and "--backend" not in proc.stderr


HEAVY = ("tensorflow", "torch", "onnxruntime", "onnx")
# each argument or path error, run by main() in a fresh interpreter that then says what was imported
PROBE = """import sys
from graph_convert.cli import main
code = main(sys.argv[1:])
print(code, sorted(m for m in %r if m in sys.modules))
""" % (HEAVY,)


@pytest.mark.quick
@pytest.mark.parametrize("args, fragment", [
    (["convert", "nope.onnx", "-o", "out"], "nope.onnx: no such file"),
    (["convert", "net.py:make", "--input-shape", "1,3,8,8", "-o", "out"], "no such file 'net.py'"),
    (["convert", "m.onnx", "-o", "out", "--inputs", "nope.npz"], "--inputs nope.npz: no such file"),
    (["convert", "m.onnx", "-o", "out", "--atol", "abc"], "--atol 'abc': must be a finite positive number"),
    (["convert", "m.onnx", "-o", "out", "--input-shape", "1,3.5"], "--input-shape '1,3.5'"),
    (["convert", "m.onnx", "-o", "out", "--plugin", "gone/p.py"], "plugin 'gone/p.py': no such file"),
    (["convert", "m.onnx", "-o", "out", "--calibration", "nope.npz", "--quantize", "int8"], "--calibration nope.npz: no such file"),
    (["verify", "m.onnx", "nope.tflite"], "candidate nope.tflite: no such file or folder"),
    (["verify", "m.onnx", "m.onnx", "--seed", "-1"], "--seed '-1': must be a non-negative integer"),
])
def test_argument_and_path_errors_come_before_any_heavy_import(work, args, fragment):
    """The answer comes in well under a second because nothing heavy is loaded first (TensorFlow
    alone took 3.5-5 s); asserted on what was imported, not on a wall clock."""
    folder, tmp = work
    proc = subprocess.run([sys.executable, "-P", "-c", PROBE, *args], cwd=folder, env=env_for(tmp), capture_output=True,
                          text=True, timeout=120)
    assert fragment in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    code, imported = proc.stdout.strip().split(" ", 1)
    heavy = [m for m in HEAVY if m != "onnx" or "--quantize" not in args]  # the quantizer's options read onnx
    assert code == "2" and [m for m in eval(imported) if m in heavy] == []


@pytest.mark.quick
def test_python_api_names_the_keyword_the_command_line_the_flag(work, tmp_path):
    import graph_convert

    folder, tmp = work
    with pytest.raises(graph_convert.ConvertError) as e:
        graph_convert.convert(str(folder / "m.onnx"), None, tmp_path / "out", atol="abc")
    assert str(e.value).startswith("atol 'abc': must be a finite positive number")
    with pytest.raises(graph_convert.ConvertError, match=r"^backend onnx2tf cannot be combined with tflite=False yet"):
        graph_convert.ConvertOptions(backend="onnx2tf", tflite=False)
    with pytest.raises(graph_convert.ConvertError, match=r"^jobs 0: must be at least 1"):
        graph_convert.convert_batch([str(folder / "m.onnx")], str(tmp_path / "b"), jobs=0)
    proc = run(["convert", "m.onnx", "-o", "out", "--backend", "onnx2tf", "--no-tflite"], folder, tmp)
    assert one_line(proc) == "graph-convert: error: --backend onnx2tf cannot be combined with --no-tflite yet"


@pytest.mark.quick
def test_passes_marks_the_opt_in_ones(work):
    folder, tmp = work
    listing = run(["passes"], folder, tmp).stdout.splitlines()
    marked = [ln.split()[1] for ln in listing if "[off unless --heads-first]" in ln]
    assert marked == ["heads_first"]
    assert all("off unless" not in ln for ln in listing if "heads_first" not in ln)


def test_verify_builds_a_factory_twice_and_says_when_the_builds_differ(work):
    folder, tmp = work
    (folder / "seeded.py").write_text(NET_PY.replace("SEED", "torch.manual_seed(7)"))
    (folder / "unseeded.py").write_text(NET_PY.replace("SEED", ""))
    conv = run(["convert", "seeded.py:make", "--input-shape", "1,3,8,8", "-o", "out", "-q"], folder, tmp)
    assert conv.returncode == 0, conv.stderr
    same = run(["verify", "seeded.py:make", "out/model_float32.tflite", "--input-shape", "1,3,8,8", "-q"], folder, tmp)
    assert same.returncode == 0, same.stderr
    differ = run(["verify", "unseeded.py:make", "out/model_float32.tflite", "--input-shape", "1,3,8,8"], folder, tmp)
    assert differ.returncode == 2  # was: exit 3 blaming an op of the net
    line = one_line(differ)
    assert "unseeded.py:make: built twice, make gave different weights" in line and "torch.manual_seed" in line
    assert os.listdir(tmp) == []
