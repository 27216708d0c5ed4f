"""The int8-full variant: strict int8 or float fallback, --float-ops kept float, --quant-debug per-layer rows."""
from __future__ import annotations

from typing import Any

from graph_convert.errors import ConvertError, VerificationError
from graph_convert.quantize.converter import convert_model, make_converter
from graph_convert.quantize.data import count_runs
from graph_convert.quantize.debugger import Debugger
from graph_convert.quantize.metrics import lite_figures
from graph_convert.quantize.scopes import NodeNames
from graph_convert.quantize.tflite_info import check_scales, denylist_for, float_ops_in, signature_order

DEBUG_MAX_SAMPLES = 100  # per-layer statistics are averaged over at most this many samples
WORST_LAYERS = 10


def full_integer(plan, sm_dir, representative, eval_rw, reference, graph, in_names, out_names, names: NodeNames):
    """int8-full bytes plus report entries (float fallback ops, per-layer debug, float-ops effect)."""
    opts = plan.options
    extra: dict[str, Any] = {}
    if not opts.float_ops:
        try:
            data = convert_model(make_converter(sm_dir, "int8-full", representative, opts.int8_io, strict_int8=True), "int8-full")
        except ConvertError:
            # an op without an int8 kernel: let it run float between QUANTIZE/DEQUANTIZE (reported)
            data = convert_model(make_converter(sm_dir, "int8-full", representative, opts.int8_io, strict_int8=False), "int8-full")
        extra["float_fallback_ops"] = float_ops_in(data)
        check_scales(data, names, "int8-full")
    if not (opts.debug or opts.float_ops):
        return data, extra

    debug_runs = min(count_runs(eval_rw), DEBUG_MAX_SAMPLES)
    dbg = Debugger(sm_dir, representative, [], opts.int8_io)
    order = signature_order(dbg.calibrated)
    dbg.samples = [[eval_rw[k][i] for k in order] for i in range(debug_runs)]
    if opts.float_ops:
        tensors = denylist_for(dbg.calibrated, names, opts.float_ops)
        empty = [n for n, t in tensors.items() if not t]
        if empty:
            raise ConvertError(f"--float-ops {empty[0]!r}: this node has no quantizable layer in the TFLite model "
                               "(its work was folded into constants or a neighbour)")
        baseline = dbg.quantized_model()
        dbg.set_denylist([t for ts in tensors.values() for t in ts])
        data = dbg.quantized_model()
        check_scales(data, names, "int8-full")
        after = lite_figures(data, eval_rw, reference, graph, in_names, out_names, "int8-full")
        all_int8: dict[str, Any] = {"bytes": len(baseline)}
        gain: dict[str, Any] | None = {}
        try:  # the all-int8 model may be the broken one that --float-ops repairs
            check_scales(baseline, names, "int8-full (all int8)")
            before = lite_figures(baseline, eval_rw, reference, graph, in_names, out_names, "int8-full (all int8)")
        except VerificationError as e:
            all_int8["error"], gain = str(e), None
        else:
            all_int8["outputs"] = before
            for y in graph.outputs:
                g = {"sqnr_db": round(after[y]["sqnr_db"] - before[y]["sqnr_db"], 2)}
                if "top1_agreement_pct" in after[y]:
                    g["top1_agreement_pct"] = round(after[y]["top1_agreement_pct"] - before[y]["top1_agreement_pct"], 3)
                gain[y] = g
        extra["float_ops"] = {"nodes": list(opts.float_ops), "tflite_tensors_kept_float": tensors, "all_int8": all_int8,
                              "gain": gain, "bytes_added": len(data) - len(baseline)}
        extra["float_fallback_ops"] = float_ops_in(data)
    if opts.debug:
        rows = dbg.layer_rows(names)
        extra["layers"] = {"method": "TFLite QuantizationDebugger: each quantized op's output against the same op run in float "
                                     "on the same (dequantized) input — the error that layer alone adds; averaged over "
                                     f"{debug_runs} evaluation samples",
                           "count": len(rows), "worst": rows[:WORST_LAYERS], "all": rows}
    return data, extra
