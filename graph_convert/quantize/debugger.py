"""TFLite's QuantizationDebugger: one calibration, then per-layer statistics and selectively float models."""
from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from graph_convert.errors import ConvertError, VerificationError
from graph_convert.quantize.converter import make_converter, quiet
from graph_convert.quantize.metrics import sqnr_db
from graph_convert.quantize.scopes import NodeNames


class Debugger:
    """One calibration, then per-layer statistics and selective (denylisted) models from it."""

    def __init__(self, sm_dir: str, representative, debug_samples: list[list[np.ndarray]], int8_io: bool):
        import tensorflow as tf

        self.tf = tf
        self.int8_io = int8_io
        self.samples = debug_samples
        conv = make_converter(sm_dir, "int8-full", representative, False, strict_int8=False)
        try:
            with quiet():
                self.dbg = tf.lite.experimental.QuantizationDebugger(
                    converter=conv, debug_dataset=lambda: iter(self.samples), debug_options=self._options([]))
        except Exception as e:
            msg = " ".join(str(e).split())
            raise ConvertError(f"TFLite quantization debugger failed: {msg[:600]}") from None
        self.calibrated = self.dbg.calibrated_model

    def _options(self, denylist: list[str]):
        return self.tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(denylist) or None, fully_quantize=self.int8_io)

    def set_denylist(self, denylist: list[str]) -> None:
        with quiet():
            self.dbg.options = self._options(denylist)

    def quantized_model(self) -> bytes:
        with quiet():
            return self.dbg.get_nondebug_quantized_model()

    def layer_rows(self, names: NodeNames) -> list[dict[str, Any]]:
        def signal(f, q, scale, zp):
            return float(np.mean(np.square(np.asarray(f, np.float64))))

        def noise(f, q, scale, zp):
            deq = (np.asarray(q, np.float64) - zp) * scale
            return float(np.mean(np.square(np.asarray(f, np.float64) - deq)))

        # Statistics come from a second debugger over the debug model's bytes: built that way it keeps
        # every intermediate tensor (experimental_preserve_all_tensors), so the float value next to each
        # quantized one is still there to compare; the converter-built one reuses their memory.
        lite = self.tf.lite.experimental
        try:
            with quiet():
                stats = lite.QuantizationDebugger(
                    quant_debug_model_content=self.dbg.get_debug_quantized_model(), debug_dataset=lambda: iter(self.samples),
                    debug_options=lite.QuantizationDebugOptions(layer_direct_compare_metrics={"signal_power": signal, "noise_power": noise}))
                stats.run()
                buf = io.StringIO()
                stats.layer_statistics_dump(buf)
        except Exception as e:
            msg = " ".join(str(e).split())
            raise VerificationError(f"TFLite int8-full: the quantization debugger could not run the debug model ({msg[:300]})", "TFLite int8-full") from None
        rows = []
        for r in csv.DictReader(io.StringIO(buf.getvalue())):
            sig, noi = float(r["signal_power"]), float(r["noise_power"])
            rows.append({
                "tensor": r["tensor_name"], "op": r["op_name"], "nodes": names.nodes(r["tensor_name"]),
                "sqnr_db": round(sqnr_db(sig, noi), 2), "rmse": math.sqrt(max(noi, 0.0)),
                "max_abs_error": float(r["max_abs_error"]), "scale": float(r["scale"]), "zero_point": int(float(r["zero_point"])),
            })
        rows.sort(key=lambda r: r["sqnr_db"])
        return rows
