"""Tests of the IR: lossless ONNX round trips (conformance cases, bundled models) and the graph API."""
from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import graph_convert_models as models
from graph_convert.ir import perm as P
from graph_convert.ir import Graph, GraphError, from_onnx, to_onnx
from graph_convert_passes.to_channels_last import CHANNELS_LAST_OPS, kernel_to_tf, switch_node
from tests.helpers import Builder, assert_equivalent, random_feeds, run_ort


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def roundtrip(model: onnx.ModelProto) -> onnx.ModelProto:
    return to_onnx(from_onnx(model))


def serialized(model: onnx.ModelProto) -> bytes:
    return model.SerializeToString(deterministic=True)


def proto_diff(a: onnx.ModelProto, b: onnx.ModelProto) -> list[str]:
    """Names of the ModelProto / GraphProto fields that differ (to say *what* was lost)."""
    out = [f"model.{f.name}" for f in a.DESCRIPTOR.fields if f.name != "graph" and getattr(a, f.name) != getattr(b, f.name)]
    out += [f"graph.{f.name}" for f in a.graph.DESCRIPTOR.fields if getattr(a.graph, f.name) != getattr(b.graph, f.name)]
    return out


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_positional(model: onnx.ModelProto, inputs: list) -> list | BaseException:
    """Outputs of ``model`` in ORT for positional ``inputs``, or the exception ORT raised."""
    try:
        sess = _session(model)
        init = {i.name for i in model.graph.initializer}
        names = [vi.name for vi in model.graph.input if vi.name not in init]
        return sess.run(None, dict(zip(names, inputs)))
    except Exception as e:  # ORT's own exception types (Fail, NotImplemented, ...) are the point here
        return e


def same_value(a: Any, b: Any) -> bool:
    """Exact equality of ORT results: arrays (NaN == NaN), sequences, maps, None."""
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same_value(a[k], b[k]) for k in a)
    if a is None or b is None:
        return a is b
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"))


def conv_model(rank: int = 4, transpose: bool = False, group: int = 1) -> onnx.ModelProto:
    b = Builder()
    spatial = {3: [9], 4: [8, 7], 5: [5, 6, 4]}[rank]
    x = b.input("x", [1, 4, *spatial])
    k = [3] * (rank - 2)
    if transpose:
        w = b.weight([4, 6 // group, *k])
        y = b.op("ConvTranspose", [x, w, b.weight([6])], strides=[2] * (rank - 2), pads=[1] * 2 * (rank - 2), group=group)
    else:
        w = b.weight([6, 4 // group, *k])
        y = b.op("Conv", [x, w, b.weight([6])], pads=[1] * 2 * (rank - 2), group=group)
    b.output(b.op("Relu", [y]))
    return b.model()


# ---------------------------------------------------------------------------------------------
# a. every ONNX node conformance case round-trips losslessly and runs identically
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conformance() -> list[tuple[Any, onnx.ModelProto]]:
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the case generators overflow on purpose (Cast tests)
        cases = collect_testcases(None)
    return [(c, roundtrip(c.model)) for c in cases]


def test_conformance_cases_roundtrip_byte_identical(conformance) -> None:
    assert len(conformance) > 1500  # the whole suite, not a stub
    failures = [c.name for c, again in conformance if serialized(c.model) != serialized(again)]
    assert failures == [], f"{len(failures)} conformance models change on ONNX -> IR -> ONNX: {failures}"


def test_conformance_cases_run_identically_in_ort(conformance) -> None:
    t0 = time.perf_counter()
    failures, unrunnable, compared = [], [], 0
    for case, again in conformance:
        inputs = list(case.data_sets[0][0]) if case.data_sets else []
        ref = run_positional(case.model, inputs)
        got = run_positional(again, inputs)
        if isinstance(ref, BaseException):
            unrunnable.append(case.name)
            if not isinstance(got, BaseException) or type(got) is not type(ref):
                failures.append(f"{case.name}: original raised {type(ref).__name__}, round trip gave {type(got).__name__}")
            continue
        if isinstance(got, BaseException):
            failures.append(f"{case.name}: round trip raised {type(got).__name__}: {got}")
        elif not same_value(ref, got):
            failures.append(f"{case.name}: outputs differ")
        else:
            compared += 1
    print(f"\nconformance ORT: {compared} compared, {len(unrunnable)} not runnable by ORT "
          f"(same failure after the round trip), {time.perf_counter() - t0:.1f}s")
    assert failures == []
    assert compared > 1400  # most cases really ran


# ---------------------------------------------------------------------------------------------
# b. bundled PyTorch models
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=models.MODELS)
def bundled(request, tmp_path_factory) -> tuple[str, onnx.ModelProto]:
    import torch

    from graph_convert.conversion.export import export

    module, shape = models.load(request.param)
    path = tmp_path_factory.mktemp("bundled") / f"{request.param}.onnx"
    export(module, (torch.randn(*shape),), str(path))
    return request.param, onnx.load(str(path))


def test_bundled_model_roundtrip_byte_identical(bundled) -> None:
    name, model = bundled
    again = roundtrip(model)
    assert serialized(again) == serialized(model), (
        f"BUG: ONNX -> IR -> ONNX is not lossless for the exported {name}: {proto_diff(model, again)} differ "
        "(to_onnx drops value_info of initializers and from_onnx ignores graph.metadata_props)"
    )


def test_bundled_model_roundtrip_runs_identically(bundled) -> None:
    name, model = bundled
    feeds = random_feeds(model)
    ref = run_ort(model, feeds)
    got = run_ort(roundtrip(model), feeds)
    assert ref.keys() == got.keys()
    for k in ref:
        assert same_value(ref[k], got[k]), f"{name}: output {k} differs after the round trip"


def test_roundtrip_keeps_value_info_of_initializers() -> None:
    b = Builder()
    x = b.input("x", [2, 3])
    w = b.const(np.ones((2, 3)), name="w")
    b.output(b.op("Add", [x, w]))
    m = b.model()
    m.graph.value_info.insert(0, helper.make_tensor_value_info("w", TensorProto.FLOAT, [2, 3]))
    again = roundtrip(m)
    assert serialized(again) == serialized(m), (
        f"BUG: value_info for initializer 'w' is dropped by to_onnx ({proto_diff(m, again)} differ); "
        "the torch dynamo exporter writes such entries for every weight"
    )


def test_roundtrip_keeps_graph_metadata_props() -> None:
    b = Builder()
    b.output(b.op("Relu", [b.input("x", [2])]))
    m = b.model()
    m.graph.metadata_props.add(key="k", value="v")
    again = roundtrip(m)
    assert list(again.graph.metadata_props) == list(m.graph.metadata_props), (
        "BUG: GraphProto.metadata_props is lost on ONNX -> IR -> ONNX (from_onnx never reads it); "
        "the torch dynamo exporter stores the ExportedProgram signature there"
    )


# ---------------------------------------------------------------------------------------------
# c. graph API
# ---------------------------------------------------------------------------------------------
def chain_model() -> onnx.ModelProto:
    """x -> Relu -> a; Neg(a) -> n; Add(a, a) -> s; Mul(n, s) -> y (the output)."""
    b = Builder()
    x = b.input("x", [1, 3, 4, 4])
    a = b.op("Relu", [x])
    n = b.op("Neg", [a])
    s = b.op("Add", [a, a])
    b.output(b.op("Mul", [n, s]))
    return b.model()


def node_by_op(g: Graph, op_type: str):
    found = [n for n in g.nodes if n.op_type == op_type]
    assert len(found) == 1, found
    return found[0]


def test_producer_and_consumers() -> None:
    g = from_onnx(chain_model())
    relu, neg, add, mul = (node_by_op(g, t) for t in ("Relu", "Neg", "Add", "Mul"))
    a = relu.outputs[0]
    assert g.producer(a) is relu
    assert g.producer("x") is None  # graph input
    assert g.producer("nonexistent") is None
    assert [n.name for n in g.consumers(a)] == [neg.name, add.name]  # Add reads it twice, listed once
    assert [n.name for n in g.consumers("x")] == [relu.name]
    y = mul.outputs[0]
    assert g.consumers(y) == [] and g.is_graph_output(y) and g.num_uses(y) == 1
    assert g.num_uses(a) == 2
    assert [n.op_type for n in g.nodes] == ["Relu", "Neg", "Add", "Mul"]


def test_replace_all_uses_redirects_every_reader() -> None:
    m = chain_model()
    g = from_onnx(m)
    relu = node_by_op(g, "Relu")
    a = relu.outputs[0]
    twin = g.add_node("Relu", ["x"], 1, created_by="test")  # same value under a new name
    g.set_info(twin.outputs[0], TensorProto.FLOAT, (1, 3, 4, 4))
    g.replace_all_uses(a, twin.outputs[0])
    assert g.consumers(a) == []
    assert sorted(n.op_type for n in g.consumers(twin.outputs[0])) == ["Add", "Neg"]
    assert node_by_op(g, "Add").inputs == [twin.outputs[0]] * 2
    g.check()
    g.remove_node(relu)  # now unused, so removable
    g.check()
    assert_equivalent(m, g)


def test_replace_all_uses_refuses_graph_output() -> None:
    g = from_onnx(chain_model())
    y = node_by_op(g, "Mul").outputs[0]
    with pytest.raises(GraphError, match="graph output"):
        g.replace_all_uses(y, "x")
    g.replace_all_uses(y, "x", include_graph_outputs=False)  # allowed when asked not to care
    assert g.outputs == [y]


def test_remove_node_refuses_while_output_used() -> None:
    g = from_onnx(chain_model())
    relu, neg, mul = node_by_op(g, "Relu"), node_by_op(g, "Neg"), node_by_op(g, "Mul")
    with pytest.raises(GraphError, match=f"{relu.name}.*{relu.outputs[0]}"):
        g.remove_node(relu)
    with pytest.raises(GraphError, match=mul.outputs[0]):
        g.remove_node(mul.name)  # a graph output counts as a use
    assert g.has_node(relu.name) and g.has_node(mul.name)
    g.check()
    g.remove_node(neg, force=True)  # force leaves a dangling reader, which check() names
    assert not g.has_node(neg.name)
    with pytest.raises(GraphError, match=neg.outputs[0]):
        g.check()


def test_set_input_keeps_edges_consistent() -> None:
    g = from_onnx(chain_model())
    relu, add, neg = node_by_op(g, "Relu"), node_by_op(g, "Add"), node_by_op(g, "Neg")
    a = relu.outputs[0]
    g.set_input(add, 0, "x")  # Add still reads a through its second slot
    assert add in g.consumers(a) and add in g.consumers("x")
    g.check()
    g.set_input(add, 1, neg.outputs[0])
    assert add not in g.consumers(a) and add in g.consumers(neg.outputs[0])
    g.check()
    # the new edge orders Neg before Add
    order = [n.name for n in g.nodes]
    assert order.index(neg.name) < order.index(add.name)
    g.add_input(add, "")  # an empty (omitted optional) input is no edge
    g.check()


def test_set_output_keeps_edges_consistent() -> None:
    """The fold pattern: drop a node, let its producer write the dropped node's output name."""
    b = Builder()
    x = b.input("x", [2, 3])
    r = b.op("Relu", [x])
    i = b.op("Identity", [r])
    b.output(b.op("Neg", [i]))
    m = b.model()
    g = from_onnx(m)
    relu, ident, neg = (node_by_op(g, t) for t in ("Relu", "Identity", "Neg"))
    g.remove_node(ident, force=True)
    g.set_output(relu, 0, i)
    assert g.producer(i) is relu and g.producer(r) is None
    assert g.consumers(i) == [neg]
    g.check()
    assert [n.op_type for n in g.nodes] == ["Relu", "Neg"]
    assert_equivalent(m, g)
    with pytest.raises(GraphError, match="already has a producer"):
        g.set_output(relu, 0, neg.outputs[0])


def test_set_output_leaves_old_readers_for_check_to_name() -> None:
    g = from_onnx(chain_model())
    relu = node_by_op(g, "Relu")
    old = relu.outputs[0]
    g.set_output(relu, 0, "renamed")
    with pytest.raises(GraphError, match=old):
        g.check()
    g.replace_all_uses(old, "renamed")
    g.check()
    assert {n.op_type for n in g.consumers("renamed")} == {"Neg", "Add"}


@pytest.mark.parametrize("shape,perm", [((1, 3, 8, 5), (0, 2, 3, 1)), (("N", 3, 7), (0, 2, 1)), ((2, 3, 4, 5, 6), (4, 0, 3, 1, 2))])
def test_add_transpose_records_shape_and_dtype(shape, perm) -> None:
    b = Builder()
    x = b.input("x", shape, TensorProto.FLOAT16)
    b.output(b.op("Relu", [x]), TensorProto.FLOAT16)
    g = from_onnx(b.model())
    out = g.add_transpose(x, perm, created_by="test")
    assert g.shape(out) == P.apply_to_shape(shape, perm)
    assert g.dtype(out) == TensorProto.FLOAT16
    t = g.producer(out)
    assert t.op_type == "Transpose" and t.attr("perm") == list(perm) and t.created_by == "test"
    assert g.consumers(x)[-1] is t
    g.check()


def test_add_transpose_of_unknown_shape() -> None:
    g = Graph()
    g.inputs = ["x"]
    g.set_info("x", TensorProto.FLOAT)
    out = g.add_transpose("x", (1, 0))
    assert g.shape(out) is None and g.dtype(out) == TensorProto.FLOAT


def test_prune_removes_dead_nodes_and_unused_initializers() -> None:
    b = Builder()
    x = b.input("x", [2, 3])
    w_live = b.const(np.full((2, 3), 2.0, np.float32), name="w_live")
    w_dead = b.const(np.full((2, 3), 3.0, np.float32), name="w_dead")
    b.const(np.zeros(4, np.float32), name="w_unused")
    y = b.op("Mul", [x, w_live])
    dead = b.op("Neg", [b.op("Add", [x, w_dead])])  # reaches no output
    b.output(y)
    m = b.model()
    g = from_onnx(m)
    assert g.count("Add") == 1 and g.count("Neg") == 1 and g.producer(dead) is not None
    assert g.prune() == 2
    assert sorted(n.op_type for n in g.nodes) == ["Mul"]
    assert g.initializer_names == ["w_live"]
    assert g.inputs == ["x"]
    g.check()
    assert g.prune() == 0
    out = to_onnx(g)
    assert [i.name for i in out.graph.initializer] == ["w_live"]
    assert_equivalent(m, g)


def test_check_detects_dangling_input_and_output() -> None:
    g = from_onnx(chain_model())
    g.check()
    bad = g.add_node("Relu", ["ghost"], 1, name="reads_ghost")
    with pytest.raises(GraphError, match=r"reads_ghost.*ghost"):
        g.check()
    g.remove_node(bad)
    g.check()
    g.outputs.append("phantom")
    with pytest.raises(GraphError, match="phantom"):
        g.check()


def test_add_node_refuses_second_producer() -> None:
    g = from_onnx(chain_model())
    a = node_by_op(g, "Relu").outputs[0]
    with pytest.raises(GraphError, match="already produced"):
        g.add_node("Neg", ["x"], [a])
    with pytest.raises(GraphError):
        g.add_node("Neg", ["x"], ["x"])  # a graph input has no producer but is taken
    g.check()


def test_fresh_name_never_collides() -> None:
    # names shaped like the ones fresh_name makes, in every namespace the graph has
    b = Builder()
    x = b.input("x__0", [2])
    b.nodes.append(helper.make_node("Relu", [x], ["x__1"], name="x__2"))
    b.nodes.append(helper.make_node("Add", ["x__1", "x__3"], ["x__4"], name="Relu__5"))
    b.inits.append(numpy_helper.from_array(np.ones(2, np.float32), "x__3"))
    b.output("x__4")
    g = from_onnx(b.model())
    g.info.pop("x__1", None)  # a produced tensor with no recorded info must still be avoided
    made = set()
    for i in range(60):
        base = ("x", "Relu", "y")[i % 3]
        name = g.fresh_name(base)
        taken = {n.name for n in g.nodes} | {t for n in g.nodes for t in n.outputs} | set(g.initializer_names) \
            | set(g.inputs) | set(g.outputs) | set(g.info)
        assert name not in taken and name not in made, name
        made.add(name)
        if i % 2:  # use some of them, so later calls must avoid them too
            g.add_node("Identity", ["x__0"], [name], name=g.fresh_name(f"{base}_node"))
    g.check()


def test_copy_is_independent() -> None:
    m = chain_model()
    g = from_onnx(m)
    before = serialized(to_onnx(g))
    c = g.copy()
    relu, add = node_by_op(c, "Relu"), node_by_op(c, "Add")
    add.set_attr("note", 1)
    c.set_input(add, 1, "x")
    c.set_initializer("extra", np.ones(3, np.float32))
    c.add_transpose(relu.outputs[0], (0, 2, 3, 1))
    c.io_perms["x"] = (0, 2, 3, 1)
    c.set_info("x", shape=(1, 4, 4, 3))
    c.outputs.append(relu.outputs[0])
    c.inputs.append("more")
    c.remove_node(node_by_op(c, "Mul"), force=True)
    c.prune()
    # the original is untouched, structurally and numerically
    assert serialized(to_onnx(g)) == before
    assert g.io_perms == {} and g.shape("x") == (1, 3, 4, 4) and not g.is_initializer("extra")
    assert "note" not in node_by_op(g, "Add").attrs
    assert g.count("Mul") == 1 and g.count("Transpose") == 0
    g.check()
    assert_equivalent(m, g)
    # and the copy keeps working on its own
    assert c.count("Mul") == 0 and "more" in c.inputs
    assert c.fresh_name("x") not in {n.name for n in c.nodes}


@pytest.mark.parametrize("rank", [3, 4, 5])
@pytest.mark.parametrize("op", ["Conv", "ConvTranspose"])
def test_layout_marked_node_lowers_to_equivalent_onnx(rank: int, op: str) -> None:
    m = conv_model(rank, transpose=op == "ConvTranspose", group=2)
    g = from_onnx(m)
    conv = node_by_op(g, op)
    w_before = g.constant_value(conv.inputs[1])
    assert switch_node(g, conv, CHANNELS_LAST_OPS[op], "test")
    g.check()
    cl = P.channels_last(rank)
    assert conv.is_layout_marked
    assert conv.in_perms[0] == cl and conv.out_perms[0] == cl
    assert conv.in_perms[1] == kernel_to_tf(rank)
    np.testing.assert_array_equal(g.constant_value(conv.inputs[1]), np.transpose(w_before, kernel_to_tf(rank)))
    assert g.shape(conv.outputs[0]) == P.apply_to_shape(g.shape(g.outputs[0]), cl)

    lowered = to_onnx(g)
    onnx.checker.check_model(lowered)
    producers = {o: n for n in lowered.graph.node for o in n.output}
    (core,) = [n for n in lowered.graph.node if n.op_type == op]
    # lowering wraps the marked node: its activation and weight come from Transposes back to the
    # ONNX layout, and its result goes through a Transpose to channels-last
    for j, want in ((0, P.invert(cl)), (1, P.invert(kernel_to_tf(rank)))):
        t = producers[core.input[j]]
        assert t.op_type == "Transpose" and list(helper.get_attribute_value(t.attribute[0])) == list(want)
    readers = [n for n in lowered.graph.node if core.output[0] in n.input]
    assert [n.op_type for n in readers] == ["Transpose"]
    assert list(helper.get_attribute_value(readers[0].attribute[0])) == list(cl)
    assert_equivalent(m, g)


# ---------------------------------------------------------------------------------------------
# d. subgraphs
# ---------------------------------------------------------------------------------------------
def if_model() -> tuple[onnx.ModelProto, str]:
    """``a = Relu(x)`` is read only inside the If branches (then, and an If nested in else)."""
    b = Builder()
    x = b.input("x", [2, 3])
    cond = b.input("cond", [], TensorProto.BOOL)
    inner_cond = b.input("inner", [], TensorProto.BOOL)
    a = b.op("Relu", [x])
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3])  # noqa: E731
    then_g = helper.make_graph([helper.make_node("Neg", [a], ["t1"]), helper.make_node("Mul", ["t1", a], ["t_out"])], "then", [], [f("t_out")])
    in_then = helper.make_graph([helper.make_node("Sub", [a, x], ["it_out"])], "in_then", [], [f("it_out")])
    in_else = helper.make_graph([helper.make_node("Abs", [x], ["ie_out"])], "in_else", [], [f("ie_out")])
    else_g = helper.make_graph(
        [helper.make_node("If", [inner_cond], ["e_if"], then_branch=in_then, else_branch=in_else),
         helper.make_node("Add", ["e_if", x], ["e_out"])], "else", [], [f("e_out")])
    b.output(b.op("If", [cond], then_branch=then_g, else_branch=else_g))
    return b.model(), a


def if_feeds(c: bool, inner: bool) -> dict[str, np.ndarray]:
    x = np.random.default_rng(3).standard_normal((2, 3)).astype(np.float32)
    return {"x": x, "cond": np.array(c), "inner": np.array(inner)}


def _reads_in_subgraphs(node_proto_or_attrs, name: str) -> int:
    """How many node inputs inside the subgraphs read ``name``."""
    n = 0
    for a in node_proto_or_attrs:
        if a.type == onnx.AttributeProto.GRAPH:
            for sub in a.g.node:
                n += list(sub.input).count(name) + _reads_in_subgraphs(sub.attribute, name)
    return n


def test_outer_tensor_read_in_subgraph_is_a_consumer() -> None:
    m, a = if_model()
    g = from_onnx(m)
    relu, iff = node_by_op(g, "Relu"), node_by_op(g, "If")
    assert iff.inputs == ["cond"]
    assert set(iff.implicit_inputs) == {a, "x", "inner"}  # "inner" is read by the nested If
    assert g.consumers(a) == [iff]
    assert iff in g.consumers("x")
    assert g.num_uses(a) == 1
    with pytest.raises(GraphError):
        g.remove_node(relu)
    assert g.prune() == 0
    assert g.has_node(relu.name)
    g.check()
    assert [n.op_type for n in g.nodes] == ["Relu", "If"]
    assert serialized(to_onnx(g)) == serialized(m)


def test_replace_all_uses_renames_inside_subgraphs() -> None:
    m, a = if_model()
    source = onnx.ModelProto()
    source.CopyFrom(m)  # the IR shares subgraph protos with the model it was loaded from (see below)
    g = from_onnx(m)
    old_relu, iff = node_by_op(g, "Relu"), node_by_op(g, "If")
    assert _reads_in_subgraphs(iff.attrs.values(), a) == 3
    twin = g.add_node("Relu", ["x"], ["a_twin"], created_by="test")
    g.set_info("a_twin", TensorProto.FLOAT, (2, 3))
    g.replace_all_uses(a, "a_twin")
    assert g.consumers(a) == [] and g.consumers("a_twin") == [iff]
    assert "a_twin" in iff.implicit_inputs and a not in iff.implicit_inputs
    assert _reads_in_subgraphs(iff.attrs.values(), a) == 0
    assert _reads_in_subgraphs(iff.attrs.values(), "a_twin") == 3  # then branch and the nested If
    assert g.prune() == 1  # the old Relu is dead now, the twin is not
    assert not g.has_node(old_relu.name) and g.has_node(twin.name)
    g.check()
    assert [n.name for n in g.nodes] == [twin.name, iff.name]
    lowered = to_onnx(g)
    onnx.checker.check_model(lowered)
    for c in (True, False):
        for inner in (True, False):
            feeds = if_feeds(c, inner)
            ref, got = run_ort(source, feeds), run_ort(lowered, feeds)
            assert ref.keys() == got.keys()
            for k in ref:
                np.testing.assert_array_equal(got[k], ref[k])


def test_editing_the_ir_leaves_the_source_model_alone() -> None:
    m, a = if_model()
    before = serialized(m)
    g = from_onnx(m)
    g.add_node("Relu", ["x"], ["a_twin"], created_by="test")
    g.replace_all_uses(a, "a_twin")
    assert serialized(m) == before, (
        "BUG: Graph.replace_all_uses rewrote the subgraphs of the ModelProto the IR was loaded from "
        "(from_onnx keeps the source's AttributeProto objects, rename_in_subgraphs edits them in place); "
        "the source model now reads 'a_twin', which it does not define"
    )


def _names_defined_in_subgraphs(attrs) -> set[str]:
    out: set[str] = set()
    for a in attrs:
        for sg in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
            out.update(i.name for i in sg.input)
            out.update(i.name for i in sg.initializer)
            for n in sg.node:
                out.update(n.output)
                out |= _names_defined_in_subgraphs(n.attribute)
    return out


def test_fresh_name_avoids_names_defined_in_subgraphs() -> None:
    b = Builder()
    x = b.input("x", [2, 3])
    f = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3])  # noqa: E731
    then_g = helper.make_graph([helper.make_node("Neg", [x], ["x_T__0"]), helper.make_node("Abs", ["x_T__0"], ["t"])], "then", [], [f("t")])
    else_g = helper.make_graph([helper.make_node("Relu", [x], ["e"])], "else", [], [f("e")])
    b.output(b.op("If", [b.input("cond", [], TensorProto.BOOL)], then_branch=then_g, else_branch=else_g))
    g = from_onnx(b.model())
    iff = node_by_op(g, "If")
    inner = _names_defined_in_subgraphs(iff.attrs.values())
    assert "x_T__0" in inner
    # an outer Transpose that feeds the If's condition is ordered before the If
    t = g.add_transpose(x, (1, 0))
    cond = g.add_node("Cast", [g.add_node("ReduceMax", [t], 1, attrs={"keepdims": 0}).outputs[0]], 1, attrs={"to": TensorProto.BOOL})
    g.set_input(iff, 0, cond.outputs[0])
    g.check()
    assert t not in inner, (
        f"BUG: Graph.fresh_name returned {t!r}, a name the If's then-branch already defines; the lowered "
        "model breaks ONNX's single-assignment rule (onnx.checker and ORT reject it). fresh_name checks "
        "producers, node names, info and initializers of the outer graph only, not names inside subgraphs"
    )
    onnx.checker.check_model(to_onnx(g))
