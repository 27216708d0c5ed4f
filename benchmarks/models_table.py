"""Convert every bundled model and print one table: TRANSPOSE ops and total ops in the float32
.tflite, max abs error of rewritten ONNX / TF / TFLite against the source in ONNX Runtime, and
conversion time. Usage: python benchmarks/models_table.py [name ...]"""
from __future__ import annotations

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import graph_convert_models as models  # noqa: E402
from graph_convert import convert  # noqa: E402


def main(names: list[str]) -> int:
    rows = [("model", "exporter", "TRANSPOSE", "tflite ops", "err ONNX'", "err TF", "err TFLite", "seconds")]
    failed = 0
    for name in names:
        module, _ = models.load(name)
        ex = models.example_inputs(name)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            try:
                rep = convert(module, ex, os.path.join(d, "out")).report
            except Exception as e:  # a table row, not a traceback
                rows.append((name, "FAILED", type(e).__name__, str(e)[:60], "", "", "", f"{time.perf_counter() - t0:.1f}"))
                failed += 1
                continue
        err = {s: max(f["max_abs"] for f in rep["verification"][s].values()) for s in ("rewritten_onnx", "tensorflow", "tflite_float32")}
        rows.append((name, rep["source"]["exporter"], str(rep["tflite"]["transpose_ops"]), str(rep["tflite"]["total_ops"]),
                     f"{err['rewritten_onnx']:.1e}", f"{err['tensorflow']:.1e}", f"{err['tflite_float32']:.1e}", f"{time.perf_counter() - t0:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for k, r in enumerate(rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")
        if k == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or models.MODELS + models.FAMILIES + models.TRANSFORMERS))
