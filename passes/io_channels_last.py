"""Make image-like graph inputs/outputs channels-last (what TFLite users feed and read).

An input ``x`` becomes N...C and is followed by a Transpose back to the source layout; an output
gets a Transpose to N...C in front of it. The transpose pusher then cancels these against the
ones ``to_channels_last`` inserted. ``keep_io_layout`` turns this off. Image-like means rank 4 or
5, or rank 3 connected to a layout-marked node through layout-agnostic ops (a Conv1d net).
"""
from __future__ import annotations

from graph_convert.ir import perm as P
from graph_convert.ir import Graph
from graph_convert.pass_manager import Pass, PassContext, PassResult

# ops with a transpose handler that change the rank or the layout itself: the walk stops there
_RESHAPING = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose"})


def _next_to_marked(graph: Graph, tensor: str, downstream: bool, handlers) -> bool:
    """Whether ``tensor`` is connected to a layout-marked node through Transposes and
    layout-agnostic ops only (a Conv1d front-end, a Conv1d -> Relu -> residual Add output): ops
    the conversion's transpose handlers move a Transpose through (a plugin's included)."""
    frontier, seen = [tensor], set()
    while frontier:
        t = frontier.pop()
        if t in seen:
            continue
        seen.add(t)
        nodes = graph.consumers(t) if downstream else [n for n in [graph.producer(t)] if n is not None]
        for n in nodes:
            if n.is_layout_marked:
                return True
            if n.op_type == "Transpose" or (n.op_type in handlers and n.op_type not in _RESHAPING):
                # only along tensors of the same rank: a reduction over C leaves no channel axis
                nxt = n.outputs if downstream else n.inputs
                frontier.extend(u for u in nxt if u and graph.rank(u) == graph.rank(tensor))
    return False


def image_like(graph: Graph, tensor: str, downstream: bool, handlers) -> bool:
    rank = graph.rank(tensor)
    if rank in (4, 5):
        return True
    return rank == 3 and _next_to_marked(graph, tensor, downstream, handlers)


class IoChannelsLast(Pass):
    name = "io_channels_last"
    phase = "layout"
    after = ("to_channels_last",)

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        if ctx.options.get("keep_io_layout"):
            return PassResult(False)
        changed = []
        for x in graph.inputs:
            if x in graph.io_perms or x in graph.outputs or not image_like(graph, x, True, ctx.registry.transpose_handlers):
                continue  # (an input passed straight through to an output keeps its layout)
            rank = graph.rank(x)
            cl = P.channels_last(rank)
            users = graph.consumers(x)
            inner = graph.fresh_name(f"{x}_nchw")
            shape = graph.shape(x)
            graph.set_info(inner, graph.dtype(x), shape)
            graph.set_info(x, shape=P.apply_to_shape(shape, cl))
            graph.add_node("Transpose", [x], [inner], attrs={"perm": list(P.channels_first(rank))}, created_by=self.name)
            for u in users:
                for j, t in enumerate(u.inputs):
                    if t == x:
                        graph.set_input(u, j, inner)
            graph.io_perms[x] = cl
            changed.append(x)
        for y in list(graph.outputs):
            prod = graph.producer(y)
            if y in graph.io_perms or prod is None or not image_like(graph, y, False, ctx.registry.transpose_handlers):
                continue
            rank = graph.rank(y)
            cl = P.channels_last(rank)
            inner = graph.fresh_name(f"{y}_nchw")
            users = graph.consumers(y)
            graph.set_output(prod, prod.outputs.index(y), inner)
            shape = graph.shape(y)
            graph.set_info(inner, graph.dtype(y), shape)
            graph.add_node("Transpose", [inner], [y], attrs={"perm": list(cl)}, created_by=self.name)
            graph.set_info(y, shape=P.apply_to_shape(shape, cl))
            for u in users:
                for j, t in enumerate(u.inputs):
                    if t == y:
                        graph.set_input(u, j, inner)
            graph.io_perms[y] = cl
            changed.append(y)
        return PassResult(bool(changed), {"channels_last": changed} if changed else {})


PASS = IoChannelsLast
