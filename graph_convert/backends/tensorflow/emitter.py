"""The TF emitter: walks the rewritten IR and builds a ``tf.function`` inside a ``tf.Module``.

Per-op knowledge lives in the handler table ``registry.emitters`` (built-ins in
:mod:`graph_convert.backends.tensorflow.ops`): ``emit(node, inputs, ctx) -> tensor | list[tensor]``. A layout-
marked node whose emitter does not read the marks gets its inputs transposed back and its outputs
transposed forward here, so an emitter never sees a layout it did not ask for.
"""
from __future__ import annotations

import contextvars
import re
from dataclasses import dataclass, field
from typing import Any, Collection, NamedTuple

import numpy as np
import onnx
from onnx import helper

from graph_convert.ir import perm as P
from graph_convert.errors import ConvertError, StageError, UnsupportedOpsError
from graph_convert.ir import Graph, Node


def tf_dtype(onnx_type: int):
    import tensorflow as tf

    if onnx_type == onnx.TensorProto.BFLOAT16:
        return tf.bfloat16
    return tf.as_dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


def tf_name(name: str) -> str:
    """A valid TF op / signature name for an ONNX tensor name (input.1 -> input_1)."""
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    if not s or not (s[0].isalpha()):
        s = "t_" + s
    return s


def missing_emitters(graph: Graph, emitters: dict[str, Any]) -> list[tuple[str, str]]:
    """(op_type, node name) of every node the emitter table cannot translate, inside subgraph
    bodies (If/Loop/Scan) too: those are traced with the same table (a body's node is named
    ``outer node/attribute/name``, its op type when unnamed)."""
    out = []

    def visit(nodes, where: str) -> None:
        for n in nodes:
            key = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}::{n.op_type}"
            name = where + (n.name or n.op_type)
            if key not in emitters:
                out.append((key, name))
            for a in n.attribute if isinstance(n, onnx.NodeProto) else n.attrs.values():
                for g in [a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs):
                    visit(g.node, f"{name}/{a.name}/")

    visit(graph.nodes, "")
    return out


@dataclass
class EmitContext:
    """What an emitter may look at besides its input tensors."""

    graph: Graph
    opset: int
    env: dict[str, Any] = field(default_factory=dict)
    batch: Any = None  # graph_convert.conversion.dynamic.BatchView when the batch is dynamic
    variables: list = field(default_factory=list)  # weights made tf.Variables (see ``weight``)
    probe: Any = None  # a graph input with at least one element (see ``exact_constant``)
    _n_weights: int = 0
    _true: Any = None
    const_reads: set = field(default_factory=set)  # tensors read through ``const`` by the node being emitted
    _exact: dict = field(default_factory=dict)  # id(tensor) -> (tensor, value) of run-time-built constants
    placeholders: Any = None  # tf.large_tflite.Placeholders: large weights become splat stand-ins
    # quantized tensor -> (float twin, scale, zero point, dtype) (graph_convert.tf.ops.quantized)
    quantized: dict = field(default_factory=dict)
    # declare a quantized source's scales to the TFLite converter as fake-quant ops (the trace of
    # model_int8.tflite); off, Q/DQ are ONNX's arithmetic spelled out (SavedModel, float32 file)
    declare_quantization: bool = False
    grids: dict = field(default_factory=dict)  # tensor -> quant_grid.Grid of a dequantized weight read by ``const``
    emitters: dict = field(default_factory=dict)  # the handler table (control flow traces bodies with it)
    layout_aware: Collection[str] = ()
    batch_size: Any = None  # the run-time batch size when ``batch`` is set

    def value(self, tensor: str):
        """The TF tensor of ``tensor`` in this scope: emitted already, or a constant made now."""
        import tensorflow as tf

        if not tensor:
            return None
        env, batch = self.env, self.batch
        if tensor not in env and batch is not None and batch.is_dynamic_const(tensor):
            v = batch.minus_one_target(tensor)
            env[tensor] = tf.constant(v) if v is not None else batch.tensor(tensor, self.batch_size)
        if tensor not in env:
            v = self.graph.constant_value(tensor)
            if v is None:
                raise ConvertError(f"tensor {tensor!r} has no producer")
            env[tensor] = self.weight(v)
        return env[tensor]

    def peek_const(self, tensor: str):
        """``tensor``'s value when known at conversion time (without making a tensor)."""
        if self.batch is not None and self.batch.is_dynamic_const(tensor):
            return None
        return self.graph.constant_value(tensor)

    def nested(self, graph: Graph) -> "EmitContext":
        """A context for tracing a subgraph body (``graph``) inside this one: its own tensors and
        graph, the same weights, table and probe. Call :meth:`adopt` after tracing it."""
        from dataclasses import replace

        return replace(self, graph=graph, env={}, batch=None, batch_size=None, const_reads=set(), _true=None)

    def adopt(self, child: "EmitContext") -> None:
        """Take over the weights a nested context made (their count orders the variables)."""
        self._n_weights = max(self._n_weights, child._n_weights)

    def weight_count(self) -> int:
        """How many weights were made so far (see :meth:`rewind`)."""
        return self._n_weights

    def rewind(self, count: int) -> None:
        """Trace again from ``count`` weights on: the next weights made are the ones made then
        (a body traced twice, e.g. a while loop retried with open shapes, reuses its variables)."""
        self._n_weights = count

    def exact_constant(self, value):
        """A constant holding +-inf that TFLite keeps exact, or ``None`` when the graph has no input
        to build it from. The TFLite converter stores an infinite constant as +-FLT_MAX (and folds
        any constant arithmetic that would make one) and -FLT_MAX is not -inf: -FLT_MAX + -FLT_MAX
        overflows, a row of -FLT_MAX soft-maxes to a uniform row rather than NaN. So each
        infinity is made at run time as (+-max) * 2, the 2 coming from an input element through
        ``x == x or x != x`` (true also for NaN), which no converter folds; the finite entries stay
        constants, selected by a constant mask."""
        import tensorflow as tf

        arr = np.asarray(value)
        if self.probe is None:
            return None
        if self._true is None:
            p = tf.reshape(self.probe, [-1])[0]
            self._true = tf.logical_or(tf.equal(p, p), tf.not_equal(p, p))
        inf = np.isinf(arr)
        big = np.where(inf, np.sign(arr) * np.finfo(arr.dtype).max, 0).astype(arr.dtype)
        two = tf.cast(self._true, tf.as_dtype(arr.dtype)) * np.asarray(2, arr.dtype)
        out = tf.where(tf.constant(inf), tf.constant(big) * two, tf.constant(np.where(inf, 0, arr).astype(arr.dtype)))
        self._exact[id(out)] = (out, arr)
        return out

    def exact_value(self, t) -> np.ndarray | None:
        """The value of a tensor made by :meth:`exact_constant` (``tf.get_static_value`` cannot
        see through its run-time factor)."""
        hit = self._exact.get(id(t))
        return hit[1] if hit is not None and hit[0] is t else None

    def weight(self, value, dtype=None):
        """A constant for the TF graph. Float arrays of WEIGHT_MIN_ELEMENTS or more become
        (non-trainable) tf.Variables captured by the function: the SavedModel keeps them in
        ``variables/`` instead of inside the graph (protobuf caps a graph at 2 GB), and tracing,
        saving and TFLite conversion (which freezes them back into constants) do not copy them
        through GraphDefs again and again: a ResNet-50 converted in about half the time and
        memory this way."""
        import tensorflow as tf

        arr = np.asarray(value)
        if dtype is not None and arr.dtype != tf.as_dtype(dtype).as_numpy_dtype:
            arr = arr.astype(tf.as_dtype(dtype).as_numpy_dtype)
        if arr.dtype.kind == "f" and np.isinf(arr).any():
            exact = self.exact_constant(arr)
            if exact is not None:
                return exact
        grids = [self.grids[t] for t in self.const_reads if t in self.grids]
        if grids and self.declare_quantization and self.placeholders is None and arr.dtype == np.float32:  # a dequantized int8 kernel keeps its source scales
            from graph_convert.backends.tensorflow.quant_grid import declare

            made = tf.constant(arr) if arr.size < WEIGHT_MIN_ELEMENTS else self._variable(arr)
            return declare(made, arr, grids)
        if arr.size < WEIGHT_MIN_ELEMENTS or arr.dtype.kind != "f":
            return tf.constant(arr)
        if self.placeholders is not None:  # the trace for a large .tflite: no variables at all
            self._n_weights += 1
            return self.placeholders.make(self._n_weights - 1, arr)
        return self._variable(arr)

    def _variable(self, arr: np.ndarray):
        import tensorflow as tf

        # tf.function traces a function that creates variables twice; the second trace must get
        # the same variables back, in the same order
        i = self._n_weights
        self._n_weights += 1
        if i < len(self.variables):
            v = self.variables[i]
            if tuple(v.shape) != arr.shape or v.dtype.as_numpy_dtype != arr.dtype:
                raise ConvertError(f"weight {i}: traced differently the second time ({tuple(v.shape)} vs {arr.shape})")
            return tf.convert_to_tensor(v)
        with tf.init_scope():  # created eagerly, once, outside the traced graph
            v = tf.Variable(np.ascontiguousarray(arr), trainable=False, name=f"w{i}")
        self.variables.append(v)
        return tf.convert_to_tensor(v)

    def const(self, tensor: str) -> np.ndarray | None:
        if not tensor:
            return None
        self.const_reads.add(tensor)
        if self.batch is not None and self.batch.is_dynamic_const(tensor):
            return self.batch.minus_one_target(tensor)  # None: a run-time value
        v = self.graph.constant_value(tensor)
        if v is None:  # a DequantizeLinear of constants: its float value, its scales kept aside
            from graph_convert.backends.tensorflow.quant_grid import dequantized

            hit = dequantized(self.graph, tensor)
            if hit is not None:
                v, self.grids[tensor] = hit
        return v

    def shape(self, tensor: str) -> tuple | None:
        return self.batch.shape(tensor) if self.batch is not None else self.graph.shape(tensor)

    def static_shape(self, tensor: str) -> tuple[int, ...] | None:
        s = self.shape(tensor)
        if s is None or any(not isinstance(d, int) for d in s):
            return None
        return tuple(s)


WEIGHT_MIN_ELEMENTS = 1024


class _Inputs(list):
    """An emitter's input tensors, each made on first access: a weight the emitter reads as
    numpy through ``ctx.const`` (a Conv kernel) never becomes a graph constant or variable."""

    def __init__(self, names: list[str], get, env: dict, peek_const):
        super().__init__([env.get(t) if t else None for t in names])
        self._pending = {j: t for j, t in enumerate(names) if t and t not in env}
        self._names = names
        self._get = get
        self._peek_const = peek_const

    def has(self, j: int) -> bool:
        """Input ``j`` is given (not an omitted optional input), without making it."""
        return bool(self._names[j])

    def peek(self, j: int, static_value):
        """Input ``j``'s value when known at conversion time, without making it: a pending
        constant's numpy value (``None`` past ``static_value``'s size limit), else
        ``static_value(tensor)``."""
        if j in self._pending:
            return self._peek_const(self._pending[j])
        t = super().__getitem__(j)
        return None if t is None else static_value(t)

    def pending(self, j: int) -> bool:
        """Input ``j`` is an ONNX constant not made yet."""
        return j in self._pending

    def made(self, j: int):
        """Input ``j``'s tensor if made (``None`` while pending or omitted)."""
        return None if j in self._pending else super().__getitem__(j)

    def _load(self, j: int) -> None:
        t = self._pending.pop(j, None)
        if t is not None:
            super().__setitem__(j, self._get(t))

    def __getitem__(self, j):
        for k in range(len(self))[j] if isinstance(j, slice) else [j if j >= 0 else len(self) + j]:
            self._load(k)
        return super().__getitem__(j)

    def __iter__(self):
        for k in range(len(self)):
            self._load(k)
        return super().__iter__()


def _emit_node(node: Node, inputs: list, ctx: EmitContext, emitters: dict[str, Any], layout_aware: Collection[str]) -> list:
    import tensorflow as tf

    key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
    fn = emitters[key]
    if node.is_layout_marked and key not in layout_aware:  # the emitter sees the source layout only
        inputs = [x if x is None or node.in_perm(j) is None else tf.transpose(x, P.invert(node.in_perm(j))) for j, x in enumerate(inputs)]
        outs = fn(node, inputs, ctx)
        outs = list(outs) if isinstance(outs, (list, tuple)) else [outs]
        return [y if node.out_perm(k) is None else tf.transpose(y, node.out_perm(k)) for k, y in enumerate(outs)]
    outs = fn(node, inputs, ctx)
    return list(outs) if isinstance(outs, (list, tuple)) else [outs]


def emit_nodes(nodes: list[Node], ctx: EmitContext) -> None:
    """Emit ``nodes`` (in order) with ``ctx``'s table, each output into ``ctx.env``: the main
    graph's trace, and a control-flow body's inside it."""
    env = ctx.env
    for node in nodes:
        try:
            outs = _emit_node(node, _Inputs(node.inputs, ctx.value, env, ctx.peek_const), ctx, ctx.emitters, ctx.layout_aware)
        except (ConvertError, StageError):  # (a StageError: from a node inside a control-flow body, named)
            raise
        except Exception as e:  # an emitter bug, ours or a plugin's: not the user's input
            raise StageError("emit TensorFlow", f"the {node.op_type} emitter raised {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}", node.name) from e
        for t, y in zip(node.outputs, outs):
            if t:
                env[t] = y


class Traced(NamedTuple):
    """The traced graph: a module holding the weights, its concrete function, the TF names of
    the graph inputs and outputs, and the TFLite gaps the emitters recorded while tracing it
    (``(node, op_type, reason)`` of every form TFLite has no builtin kernel for), and when
    quantizing the TF name scope of every node."""

    module: Any
    concrete: Any
    in_names: list[str]
    out_names: list[str]
    gaps: list[tuple[str, str, str]]
    scopes: dict[str, str] = {}  # node -> TF name scope, when quantizing (TFLite layers map back to nodes)


# the gap record of the trace running in this thread (see ``record_tflite_gap``)
_TRACE_GAPS: contextvars.ContextVar[list | None] = contextvars.ContextVar("graph_convert_tflite_gaps", default=None)


def record_tflite_gap(node: Node, reason: str) -> None:
    """Note that TFLite has no builtin kernel for the form ``node`` is being emitted as."""
    gaps = _TRACE_GAPS.get()
    if gaps is not None:
        gaps.append((node.name, node.op_type, reason))


def trace_gaps() -> list | None:
    """The running trace's gap list (emitters that try a form and fall back trim it)."""
    return _TRACE_GAPS.get()


def _probe(args):
    """A graph input with at least one element, of a dtype TFLite slices and compares (see
    ``EmitContext.exact_constant``), or None."""
    import tensorflow as tf

    for a in args:
        dims = a.shape.as_list() if a.shape.rank is not None else None
        if a.dtype in (tf.float32, tf.int32, tf.int64, tf.int8, tf.uint8, tf.bool):
            if dims is not None and all(d is None or d > 0 for d in dims):  # None: the dynamic batch, >= 1
                return a
    return None


def build_function(graph: Graph, emitters: dict[str, Any], batch=None, layout_aware: Collection[str] = (),
                   placeholders=None, declare_quantization: bool = False) -> Traced:
    """Trace the graph into a ``tf.function``. ``layout_aware``: op types whose emitters read the
    layout marks themselves (a registry's ``layout_aware``); every other layout-marked node gets
    its inputs transposed back to the source layout and its outputs forward. ``batch`` (a
    :class:`graph_convert.conversion.dynamic.BatchView`) makes the batch dim dynamic. ``placeholders`` (a
    :class:`graph_convert.backends.tensorflow.large_tflite.Placeholders`): every weight that would be a variable
    is a constant instead, the large ones splat stand-ins (see that module)."""
    import tensorflow as tf

    missing = missing_emitters(graph, emitters)
    if missing:
        raise UnsupportedOpsError(missing)
    opset = graph.opset
    specs = []
    in_names = [tf_name(x) for x in graph.inputs]
    out_names = [tf_name(y) for y in graph.outputs]
    for names, what in ((in_names, "input"), (out_names, "output")):
        if len(set(names)) != len(names):
            raise ConvertError(f"two graph {what}s map to the same TF name: {names}")
    for x, nm in zip(graph.inputs, in_names):
        shape = batch.shape(x) if batch is not None else graph.shape(x)
        dims = None if shape is None else [d if isinstance(d, int) else None for d in shape]
        specs.append(tf.TensorSpec(dims, tf_dtype(graph.dtype(x)), name=nm))
    nodes = graph.nodes
    variables: list = []

    def fn(*args):
        ctx = EmitContext(graph, opset, batch=batch, variables=variables, placeholders=placeholders,
                          declare_quantization=declare_quantization, emitters=emitters, layout_aware=layout_aware)
        env = ctx.env
        for x, a in zip(graph.inputs, args):
            env[x] = a
        ctx.probe = _probe(args)
        batch_size = None
        if batch is not None:
            src, axis = batch.batch_source
            batch_size = tf.shape(env[src])[axis]

        ctx.batch_size = batch_size
        emit_nodes(nodes, ctx)
        return {nm: tf.identity(ctx.value(y), name=nm) for y, nm in zip(graph.outputs, out_names)}

    module = tf.Module()
    module.serve = tf.function(fn, input_signature=specs, autograph=False)
    gaps: list[tuple[str, str, str]] = []
    token = _TRACE_GAPS.set(gaps)
    try:
        concrete = module.serve.get_concrete_function()
    finally:
        _TRACE_GAPS.reset(token)
    module.weights = list(variables)  # tracked, so a SavedModel of ``module`` holds them
    return Traced(module, concrete, in_names, out_names, list(dict.fromkeys(gaps)))
