"""Test helpers: a tiny graph builder and one shared ORT equivalence check."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from graph_convert.ir import Graph, from_onnx, to_onnx
from graph_convert.pass_manager import PassManager, Registry
from graph_convert.plugins import builtin_registry
from graph_convert.checks.equivalence import compare, ort_session, to_rewritten_layout, to_source_layout

_REGISTRY: Registry | None = None


def registry() -> Registry:
    """The built-in registry, built once per test session (it imports TensorFlow)."""
    global _REGISTRY
    if _REGISTRY is None:
        _REGISTRY = builtin_registry()
    return _REGISTRY


class Builder:
    """Build small ONNX models in code: ``b = Builder(); x = b.input("x", [1,3,8,8]);
    y = b.op("Relu", [x]); b.output(y); model = b.model()``."""

    def __init__(self, opset: int = 17):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0
        self.rng = np.random.default_rng(0)

    def _name(self, base: str) -> str:
        self._n += 1
        return f"{base}_{self._n}"

    def input(self, name: str, shape: Sequence, dtype: int = TensorProto.FLOAT) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, dtype, list(shape)))
        return name

    def const(self, value: Any, name: str | None = None, dtype=np.float32) -> str:
        name = name or self._name("c")
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype=dtype) if not isinstance(value, np.ndarray) else value, name))
        return name

    def weight(self, shape: Sequence[int], scale: float = 0.5) -> str:
        return self.const((self.rng.standard_normal(shape) * scale).astype(np.float32))

    def op(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> Any:
        outs = [self._name(op_type.lower()) for _ in range(n_out)]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=self._name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs

    def output(self, name: str, dtype: int = TensorProto.FLOAT) -> None:
        """Declare a graph output; its type and shape are filled in by shape inference."""
        self.outputs.append(onnx.ValueInfoProto(name=name))

    def model(self) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, "test", self.inputs, [], self.inits)
        g.output.extend(self.outputs)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", self.opset)])
        m.ir_version = 8
        return finish_model(m)


def finish_model(m: onnx.ModelProto) -> onnx.ModelProto:
    """Fill graph-output types from shape inference, then run the checker."""
    inferred = onnx.shape_inference.infer_shapes(m)
    known = {vi.name: vi for vi in [*inferred.graph.value_info, *m.graph.input]}
    for out in m.graph.output:
        if not out.HasField("type") and out.name in known:
            out.type.CopyFrom(known[out.name].type)
    onnx.checker.check_model(m)
    return onnx.shape_inference.infer_shapes(m)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    init = {i.name for i in model.graph.initializer}
    feeds = {}
    for vi in model.graph.input:
        if vi.name in init:
            continue
        shape = [d.dim_value or 1 for d in vi.type.tensor_type.shape.dim]
        dt = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        feeds[vi.name] = rng.standard_normal(shape).astype(dt) if dt.kind == "f" else rng.integers(0, 4, shape).astype(dt)
    return feeds


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = ort_session(model)
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, feeds)))


def assert_equivalent(original: onnx.ModelProto, rewritten: Graph, atol: float = 1e-5, seed: int = 0) -> None:
    """The lowered rewritten graph computes what the original computes (through its io perms)."""
    feeds = random_feeds(original, seed)
    ref = run_ort(original, feeds)
    got = to_source_layout(run_ort(to_onnx(rewritten), to_rewritten_layout(feeds, rewritten.io_perms)), rewritten.io_perms)
    for name, r in ref.items():
        f = compare(r, got[name], atol)
        assert f.ok, f"output {name}: max abs {f.max_abs}, max rel {f.max_rel}"


def run_pipeline(model: onnx.ModelProto, **options) -> tuple[Graph, list]:
    g = from_onnx(model)
    records = PassManager(registry(), options=options).run(g)
    return g, records


def assert_batch_kept_and_checked(report: dict) -> None:
    """report.json's ``dynamic`` section: every batch dim kept, checked at 3 sizes or more, and the
    TF and TFLite outputs verified at each of them."""
    dyn = report["dynamic"]
    batch = [n for n, d in dyn["dims"].items() if d["role"] == "batch"]
    assert batch and all(dyn["dims"][n]["kept"] for n in batch), dyn["dims"]
    assert len(dyn["checks"]) >= 3
    for entry in dyn["checks"]:
        assert entry["verdict"] == "ok", entry
        for stage in ("tensorflow", "tflite_float32"):
            assert all(f["ok"] for f in entry[stage].values()), (entry["sizes"], stage)
