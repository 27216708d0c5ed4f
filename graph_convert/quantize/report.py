"""The printed tables of a report's quantization section (accuracy per variant, worst layers)."""
from __future__ import annotations

from typing import Any, Mapping


def tables(section: Mapping[str, Any]) -> str:
    """The accuracy table (and the worst layers when --quant-debug ran) for the CLI."""
    rows = [("variant", "output", "bytes", "max abs", "mean abs", "cosine", "SQNR dB", "top-1 %")]

    def add(name, entry):
        for y, f in entry["outputs"].items():
            top = f.get("top1_agreement_pct")
            rows.append((name, y, str(entry["bytes"]), f"{f['max_abs']:.3g}", f"{f['mean_abs']:.3g}", f"{f['cosine']:.6f}",
                         f"{f['sqnr_db']:.1f}", "-" if top is None else f"{top:.2f}"))

    add("float32", section["float32"])
    for v, e in section["variants"].items():
        add(v, e)
        if "float_ops" in e and "outputs" in e["float_ops"]["all_int8"]:
            add(f"{v} (all int8)", e["float_ops"]["all_int8"])
    lines = [f"quantized vs ONNX Runtime float32 on {section['evaluation']['samples']} samples ({section['evaluation']['source']}):"]
    lines += _fmt(rows)
    if section["evaluation"].get("warning"):
        lines.append(f"WARNING: {section['evaluation']['warning']}")
    for v, e in section["variants"].items():
        if e.get("float_fallback_ops"):
            lines.append(f"{v}: ops computing in float: {', '.join(e['float_fallback_ops'])}")
        if "float_ops" in e:
            fo = e["float_ops"]
            gains = "the all-int8 model is refused (" + fo["all_int8"].get("error", "?") + ")" if fo["gain"] is None else \
                ", ".join(f"{y}: SQNR {g['sqnr_db']:+.1f} dB" + (f", top-1 {g['top1_agreement_pct']:+.2f} pt" if "top1_agreement_pct" in g else "")
                          for y, g in fo["gain"].items())
            lines.append(f"{v}: kept float {', '.join(fo['nodes'])}: {gains}; {fo['bytes_added']:+d} bytes")
        if "layers" in e:
            lines.append(f"{v}: worst layers (per-layer SQNR, {e['layers']['count']} quantized layers):")
            lrows = [("SQNR dB", "op", "node(s)", "TFLite tensor")]
            for r in e["layers"]["worst"]:
                lrows.append((f"{r['sqnr_db']:.1f}", r["op"], ", ".join(r["nodes"]) or "?", r["tensor"][:60]))
            lines += ["  " + ln for ln in _fmt(lrows)]
    return "\n".join(lines)


def _fmt(rows) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
