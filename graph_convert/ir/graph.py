"""The IR: an ONNX graph held in NetworkX behind a narrow, typed API that passes use.

Passes never touch NetworkX or protobuf: they ask for producers/consumers, add and remove nodes,
read and replace initializers, and mark nodes with *layout permutations* (see :class:`Node`).
The API keeps the graph valid: one producer per tensor, edges always match node inputs.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Iterable, Sequence

import networkx as nx
import numpy as np
import onnx
from onnx import helper, numpy_helper

from graph_convert.ir import perm as P
from graph_convert.ir.node import Node, TensorInfo
from graph_convert.ir.snapshot import GraphSnapshot, attr_key, first_difference, perms_key
from graph_convert.ir.tensors import constant_node_value, file_location, rename_in_subgraphs, tensor_array
class GraphError(Exception):
    """The API refused an edit that would break the graph (names the node/tensor)."""


class Graph:
    """A mutable ONNX graph. Nodes live in an ``nx.MultiDiGraph`` keyed by node name; an edge
    ``producer -> consumer`` carries the tensor name as its key."""

    def __init__(self) -> None:
        self._g = nx.MultiDiGraph()
        self._producer: dict[str, str] = {}  # tensor -> node name
        self._readers: dict[str, dict[str, int]] = {}  # tensor -> {consumer node: number of uses}
        self.inputs: list[str] = []  # graph inputs (excluding initializers)
        self.outputs: list[str] = []
        self.info: dict[str, TensorInfo] = {}
        self._init_proto: dict[str, onnx.TensorProto] = {}
        self._init_array: dict[str, np.ndarray] = {}
        # layout of graph inputs/outputs relative to the source model: name -> perm
        self.io_perms: dict[str, tuple] = {}
        # anything the loader keeps verbatim to make ONNX -> IR -> ONNX lossless
        self.model_meta: dict[str, Any] = {}
        self._names = itertools.count()
        self._reserved: set[str] = set()  # names defined inside subgraphs
        self._frozen: list[np.ndarray] | None = None  # arrays made read-only while a pass runs

    # -- queries ----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        """Nodes in a topological order (stable: ties broken by insertion order)."""
        order = {n: i for i, n in enumerate(self._g.nodes)}
        return [self._g.nodes[n]["node"] for n in nx.lexicographical_topological_sort(self._g, key=order.__getitem__)]

    def node(self, name: str) -> Node:
        return self._g.nodes[name]["node"]

    def has_node(self, name: str) -> bool:
        return name in self._g

    def producer(self, tensor: str) -> Node | None:
        n = self._producer.get(tensor)
        return None if n is None else self.node(n)

    def consumers(self, tensor: str) -> list[Node]:
        """All nodes reading ``tensor`` (explicitly or inside a subgraph). Complete by construction."""
        seen, out = set(), []
        for n in self._consumer_names(tensor):
            if n not in seen:
                seen.add(n)
                out.append(self.node(n))
        return out

    def _consumer_names(self, tensor: str) -> list[str]:
        return list(self._readers.get(tensor, {}))

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in self.outputs

    def num_uses(self, tensor: str) -> int:
        return len(self.consumers(tensor)) + self.outputs.count(tensor)

    def count(self, op_type: str) -> int:
        return sum(1 for _, d in self._g.nodes(data=True) if d["node"].op_type == op_type)

    def __len__(self) -> int:
        return self._g.number_of_nodes()

    @property
    def opset(self) -> int:
        """The default-domain (ai.onnx) opset the graph is written in (17 when not declared)."""
        return dict(self.model_meta.get("opset_import", [("", 17)])).get("", 17)

    # -- tensors ----------------------------------------------------------------------------
    def shape(self, tensor: str) -> tuple | None:
        ti = self.info.get(tensor)
        if ti is None or ti.shape is None:
            arr = self.constant_value(tensor)
            return None if arr is None else tuple(arr.shape)
        return ti.shape

    def dtype(self, tensor: str) -> int:
        ti = self.info.get(tensor)
        if ti is not None and ti.dtype:
            return ti.dtype
        if tensor in self._init_proto or tensor in self._init_array:
            return self._init_dtype(tensor)
        return 0

    def rank(self, tensor: str) -> int | None:
        s = self.shape(tensor)
        return None if s is None else len(s)

    def set_info(self, tensor: str, dtype: int | None = None, shape: Sequence | None = None) -> None:
        ti = self.info.setdefault(tensor, TensorInfo())
        if dtype:
            ti.dtype = dtype
        if shape is not None:
            ti.shape = tuple(shape)

    def fresh_name(self, base: str) -> str:
        """A tensor/node name not used anywhere in the graph (subgraphs included)."""
        while True:
            name = f"{base}__{next(self._names)}"
            if (name not in self._producer and name not in self._g and name not in self.info
                    and not self.is_initializer(name) and name not in self._reserved and name not in self._readers):
                return name

    def reserve_names(self, names) -> None:
        """Names :meth:`fresh_name` must never return (e.g. defined inside subgraphs)."""
        self._reserved.update(names)

    # -- initializers -----------------------------------------------------------------------
    def is_initializer(self, tensor: str) -> bool:
        return tensor in self._init_proto or tensor in self._init_array

    @property
    def initializer_names(self) -> list[str]:
        names = list(self._init_proto)
        names += [n for n in self._init_array if n not in self._init_proto]
        return names

    def initializer(self, name: str) -> np.ndarray:
        """The value of an initializer (read-only while a pass runs). A weight left in its external
        data file (a large model's) comes memory-mapped, read-only, and is not kept: the mapping
        (and the memory its pages hold) goes when the caller drops the array."""
        if name not in self._init_array:
            if name not in self._init_proto:
                raise GraphError(f"{name!r} is not an initializer")

            proto = self._init_proto[name]
            if file_location(proto) is not None:
                return tensor_array(proto)
            arr = self._init_array[name] = tensor_array(proto)
            frozen = self._frozen
            if frozen is not None and arr.flags.writeable:  # decoded while a pass runs: read-only too
                arr.flags.writeable = False
                frozen.append(arr)
        return self._init_array[name]

    def initializer_uncached(self, name: str) -> np.ndarray:
        """The value of an initializer, decoded for the caller only (not kept in the graph): a
        reader that needs every weight once (a runtime session) does not double the graph's
        memory."""
        if name in self._init_array:
            return self._init_array[name]
        if name not in self._init_proto:
            raise GraphError(f"{name!r} is not an initializer")

        return tensor_array(self._init_proto[name])

    def drop_decoded(self) -> int:
        """Forget the arrays decoded from stored initializers (they are decoded again when asked
        for): once the weights live elsewhere (TensorFlow variables) the graph need not hold a
        second copy. Returns how many bytes were let go."""
        cached = [n for n in self._init_array if n in self._init_proto]
        freed = sum(int(self._init_array[n].nbytes) for n in cached)
        for n in cached:
            del self._init_array[n]
        return freed

    def initializer_nbytes(self, name: str) -> int:
        """Size of an initializer's data from its type and dims (nothing decoded)."""
        if name in self._init_array:
            return int(self._init_array[name].nbytes)
        t = self._init_proto[name]
        n = int(np.prod(t.dims, dtype=np.int64)) if len(t.dims) else 1
        try:
            return n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        except Exception:
            return 0

    @property
    def weight_bytes(self) -> int:
        return sum(self.initializer_nbytes(n) for n in self.initializer_names)

    def initializer_proto(self, name: str) -> onnx.TensorProto:
        if name in self._init_proto:
            return self._init_proto[name]
        return numpy_helper.from_array(self._init_array[name], name)

    def _init_dtype(self, name: str) -> int:
        if name in self._init_proto:
            return self._init_proto[name].data_type
        return helper.np_dtype_to_tensor_dtype(self._init_array[name].dtype)

    def set_initializer(self, name: str, value: np.ndarray) -> None:
        """Create or overwrite an initializer (overwriting also rewrites its recorded shape)."""
        if name in self._producer:
            raise GraphError(f"cannot make {name!r} an initializer: node {self._producer[name]!r} produces it")
        value = np.asarray(value)
        self._init_proto.pop(name, None)
        self._init_array[name] = value
        self.info[name] = TensorInfo(helper.np_dtype_to_tensor_dtype(value.dtype), tuple(value.shape))

    def add_initializer(self, base: str, value: np.ndarray) -> str:
        name = self.fresh_name(base)
        self.set_initializer(name, value)
        return name

    def remove_initializer(self, name: str) -> None:
        self._init_proto.pop(name, None)
        self._init_array.pop(name, None)
        self.info.pop(name, None)

    def constant_value(self, tensor: str) -> np.ndarray | None:
        """The value of a tensor known at conversion time (initializer not overridable as a graph
        input, or output of a Constant node), else None."""
        if self.is_initializer(tensor) and tensor not in self.inputs:
            return self.initializer(tensor)
        prod = self.producer(tensor)
        if prod is not None and prod.op_type == "Constant" and prod.domain in ("", "ai.onnx"):

            return constant_node_value(prod)
        return None

    # -- edits ------------------------------------------------------------------------------
    def add_node(
        self,
        op_type: str,
        inputs: Sequence[str],
        outputs: Sequence[str] | int = 1,
        *,
        name: str | None = None,
        attrs: dict[str, Any] | None = None,
        domain: str = "",
        created_by: str | None = None,
    ) -> Node:
        """Add a node; ``outputs`` may be a count, then fresh output names are made."""
        if name is None or name in self._g:
            name = self.fresh_name(name or op_type)
        if isinstance(outputs, int):
            outputs = [self.fresh_name(f"{name}_out") for _ in range(outputs)]
        node = Node(name, op_type, list(inputs), list(outputs), domain=domain, created_by=created_by)
        for k, v in (attrs or {}).items():
            if isinstance(v, onnx.AttributeProto):
                node.attrs[k] = v
            else:
                node.set_attr(k, v)
        self._insert(node)
        return node

    def _insert(self, node: Node) -> None:
        if node.name in self._g:
            raise GraphError(f"node name {node.name!r} already used")
        for t in node.outputs:
            if t and (t in self._producer or self.is_initializer(t) or t in self.inputs):
                other = self._producer.get(t, "graph input/initializer")
                raise GraphError(f"tensor {t!r} of node {node.name!r} already produced by {other!r}")
        self._g.add_node(node.name, node=node)
        for t in node.outputs:
            if t:
                self._producer[t] = node.name
        for t in [*node.inputs, *node.implicit_inputs]:
            self._link(t, node.name)
        # consumers added earlier than their producer (possible while loading)
        for t in node.outputs:
            for other in self._readers.get(t, {}):
                if not self._g.has_edge(node.name, other, key=t):
                    self._g.add_edge(node.name, other, key=t)

    def _link(self, tensor: str, consumer: str) -> None:
        if not tensor:
            return
        r = self._readers.setdefault(tensor, {})
        r[consumer] = r.get(consumer, 0) + 1
        prod = self._producer.get(tensor)
        if prod is not None and not self._g.has_edge(prod, consumer, key=tensor):
            self._g.add_edge(prod, consumer, key=tensor)

    def _unlink(self, tensor: str, consumer: str) -> None:
        if not tensor:
            return
        r = self._readers.get(tensor, {})
        r[consumer] = r.get(consumer, 1) - 1
        if r[consumer] > 0:
            return  # still used through another input slot
        del r[consumer]
        if not r:
            self._readers.pop(tensor, None)
        prod = self._producer.get(tensor)
        if prod is not None and self._g.has_edge(prod, consumer, key=tensor):
            self._g.remove_edge(prod, consumer, key=tensor)

    def remove_node(self, node: Node | str, *, force: bool = False) -> None:
        """Remove a node. Refused while one of its outputs is still used (unless ``force``)."""
        node = self.node(node) if isinstance(node, str) else node
        if not force:
            for t in node.outputs:
                if t and (self.is_graph_output(t) or any(c.name != node.name for c in self.consumers(t))):
                    raise GraphError(f"cannot remove node {node.name!r}: its output {t!r} is still used")
        self._drop(node)

    def _drop(self, node: Node) -> None:
        for t in node.outputs:
            if self._producer.get(t) == node.name:
                del self._producer[t]
        for t in [*node.inputs, *node.implicit_inputs]:
            if t and t in self._readers:
                self._readers[t].pop(node.name, None)
                if not self._readers[t]:
                    del self._readers[t]
        self._g.remove_node(node.name)

    def set_input(self, node: Node, index: int, tensor: str) -> None:
        old = node.inputs[index]
        node.inputs[index] = tensor
        self._unlink(old, node.name)
        self._link(tensor, node.name)

    def add_input(self, node: Node, tensor: str) -> None:
        node.inputs.append(tensor)
        self._link(tensor, node.name)

    def set_output(self, node: Node, index: int, tensor: str) -> None:
        """Rename output ``index`` of ``node``; consumers of the old name are *not* redirected."""
        old = node.outputs[index]
        if tensor in self._producer or self.is_initializer(tensor):
            raise GraphError(f"tensor {tensor!r} already has a producer")
        old_consumers = self._consumer_names(old) if old else []
        for c in set(old_consumers):
            while self._g.has_edge(node.name, c, key=old):
                self._g.remove_edge(node.name, c, key=old)
        if old:
            self._producer.pop(old, None)
        node.outputs[index] = tensor
        self._producer[tensor] = node.name
        for c in self._readers.get(tensor, {}):
            self._g.add_edge(node.name, c, key=tensor)

    def replace_all_uses(self, old: str, new: str, *, include_graph_outputs: bool = True) -> None:
        """Make every reader of ``old`` read ``new`` instead (subgraph references too)."""
        if old == new:
            return
        for c in self.consumers(old):
            for j, t in enumerate(c.inputs):
                if t == old:
                    self.set_input(c, j, new)
            if old in c.implicit_inputs:

                rename_in_subgraphs(c, old, new)
                c.implicit_inputs = [new if t == old else t for t in c.implicit_inputs]
                self._unlink(old, c.name)
                self._link(new, c.name)
        if include_graph_outputs and old in self.outputs:
            raise GraphError(
                f"cannot redirect graph output {old!r}; rename the producer's output with set_output instead"
            )

    def rename_graph_output(self, old: str, new: str) -> None:
        self.outputs = [new if t == old else t for t in self.outputs]
        if old in self.io_perms:
            self.io_perms[new] = self.io_perms.pop(old)

    # -- layout helpers used by passes ---------------------------------------------------
    def add_transpose(self, tensor: str, perm: Sequence[int], *, created_by: str | None = None, output: str | None = None) -> str:
        """Insert ``Transpose(tensor, perm)`` and return its output name (shape/dtype recorded)."""
        perm = tuple(int(a) for a in perm)
        out = output or self.fresh_name(f"{tensor}_T")
        self.add_node("Transpose", [tensor], [out], attrs={"perm": list(perm)}, created_by=created_by)
        shape = self.shape(tensor)
        self.set_info(out, self.dtype(tensor), None if shape is None else P.apply_to_shape(shape, perm))
        return out

    def transposed_constant(self, tensor: str, perm: Sequence[int]) -> str:
        """A new initializer holding ``transpose(value(tensor), perm)``."""
        value = self.constant_value(tensor)
        if value is None:
            raise GraphError(f"{tensor!r} is not a constant")
        return self.add_initializer(f"{tensor}_T", np.ascontiguousarray(np.transpose(value, perm)))

    def prune(self) -> int:
        """Remove nodes whose outputs reach no graph output, and unused initializers. Returns count."""
        live = set()
        stack = [self._producer[t] for t in self.outputs if t in self._producer]
        while stack:
            n = stack.pop()
            if n in live:
                continue
            live.add(n)
            stack.extend(self._g.predecessors(n))
        dead = [n for n in self._g.nodes if n not in live]
        for n in dead:
            self._drop(self.node(n))
        used = set(self.outputs) | set(self.inputs)
        for _, d in self._g.nodes(data=True):
            used.update(d["node"].inputs)
            used.update(d["node"].implicit_inputs)
        for name in self.initializer_names:
            if name not in used:
                self.remove_initializer(name)
        return len(dead)

    # ONNX shape inference runs on the lowered graph, which :mod:`graph_convert.ir.onnx_io` builds;
    # that module installs it here when imported (``graph_convert.ir`` always imports it), so the
    # graph itself imports no lowering and the two modules form no import loop
    infer_shapes: Callable[[Graph], None] | None = None

    def refresh_shapes(self) -> None:
        """Fill in shapes that became inferable (ONNX shape inference; known facts are kept)."""
        self.infer_shapes(self)

    # -- change detection (a pass's ``changed`` flag is checked against these) -------------
    def snapshot(self) -> GraphSnapshot:
        """What :meth:`changes_since` compares: everything that defines the computation.

        Nodes (name, op type, domain, inputs, outputs, attributes, layout marks), graph inputs,
        outputs and their layouts, and initializers (by the stored object; a replaced one is then
        compared by value). Left out on purpose: shape/dtype facts (``info``; passes may refine
        them, e.g. :meth:`refresh_shapes`, without changing what is computed), ``created_by``,
        doc strings and the node order among independent nodes. Initializer *contents* edited in
        place are not compared: :meth:`freeze_initializers` makes them read-only while a pass runs.
        Costs one walk over the nodes (attributes serialized, except a large tensor attribute, e.g.
        a Constant holding a weight, which is keyed by its object and size), nothing per weight byte."""
        nodes = {}
        for name, d in self._g.nodes(data=True):
            n = d["node"]
            nodes[name] = (n.op_type, n.domain, tuple(n.inputs), tuple(n.outputs), tuple(n.implicit_inputs),
                           tuple(sorted((k, attr_key(a)) for k, a in n.attrs.items())),
                           perms_key(n.in_perms), perms_key(n.out_perms))
        inits = {k: self._init_proto.get(k, self._init_array.get(k)) for k in self.initializer_names}
        return GraphSnapshot(nodes, tuple(self.inputs), tuple(self.outputs),
                             tuple(sorted((k, tuple(v)) for k, v in self.io_perms.items())), inits)

    def changes_since(self, snap: GraphSnapshot) -> str | None:
        """The first difference between the graph now and ``snap``, in words; None when equal."""
        return first_difference(snap, self.snapshot())

    def freeze_initializers(self) -> tuple:
        """Make every initializer array read-only (also those decoded until the matching
        :meth:`thaw_initializers`), so an in-place edit, which :meth:`changes_since` cannot see,
        fails where it happens. Returns the token to pass to :meth:`thaw_initializers` (freezes
        nest: a pass may run a pass manager of its own)."""
        frozen = [a for a in self._init_array.values() if a.flags.writeable]
        for a in frozen:
            a.flags.writeable = False
        token = (self._frozen, frozen, len(frozen))
        self._frozen = frozen
        return token

    def thaw_initializers(self, token: tuple) -> None:
        """Undo :meth:`freeze_initializers`: the arrays it made read-only are writable again; those
        decoded meanwhile stay read-only while an outer freeze is still on."""
        outer, frozen, n = token
        for i, a in enumerate(frozen):
            if outer is not None and i >= n:
                outer.append(a)
                continue
            try:
                a.flags.writeable = True
            except ValueError:  # a view of read-only memory: it was never ours to unlock
                pass
        self._frozen = outer

    # -- checks -----------------------------------------------------------------------------
    def check(self) -> None:
        """Cheap structural check: raises GraphError naming the first broken node/tensor."""
        if not nx.is_directed_acyclic_graph(self._g):
            cycle = nx.find_cycle(self._g)
            raise GraphError(f"graph has a cycle through nodes {[e[0] for e in cycle]}")
        known = set(self.inputs) | set(self.initializer_names)
        for n, d in self._g.nodes(data=True):
            node = d["node"]
            for t in node.outputs:
                if t and self._producer.get(t) != n:
                    raise GraphError(f"node {n!r}: output {t!r} not registered as produced by it")
            for t in node.inputs:
                if not t:
                    continue
                prod = self._producer.get(t)
                if prod is None and t not in known and not self.model_meta.get("outer_scope_ok"):
                    raise GraphError(f"node {n!r} ({node.op_type}): input {t!r} has no producer")
                if prod is not None and not self._g.has_edge(prod, n, key=t):
                    raise GraphError(f"node {n!r}: missing edge for input {t!r}")
        for t in self.outputs:
            if t not in self._producer and t not in known:
                raise GraphError(f"graph output {t!r} has no producer")

    def copy(self) -> "Graph":
        """An independent graph sharing the (never edited in place) weights and attribute protos:
        a copy costs the nodes, not the weights (a Constant node's tensor is not duplicated)."""
        g = Graph.__new__(Graph)
        g._g = self._g.copy()
        for n in g._g.nodes:
            g._g.nodes[n]["node"] = _copy_node(self._g.nodes[n]["node"])
        g._producer = dict(self._producer)
        g._readers = {k: dict(v) for k, v in self._readers.items()}
        g.inputs = list(self.inputs)
        g.outputs = list(self.outputs)
        g.info = {k: TensorInfo(v.dtype, v.shape) for k, v in self.info.items()}
        g._init_proto = dict(self._init_proto)
        g._init_array = dict(self._init_array)
        g.io_perms = dict(self.io_perms)
        g.model_meta = dict(self.model_meta)
        g._names = itertools.count(next(self._names))
        g._reserved = set(self._reserved)
        g._frozen = None
        return g


def _copy_node(node: Node) -> Node:
    """A copy of ``node`` whose lists and dicts are its own; attribute protos are shared (an edit
    replaces an attribute, :meth:`Node.set_attr`; subgraph renames copy on write)."""
    import copy as _copy

    n = _copy.copy(node)
    n.inputs, n.outputs, n.attrs = list(node.inputs), list(node.outputs), dict(node.attrs)
    n.implicit_inputs = list(node.implicit_inputs)
    n.in_perms = None if node.in_perms is None else list(node.in_perms)
    n.out_perms = None if node.out_perms is None else list(node.out_perms)
    for extra in ("onnx_present", "onnx_extra", "onnx_metadata"):  # set by the loader
        if extra in vars(node):
            setattr(n, extra, _copy.copy(getattr(node, extra)))
    return n


def node_summary(graph: Graph) -> dict[str, int]:
    counts: dict[str, int] = {}
    for n in graph.nodes:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts


def iter_constant_inputs(graph: Graph, node: Node) -> Iterable[tuple[int, np.ndarray]]:
    for j, t in enumerate(node.inputs):
        if t:
            v = graph.constant_value(t)
            if v is not None:
                yield j, v
