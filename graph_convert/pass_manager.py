"""Pass framework: the ``Pass`` base class, the plugin ``Registry`` and the ``PassManager``.

Built-in passes (top-level ``passes`` package) and third-party plugins use exactly this API. A
plugin is a module with ``register(registry)``; it is found through the ``graph_convert.plugins``
entry-point group or named explicitly (``--plugin module`` / ``plugins=[...]``). Entries added
later win, so a plugin can replace a built-in pass, transpose handler or TF emitter.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import networkx as nx

from graph_convert.errors import ConvertError, PassError
from graph_convert.plugin_import import import_plugin
from graph_convert.ir import Graph, GraphError

PHASES = ("canonicalize", "layout", "optimize", "cleanup")
MAX_FIXED_POINT_ROUNDS = 50


@dataclass
class PassResult:
    """What a pass did. ``changed`` must be computed, never hard-coded: ``True`` or ``False``
    (a NumPy bool is taken as one); ``details`` a dict for the report. Anything else (the
    README skeleton's ``changed = ...`` left in, a count, None) is refused here, so the pass
    that returned it is named (exit 4) instead of being recorded as having changed the graph."""

    changed: bool
    details: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        problem = result_problem(self)
        if problem:
            raise TypeError(problem)
        self.changed = bool(self.changed)


def result_problem(result: PassResult) -> str | None:
    """Why ``result`` is not a valid PassResult (None when it is)."""
    import numpy as np

    if not isinstance(result.changed, (bool, np.bool_)):
        return f"PassResult.changed must be True or False, got {result.changed!r} ({type(result.changed).__name__})"
    if not isinstance(result.details, dict):
        return f"PassResult.details must be a dict, got {type(result.details).__name__}"
    return None


@dataclass
class PassContext:
    """What a pass may look at besides the graph: options and the registry's tables."""

    registry: "Registry"
    options: dict[str, Any] = field(default_factory=dict)


class Pass:
    """A graph rewrite. Subclasses set ``name`` and ``phase`` and implement ``run``.

    ``before``/``after`` name passes this one must precede/follow; passes sharing a ``group`` are
    repeated together until none of them changes the graph (a fixed-point group).
    """

    name: ClassVar[str] = ""
    phase: ClassVar[str] = "optimize"
    before: ClassVar[tuple[str, ...]] = ()
    after: ClassVar[tuple[str, ...]] = ()
    group: ClassVar[str | None] = None
    # the ConvertOptions flag this pass does nothing without (None: it always runs); the pass
    # itself reads it from ``ctx.options``, and ``graph-convert passes`` shows it
    opt_in: ClassVar[str | None] = None

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class PassRecord:
    name: str
    phase: str
    seconds: float
    changed: bool
    round: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    source: str = ""

    def as_dict(self) -> dict[str, Any]:
        d = {"name": self.name, "phase": self.phase, "seconds": round(self.seconds, 6), "changed": self.changed, "source": self.source}
        if self.round:
            d["round"] = self.round
        if self.details:
            d["details"] = self.details
        return d


TransposeHandler = Callable[..., bool]
Emitter = Callable[..., Any]


class Registry:
    """Tables that passes, the transpose pusher and the TF emitter consult; plugins fill them."""

    def __init__(self) -> None:
        self.passes: dict[str, tuple[type[Pass], str]] = {}
        self.transpose_handlers: dict[str, TransposeHandler] = {}
        self.emitters: dict[str, Emitter] = {}
        self.layout_aware: set[str] = set()  # op types whose emitter reads the layout marks itself
        self.sources: list[str] = []
        self._current = "api"

    def add_pass(self, cls: type[Pass]) -> type[Pass]:
        if not cls.name:
            raise ConvertError(f"plugin {self._current!r}: pass class {cls.__name__} has no name")
        if cls.phase not in PHASES:
            raise ConvertError(f"plugin {self._current!r}: pass {cls.name!r} has unknown phase {cls.phase!r} (phases: {', '.join(PHASES)})")
        self.passes[cls.name] = (cls, self._current)
        return cls

    def add_transpose_handler(self, op_type: str, handler: TransposeHandler) -> None:
        self.transpose_handlers[op_type] = handler

    def add_emitter(self, op_type: str, fn: Emitter, *, layout_aware: bool = False) -> None:
        """``fn(node, inputs, ctx)``. A layout-aware emitter is handed a layout-marked node's
        tensors as they are stored (channels-last) and reads ``node.in_perm``/``out_perm``; any
        other emitter (the default, also when it replaces a layout-aware built-in) sees the
        source layout."""
        self.emitters[op_type] = fn
        if layout_aware:
            self.layout_aware.add(op_type)
        else:
            self.layout_aware.discard(op_type)

    def load(self, module_name: str, register: Callable[["Registry"], None] | None = None) -> None:
        """Run one plugin's ``register`` function, recording where entries came from.

        Whatever goes wrong in a plugin (its import: ImportError, SyntaxError, anything its top
        level raises; or its ``register``) becomes one ConvertError line naming the plugin, with
        the original exception chained for a traceback on request."""
        if register is None:
            try:
                module = import_plugin(module_name)
            except ConvertError:
                raise
            except (Exception, SystemExit) as e:
                raise ConvertError(f"plugin {module_name!r}: cannot import it ({one_line(e)})") from e
            register = getattr(module, "register", None)
            if not callable(register):
                raise ConvertError(f"plugin {module_name!r}: module has no register(registry) function")
        prev, self._current = self._current, module_name
        try:
            register(self)
        except ConvertError as e:
            if str(e).startswith(f"plugin {module_name!r}"):
                raise  # the registry's own refusals already name the plugin
            raise ConvertError(f"plugin {module_name!r}: register() raised {one_line(e)}") from e
        except (Exception, SystemExit) as e:
            raise ConvertError(f"plugin {module_name!r}: register() raised {one_line(e)}") from e
        finally:
            self._current = prev
        self.sources.append(module_name)


def one_line(e: BaseException) -> str:
    """``Type: message`` on one line (a SyntaxError's message already names the file and line)."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:300] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class PassManager:
    """Orders passes (phase order + before/after constraints), runs them, records timing."""

    def __init__(self, registry: Registry, *, disabled: tuple[str, ...] = (), options: dict[str, Any] | None = None):
        unknown = [d for d in disabled if d not in registry.passes]
        if unknown:
            raise ConvertError(f"--disable-pass: unknown pass {unknown[0]!r} (known: {', '.join(sorted(registry.passes))})")
        self.registry = registry
        self.ctx = PassContext(registry, dict(options or {}))
        self.specs = {n: c for n, (c, _) in registry.passes.items() if n not in disabled}
        self.order = self._order()

    def _order(self) -> list[str]:
        dg = nx.DiGraph()
        names = list(self.specs)
        dg.add_nodes_from(names)
        rank = {n: PHASES.index(self.specs[n].phase) for n in names}
        for a in names:
            for b in names:
                if rank[a] < rank[b]:
                    dg.add_edge(a, b, why="phase order")
        for n, cls in self.specs.items():
            for other in cls.before:
                if other in self.specs:
                    dg.add_edge(n, other, why=f"{n}.before")
            for other in cls.after:
                if other in self.specs:
                    dg.add_edge(other, n, why=f"{n}.after")
        try:
            cycle = nx.find_cycle(dg)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            chain = " -> ".join([e[0] for e in cycle] + [cycle[0][0]])
            reasons = "; ".join(f"{u}->{v}: {dg.edges[u, v]['why']}" for u, v in cycle)
            raise PassError(cycle[0][0], [], f"unsatisfiable ordering constraints: {chain} ({reasons})")
        index = {n: i for i, n in enumerate(names)}
        order = list(nx.lexicographical_topological_sort(dg, key=index.__getitem__))
        # gather each fixed-point group at the position of its first member
        out: list[str] = []
        for n in order:
            grp = self.specs[n].group
            if n in out:
                continue
            if grp is None:
                out.append(n)
            else:
                out.extend(m for m in order if self.specs[m].group == grp and m not in out)
        # gathering a group must not break any constraint (phase order included)
        pos = {n: i for i, n in enumerate(out)}
        for u, v, data in dg.edges(data=True):
            if pos[u] > pos[v]:
                grp = self.specs[u].group or self.specs[v].group
                raise PassError(v, [], f"fixed-point group {grp!r} cannot run as one step: {u!r} must run before {v!r} ({data['why']})")
        return out

    def steps(self) -> list[list[str]]:
        """The pipeline as steps: a single pass, or a fixed-point group run to convergence."""
        steps: list[list[str]] = []
        for n in self.order:
            grp = self.specs[n].group
            if grp is not None and steps and self.specs[steps[-1][0]].group == grp:
                steps[-1].append(n)
            else:
                steps.append([n])
        return steps

    def run(self, graph: Graph, *, check_each: Callable[[Graph, str], None] | None = None,
            check_phase: Callable[[Graph, str], None] | None = None) -> list[PassRecord]:
        """Run the pipeline. ``check_each(graph, pass_name)`` runs after every changed pass,
        ``check_phase(graph, phase)`` at the end of every phase in which something changed."""
        records: list[PassRecord] = []
        ran: list[str] = []
        steps = self.steps()
        phase_changed = False
        for i, step in enumerate(steps):
            rounds = 0
            while True:
                rounds += 1
                any_changed = False
                for name in step:
                    rec = self._run_one(graph, name, ran, rounds if len(step) > 1 or self.specs[name].group else 0)
                    records.append(rec)
                    ran.append(name)
                    if rec.changed:
                        any_changed = phase_changed = True
                        if check_each is not None:
                            check_each(graph, name)
                if self.specs[step[0]].group is None or not any_changed:
                    break
                if rounds >= MAX_FIXED_POINT_ROUNDS:
                    raise PassError(step[0], list(dict.fromkeys(ran)), f"group {self.specs[step[0]].group!r} did not reach a fixed point in {rounds} rounds")
            phase = self.specs[step[0]].phase
            next_phase = self.specs[steps[i + 1][0]].phase if i + 1 < len(steps) else None
            if phase != next_phase:
                if phase_changed and check_phase is not None:
                    check_phase(graph, phase)
                phase_changed = False
        return records

    def _run_one(self, graph: Graph, name: str, ran: list[str], round_: int) -> PassRecord:
        cls = self.specs[name]
        # ``changed`` drives fixed points and checks; a pass that edits and says False would get a
        # later, innocent pass blamed. The snapshot costs one walk over the nodes; weights are
        # read-only while the pass runs, so an in-place edit fails inside the pass that made it.
        before = graph.snapshot()
        frozen = graph.freeze_initializers()
        t0 = time.perf_counter()
        try:
            result = cls().run(graph, self.ctx)
            seconds = time.perf_counter() - t0
        except (ConvertError, PassError):
            raise
        except ValueError as e:
            if "read-only" in str(e):
                raise PassError(name, list(dict.fromkeys(ran)), f"edited an initializer in place ({e}); "
                                "use graph.set_initializer() to change a weight") from e
            raise PassError(name, list(dict.fromkeys(ran)), f"{type(e).__name__}: {e}") from e
        except Exception as e:
            raise PassError(name, list(dict.fromkeys(ran)), f"{type(e).__name__}: {e}") from e
        finally:
            graph.thaw_initializers(frozen)
        if not isinstance(result, PassResult):
            raise PassError(name, list(dict.fromkeys(ran)), f"run() returned {type(result).__name__}, expected PassResult")
        problem = result_problem(result)  # fields set after construction are checked too
        if problem:
            raise PassError(name, list(dict.fromkeys(ran)), f"run() returned a bad result: {problem}")
        if not result.changed:
            what = graph.changes_since(before)
            if what is not None:
                raise PassError(name, list(dict.fromkeys(ran)), f"reported changed=False but changed the graph: {what}")
        if result.changed:
            try:
                graph.check()
            except GraphError as e:
                raise PassError(name, list(dict.fromkeys(ran)), f"left the graph broken: {e}") from None
        return PassRecord(name, cls.phase, seconds, bool(result.changed), round_, result.details, self.registry.passes[name][1])
