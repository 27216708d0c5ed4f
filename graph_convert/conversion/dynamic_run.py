"""The dynamic-dims stages of a conversion: rewrite at two size assignments, compare them into a
:class:`~graph_convert.conversion.dynamic.DimView`, check the TF function and the .tflite at every further
size, and say in report.json which size got which verdict.

A free dim is advertised (``None`` in the SavedModel signature, ``-1`` in the .tflite's
``shape_signature``) only when it was checked at :data:`~graph_convert.conversion.dims.MIN_CHECKED` sizes or
more; a size the source model itself cannot take is listed as such. A source whose free dims
cannot be kept: its batch alone stays static at 1 (with a warning, as before); any other free dim
has no size to fall back to, so the run stops with one line naming the inputs, the dims, what
depends on them and the ``--input-shape`` that fixes them.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import onnx

from graph_convert.conversion import dims as DM
from graph_convert.conversion import dynamic as D
from graph_convert.conversion import shape_program as SP
from graph_convert.errors import ConvertError, PassError, UnsupportedOpsError, VerificationError
from graph_convert.checks.equivalence import Draw, Verifier, make_draws


def sizes_text(sizes: dict[str, int], free) -> str:
    return ", ".join(f"{n}={sizes[n]}" for n in free)


def rewrite_dynamic(c, rewrite: Callable) -> None:
    """Fill ``c.rewritten`` and ``c.view`` (or fall back / refuse, see the module docstring)."""
    dims = c.dims
    free = [n for n, d in dims.items() if d.free]
    plan = DM.assignments(dims)
    c.size_plan = plan

    def at(sizes: dict[str, int]):
        m = DM.with_shapes(c.model, DM.input_shapes(c.model, dims, sizes))
        try:
            return rewrite(c, m, None)
        except (VerificationError, PassError, UnsupportedOpsError):
            raise
        except ConvertError as e:  # the source itself fails at these sizes
            raise D.DynamicDimsError(f"at {sizes_text(sizes, free)}: {e}") from None

    def source_weights(min_size: int):
        from graph_convert.ir.onnx_io import tensor_array

        for t in c.model.graph.initializer:
            n = int(np.prod(t.dims)) if t.dims else 1
            if n >= min_size and t.data_type == onnx.TensorProto.FLOAT:
                yield t.name, np.asarray(tensor_array(t))

    try:
        c.rewritten = at(plan[0])
        second = at(plan[1])
        sources = SP.Sources(c.model, lambda k: DM.with_shapes(c.model, DM.input_shapes(c.model, dims, plan[k])))
        c.view = D.dim_view(c.graph, second.graph, (sizes_text(plan[0], free), sizes_text(plan[1], free)), source_weights, sources)
    except D.DynamicDimsError as e:
        asked = [n for n in free if dims[n].requested != "symbolic dim in the source model"]
        others = [n for n in free if dims[n].role != "batch"]
        if asked or others:
            need = asked or others
            raise ConvertError(f"{DM.describe(dims, need)} cannot be kept dynamic: {e}; fix "
                               f"{'it' if len(need) == 1 and len(dims[need[0]].axes) == 1 else 'them'} with "
                               f"{DM.fix_hint(c.model, dims, free)}") from None
        c.say(f"warning: the batch stays static (1): {e}")
        for n in free:
            DM.fix_dim(dims[n], 1, "fallback (the batch could not be kept)")
        if c.user_feeds is not None:  # the user's arrays must fit the static batch now
            DM.sizes_of_arrays(dims, {x: np.shape(v) for x, v in c.user_feeds.items()}, "--inputs")
        c.model = DM.with_shapes(c.model, DM.input_shapes(c.model, dims, {n: d.fixed for n, d in dims.items()}))
        c.rewritten, c.view = rewrite(c, c.model, c.user_feeds), None
        c.dyn_info = report_dims(c, reason=str(e))
        return
    c.dyn_info = report_dims(c)
    c.dyn_info.update(converted_at=plan[:2], **c.view.stats, checks=[])
    c.dyn_info["checks"].append({"sizes": plan[0], "converted": True, "verdict": None})
    c.other_sizes = [(plan[1], second.verifier, {"sizes": plan[1], "converted": True, "verdict": None})]
    for sizes in plan[2:]:
        _add_size(c, sizes, make_draws(c.source_graph, c.options.seed, DM.input_shapes(c.model, dims, sizes)), {})
    if c.user_feeds is not None:  # the user's arrays: one more size, at their own shapes, besides the generated ones
        sizes = {n: c.user_sizes.get(n, plan[0][n]) for n in plan[0]}
        _add_size(c, sizes, [Draw("user (--inputs)", dict(c.user_feeds))], {"inputs": "--inputs"}, refuse=True)
    c.dyn_info["checks"][1:1] = [c.other_sizes[0][2]]


def _add_size(c, sizes: dict[str, int], draws: list, extra: dict[str, Any], refuse: bool = False) -> None:
    """One more size to check at, with its ONNX Runtime reference on ``draws``; a size the source
    cannot take is listed as such (``refuse``: the user's own inputs, which it must take)."""
    entry: dict[str, Any] = {"sizes": sizes, "converted": False, **extra, "verdict": None}
    try:
        ver = Verifier(DM.with_shapes(c.model, DM.input_shapes(c.model, c.dims, sizes)), draws, c.options.atol)
    except ConvertError as e:
        if refuse:
            raise ConvertError(f"--inputs: {e}") from None
        entry["verdict"] = f"the source model fails in ONNX Runtime at these sizes: {e}"
        c.dyn_info["checks"].append(entry)
        return
    c.dyn_info["checks"].append(entry)
    c.other_sizes.append((sizes, ver, entry))


def check_other_sizes(c, key: str, label: str, go, steps=None) -> None:
    """Run ``go`` (the TF function or the .tflite) at every other size; a mismatch stops the run.
    ``steps``: the int8 rule per output, as for the first size."""
    from graph_convert.conversion.report import figures_dict

    if c.dyn_info is None or "checks" not in c.dyn_info:
        return
    free = [n for n, d in c.dims.items() if d.free]
    c.dyn_info["checks"][0][key] = figures_dict(c.figures[key])
    for sizes, ver, entry in c.other_sizes:
        where = f"{label} at {sizes_text(sizes, free)}" + (" on the --inputs arrays" if entry.get("inputs") else "")
        try:
            entry[key] = figures_dict(ver.check(go, where, steps))
        except VerificationError as e:
            raise VerificationError(f"{e} (dynamic dims {', '.join(free)}: the conversion does not hold at these sizes; "
                                    f"fix them with {DM.fix_hint(c.model, c.dims, free)})", e.stage, e.culprit) from None
        except Exception as e:  # TF or LiteRT cannot run the file at this size: the dim cannot be kept
            raise VerificationError(f"{where}: does not run ({type(e).__name__}: "
                                    f"{str(e).splitlines()[0][:300] if str(e) else ''}); fix the dims with "
                                    f"{DM.fix_hint(c.model, c.dims, free)}", key) from None


def finish_checks(c, stages: list[str]) -> None:
    """Verdicts per size, and each free dim's checked sizes: fewer than MIN_CHECKED is refused."""
    if c.dyn_info is None or "checks" not in c.dyn_info:
        return
    for e in c.dyn_info["checks"]:
        if e["verdict"] is None:
            e["verdict"] = "ok" if all(k in e for k in stages) else "not run"
    for n, d in c.dims.items():
        if not d.free:
            continue
        ok = sorted({e["sizes"][n] for e in c.dyn_info["checks"] if e["verdict"] == "ok"})
        c.dyn_info["dims"][n]["checked_sizes"] = ok
        if len(ok) < DM.MIN_CHECKED:
            fails = sorted({e["sizes"][n] for e in c.dyn_info["checks"] if e["verdict"] != "ok"})
            raise ConvertError(f"{DM.describe(c.dims, [n])}: checked at only {len(ok)} size(s) ({', '.join(map(str, ok))}); "
                               f"the source model fails at {', '.join(map(str, fails))}; give the sizes it takes with "
                               f"--dim {n}=MIN..MAX/MULTIPLE, or fix it with {DM.fix_hint(c.model, c.dims, [n])}")


def report_dims(c, reason: str | None = None) -> dict[str, Any]:
    """report.json ``dynamic``: every named input dim, free or fixed, and why."""
    out: dict[str, Any] = {"dims": {}}
    for n, d in c.dims.items():
        e: dict[str, Any] = {"axes": [[x, a] for x, a in d.axes], "role": d.role.rstrip("2")}
        if d.free:
            e.update(kept=True, requested=d.requested, range=d.range_text())
        else:
            e.update(kept=False, fixed=d.fixed, fixed_by=d.fixed_by)
        out["dims"][n] = e
    if reason is not None:
        out["reason"] = reason
    return out
