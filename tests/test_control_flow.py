"""Control flow (If, Loop, Scan): TF control flow that TFLite runs as builtin IF/WHILE, or unrolled.

Every model runs through the real passes, the TF emitter, the TFLite converter (builtin ops only)
and the LiteRT interpreter, compared with ONNX Runtime on the same inputs. Data-dependent forms
are driven down every path: both branches of an If, loops of 0, 1 and many iterations.
"""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from graph_convert.backends.tensorflow.ops.control_flow import UNROLL_LIMIT
from graph_convert.conformance import Runner
from tests.helpers import run_ort
from tests.test_ops import check

RNG = np.random.default_rng(7)


@pytest.fixture(scope="module")
def runner() -> Runner:
    return Runner()


def all_ops(tflite: bytes) -> list[str]:
    """Every operator of every subgraph of a .tflite (IF/WHILE bodies included), by name."""
    from tensorflow.lite.python import schema_py_generated as fb

    m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(tflite, 0))
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    out = []
    for sg in m.subgraphs:
        for op in sg.operators:
            code = m.operatorCodes[op.opcodeIndex]
            c = max(code.builtinCode, code.deprecatedBuiltinCode)
            out.append("CUSTOM" if c == fb.BuiltinOperator.CUSTOM else names[c])
    return out


def assert_builtin(tflite: bytes, *wanted: str, absent: tuple[str, ...] = ()) -> list[str]:
    ops = all_ops(tflite)
    assert "CUSTOM" not in ops and not any(o.startswith("FLEX") for o in ops), ops
    for w in wanted:
        assert w in ops, (w, sorted(set(ops)))
    for a in absent:
        assert a not in ops, (a, sorted(set(ops)))
    return ops


def model(nodes, inputs, outputs, inits=(), opset=17, name="cf") -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m


def vi(name, dtype, shape):
    """A typed value; an int ``shape`` is a rank with every dim unknown."""
    return helper.make_tensor_value_info(name, dtype, [None] * shape if isinstance(shape, int) else shape)


def init(name, value):
    return onnx.numpy_helper.from_array(np.asarray(value), name)


# --- If --------------------------------------------------------------------------------------------
def detector_if() -> onnx.ModelProto:
    """A detector's post-processing as exported: ``if any score > thr`` -> top-k of the kept
    scores, their boxes gathered (counts known only at run time); else empty outputs."""
    w = RNG.standard_normal((4, 4)).astype(np.float32)
    then = helper.make_graph([
        helper.make_node("Greater", ["scores", "thr"], ["keep"]),
        helper.make_node("NonZero", ["keep"], ["nz"]),
        helper.make_node("Reshape", ["nz", "minus1"], ["idx"]),
        helper.make_node("Gather", ["scores", "idx"], ["kept"]),
        helper.make_node("Shape", ["kept"], ["n"]),
        helper.make_node("Min", ["n", "k"], ["kk"]),
        helper.make_node("TopK", ["kept", "kk"], ["top", "top_i"]),
        helper.make_node("Gather", ["idx", "top_i"], ["sel"]),
        helper.make_node("Gather", ["boxes", "sel"], ["b0"], axis=0),
        helper.make_node("MatMul", ["b0", "w"], ["b1"]),
    ], "then", [], [vi("top", T.FLOAT, 1), vi("b1", T.FLOAT, 2)])
    els = helper.make_graph([
        helper.make_node("Slice", ["scores", "zero", "zero"], ["none"]),
        helper.make_node("Slice", ["boxes", "zero", "zero"], ["nob"]),
    ], "else", [], [vi("none", T.FLOAT, 1), vi("nob", T.FLOAT, 2)])
    nodes = [
        helper.make_node("ReduceMax", ["scores"], ["best"], keepdims=0),
        helper.make_node("Greater", ["best", "thr"], ["any"]),
        helper.make_node("If", ["any"], ["top_scores", "top_boxes"], then_branch=then, else_branch=els),
    ]
    return model(nodes, [vi("scores", T.FLOAT, [20]), vi("boxes", T.FLOAT, [20, 4])],
                 [vi("top_scores", T.FLOAT, 1), vi("top_boxes", T.FLOAT, 2)],
                 [init("thr", np.float32(0.5)), init("minus1", np.array([-1], np.int64)), init("k", np.array([5], np.int64)),
                  init("zero", np.array([0], np.int64)), init("w", w)])


@pytest.mark.parametrize("branch", ["then", "else"])
def test_data_dependent_if_both_branches(runner, branch):
    m = detector_if()
    scores = RNG.uniform(0, 1, 20).astype(np.float32)
    if branch == "else":
        scores *= 0.4  # nothing above the threshold
    else:
        scores[:3] = [0.9, 0.7, 0.6]  # distinct, so TopK's order is unique
    feeds = {"scores": scores, "boxes": RNG.standard_normal((20, 4)).astype(np.float32)}
    ref = run_ort(m, feeds)
    assert (ref["top_scores"].size > 0) == (branch == "then")
    check(runner, m, feeds)
    ops = assert_builtin(runner.last_tflite, "IF", "TOPK_V2", "GATHER")
    assert "WHERE" in ops or "NON_ZERO" in ops or "GATHER_ND" in ops  # NonZero, however it is lowered


def test_constant_condition_is_inlined(runner):
    """A condition known at conversion time: the taken branch only, no IF."""
    a = helper.make_graph([helper.make_node("Relu", ["x"], ["ya"])], "a", [], [vi("ya", T.FLOAT, [2, 3])])
    b = helper.make_graph([helper.make_node("Neg", ["x"], ["yb"])], "b", [], [vi("yb", T.FLOAT, [2, 3])])
    for cond, want in ((True, "RELU"), (False, "NEG")):
        m = model([helper.make_node("If", ["c"], ["y"], then_branch=a, else_branch=b)], [vi("x", T.FLOAT, [2, 3])],
                  [vi("y", T.FLOAT, [2, 3])], [init("c", np.array(cond))])
        check(runner, m, {"x": RNG.standard_normal((2, 3)).astype(np.float32)})
        assert_builtin(runner.last_tflite, want, absent=("IF",))


def test_if_reads_big_outer_weight_and_nested_if(runner):
    """Branches read an outer weight big enough to be a variable, and hold an If of their own."""
    w = RNG.standard_normal((64, 32)).astype(np.float32)
    inner_t = helper.make_graph([helper.make_node("Relu", ["h"], ["r"])], "it", [], [vi("r", T.FLOAT, 2)])
    inner_e = helper.make_graph([helper.make_node("Sigmoid", ["h"], ["s"])], "ie", [], [vi("s", T.FLOAT, 2)])
    then = helper.make_graph([
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("ReduceMean", ["h"], ["mh"], keepdims=0),
        helper.make_node("Greater", ["mh", "zero"], ["c2"]),
        helper.make_node("If", ["c2"], ["o"], then_branch=inner_t, else_branch=inner_e),
    ], "then", [], [vi("o", T.FLOAT, 2)])
    els = helper.make_graph([helper.make_node("Slice", ["x", "s0", "s1", "ax"], ["o2"])], "else", [], [vi("o2", T.FLOAT, 2)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["sx"], keepdims=0), helper.make_node("Greater", ["sx", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)]
    m = model(nodes, [vi("x", T.FLOAT, [3, 64])], [vi("y", T.FLOAT, 2)],
              [init("w", w), init("zero", np.float32(0)), init("s0", np.array([0], np.int64)), init("s1", np.array([7], np.int64)),
               init("ax", np.array([1], np.int64))])
    x = RNG.standard_normal((3, 64)).astype(np.float32)
    for sign in (1, -1):
        xs = np.abs(x) * sign  # positive sum: the MatMul branch; negative: the slice
        check(runner, m, {"x": xs}, rtol=1e-4, atol=1e-4)
        assert_builtin(runner.last_tflite, "IF")


# --- Loop ------------------------------------------------------------------------------------------
def counted_loop(trips=None, cond_input=True) -> onnx.ModelProto:
    """y_{i+1} = y_i * a + x[i % 4] (loop-carried), scan output y_i, iteration number as a scan output.
    ``trips``: a constant trip count (else a graph input)."""
    body = helper.make_graph([
        helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        helper.make_node("Mod", ["i", "four"], ["j"]),
        helper.make_node("Gather", ["x", "j"], ["xj"], axis=0),
        helper.make_node("Mul", ["y_in", "a"], ["ya"]),
        helper.make_node("Add", ["ya", "xj"], ["y_out"]),
        helper.make_node("Identity", ["y_out"], ["scan"]),
        helper.make_node("Identity", ["i"], ["iters"]),
    ], "body", [vi("i", T.INT64, []), vi("cond_in", T.BOOL, []), vi("y_in", T.FLOAT, [3])],
        [vi("cond_out", T.BOOL, []), vi("y_out", T.FLOAT, [3]), vi("scan", T.FLOAT, [3]), vi("iters", T.INT64, [])])
    inputs = [vi("x", T.FLOAT, [4, 3]), vi("y0", T.FLOAT, [3])]
    inits = [init("a", RNG.uniform(0.5, 1.0, 3).astype(np.float32)), init("four", np.int64(4)), init("t", np.array(True))]
    if trips is None:
        inputs.insert(0, vi("m", T.INT64, []))
    else:
        inits.append(init("m", np.int64(trips)))
    node = helper.make_node("Loop", ["m", "t" if cond_input else "", "y0"], ["y", "ys", "its"], body=body)
    return model([node], inputs, [vi("y", T.FLOAT, [3]), vi("ys", T.FLOAT, 2), vi("its", T.INT64, 1)], inits)


@pytest.mark.parametrize("trips", [0, 1, 9])
def test_loop_runtime_trip_count(runner, trips):
    m = counted_loop()
    feeds = {"m": np.array(trips, np.int64), "x": RNG.standard_normal((4, 3)).astype(np.float32),
             "y0": RNG.standard_normal(3).astype(np.float32)}
    assert run_ort(m, feeds)["ys"].shape == (trips, 3)
    check(runner, m, feeds)
    assert_builtin(runner.last_tflite, "WHILE")


def test_loop_same_file_runs_any_count():
    """One .tflite, run for 0, 1 and many iterations (the WHILE resizes its scan buffers)."""
    from graph_convert.backends.tensorflow.runner import run_tflite

    r = Runner()
    m = counted_loop()
    x, y0 = RNG.standard_normal((4, 3)).astype(np.float32), RNG.standard_normal(3).astype(np.float32)
    check(r, m, {"m": np.array(2, np.int64), "x": x, "y0": y0})
    data = r.last_tflite
    for trips in (0, 1, 13):
        feeds = {"m": np.array(trips, np.int64), "x": x, "y0": y0}
        ref, got = run_ort(m, feeds), run_tflite(data, feeds)
        for k in ("y", "ys", "its"):
            assert got[k].shape == ref[k].shape, (trips, k)
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-5 * (1 + np.abs(ref[k]).max(initial=0)))


@pytest.mark.parametrize("trips,unrolled", [(3, True), (UNROLL_LIMIT + 4, False)])
def test_loop_constant_trip_count(runner, trips, unrolled):
    m = counted_loop(trips)
    check(runner, m, {"x": RNG.standard_normal((4, 3)).astype(np.float32), "y0": RNG.standard_normal(3).astype(np.float32)})
    ops = assert_builtin(runner.last_tflite)
    assert ("WHILE" in ops) != unrolled, ops


def test_while_loop_data_dependent_condition(runner):
    """No trip count: doubles until the sum passes a bound (0, 1 or several iterations)."""
    body = helper.make_graph([
        helper.make_node("Mul", ["v_in", "two"], ["v_out"]),
        helper.make_node("ReduceSum", ["v_out"], ["s"], keepdims=0),
        helper.make_node("Less", ["s", "bound"], ["cond_out"]),
    ], "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("v_in", T.FLOAT, [2])],
        [vi("cond_out", T.BOOL, []), vi("v_out", T.FLOAT, [2])])
    nodes = [helper.make_node("ReduceSum", ["v"], ["s0"], keepdims=0), helper.make_node("Less", ["s0", "bound"], ["c0"]),
             helper.make_node("Loop", ["", "c0", "v"], ["vf"], body=body)]
    m = model(nodes, [vi("v", T.FLOAT, [2])], [vi("vf", T.FLOAT, [2])], [init("two", np.float32(2)), init("bound", np.float32(100))])
    for start in (np.array([60, 50], np.float32), np.array([30, 30], np.float32), np.array([0.5, 0.25], np.float32)):
        check(runner, m, {"v": start})
        assert_builtin(runner.last_tflite, "WHILE")


def test_loop_carried_value_grows(runner):
    """A loop-carried value whose shape changes every iteration (Concat), with an If inside the
    body reading both the body's and the outer graph's tensors."""
    then = helper.make_graph([helper.make_node("Add", ["acc_in", "bias"], ["t"])], "t", [], [vi("t", T.FLOAT, 2)])
    els = helper.make_graph([helper.make_node("Sub", ["acc_in", "bias"], ["e"])], "e", [], [vi("e", T.FLOAT, 2)])
    body = helper.make_graph([
        helper.make_node("Identity", ["c"], ["c_out"]),
        helper.make_node("Mod", ["i", "two"], ["odd"]),
        helper.make_node("Cast", ["odd"], ["oddb"], to=T.BOOL),
        helper.make_node("If", ["oddb"], ["step"], then_branch=then, else_branch=els),
        helper.make_node("ReduceMean", ["step"], ["mean"], axes=[0], keepdims=1),
        helper.make_node("Concat", ["step", "mean"], ["acc_out"], axis=0),
    ], "body", [vi("i", T.INT64, []), vi("c", T.BOOL, []), vi("acc_in", T.FLOAT, 2)],
        [vi("c_out", T.BOOL, []), vi("acc_out", T.FLOAT, 2)])
    m = model([helper.make_node("Loop", ["m", "", "x"], ["acc"], body=body)], [vi("m", T.INT64, []), vi("x", T.FLOAT, [2, 3])],
              [vi("acc", T.FLOAT, 2)], [init("two", np.int64(2)), init("bias", RNG.standard_normal(3).astype(np.float32))], opset=13)
    for trips in (0, 1, 4):
        check(runner, m, {"m": np.array(trips, np.int64), "x": RNG.standard_normal((2, 3)).astype(np.float32)})
        assert_builtin(runner.last_tflite, "WHILE", "IF")


# --- Scan ------------------------------------------------------------------------------------------
def scan_model(length, opset=16) -> onnx.ModelProto:
    """A running (decayed) sum over axis 1 of x, read backwards, scan outputs stacked on axis 1."""
    body = helper.make_graph([
        helper.make_node("Mul", ["s_in", "decay"], ["sd"]),
        helper.make_node("Add", ["sd", "xt"], ["s_out"]),
        helper.make_node("Tanh", ["s_out"], ["y"]),
    ], "body", [vi("s_in", T.FLOAT, [2]), vi("xt", T.FLOAT, [2])], [vi("s_out", T.FLOAT, [2]), vi("y", T.FLOAT, [2])])
    node = helper.make_node("Scan", ["s0", "x"], ["s", "ys"], body=body, num_scan_inputs=1, scan_input_axes=[-1],
                            scan_input_directions=[1], scan_output_axes=[1])
    return model([node], [vi("s0", T.FLOAT, [2]), vi("x", T.FLOAT, [2, length])], [vi("s", T.FLOAT, [2]), vi("ys", T.FLOAT, [2, length])],
                 [init("decay", RNG.uniform(0.3, 0.9, 2).astype(np.float32))], opset=opset)


@pytest.mark.parametrize("length,unrolled", [(5, True), (UNROLL_LIMIT + 3, False)])
def test_scan_axes_and_directions(runner, length, unrolled):
    m = scan_model(length)
    check(runner, m, {"s0": RNG.standard_normal(2).astype(np.float32), "x": RNG.standard_normal((2, length)).astype(np.float32)})
    ops = assert_builtin(runner.last_tflite)
    assert ("WHILE" in ops) != unrolled, ops


def test_unsupported_body_op_is_named():
    """An op without emitter inside a body is refused up front, by name, like one in the main graph."""
    from graph_convert.backends.tensorflow.emitter import missing_emitters
    from graph_convert.ir import from_onnx
    from tests.helpers import registry

    then = helper.make_graph([helper.make_node("NoSuchOp", ["x"], ["a"], domain="my.domain")], "t", [], [vi("a", T.FLOAT, [2])])
    els = helper.make_graph([helper.make_node("Relu", ["x"], ["b"])], "e", [], [vi("b", T.FLOAT, [2])])
    g = helper.make_graph([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)], "m",
                          [vi("c", T.BOOL, []), vi("x", T.FLOAT, [2])], [vi("y", T.FLOAT, [2])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("my.domain", 1)])
    assert missing_emitters(from_onnx(m), registry().emitters) == [("my.domain::NoSuchOp", "If_0/then_branch/NoSuchOp")]


# --- from PyTorch ----------------------------------------------------------------------------------
torch = pytest.importorskip("torch")


def torchscript_onnx(module, args, names) -> onnx.ModelProto:
    """``module`` scripted (its loops and ifs stay control flow) and exported by the TorchScript exporter at opset 17."""
    import io
    import warnings

    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(module), args, f, opset_version=17, dynamo=False, input_names=names)
    return onnx.load_from_string(f.getvalue())


def subgraph_ops(tflite: bytes) -> list[list[str]]:
    """The op names of each subgraph of a .tflite (0: the main graph)."""
    from tensorflow.lite.python import schema_py_generated as fb

    m = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(tflite, 0))
    names = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
    return [[names[max(m.operatorCodes[op.opcodeIndex].builtinCode, m.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)]
             for op in sg.operators] for sg in m.subgraphs]


class Scripted(torch.nn.Module):
    """A counted loop (trip count from an input), a data-dependent if between two heads, and a
    while loop whose condition the body computes."""

    def __init__(self):
        super().__init__()
        self.a, self.b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)

    def forward(self, x: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        y = x
        for _ in range(int(n)):
            y = torch.tanh(y * 1.5)
        if bool(y.sum() > 0):
            out = self.a(y)
        else:
            out = self.b(y) * 2
        s = y.abs().sum()
        while bool(s < 100.0):
            s = s * 2 + 1
        return out + s


def test_torchscript_loops_and_ifs_every_path(tmp_path):
    from graph_convert import convert
    from graph_convert.backends.tensorflow.runner import run_tflite

    torch.manual_seed(0)
    module = Scripted().eval()
    x = torch.randn(2, 8)
    m = torchscript_onnx(module, (x, torch.tensor(3)), ["x", "n"])
    assert {"Loop", "If"} <= {n.op_type for n in m.graph.node}
    result = convert(m, output_dir=tmp_path / "out")
    rep = result.report
    for stage in ("tensorflow", "tflite_float32"):
        assert all(fig["ok"] for fig in rep["verification"][stage].values()), rep["verification"][stage]
    data = open(result.paths["tflite_float32"] if "tflite_float32" in result.paths else result.output_dir + "/model_float32.tflite", "rb").read()
    assert_builtin(data, "WHILE", "IF")
    branches = set()
    for n in (0, 1, 5):
        for sign in (1.0, -1.0):
            xs = x.abs() * sign
            with torch.no_grad():
                ref = module(xs, torch.tensor(n)).numpy()
            got = run_tflite(data, {"x": xs.numpy(), "n": np.array(n, np.int64)})
            got = next(iter(got.values()))
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
            branches.add(bool(torch.tanh(xs).sum() > 0) if n else bool(xs.sum() > 0))
    assert branches == {True, False}


@pytest.mark.parametrize("kind", ["cond", "while_loop"])
def test_dynamo_cond_and_while_loop(runner, kind):
    """torch.cond and torch's while_loop through the dynamo exporter (If / Loop at opset 18+)."""
    import warnings

    from torch._higher_order_ops.while_loop import while_loop

    w = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))

    class Cond(torch.nn.Module):
        def forward(self, x):
            return torch.cond(x.sum() > 0, lambda x: (x @ w).sin(), lambda x: x.cos() * 2, (x,))

    class While(torch.nn.Module):
        def forward(self, x):
            return while_loop(lambda i, v: (v.abs().sum() < 50) & (i < 10), lambda i, v: (i + 1, v @ w + 1), (torch.tensor(0), x))[1]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = torch.onnx.export(Cond() if kind == "cond" else While(), (torch.randn(2, 3),), dynamo=True, verbose=False).model_proto
    assert ("If" if kind == "cond" else "Loop") in {n.op_type for n in m.graph.node}
    name = m.graph.input[0].name
    for x in (np.full((2, 3), 0.5, np.float32), np.full((2, 3), -0.5, np.float32), RNG.standard_normal((2, 3)).astype(np.float32)):
        check(runner, m, {name: x}, rtol=1e-4, atol=1e-4)
        assert_builtin(runner.last_tflite, "IF" if kind == "cond" else "WHILE")


class CNNWithHeads(torch.nn.Module):
    """A conv backbone; which head runs depends on the features (a data-dependent If)."""

    def __init__(self, spatial_head: bool):
        super().__init__()
        self.spatial = spatial_head
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.Conv2d(8, 8, 3, stride=2, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU())
        self.conv_head = torch.nn.Conv2d(8, 4, 1)
        self.fc_a, self.fc_b = torch.nn.Linear(8, 5), torch.nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.body(x)
        if self.spatial:  # the If reads the 4-D feature map itself
            if bool(f.mean() > 0.3):
                return self.conv_head(f).mean(dim=(2, 3))
            return f.amax(dim=(2, 3))[:, :4]
        g = f.mean(dim=(2, 3))
        if bool(g.sum() > 1.0):
            return self.fc_a(g)
        return self.fc_b(g).relu()


@pytest.mark.parametrize("spatial", [False, True])
def test_cnn_head_in_if_keeps_backbone_free_of_transposes(tmp_path, spatial):
    from graph_convert import convert

    torch.manual_seed(2)
    module = CNNWithHeads(spatial).eval()
    for p in module.modules():
        if isinstance(p, torch.nn.BatchNorm2d):
            p.running_mean.uniform_(-0.5, 0.5)
            p.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 16, 16)
    m = torchscript_onnx(module, (x,), ["x"])
    assert "If" in {n.op_type for n in m.graph.node}
    result = convert(m, output_dir=tmp_path / "out")
    rep = result.report
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32"):
        assert all(fig["ok"] for fig in rep["verification"][stage].values()), rep["verification"][stage]
    data = open(result.output_dir + "/model_float32.tflite", "rb").read()
    main = subgraph_ops(data)[0]
    assert "IF" in main and main.count("CONV_2D") == 2
    # the backbone: no TRANSPOSE; a spatial head's If reads the NCHW map: one TRANSPOSE in front of it
    assert main.count("TRANSPOSE") == (1 if spatial else 0), main
    if spatial:
        kept = rep["rewritten_graph"]["transposes_left"]
        reasons = [k["reason"] for t in kept for k in t.get("kept_because", [])]
        assert any("bodies read this tensor in the source layout" in r for r in reasons), kept


def test_passes_keep_outer_scope_references():
    """Tensors read only inside bodies survive the pass pipeline under their producers' rewrites
    (an Identity removed, a Conv made channels-last, constants folded): the lowered rewritten
    graph still computes what the source does, in ONNX Runtime, down both branches."""
    from tests.helpers import assert_equivalent, run_pipeline

    w = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
    then = helper.make_graph([helper.make_node("ReduceMean", ["feat_id"], ["o"], axes=[2, 3], keepdims=0)], "t", [], [vi("o", T.FLOAT, 2)])
    els = helper.make_graph([helper.make_node("ReduceMax", ["feat"], ["o2"], axes=[2, 3], keepdims=0),
                             helper.make_node("Add", ["o2", "k2"], ["o3"])], "e", [], [vi("o3", T.FLOAT, 2)])
    nodes = [helper.make_node("Conv", ["x", "w"], ["feat"], pads=[1, 1, 1, 1]),
             helper.make_node("Identity", ["feat"], ["feat_id"]),
             helper.make_node("Add", ["k", "k"], ["k2"]),  # folded to a constant read inside a body
             helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els)]
    m = model(nodes, [vi("x", T.FLOAT, [1, 3, 8, 8])], [vi("y", T.FLOAT, [1, 4])],
              [init("w", w), init("k", np.float32(0.25)), init("zero", np.float32(0))])
    g, _ = run_pipeline(m)
    assert g.count("If") == 1 and any(n.is_layout_marked for n in g.nodes if n.op_type == "Conv")
    for seed in range(4):  # random signs: both branches among the draws
        assert_equivalent(m, g, seed=seed)
    sums = [float(np.sum(np.random.default_rng(s).standard_normal((1, 3, 8, 8)))) for s in range(4)]
    assert min(sums) < 0 < max(sums)


def test_branches_of_different_rank_are_declined(runner):
    """ONNX lets the branches give different shapes (handled: IF resizes) but also different
    ranks, which the emitters after it cannot take: declined, naming the node and output."""
    a = helper.make_graph([helper.make_node("ReduceSum", ["x"], ["ya"], keepdims=0)], "a", [], [vi("ya", T.FLOAT, [])])
    b = helper.make_graph([helper.make_node("Slice", ["x", "s0", "s1"], ["yb"])], "b", [], [vi("yb", T.FLOAT, [1])])
    m = model([helper.make_node("If", ["c"], ["y"], then_branch=a, else_branch=b)], [vi("c", T.BOOL, []), vi("x", T.FLOAT, [3])],
              [vi("y", T.FLOAT, 1)], [init("s0", np.array([0], np.int64)), init("s1", np.array([1], np.int64))])
    from tests.test_ops import ort_case

    r = runner.run(ort_case(m, {"c": np.array(False), "x": RNG.standard_normal(3).astype(np.float32)}))
    assert r.status == "unsupported" and "output 0 of rank 0 in one branch and 1 in the other" in r.reason, r.reason


class Recurrence(torch.nn.Module):
    """An RNN-like recurrence over the sequence axis, written as a scripted for loop (a Loop whose
    trip count is the input's free length and whose output shape ONNX inference cannot see)."""

    def __init__(self):
        super().__init__()
        self.inp, self.rec = torch.nn.Linear(16, 16), torch.nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.zeros(x.size(0), 16)
        for t in range(x.size(1)):
            h = torch.tanh(self.inp(x[:, t]) + self.rec(h))
        return h


def test_scripted_loop_over_a_free_sequence_keeps_it(tmp_path):
    import io
    import warnings

    from graph_convert import convert
    from graph_convert.backends.tensorflow.runner import run_tflite

    torch.manual_seed(3)
    module = Recurrence().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(torch.jit.script(module), (torch.randn(1, 8, 16),), f, opset_version=17, dynamo=False,
                          input_names=["x"], output_names=["h"], dynamic_axes={"x": {1: "steps"}})
    result = convert(onnx.load_from_string(f.getvalue()), output_dir=tmp_path / "out")
    dims = result.report["dynamic"]["dims"]
    assert dims["steps"]["kept"] and len(dims["steps"]["checked_sizes"]) >= 3, dims
    assert all(ch["verdict"] == "ok" for ch in result.report["dynamic"]["checks"]), result.report["dynamic"]["checks"]
    data = open(tmp_path / "out" / "model_float32.tflite", "rb").read()
    assert_builtin(data, "WHILE")
    for steps in (3, 11):  # lengths the conversion never saw, against PyTorch itself
        x = torch.randn(1, steps, 16)
        with torch.no_grad():
            ref = module(x).numpy()
        got = next(iter(run_tflite(data, {"x": x.numpy()}).values()))
        np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())
