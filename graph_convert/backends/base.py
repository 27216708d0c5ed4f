"""The back-end seam: what a back end is.

A back end makes the output files of a conversion. It is one object (:class:`Backend`) that says
  - ``name``: the ``--backend`` value that picks it;
  - ``from_rewritten``: whether it builds from the rewritten graph (then the passes and their ONNX
    Runtime proof run first, and ``model.rewritten.onnx`` is written) or from the source ONNX as it is;
  - ``unsupported(c, graph)``: what of ``graph`` it cannot take, ``[(op_type, node name), ...]`` (asked of
    the source before any work: ``--backend auto`` moves on to the next back end, otherwise the run
    stops with exit 2; asked again of the rewritten graph, where a pass may have made a new op);
  - ``prepare(c)``: its own checks before any work (an interpreter to find, a size to refuse);
  - ``stages``: the :class:`Stage` s that build its artifacts into ``c.work`` (each path in
    ``c.paths``), run every artifact on the conversion's input draws and judge it against ONNX
    Runtime (``c.check(key, label, run)``: figures into ``c.figures``, a VerificationError on a
    mismatch), and fill its part of ``c.report`` (report.json). Nothing is moved into place unless
    every stage ended without an error.
The conversion (:mod:`graph_convert.conversion.pipeline`) runs the shared stages, then the chosen
back end's; it knows no back end by name. The table of back ends is :mod:`graph_convert.backends`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # annotations only: importing the seam (options.py does) must not load onnx/networkx,
    from graph_convert.ir import Graph  # so an argument error is answered at once

# a back end's stages are handed the conversion's context, graph_convert.conversion.pipeline.Conversion
# (not imported here: the conversion imports the back ends, never the reverse)
Conversion = Any


def always(c: Conversion) -> bool:
    return True


@dataclass(frozen=True)
class Stage:
    """One step of a conversion: ``name`` is shown while it runs and in its error messages, ``key``
    is its entry in report.json's ``timings_seconds``, ``run`` does it, ``when`` says whether it runs."""

    name: str
    key: str
    run: Callable[[Conversion], None]
    when: Callable[[Conversion], bool] = always


@dataclass(frozen=True)
class Backend:
    """A back end (see the module docstring for what each field promises)."""

    name: str
    stages: tuple[Stage, ...]
    from_rewritten: bool = True
    label: str = ""  # how messages name it ("our emitter"); its name when empty
    unsupported: Callable[[Conversion, Graph], list[tuple[str, str]]] = lambda c, graph: []
    prepare: Callable[[Conversion], None] = lambda c: None
    summary: str = ""  # one line for ``--help`` and the README

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", self.name)
