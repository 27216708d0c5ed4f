"""Trust: the real ``graph-convert`` command in a subprocess never deletes or replaces what it did
not write, cleans up after signals and killed runs, cannot be fooled by small outputs, refuses NaN
weights, and ends every failure with one line and a documented exit code."""
from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import onnx
import pytest

from graph_convert.errors import VerificationError
from graph_convert.checks.equivalence import Draw, Verifier, compare
from tests.helpers import Builder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NET_PY = '''
import torch
from torch import nn

def make():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 5)).eval()
'''

# test plugins: each pass is honest about ``changed``; what they do is driven by environment
# variables so one module serves every test
PLUGIN_PY = '''
import os, time
import numpy as np
from graph_convert.pass_manager import Pass, PassResult


class Hold(Pass):
    """Says it started (GC_STARTED file), drops a file where told (GC_DROP), then sleeps GC_SLEEP s."""
    name, phase = "test_hold", "canonicalize"

    def run(self, graph, ctx):
        if os.environ.get("GC_STARTED"):
            open(os.environ["GC_STARTED"], "w").close()
        if os.environ.get("GC_DROP"):
            os.makedirs(os.path.dirname(os.environ["GC_DROP"]), exist_ok=True)
            with open(os.environ["GC_DROP"], "w") as f:
                f.write("the user's notes")
        time.sleep(float(os.environ.get("GC_SLEEP", "0")))
        return PassResult(False)


class FlipLastWeight(Pass):
    """A wrong rewrite: negates the weight of the last MatMul/Gemm (when GC_FLIP=1)."""
    name, phase = "test_flip_last_weight", "optimize"

    def run(self, graph, ctx):
        if os.environ.get("GC_FLIP") != "1":
            return PassResult(False)
        last = [n for n in graph.nodes if n.op_type in ("MatMul", "Gemm") and graph.is_initializer(n.inputs[1])][-1]
        w = last.inputs[1]
        graph.set_initializer(w, -graph.initializer(w))
        return PassResult(True)


class LiesAboutChanged(Pass):
    """Edits the graph (a Relu becomes a LeakyRelu) and says it did not (when GC_LIE=1)."""
    name, phase = "test_lies_about_changed", "canonicalize"

    def run(self, graph, ctx):
        if os.environ.get("GC_LIE") == "1":
            for n in graph.nodes:
                if n.op_type == "Relu":
                    n.op_type = "LeakyRelu"
        return PassResult(False)


def emit_failing_relu(node, inputs, ctx):
    import tensorflow as tf
    x = inputs[0]
    tf.debugging.assert_less(x, tf.constant(-1e30, x.dtype), message="deliberately failing check")
    return tf.nn.relu(x)


def register(registry):
    registry.add_pass(Hold)
    registry.add_pass(FlipLastWeight)
    registry.add_pass(LiesAboutChanged)
    if os.environ.get("GC_BAD_EMITTER") == "1":
        registry.add_emitter("Relu", emit_failing_relu)
'''


@pytest.fixture
def work(tmp_path):
    (tmp_path / "net.py").write_text(NET_PY)
    (tmp_path / "gc_test_plugin.py").write_text(PLUGIN_PY)
    onnx.save(conv_model(), tmp_path / "m.onnx")
    return tmp_path


def conv_model() -> onnx.ModelProto:
    b = Builder()
    x = b.input("input.1", [1, 3, 8, 8])
    y = b.op("Conv", [x, b.weight([4, 3, 3, 3]), b.weight([4])], pads=[1, 1, 1, 1])
    b.output(b.op("Relu", [y]))
    return b.model()


def env_for(work, **extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, str(work)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)  # the command must silence TensorFlow by itself
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli(args, work, *, cwd=None, timeout=600, **extra) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "graph_convert.cli", *map(str, args)], cwd=cwd or work,
                          env=env_for(work, **extra), capture_output=True, text=True, timeout=timeout)


def _default_sigint() -> None:
    # a command started in the background by a non-interactive shell inherits SIGINT ignored (and
    # then rightly ignores it): the tests send it SIGINT as a terminal's Ctrl-C would
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(args, work, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "graph_convert.cli", *map(str, args)], cwd=work,
                            env=env_for(work, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def wait_for(path, proc, seconds=240.0):
    t0 = time.time()
    while not os.path.exists(path):
        assert proc.poll() is None, f"run ended early ({proc.returncode}): {proc.stderr.read()[-2000:]}"
        assert time.time() - t0 < seconds, "the run never reached the plugin pass"
        time.sleep(0.1)


def one_line_error(proc) -> str:
    """The run's stderr: exactly one non-empty line and no traceback."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def leftovers(folder) -> list[str]:
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n or ".old-" in n)


def snapshot(folder) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, folder)] = fh.read()
    return out


# -- 1. nothing of the user's is ever deleted ---------------------------------------------------

def test_overwrite_refuses_a_folder_holding_the_source_and_notes(work):
    (work / "notes.txt").write_text("my notes")
    before = snapshot(work)
    proc = cli(["convert", "net.py:make", "--input-shape", "1,3,8,8", "-o", ".", "--overwrite"], work)
    assert proc.returncode == 2
    assert "is the current directory" in one_line_error(proc)
    scratch = work / "scratch"
    scratch.mkdir()
    (scratch / "net.py").write_text(NET_PY)
    (scratch / "notes.txt").write_text("mine")
    proc = cli(["convert", "scratch/net.py:make", "--input-shape", "1,3,8,8", "-o", "scratch", "--overwrite"], work)
    assert proc.returncode == 2
    assert "contains the source" in one_line_error(proc)
    assert sorted(os.listdir(scratch)) == ["net.py", "notes.txt"]
    proc = cli(["convert", "m.onnx", "-o", work.parent, "--overwrite"], work)  # a folder that contains the cwd
    assert proc.returncode == 2 and "contains the current directory" in one_line_error(proc)
    after = snapshot(work)
    assert {k: v for k, v in after.items() if not k.startswith("scratch")} == before
    assert leftovers(work) == [] and leftovers(work.parent) == []


def test_overwrite_replaces_only_our_own_output(work):
    out = work / "out"
    assert cli(["convert", "m.onnx", "-o", out, "-q"], work).returncode == 0
    marker = json.loads((out / ".graph-convert.json").read_text())
    assert marker["tool"] == "graph-convert" and "report.json" in marker["entries"]
    proc = cli(["convert", "m.onnx", "-o", out, "-q"], work)
    assert proc.returncode == 2 and "--overwrite" in one_line_error(proc)
    old = (out / "report.json").stat().st_ino
    assert cli(["convert", "m.onnx", "-o", out, "-q", "--overwrite"], work).returncode == 0
    assert (out / "report.json").stat().st_ino != old
    # the user adds a file to our output: from then on it is theirs, and --overwrite refuses
    (out / "analysis.txt").write_text("mine")
    proc = cli(["convert", "m.onnx", "-o", out, "-q", "--overwrite"], work)
    assert proc.returncode == 2 and "analysis.txt" in one_line_error(proc)
    assert (out / "analysis.txt").read_text() == "mine" and (out / "report.json").exists()
    # an output written before the marker existed is recognised by its report.json
    (out / "analysis.txt").unlink()
    (out / ".graph-convert.json").unlink()
    assert cli(["convert", "m.onnx", "-o", out, "-q", "--overwrite"], work).returncode == 0
    assert leftovers(work) == []


def test_a_file_created_during_the_run_is_never_deleted(work):
    out = work / "out"
    # the folder did not exist at the start; something creates it with a file while the run goes on
    proc = cli(["convert", "m.onnx", "-o", out, "-q", "--plugin", "gc_test_plugin"], work, GC_DROP=out / "notes.txt")
    assert proc.returncode == 2 and "while this run went on" in one_line_error(proc)
    assert sorted(os.listdir(out)) == ["notes.txt"] and (out / "notes.txt").read_text() == "the user's notes"
    # our earlier output, replaced with --overwrite, gains a file during the run: nothing is replaced
    (out / "notes.txt").unlink()
    out.rmdir()
    assert cli(["convert", "m.onnx", "-o", out, "-q"], work).returncode == 0
    before = snapshot(out)
    proc = cli(["convert", "m.onnx", "-o", out, "-q", "--overwrite", "--plugin", "gc_test_plugin"], work, GC_DROP=out / "notes.txt")
    assert proc.returncode == 2 and "appeared in it during the run" in one_line_error(proc)
    assert snapshot(out) == {**before, "notes.txt": b"the user's notes"}
    assert leftovers(work) == []


def test_two_runs_into_one_folder(work):
    out = work / "out"
    first = start(["convert", "m.onnx", "-o", out, "-q", "--plugin", "gc_test_plugin"], work, GC_STARTED=work / "started", GC_SLEEP=6)
    try:
        wait_for(work / "started", first)
        second = cli(["convert", "m.onnx", "-o", out, "-q"], work)
        assert second.returncode == 2
        assert "another graph-convert run is writing it" in one_line_error(second)
        assert first.wait(timeout=600) == 0, first.stderr.read()
    finally:
        first.kill()
        first.wait()
    assert (out / "report.json").exists() and leftovers(work) == []


# -- 2. signals and leftovers ---------------------------------------------------------------------

@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_signal_removes_the_temporary_folder(work, sig):
    out = work / "out"
    proc = start(["convert", "m.onnx", "-o", out, "--plugin", "gc_test_plugin"], work, GC_STARTED=work / "started", GC_SLEEP=60)
    try:
        wait_for(work / "started", proc)
        assert len(leftovers(work)) == 1  # the run's temporary folder, while it runs
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        proc.kill()
        proc.wait()
    assert rc == 128 + sig
    err = proc.stderr.read()
    assert "Traceback" not in err and "nothing was written" in err
    assert not out.exists() and leftovers(work) == []


def test_a_killed_runs_leftover_is_removed_by_the_next_run(work):
    out = work / "out"
    proc = start(["convert", "m.onnx", "-o", out, "--plugin", "gc_test_plugin"], work, GC_STARTED=work / "started", GC_SLEEP=60)
    try:
        wait_for(work / "started", proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    stale = leftovers(work)
    assert len(stale) == 1 and stale[0].startswith(".out.tmp-")  # kill -9 cannot clean up
    (work / "other").mkdir()  # a sibling of the user's that only looks similar is never touched
    (work / ".outx.tmp-0000000000000000-00000000").mkdir()
    assert cli(["convert", "m.onnx", "-o", out, "-q"], work).returncode == 0
    assert leftovers(work) == [".outx.tmp-0000000000000000-00000000"] and (work / "other").is_dir()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o755), (0o077, 0o700)])
def test_output_folder_gets_the_users_umask(work, umask, mode):
    out = work / "out"
    proc = subprocess.run([sys.executable, "-m", "graph_convert.cli", "convert", "m.onnx", "-o", str(out), "-q"], cwd=work,
                          env=env_for(work), capture_output=True, text=True, timeout=600, preexec_fn=lambda: os.umask(umask))
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(os.stat(out).st_mode) == mode


# -- 3. verification that cannot be fooled ----------------------------------------------------

def small_output_mlp(scale: float) -> onnx.ModelProto:
    """An MLP whose outputs are around ``scale`` (a randomly initialised classifier's can be 1e-9)."""
    b = Builder()
    x = b.input("x", [2, 16])
    h = b.op("Relu", [b.op("Gemm", [x, b.weight([16, 32]), b.weight([32])])])
    y = b.op("Gemm", [h, b.const((b.rng.standard_normal((32, 10)) * scale).astype(np.float32)), b.const(
        (b.rng.standard_normal(10) * scale).astype(np.float32))])
    b.output(y)
    return b.model()


def test_a_wrong_model_with_small_outputs_fails(work):
    onnx.save(small_output_mlp(1e-6), work / "small.onnx")
    ok = cli(["convert", "small.onnx", "-o", work / "good", "--plugin", "gc_test_plugin"], work)
    assert ok.returncode == 0, ok.stderr  # float32 noise on small outputs is not an error
    rep = json.loads((work / "good" / "report.json").read_text())
    figs = rep["verification"]["tflite_float32"]
    assert all(f["scale"] < 1e-4 and f["max_rel"] < 1e-4 for f in figs.values())
    bad = cli(["convert", "small.onnx", "-o", work / "bad", "--plugin", "gc_test_plugin"], work, GC_FLIP=1)
    assert bad.returncode == 3
    line = one_line_error(bad)
    assert "differs from the source model" in line and "max abs" in line
    assert "test_flip_last_weight" in line  # the replay names the guilty pass
    assert not (work / "bad").exists() and leftovers(work) == []


def test_report_lists_draws_and_warns_about_input_independent_outputs(work):
    b = Builder()
    x = b.input("x", [1, 8])
    b.output(b.op("Tanh", [b.op("MatMul", [x, b.weight([8, 4])])]))
    zero = b.const(np.zeros((1, 8), np.float32))
    b.output(b.op("Add", [b.op("Mul", [x, zero]), b.weight([1, 8])]))  # the same for every input
    onnx.save(b.model(), work / "two.onnx")
    proc = cli(["convert", "two.onnx", "-o", work / "out"], work)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads((work / "out" / "report.json").read_text())
    assert rep["verification"]["draws"] == ["normal(0, 1), seed 0", "uniform[0, 1), seed 1"]
    warned = {w["output"] for w in rep["verification"]["warnings"]}
    assert warned == {b.outputs[1].name}
    assert "does not depend on the inputs" in proc.stdout


def test_nan_weight_is_refused_inf_is_legal(work):
    b = Builder()
    x = b.input("x", [1, 4])
    w = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
    w[2, 1] = np.nan
    b.output(b.op("MatMul", [x, b.const(w, name="fc.weight")]))
    onnx.save(b.model(), work / "nan.onnx")
    proc = cli(["convert", "nan.onnx", "-o", work / "out"], work)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "'fc.weight'" in line and "NaN" in line and "(2, 1)" in line
    b = Builder()
    x = b.input("x", [1, 4])
    floor = b.const(np.array([[-np.inf, -np.inf, 0.0, -np.inf]], np.float32))
    b.output(b.op("Max", [x, floor]))
    onnx.save(b.model(), work / "inf.onnx")
    proc = cli(["convert", "inf.onnx", "-o", work / "out", "-q"], work)
    assert proc.returncode == 0, proc.stderr
    assert not (work / "out" / "report.json").read_text().count("Infinity")


def test_nan_attribute_and_unknown_input_type_are_refused(work):
    b = Builder()
    x = b.input("x", [1, 4])
    b.output(b.op("LeakyRelu", [x], alpha=float("nan")))
    onnx.save(b.model(), work / "nan_attr.onnx")
    proc = cli(["convert", "nan_attr.onnx", "-o", work / "out"], work)
    assert proc.returncode == 2 and "attribute 'alpha' holds NaN" in one_line_error(proc)
    m = conv_model()
    m.graph.input[0].type.tensor_type.elem_type = 99
    with open(work / "bad_type.onnx", "wb") as f:
        f.write(m.SerializeToString())  # onnx.save would not check either; the checker refuses on load
    proc = cli(["convert", "bad_type.onnx", "-o", work / "out"], work)
    assert proc.returncode == 2 and "input.1" in one_line_error(proc)
    assert not (work / "out").exists() and leftovers(work) == []


def test_compare_judges_each_output_by_its_own_scale():
    rng = np.random.default_rng(0)
    ref = (rng.standard_normal(100) * 1e-6).astype(np.float32)
    assert compare(ref, ref * (1 + 1e-6), 1e-4).ok
    flipped = compare(ref, -ref, 1e-4)
    assert not flipped.ok and flipped.cosine < -0.99
    assert not compare(ref, ref + 5e-8, 1e-4).ok  # 5% of the scale: wrong, however small in absolute terms
    with_nan = ref.copy()
    with_nan[7] = np.nan
    f = compare(ref, with_nan, 1e-4)
    assert not f.ok and "NaN at 1 position" in f.reason and "(7,)" in f.reason
    assert compare(with_nan, with_nan.copy(), 1e-4).ok  # NaN where the source has NaN is agreement
    assert not compare(np.array([np.inf, 1.0]), np.array([-np.inf, 1.0]), 1e-4).ok
    assert compare(np.zeros(4), np.zeros(4), 1e-4).ok


def test_second_draw_catches_what_the_first_misses():
    b = Builder()
    x = b.input("x", [1, 6])
    b.output(b.op("Relu", [x]))
    model = b.model()
    draws = [Draw("normal", {"x": -np.abs(np.random.default_rng(0).standard_normal((1, 6))).astype(np.float32)}),
             Draw("uniform", {"x": np.random.default_rng(1).random((1, 6)).astype(np.float32)})]
    ver = Verifier(model, draws, 1e-4)
    out = b.outputs[0].name
    # a "converter" that outputs zeros agrees on the all-negative draw and fails on the second
    with pytest.raises(VerificationError, match="on the uniform inputs"):
        ver.check(lambda feeds: {out: np.zeros((1, 6), np.float32)}, "test")


# -- 6/7. one line, a documented exit code, the right message ---------------------------------

def test_tensorflow_runtime_error_is_one_line_exit_6(work):
    proc = cli(["convert", "m.onnx", "-o", work / "out", "--plugin", "gc_test_plugin"], work, GC_BAD_EMITTER=1)
    assert proc.returncode == 6
    line = one_line_error(proc)
    assert "stage 'run TensorFlow'" in line and "deliberately failing check" in line
    debug = cli(["convert", "m.onnx", "-o", work / "out", "--plugin", "gc_test_plugin", "--debug"], work, GC_BAD_EMITTER=1)
    assert debug.returncode == 6 and "Traceback" in debug.stderr
    assert not (work / "out").exists() and leftovers(work) == []


def test_a_pass_that_lies_about_changed_is_named(work):
    proc = cli(["convert", "m.onnx", "-o", work / "out", "--plugin", "gc_test_plugin"], work, GC_LIE=1)
    assert proc.returncode == 4
    line = one_line_error(proc)
    assert "test_lies_about_changed" in line and "changed=False" in line
    assert not (work / "out").exists() and leftovers(work) == []


def test_gemm_transa_with_a_row_bias_converts(work):
    """The conformance case that regressed unseen (TF's fused MatMul+bias refused a (1, N) bias)."""
    from graph_convert import conformance as C
    case = C.load_cases("^test_gemm_transposeA$")[0]
    onnx.save(case.model, work / "gemm.onnx")
    a, b, c = (np.asarray(v) for v in case.data_sets[0][0])
    np.savez(work / "gemm.npz", **{vi.name: v for vi, v in zip(case.model.graph.input, (a, b, c))})
    proc = cli(["convert", "gemm.onnx", "-o", work / "out", "--inputs", "gemm.npz", "-q"], work)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("args,expect", [
    (["--atol", "inf"], "--atol 'inf': must be a finite positive number"),
    (["--atol", "0"], "--atol '0': must be a finite positive number"),
    (["--atol", "nan"], "--atol 'nan': must be a finite positive number"),
    (["--seed", "-1"], "--seed '-1': must be a non-negative integer"),
    (["--seed", "1.5"], "--seed '1.5': must be a non-negative integer"),
    (["--input-shape", "input.1=1,3,16,16"], "the model's input 'input.1' has shape [1,3,8,8]"),
    (["--inputs", "notes.txt"], "not an .npz archive"),
    (["--inputs", "one.npy"], "not an .npz archive (a single .npy array)"),
    (["--inputs", "absent.npz"], "absent.npz: no such file"),
    (["--inputs", "objects.npz"], "pickled data"),
])
def test_bad_options_get_one_line(work, args, expect):
    (work / "notes.txt").write_text("not data")
    np.save(work / "one.npy", np.zeros(3, np.float32))
    np.savez(work / "objects.npz", **{"input.1": np.array([{"a": 1}], dtype=object)})
    proc = cli(["convert", "m.onnx", "-o", work / "out", *args], work)
    assert proc.returncode == 2
    assert expect in one_line_error(proc)
    assert not (work / "out").exists() and leftovers(work) == []


def test_missing_external_data_is_named_as_missing(work):
    b = Builder()
    x = b.input("x", [1, 64])
    b.output(b.op("MatMul", [x, b.weight([64, 64])]))
    onnx.save(b.model(), work / "ext.onnx", save_as_external_data=True, location="ext.weights", size_threshold=0)
    os.remove(work / "ext.weights")
    proc = cli(["convert", "ext.onnx", "-o", work / "out"], work)
    assert proc.returncode == 2
    assert "external data file 'ext.weights'" in one_line_error(proc) and "missing" in proc.stderr


def test_tensorflow_log_lines_never_reach_the_user(work):
    quiet = cli(["convert", "m.onnx", "-o", work / "q", "-q"], work)
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    loud = cli(["convert", "m.onnx", "-o", work / "d"], work)
    assert loud.returncode == 0 and loud.stderr == ""
    assert "I0000" not in loud.stdout and "absl" not in loud.stdout and "wrote" in loud.stdout
    text = (work / "d" / "report.json").read_text()
    json.loads(text, parse_constant=lambda c: pytest.fail(f"report.json holds {c}, which is not JSON"))


def test_doc_of_exit_codes_matches_the_cli():
    readme = open(os.path.join(ROOT, "README.md")).read()
    for code in (2, 3, 4, 5, 6):
        assert f"{code} " in readme.split("Exit codes")[1][:2500], code
    assert textwrap.dedent("128 + the signal") in readme


def test_a_sweep_never_removes_a_scratch_folder_a_run_is_creating_or_using(tmp_path, monkeypatch):
    """Two runs starting at once: one's sweep found the other's folder with its lock file created
    and not yet taken, took it for an orphan and removed it (the other died on its first write
    there, a FileNotFoundError traceback). A folder takes its scratch name only once locked; one
    still under its creating name is left alone for the grace period, then removed."""
    from graph_convert.cli import session as S

    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    with S.private_tmpdir() as path:
        assert os.path.basename(path).startswith(S.PREFIX)
        assert S.sweep(str(tmp_path)) == [] and os.path.isdir(path)
    assert os.listdir(tmp_path) == []
    starting = tmp_path / (S.CREATING + "other")
    starting.mkdir()
    (starting / S.LOCK).touch()  # created, its lock not yet taken by its run
    assert S.sweep(str(tmp_path)) == [] and starting.is_dir()
    old = time.time() - S.UNLOCKED_GRACE_SECONDS - 5
    os.utime(starting, (old, old))  # its run died before taking the lock
    assert S.sweep(str(tmp_path)) == [str(starting)] and not starting.exists()
