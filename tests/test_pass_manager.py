"""Tests of the pass framework (ordering, fixed points, checks, errors) and of the built-in
pipeline's idempotence and numerical equivalence on the bundled models and small built graphs."""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import graph_convert_models as models
from graph_convert import pass_manager as passes_mod
from graph_convert.errors import ConvertError, PassError
from graph_convert.ir import Graph, from_onnx
from graph_convert.pass_manager import PHASES, Pass, PassContext, PassManager, PassRecord, PassResult, Registry
from tests.helpers import Builder, assert_equivalent, registry

Run = Callable[[Graph, PassContext], PassResult]


# ---------------------------------------------------------------------------------------------
# helpers: tiny passes made on the fly
# ---------------------------------------------------------------------------------------------
def make_pass(name: str, phase: str = "optimize", *, before: tuple[str, ...] = (), after: tuple[str, ...] = (),
              group: str | None = None, run: Run | None = None, log: list | None = None) -> type[Pass]:
    """A Pass subclass that appends its name to ``log`` and then does ``run`` (default: nothing)."""

    def _run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if log is not None:
            log.append(name)
        return run(graph, ctx) if run is not None else PassResult(False)

    attrs = {"name": name, "phase": phase, "before": tuple(before), "after": tuple(after), "group": group, "run": _run}
    return type(f"Pass_{name}", (Pass,), attrs)


def registry_of(*classes: type[Pass]) -> Registry:
    reg = Registry()
    for cls in classes:
        reg.add_pass(cls)
    return reg


def changes_times(n: int) -> Run:
    """A run() that reports a change on its first ``n`` calls, then none."""
    calls = {"n": 0}

    def run(graph: Graph, ctx: PassContext) -> PassResult:
        calls["n"] += 1
        return PassResult(calls["n"] <= n)

    return run


def always_changed(graph: Graph, ctx: PassContext) -> PassResult:
    return PassResult(True)


def small_graph() -> Graph:
    b = Builder()
    b.output(b.op("Relu", [b.input("x", [1, 2])]))
    return from_onnx(b.model())


def assert_respects(order: list[str], specs: dict[str, type[Pass]]) -> None:
    pos = {n: i for i, n in enumerate(order)}
    for n, cls in specs.items():
        for other in cls.before:
            if other in pos:
                assert pos[n] < pos[other], f"{n} must run before {other}: {order}"
        for other in cls.after:
            if other in pos:
                assert pos[other] < pos[n], f"{n} must run after {other}: {order}"
    ranks = [PHASES.index(specs[n].phase) for n in order]
    assert ranks == sorted(ranks), f"phase order broken: {order}"


# ---------------------------------------------------------------------------------------------
# ordering
# ---------------------------------------------------------------------------------------------
def test_phase_order_is_respected() -> None:
    log: list[str] = []
    classes = [make_pass("tidy", "cleanup", log=log), make_pass("opt2", "optimize", log=log),
               make_pass("lay", "layout", log=log), make_pass("opt1", "optimize", log=log),
               make_pass("canon", "canonicalize", log=log)]
    pm = PassManager(registry_of(*classes))
    # phases in PHASES order; inside a phase, registration order
    assert pm.order == ["canon", "lay", "opt2", "opt1", "tidy"]
    records = pm.run(small_graph())
    assert log == pm.order
    assert [r.name for r in records] == pm.order
    assert [r.phase for r in records] == ["canonicalize", "layout", "optimize", "optimize", "cleanup"]


def test_before_and_after_constraints_are_honoured() -> None:
    log: list[str] = []
    classes = [
        make_pass("a", after=("b",), log=log),
        make_pass("b", log=log),
        make_pass("c", before=("a",), log=log),
        make_pass("d", before=("b",), after=("not_registered",), log=log),  # unknown names are ignored
        make_pass("e", "layout", before=("a",), log=log),  # agrees with phase order
    ]
    pm = PassManager(registry_of(*classes))
    specs = {c.name: c for c in classes}
    assert_respects(pm.order, specs)
    assert pm.order == ["e", "c", "d", "b", "a"]
    pm.run(small_graph())
    assert log == pm.order


def test_constraint_on_a_disabled_pass_is_dropped() -> None:
    classes = [make_pass("a", after=("b",)), make_pass("b"), make_pass("c", before=("b",))]
    pm = PassManager(registry_of(*classes), disabled=("b",))
    assert pm.order == ["a", "c"]
    assert [r.name for r in pm.run(small_graph())] == ["a", "c"]


def test_unsatisfiable_constraints_name_the_cycle() -> None:
    reg = registry_of(make_pass("alpha", before=("beta",)), make_pass("beta", before=("gamma",)),
                      make_pass("gamma", before=("alpha",)), make_pass("bystander"))
    with pytest.raises(PassError, match="unsatisfiable") as e:
        PassManager(reg)
    msg = str(e.value)
    for n in ("alpha", "beta", "gamma"):
        assert n in msg
    assert "bystander" not in msg
    assert any(chain in msg for chain in ("alpha -> beta -> gamma -> alpha", "beta -> gamma -> alpha -> beta",
                                          "gamma -> alpha -> beta -> gamma")), msg
    assert "alpha.before" in msg


def test_constraint_against_phase_order_is_unsatisfiable() -> None:
    reg = registry_of(make_pass("late", "cleanup", before=("early",)), make_pass("early", "canonicalize"))
    with pytest.raises(PassError, match=r"late -> early -> late|early -> late -> early") as e:
        PassManager(reg)
    assert "phase order" in str(e.value) and "late.before" in str(e.value)


def test_fixed_point_group_does_not_break_constraints() -> None:
    """Gathering a group's members must not move a member ahead of a pass it declares ``after``."""
    classes = [make_pass("g1", group="g"), make_pass("mid", after=("g1",)), make_pass("g2", group="g", after=("mid",))]
    specs = {c.name: c for c in classes}
    try:
        pm = PassManager(registry_of(*classes))
    except PassError:
        return  # refusing the contradictory spec is acceptable
    pos = {n: i for i, n in enumerate(pm.order)}
    assert pos["mid"] < pos["g2"], (
        f"BUG: PassManager._order gathers fixed-point group 'g' at its first member and silently runs "
        f"g2 before mid although g2.after = ('mid',): order {pm.order}"
    )
    assert_respects(pm.order, specs)


def test_fixed_point_group_does_not_break_phase_order() -> None:
    classes = [make_pass("g_canon", "canonicalize", group="g"), make_pass("opt", "optimize"),
               make_pass("g_clean", "cleanup", group="g")]
    try:
        pm = PassManager(registry_of(*classes))
    except PassError:
        return
    phase = {c.name: c.phase for c in classes}
    ranks = [PHASES.index(phase[n]) for n in pm.order]
    assert ranks == sorted(ranks), (
        f"BUG: a fixed-point group spanning phases is gathered into its first phase, so the cleanup "
        f"pass runs before the optimize pass: order {pm.order}"
    )


# ---------------------------------------------------------------------------------------------
# fixed-point groups
# ---------------------------------------------------------------------------------------------
def test_fixed_point_group_repeats_until_no_pass_changed() -> None:
    log: list[str] = []
    classes = [
        make_pass("first", log=log),
        make_pass("push", group="g", run=changes_times(3), log=log),
        make_pass("other", log=log),  # between the members in registration order
        make_pass("fold", group="g", run=changes_times(1), log=log),
        make_pass("last", "cleanup", log=log),
    ]
    pm = PassManager(registry_of(*classes))
    assert pm.steps() == [["first"], ["push", "fold"], ["other"], ["last"]]
    records = pm.run(small_graph())
    # push changes in rounds 1-3, fold in round 1; round 4 is the first without a change
    group = [r for r in records if r.name in ("push", "fold")]
    assert [(r.name, r.round, r.changed) for r in group] == [
        ("push", 1, True), ("fold", 1, True), ("push", 2, True), ("fold", 2, False),
        ("push", 3, True), ("fold", 3, False), ("push", 4, False), ("fold", 4, False)]
    assert max(r.round for r in group) == 4
    assert log == ["first"] + ["push", "fold"] * 4 + ["other", "last"]
    assert all(r.round == 0 for r in records if r.name not in ("push", "fold"))


def test_single_member_group_runs_to_fixed_point() -> None:
    records = PassManager(registry_of(make_pass("solo", group="s", run=changes_times(2)))).run(small_graph())
    assert [(r.round, r.changed) for r in records] == [(1, True), (2, True), (3, False)]


def test_non_converging_group_raises_after_max_rounds() -> None:
    log: list[str] = []
    reg = registry_of(make_pass("before_it", log=log), make_pass("spin", group="loop", run=always_changed, log=log),
                      make_pass("calm", group="loop", log=log))
    with pytest.raises(PassError) as e:
        PassManager(reg).run(small_graph())
    assert e.value.pass_name == "spin"
    assert "loop" in str(e.value) and str(passes_mod.MAX_FIXED_POINT_ROUNDS) in str(e.value)
    assert log.count("spin") == passes_mod.MAX_FIXED_POINT_ROUNDS
    assert log.count("calm") == passes_mod.MAX_FIXED_POINT_ROUNDS
    assert "before_it" in e.value.ran_before


def test_non_converging_limit_is_the_module_constant(monkeypatch) -> None:
    monkeypatch.setattr(passes_mod, "MAX_FIXED_POINT_ROUNDS", 3)
    log: list[str] = []
    with pytest.raises(PassError, match="3 rounds"):
        PassManager(registry_of(make_pass("spin", group="g", run=always_changed, log=log))).run(small_graph())
    assert log == ["spin"] * 3


# ---------------------------------------------------------------------------------------------
# failures name the pass and its predecessors
# ---------------------------------------------------------------------------------------------
def test_exception_in_pass_names_pass_and_predecessors() -> None:
    def boom(graph: Graph, ctx: PassContext) -> PassResult:
        raise ValueError("kaboom")

    reg = registry_of(make_pass("one", "canonicalize"), make_pass("two", group="g", run=changes_times(2)),
                      make_pass("bad", "cleanup", run=boom), make_pass("never", "cleanup"))
    with pytest.raises(PassError) as e:
        PassManager(reg).run(small_graph())
    err = e.value
    assert err.pass_name == "bad"
    assert err.ran_before == ["one", "two"]  # each once, although "two" ran three rounds
    msg = str(err)
    assert "'bad'" in msg and "ValueError: kaboom" in msg and "one, two" in msg and "never" not in msg
    assert isinstance(err.__cause__, ValueError)


def test_first_pass_failing_says_none_ran_before() -> None:
    def boom(graph: Graph, ctx: PassContext) -> PassResult:
        raise KeyError("k")

    with pytest.raises(PassError, match=r"pass 'only' failed: KeyError.*passes run before it: none"):
        PassManager(registry_of(make_pass("only", run=boom))).run(small_graph())


def test_convert_error_from_a_pass_passes_through() -> None:
    def user_problem(graph: Graph, ctx: PassContext) -> PassResult:
        raise ConvertError("bad option")

    with pytest.raises(ConvertError, match="bad option"):
        PassManager(registry_of(make_pass("p", run=user_problem))).run(small_graph())


def test_pass_returning_wrong_type_is_named() -> None:
    with pytest.raises(PassError, match=r"'lazy'.*returned bool"):
        PassManager(registry_of(make_pass("lazy", run=lambda g, c: True))).run(small_graph())


def test_pass_breaking_the_graph_is_caught_and_named() -> None:
    def dangle(graph: Graph, ctx: PassContext) -> PassResult:
        graph.add_node("Relu", ["ghost_tensor"], 1, name="orphan", created_by="breaker")
        return PassResult(True)

    reg = registry_of(make_pass("fine", "canonicalize", run=changes_times(1)), make_pass("breaker", run=dangle),
                      make_pass("after_it", "cleanup"))
    with pytest.raises(PassError) as e:
        PassManager(reg).run(small_graph())
    assert e.value.pass_name == "breaker" and e.value.ran_before == ["fine"]
    msg = str(e.value)
    assert "left the graph broken" in msg and "orphan" in msg and "ghost_tensor" in msg


def test_pass_breaking_a_graph_output_is_caught() -> None:
    def drop_output_producer(graph: Graph, ctx: PassContext) -> PassResult:
        graph.remove_node(graph.producer(graph.outputs[0]), force=True)
        return PassResult(True)

    with pytest.raises(PassError, match=r"'dropper'.*graph output"):
        PassManager(registry_of(make_pass("dropper", run=drop_output_producer))).run(small_graph())


# ---------------------------------------------------------------------------------------------
# a pass whose ``changed`` flag lies is named, not the innocent pass after it
# ---------------------------------------------------------------------------------------------
def weighted_graph() -> Graph:
    """x -> Relu -> Add(w) -> y, with w an initializer."""
    b = Builder()
    y = b.op("Relu", [b.input("x", [1, 3])])
    b.output(b.op("Add", [y, b.const(np.array([[1.0, 2.0, 3.0]], np.float32), name="w")]))
    return from_onnx(b.model())


def _relu(g: Graph):
    return next(n for n in g.nodes if n.op_type == "Relu")


def _add(g: Graph):
    return next(n for n in g.nodes if n.op_type == "Add")


# (what the lying pass does, a fragment the error must contain)
LIES = {
    "op_type_edited": (lambda g: setattr(_relu(g), "op_type", "Sigmoid"), "op_type 'Relu' -> 'Sigmoid'"),
    "attribute_set": (lambda g: _add(g).set_attr("note", 1), "attribute(s) note changed"),
    "attribute_dict_edited": (lambda g: _add(g).attrs.update(note=helper.make_attribute("note", 2)), "attribute(s) note"),
    "layout_marked": (lambda g: setattr(_relu(g), "in_perms", [(1, 0)]), "in_perms None -> ((1, 0),)"),
    "node_added": (lambda g: g.add_node("Neg", [g.inputs[0]], 1, name="stray"), "node 'stray' (Neg) added"),
    "node_removed": (lambda g: (g.replace_all_uses(_relu(g).outputs[0], g.inputs[0]), g.remove_node(_relu(g))), "(Relu) removed"),
    "input_rewired": (lambda g: g.set_input(_add(g), 0, g.inputs[0]), "inputs"),
    "input_list_edited": (lambda g: _add(g).inputs.reverse(), "inputs"),
    "initializer_replaced": (lambda g: g.set_initializer("w", np.zeros((1, 3), np.float32)), "initializer 'w' replaced"),
    "initializer_added": (lambda g: g.add_initializer("spare", np.ones(2, np.float32)), "initializer 'spare__"),
    "initializer_removed": (lambda g: g.remove_initializer("w"), "initializer 'w' removed"),
    "graph_output_renamed": (lambda g: (g.set_output(_add(g), 0, "renamed"), g.rename_graph_output(g.outputs[0], "renamed")), "outputs"),
    "io_layout_recorded": (lambda g: g.io_perms.update(x=(1, 0)), "graph I/O layouts"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_pass_that_edits_but_reports_unchanged_is_named(lie) -> None:
    edit, fragment = LIES[lie]
    log: list[str] = []

    def liar(graph: Graph, ctx: PassContext) -> PassResult:
        edit(graph)
        return PassResult(False)

    reg = registry_of(make_pass("honest", "canonicalize", run=changes_times(1), log=log),
                      make_pass("liar", run=liar, log=log), make_pass("innocent", "cleanup", log=log))
    with pytest.raises(PassError) as e:
        PassManager(reg).run(weighted_graph())
    assert e.value.pass_name == "liar" and e.value.ran_before == ["honest"]
    assert "reported changed=False but changed the graph" in str(e.value)
    assert fragment in str(e.value), str(e.value)
    assert log == ["honest", "liar"], "the pass after the liar must not run (nor be blamed)"


@pytest.mark.parametrize("stored", ["as_loaded", "set_by_an_earlier_edit"])
def test_pass_that_edits_a_weight_in_place_is_named(stored) -> None:
    def in_place(graph: Graph, ctx: PassContext) -> PassResult:
        graph.initializer("w")[0, 0] = -1.0  # behind the API's back: the graph cannot see this edit
        return PassResult(True)

    g = weighted_graph()
    mine = np.array([[4.0, 5.0, 6.0]], np.float32)
    if stored == "set_by_an_earlier_edit":  # a plain, writable numpy array
        g.set_initializer("w", mine)
    before = g.initializer("w").tolist()
    with pytest.raises(PassError, match=r"'in_place' failed: edited an initializer in place .*set_initializer"):
        PassManager(registry_of(make_pass("in_place", run=in_place))).run(g)
    assert g.initializer("w").tolist() == before
    assert mine.flags.writeable, "outside a pass the caller's array is writable again"


def test_weights_stay_read_only_after_a_nested_pass_manager() -> None:
    """A pass may run a pass manager of its own on the graph; when that returns, the outer pass's
    weights are still read-only, and afterwards the caller's array is writable again."""
    g = weighted_graph()
    mine = np.array([[4.0, 5.0, 6.0]], np.float32)
    g.set_initializer("w2", mine)

    def inner_reads(graph: Graph, ctx: PassContext) -> PassResult:
        graph.initializer("w")  # decoded inside the inner run
        return PassResult(False)

    def outer(graph: Graph, ctx: PassContext) -> PassResult:
        PassManager(registry_of(make_pass("inner", run=inner_reads))).run(graph)
        graph.initializer("w2")[0, 0] = 0.0
        return PassResult(True)

    with pytest.raises(PassError, match=r"'outer' failed: edited an initializer in place"):
        PassManager(registry_of(make_pass("outer", run=outer))).run(g)
    assert mine.tolist() == [[4.0, 5.0, 6.0]] and mine.flags.writeable


def test_pass_that_only_reads_or_undoes_its_edit_is_not_a_liar() -> None:
    """Reading, refining shape facts, rewriting a weight with the same value and an edit undone
    within the pass all leave the computation as it was: changed=False is the truth."""

    def careful(graph: Graph, ctx: PassContext) -> PassResult:
        w = graph.initializer("w")
        graph.constant_value("w")
        graph.set_info(_relu(graph).outputs[0], shape=(1, 3))
        graph.set_initializer("w", w.copy())
        stray = graph.add_node("Neg", [graph.inputs[0]], 1, name="trial")
        graph.remove_node(stray)
        add = _add(graph)
        add.set_attr("tmp", 1)
        add.del_attr("tmp")
        return PassResult(False)

    records = PassManager(registry_of(make_pass("careful", run=careful))).run(weighted_graph())
    assert [(r.name, r.changed) for r in records] == [("careful", False)]


# ---------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------
def phased_registry(log: list[str]) -> Registry:
    return registry_of(
        make_pass("c1", "canonicalize", run=changes_times(1), log=log),
        make_pass("c2", "canonicalize", log=log),
        make_pass("l1", "layout", log=log),
        make_pass("o1", "optimize", log=log),
        make_pass("o2", "optimize", group="g", run=changes_times(2), log=log),
        make_pass("k1", "cleanup", run=changes_times(1), log=log),
    )


def test_check_each_runs_after_every_changed_pass_only() -> None:
    log: list[str] = []
    g = small_graph()
    seen: list[str] = []

    def check_each(graph: Graph, name: str) -> None:
        assert graph is g
        assert log[-1] == name  # right after that pass, before the next one
        seen.append(name)

    records = PassManager(phased_registry(log)).run(g, check_each=check_each)
    assert seen == [r.name for r in records if r.changed] == ["c1", "o2", "o2", "k1"]


def test_check_phase_runs_at_the_end_of_phases_that_changed() -> None:
    log: list[str] = []
    g = small_graph()

    def check_phase(graph: Graph, phase: str) -> None:
        assert graph is g
        log.append(f"<{phase}>")

    PassManager(phased_registry(log)).run(g, check_phase=check_phase)
    # layout changed nothing, so it is not checked; each check comes after the phase's last pass
    assert log == ["c1", "c2", "<canonicalize>", "l1", "o1", "o2", "o2", "o2", "<optimize>", "k1", "<cleanup>"]


def test_check_failure_propagates_from_check_each() -> None:
    class Boom(Exception):
        pass

    def check_each(graph: Graph, name: str) -> None:
        raise Boom(name)

    with pytest.raises(Boom, match="c1"):
        PassManager(phased_registry([])).run(small_graph(), check_each=check_each)


def test_records_have_timings_and_sources() -> None:
    reg = Registry()
    reg.load("my_plugin", lambda r: r.add_pass(make_pass("plugged", run=changes_times(1))))
    reg.add_pass(make_pass("direct", "cleanup"))
    records = PassManager(reg).run(small_graph())
    assert [r.name for r in records] == ["plugged", "direct"]
    for r in records:
        assert isinstance(r, PassRecord) and r.seconds >= 0.0
    assert [r.source for r in records] == ["my_plugin", "api"]
    d = records[0].as_dict()
    assert d["name"] == "plugged" and d["changed"] is True and d["seconds"] >= 0 and d["source"] == "my_plugin"


def test_unknown_disabled_pass_raises_convert_error() -> None:
    reg = registry_of(make_pass("real"))
    with pytest.raises(ConvertError, match=r"unknown pass 'imaginary'.*real"):
        PassManager(reg, disabled=("imaginary",))
    with pytest.raises(ConvertError, match="constant_folding"):
        PassManager(registry(), disabled=("prune", "constant_folding"))


def test_registry_rejects_bad_passes() -> None:
    reg = Registry()
    with pytest.raises(ConvertError, match="no name"):
        reg.add_pass(make_pass(""))
    with pytest.raises(ConvertError, match="unknown phase 'late'"):
        reg.add_pass(make_pass("p", "late"))
    assert reg.passes == {}


def test_options_reach_passes() -> None:
    seen = {}

    def look(graph: Graph, ctx: PassContext) -> PassResult:
        seen.update(ctx.options)
        return PassResult(False)

    opts = {"keep_io_layout": True}
    PassManager(registry_of(make_pass("p", run=look)), options=opts).run(small_graph())
    assert seen == opts


# ---------------------------------------------------------------------------------------------
# built-in pipeline: idempotence and equivalence
# ---------------------------------------------------------------------------------------------
def _bn(b: Builder, x: str, c: int, **attrs) -> str:
    rng = np.random.default_rng(c)
    gamma = b.const((rng.random(c) + 0.5).astype(np.float32))
    beta = b.const((rng.standard_normal(c) * 0.1).astype(np.float32))
    mean = b.const((rng.standard_normal(c) * 0.1).astype(np.float32))
    var = b.const((rng.random(c) + 0.5).astype(np.float32))
    return b.op("BatchNormalization", [x, gamma, beta, mean, var], **attrs)


def conv_bn_relu(rank: int = 4, bias: bool = True) -> onnx.ModelProto:
    b = Builder()
    spatial = {3: [10], 4: [8, 8], 5: [4, 6, 5]}[rank]
    x = b.input("x", [1, 3, *spatial])
    ins = [x, b.weight([8, 3, *[3] * (rank - 2)])] + ([b.weight([8])] if bias else [])
    y = b.op("Conv", ins, pads=[1] * 2 * (rank - 2))
    b.output(b.op("Relu", [_bn(b, y, 8, epsilon=1e-3)]))
    return b.model()


def convtranspose_bn() -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", [1, 4, 5, 5])
    y = b.op("ConvTranspose", [x, b.weight([4, 3, 3, 3])], strides=[2, 2], pads=[1, 1, 1, 1], output_padding=[1, 1], group=2)
    y = _bn(b, y, 6)
    b.output(b.op("Sigmoid", [y]))
    return b.model()


def standalone_bn() -> onnx.ModelProto:
    """BN not fed by a Conv (so it becomes Mul + Add), rank 4 and rank 3, and one whose input is a graph input."""
    b = Builder()
    x = b.input("x", [1, 5, 4, 4])
    s = b.input("s", [2, 5, 7])
    b.output(_bn(b, b.op("Relu", [x]), 5))
    b.output(b.op("Tanh", [_bn(b, s, 5)]))
    return b.model()


def identities_dropouts_constants() -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", [1, 4, 6, 6])
    ratio = b.const(np.array(0.3, np.float32))
    train = b.const(np.array(False), dtype=bool)
    w = b.op("Constant", [], value=helper.make_tensor("w", TensorProto.FLOAT, [4, 4, 1, 1], np.random.default_rng(1).standard_normal(16).tolist()))
    scale = b.op("Constant", [], value_float=1.5)
    shift = b.op("Constant", [], value_floats=[0.1, -0.2, 0.3, 0.0])
    shift4 = b.op("Reshape", [shift, b.const(np.array([1, 4, 1, 1], np.int64), dtype=np.int64)])
    y = b.op("Identity", [x])
    y = b.op("Conv", [y, w])
    y = b.op("Dropout", [y, ratio, train])
    y, _mask = b.op("Dropout", [y], n_out=2)  # mask unused
    y = b.op("Mul", [b.op("Identity", [y]), scale])
    y = b.op("Add", [y, shift4])
    b.output(b.op("Identity", [b.op("Relu", [y])]))  # an Identity that carries a graph output
    b.op("Neg", [b.op("Mul", [x, b.const(np.full((1, 4, 1, 1), 2.0, np.float32))])])  # dead: for prune
    b.const(np.zeros(3, np.float32), name="never_read")
    return b.model()


def pools_and_friends() -> onnx.ModelProto:
    b = Builder()
    x = b.input("x", [1, 3, 12, 12])
    y = b.op("Conv", [x, b.weight([6, 3, 3, 3])], strides=[2, 2], pads=[1, 1, 1, 1])
    y = b.op("MaxPool", [b.op("Relu", [y])], kernel_shape=[2, 2], strides=[2, 2])
    z = b.op("AveragePool", [y], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    y = b.op("Concat", [y, z], axis=1)
    y = b.op("Softmax", [y], axis=1)
    y = b.op("Pad", [y, b.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), dtype=np.int64)])
    g = b.op("GlobalAveragePool", [y])
    b.output(b.op("Flatten", [g], axis=1))
    b.output(b.op("ReduceMean", [y], axes=[1], keepdims=0))
    return b.model()


def depthwise_conv1d_conv3d() -> onnx.ModelProto:
    b = Builder()
    x1 = b.input("x1", [1, 4, 16])
    x3 = b.input("x3", [1, 2, 4, 4, 4])
    y1 = b.op("Conv", [x1, b.weight([4, 1, 3])], group=4, pads=[1, 1])
    b.output(b.op("LeakyRelu", [y1], alpha=0.1))
    y3 = b.op("Conv", [x3, b.weight([3, 2, 2, 2, 2])], strides=[2, 2, 2])
    b.output(b.op("Add", [y3, b.const(np.ones((1, 3, 1, 1, 1), np.float32))]))
    return b.model()


BUILT = {
    "conv_bn_relu_2d": lambda: conv_bn_relu(4),
    "conv_bn_relu_1d_nobias": lambda: conv_bn_relu(3, bias=False),
    "conv_bn_relu_3d": lambda: conv_bn_relu(5),
    "convtranspose_bn_grouped": convtranspose_bn,
    "standalone_bn": standalone_bn,
    "identities_dropouts_constants": identities_dropouts_constants,
    "pools_and_friends": pools_and_friends,
    "depthwise_conv1d_conv3d": depthwise_conv1d_conv3d,
}


@pytest.fixture(scope="module")
def bundled_models(tmp_path_factory) -> dict[str, onnx.ModelProto]:
    import torch

    from graph_convert.conversion.export import export

    out = {}
    d = tmp_path_factory.mktemp("bundled")
    for name in models.MODELS:
        module, shape = models.load(name)
        export(module, (torch.randn(*shape),), str(d / f"{name}.onnx"))
        out[name] = onnx.load(str(d / f"{name}.onnx"))
    return out


@pytest.fixture(params=[*models.MODELS, *BUILT])
def source_model(request, bundled_models) -> tuple[str, onnx.ModelProto]:
    name = request.param
    return name, bundled_models[name] if name in bundled_models else BUILT[name]()


OPTIONS = [pytest.param({}, id="io_channels_last"), pytest.param({"keep_io_layout": True}, id="keep_io_layout")]


def run_builtin(model: onnx.ModelProto, options: dict) -> tuple[Graph, list[PassRecord]]:
    g = from_onnx(model)
    records = PassManager(registry(), options=options).run(g, check_each=lambda graph, _: graph.check())
    return g, records


@pytest.mark.parametrize("options", OPTIONS)
def test_pipeline_is_equivalent(source_model, options) -> None:
    name, model = source_model
    g, records = run_builtin(model, options)
    assert any(r.changed for r in records), f"{name}: the pipeline did nothing"
    assert_equivalent(model, g, atol=1e-4)
    # canonical forms are gone and every Conv-like op works channels-last
    for op in ("BatchNormalization", "Dropout", "Constant"):
        assert g.count(op) == 0, f"{name}: {op} left"
    assert all(n.is_layout_marked for n in g.nodes if n.op_type in ("Conv", "ConvTranspose"))
    if options.get("keep_io_layout"):
        assert g.io_perms == {}


@pytest.mark.parametrize("options", OPTIONS)
def test_pipeline_is_idempotent(source_model, options) -> None:
    name, model = source_model
    g, _ = run_builtin(model, options)
    second = PassManager(registry(), options=options).run(g)
    assert [r.name for r in second] == PassManager(registry()).order
    changed = [(r.name, r.details) for r in second if r.changed]
    assert changed == [], (
        f"{name}: the pipeline is not idempotent; a second run changed {changed}"
        + (" (BUG: push_transposes turns a cancelled Transpose pair in front of a graph output into an Identity "
           "in the optimize phase, after eliminate_identity has run)" if any(n == "eliminate_identity" for n, _ in changed) else "")
    )
    assert_equivalent(model, g, atol=1e-4)


def test_io_channels_last_removes_every_transpose_of_conv_nets(bundled_models) -> None:
    for name in ("resnet_style", "mobilenetv2_style"):
        g = from_onnx(bundled_models[name])
        PassManager(registry()).run(g)
        assert g.count("Transpose") == 0, name
        assert g.io_perms == {"x": (0, 2, 3, 1)}


@pytest.mark.parametrize("pass_name", ["constants_to_initializers", "eliminate_identity", "fold_batchnorm",
                                       "batchnorm_to_affine", "to_channels_last", "io_channels_last",
                                       "push_transposes", "prune"])
def test_each_builtin_pass_alone_is_idempotent(pass_name, bundled_models) -> None:
    assert pass_name in registry().passes
    others = tuple(n for n in registry().passes if n != pass_name)
    hits = 0
    for name, model in [*bundled_models.items(), *((n, make()) for n, make in BUILT.items())]:
        g = from_onnx(model)
        if pass_name in ("io_channels_last", "push_transposes"):  # they work on what to_channels_last made
            prelude = {"to_channels_last"} | ({"io_channels_last"} if pass_name == "push_transposes" else set())
            PassManager(registry(), disabled=tuple(n for n in registry().passes if n not in prelude)).run(g)
        first = PassManager(registry(), disabled=others).run(g)
        second = PassManager(registry(), disabled=others).run(g)
        assert {r.name for r in first} == {pass_name}
        assert [r.name for r in second] == [pass_name]  # nothing changed, so no second round either
        assert not second[0].changed, f"{pass_name} changed {name} again: {second[0].details}"
        hits += any(r.changed for r in first)
        g.check()
        assert_equivalent(model, g, atol=1e-4)
    assert hits > 0, f"{pass_name} never fired on the built graphs"
