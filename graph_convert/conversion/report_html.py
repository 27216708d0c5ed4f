"""report.html and summary.html: a conversion's (or a batch's) evidence as one self-contained page.

Built from the report dict alone (what report.json / summary.json hold), so a page can be remade
from the JSON at any time. The charts are SVG written here, with no script, font, style sheet or
image from anywhere else: the page opens from disk with no server and no network (its
Content-Security-Policy forbids every fetch, so a stray reference would fail loudly in a browser
rather than leak a request)."""
from __future__ import annotations

import html
import math
from typing import Any, Iterable, Mapping, Sequence

# Every fetch is refused; inline styles only. No script is needed: the charts are plain SVG.
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
# in the first lines of summary.html: a batch replaces only a summary.html that holds it
HTML_MARK = '<meta name="generator" content="graph-convert batch">'
MAX_BARS = 400  # a chart of more bars than this is unreadable; the table beside it keeps them all

STYLE = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px auto;max-width:1100px;color:#1d2330;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #d8dce4;padding-bottom:4px}
.sub{color:#5a6374}.cards{display:flex;flex-wrap:wrap;gap:10px;margin:14px 0}
.card{border:1px solid #d8dce4;border-radius:6px;padding:8px 12px;min-width:120px}
.card b{display:block;font-size:18px}.ok{color:#17803d}.bad{color:#c0262d}.warn{color:#a15c00}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}
th,td{border-bottom:1px solid #e6e9ef;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f5f8}td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
svg text{font:12px system-ui,sans-serif;fill:#1d2330}svg .v{fill:#5a6374}
code{background:#f3f5f8;padding:0 3px;border-radius:3px}ul{margin:4px 0}
"""


def esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def num(v: Any, digits: int = 3) -> str:
    """A figure as text: floats to ``digits`` significant digits; report.json's "nan"/"inf" as given."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if not math.isfinite(v):
            return str(v)
        return f"{v:.{digits}g}"
    return str(v)


def as_float(v: Any) -> float | None:
    """A report value as a float (report.json writes a non-finite one as a string)."""
    if isinstance(v, bool) or v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def bar_chart(chart_id: str, bars: Sequence[tuple[str, float, str]], *, unit: str = "",
              colour: Any = None, width: int = 760) -> str:
    """A horizontal bar chart in SVG: one ``rect.bar`` per (label, value, colour-or-"") item, in
    the order given, scaled to the largest value; each bar names its label and value in a
    ``<title>`` (the browser's tooltip) and in ``data-`` attributes (for tests and scripts)."""
    bars = list(bars)[:MAX_BARS]
    if not bars:
        return f'<p class="sub" id="{esc(chart_id)}">(nothing to chart)</p>'
    row, label_w, value_w = 18, 250, 90
    plot_w = width - label_w - value_w
    top = max((b[1] for b in bars), default=0.0) or 1.0
    height = row * len(bars) + 6
    parts = [f'<svg id="{esc(chart_id)}" class="chart" role="img" xmlns="http://www.w3.org/2000/svg" '
             f'width="{width}" height="{height}" viewBox="0 0 {width} {height}">']
    for i, (label, value, fill) in enumerate(bars):
        y = i * row + 3
        w = max(1.0, plot_w * max(value, 0.0) / top)
        short = label if len(label) <= 38 else label[:17] + "…" + label[-20:]
        parts.append(f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end">{esc(short)}</text>'
                     f'<rect class="bar" x="{label_w}" y="{y}" width="{w:.1f}" height="{row - 4}" fill="{esc(fill or colour or "#3b6fd4")}" '
                     f'data-label="{esc(label)}" data-value="{value:.6g}"><title>{esc(label)}: {esc(num(value))}{esc(unit)}</title></rect>'
                     f'<text class="v" x="{label_w + w + 4:.1f}" y="{y + 12}">{esc(num(value))}{esc(unit)}</text>')
    parts.append("</svg>")
    return "".join(parts)


def table(head: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = (), table_id: str = "") -> str:
    """An HTML table; cells are escaped text, except ``Markup`` (already-built HTML)."""
    numeric = set(numeric)
    ident = f' id="{esc(table_id)}"' if table_id else ""
    out = [f"<table{ident}><thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in head) + "</tr></thead><tbody>"]
    for r in rows:
        out.append("<tr>" + "".join(f'<td{" class=n" if j in numeric else ""}>{c if isinstance(c, Markup) else esc(c)}</td>'
                                     for j, c in enumerate(r)) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


class Markup(str):
    """HTML built here, put into a table cell as it is."""


def ok_mark(ok: Any) -> Markup:
    if ok is None:
        return Markup("-")
    return Markup('<span class="ok">ok</span>' if ok else '<span class="bad">FAILED</span>')


def page(title: str, body: Sequence[str], generator: str) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">{generator}'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def cards(items: Sequence[tuple[str, Any, str]]) -> str:
    return '<div class="cards">' + "".join(f'<div class="card"><span class="sub">{esc(k)}</span><b class="{cls}">{esc(v)}</b></div>'
                                           for k, v, cls in items) + "</div>"


# -- report.html --------------------------------------------------------------------------------
def sqnr_colour(db: float) -> str:
    """Red under 20 dB (an error a tenth of the signal), amber under 30 dB, green above."""
    return "#c0262d" if db < 20 else "#d88a00" if db < 30 else "#17803d"


def stage_section(rep: Mapping[str, Any]) -> list[str]:
    timings = {k: v for k, v in (rep.get("timings_seconds") or {}).items() if k != "total" and as_float(v) is not None}
    total = as_float((rep.get("timings_seconds") or {}).get("total"))
    rss = rep.get("peak_rss_gb_after_stage") or {}
    out = ["<h2>Stages and their timings</h2>",
           f'<p class="sub">{len(timings)} stages' + (f", {num(total)} s in all" if total is not None else "") + ".</p>",
           bar_chart("chart-stages", [(k, float(v), "") for k, v in timings.items()], unit=" s")]
    if rss:
        out.append(table(["stage", "seconds", "peak RSS after it (GB)"],
                         [(k, num(as_float(v)), num(as_float(rss.get(k)))) for k, v in timings.items()], numeric=(1, 2), table_id="table-stages"))
    passes = [p for p in rep.get("passes") or [] if isinstance(p, dict)]
    if passes:
        changed = [p for p in passes if p.get("changed")]
        out.append(f'<details><summary>{len(passes)} passes run, {len(changed)} changed the graph</summary>'
                   + table(["pass", "phase", "changed", "seconds", "from"],
                           [(p.get("name"), p.get("phase"), num(p.get("changed")), num(as_float(p.get("seconds"))), p.get("source", ""))
                            for p in passes], numeric=(3,), table_id="table-passes") + "</details>")
    return out


def figure_rows(stage: str, figs: Mapping[str, Any], draws: Sequence[str]) -> list[tuple]:
    rows = []
    for output, f in figs.items():
        if not isinstance(f, dict):
            continue
        per_draw = f.get("per_draw") or []
        if per_draw:
            for d in per_draw:
                rows.append((stage, output, d.get("draw", "?"), num(d.get("max_abs")), num(d.get("max_rel")),
                             num(d.get("cosine"), 9), num(d.get("sqnr_db"), 4), ok_mark(d.get("ok", f.get("ok")))))
        else:  # an older report: one figure, the worst draw
            rows.append((stage, output, f"worst of {len(draws)} draw(s)" if draws else "-", num(f.get("max_abs")), num(f.get("max_rel")),
                         num(f.get("cosine"), 9), num(f.get("sqnr_db"), 4), ok_mark(f.get("ok"))))
    return rows


STAGE_KEYS = ("rewritten_onnx", "tensorflow", "tflite_float32")


def verification_section(rep: Mapping[str, Any]) -> list[str]:
    v = rep.get("verification") or {}
    draws = [str(d) for d in v.get("draws") or []]
    stages = [k for k, f in v.items() if isinstance(f, dict) and k not in ("rule",)]
    stages.sort(key=lambda k: STAGE_KEYS.index(k) if k in STAGE_KEYS else len(STAGE_KEYS))
    rows = [r for k in stages for r in figure_rows(k, v[k], draws)]
    out = ["<h2>Verification against the source in ONNX Runtime</h2>",
           f'<p class="sub">Rule: {esc(v.get("rule", "-"))} (atol {esc(num(v.get("atol")))}). '
           f'Input draws: {esc("; ".join(draws) or "-")}.</p>',
           table(["stage", "output", "input draw", "max_abs", "max_rel", "cosine", "sqnr (dB)", "check"], rows,
                 numeric=(3, 4, 5, 6), table_id="table-verification")]
    for w in list(v.get("warnings") or []) + [{"warning": n} for n in v.get("notes") or []]:
        out.append(f'<p class="warn">{esc(w.get("output", ""))} {esc(w.get("warning", ""))}</p>')
    q = rep.get("quantization") or {}
    qrows = []
    for name, var in (q.get("variants") or {}).items():
        for output, f in (var.get("outputs") or {}).items():
            qrows.append((name, var.get("path", ""), output, num(f.get("max_abs")), num(f.get("cosine"), 9), num(f.get("sqnr_db"), 4),
                          num(f.get("top1_agreement_pct"), 4)))
    if qrows:
        ev = q.get("evaluation") or {}
        out += ["<h3>Quantized variants against the float32 source</h3>",
                f'<p class="sub">{esc(q.get("reference", ""))}; {esc(ev.get("samples", "?"))} samples from {esc(ev.get("source", "?"))}.</p>']
        if ev.get("warning"):
            out.append(f'<p class="warn">{esc(ev["warning"])}</p>')
        out.append(table(["variant", "file", "output", "max_abs", "cosine", "sqnr (dB)", "top-1 agreement %"], qrows,
                         numeric=(3, 4, 5, 6), table_id="table-quantized"))
    return out


def transposes_section(rep: Mapping[str, Any]) -> list[str]:
    g = rep.get("rewritten_graph") or {}
    left = [t for t in g.get("transposes_left") or [] if isinstance(t, dict)]
    tfl = rep.get("tflite") or {}
    out = ["<h2>TRANSPOSE ops left, and why</h2>",
           cards([("Transpose in the rewritten ONNX", num(g.get("transposes")), "ok" if not g.get("transposes") else "warn"),
                  ("TRANSPOSE in the .tflite", num(tfl.get("transpose_ops")), "ok" if not tfl.get("transpose_ops") else "warn")])]
    if not left:
        out.append('<p class="ok" id="no-transposes">No Transpose is left in the rewritten graph.</p>')
        return out
    rows = []
    for t in left:
        why = t.get("kept_because") or []
        reasons = Markup("<ul>" + "".join(f"<li><code>{esc(k.get('node', '?'))}</code>: {esc(k.get('reason', ''))}</li>" for k in why) + "</ul>") \
            if why else Markup('<span class="sub">(not asked)</span>')
        rows.append((t.get("node"), num(t.get("perm")), t.get("input_from") or "graph input", ", ".join(t.get("read_by") or []), reasons))
    out.append(table(["Transpose", "perm", "input from", "read by", "kept because"], rows, table_id="table-transposes"))
    return out


def ops_section(rep: Mapping[str, Any]) -> list[str]:
    tfl = rep.get("tflite") or {}
    ops = {k: v for k, v in (tfl.get("ops") or {}).items() if isinstance(v, int)}
    if not ops:
        return ["<h2>Op histogram of the .tflite</h2>", '<p class="sub" id="chart-ops">No .tflite was written.</p>']
    bars = sorted(ops.items(), key=lambda kv: (-kv[1], kv[0]))
    return ["<h2>Op histogram of the .tflite</h2>",
            f'<p class="sub"><code>{esc(tfl.get("path", ""))}</code>: {num(tfl.get("total_ops"))} ops, '
            f'{num(tfl.get("bytes"))} bytes.</p>',
            bar_chart("chart-ops", [(k, float(v), "#c0262d" if k == "TRANSPOSE" else "") for k, v in bars])]


def layer_label(layer: Mapping[str, Any]) -> str:
    """A quantized layer by its op and the ONNX nodes it came from (else its TFLite tensor)."""
    return f"{layer.get('op', '?')} {', '.join(layer.get('nodes') or []) or layer.get('tensor', '')}"


def sqnr_section(rep: Mapping[str, Any]) -> list[str]:
    variants = (rep.get("quantization") or {}).get("variants") or {}
    out: list[str] = []
    for name, var in variants.items():
        layers = var.get("layers") if isinstance(var, dict) else None
        if not isinstance(layers, dict):
            continue
        rows = [x for x in layers.get("all") or layers.get("worst") or [] if isinstance(x, dict) and as_float(x.get("sqnr_db")) is not None]
        if not out:
            out.append("<h2>Per-layer SQNR of the quantized variants</h2>")
        out.append(f"<h3>{esc(name)} <code>{esc(var.get('path', ''))}</code></h3>"
                   f'<p class="sub">{esc(layers.get("method", ""))}. {num(layers.get("count"))} layers; '
                   f"bars: red under 20 dB, amber under 30 dB.</p>")
        out.append(bar_chart(f"chart-sqnr-{name}", [(layer_label(x), float(x["sqnr_db"]), sqnr_colour(float(x["sqnr_db"]))) for x in rows],
                             unit=" dB"))
        out.append("<details><summary>the layers as a table</summary>" + table(
            ["op", "ONNX node(s)", "TFLite tensor", "sqnr (dB)", "rmse", "max_abs_error"],
            [(x.get("op"), ", ".join(x.get("nodes") or []), x.get("tensor"), num(x.get("sqnr_db"), 4), num(as_float(x.get("rmse"))),
              num(as_float(x.get("max_abs_error")))) for x in rows], numeric=(3, 4, 5)) + "</details>")
    for name, var in variants.items():
        if isinstance(var, dict) and var.get("layers") is None and name != "float32":
            out.append(f'<p class="sub">{esc(name)}: no per-layer figures (per-layer SQNR is measured for int8-full with --quant-debug).</p>')
    return out


def render_report(rep: Mapping[str, Any]) -> str:
    """report.html for one conversion's report dict (what report.json holds)."""
    src = rep.get("source") or {}
    v = rep.get("verification") or {}
    stage_figs = [f for k, figs in v.items() if isinstance(figs, dict) and k != "rule" for f in figs.values() if isinstance(f, dict)]
    all_ok = bool(stage_figs) and all(f.get("ok") for f in stage_figs)
    what = src.get("spec") or src.get("path") or src.get("file") or "?"
    io = rep.get("io") or {}
    io_rows = [(kind, x.get("name"), x.get("tf_name"), num(x.get("shape")), num(x.get("layout_perm")))
               for kind in ("inputs", "outputs") for x in io.get(kind) or [] if isinstance(x, dict)]
    body = [f"<h1>graph-convert: {esc(what)}</h1>",
            f'<p class="sub">{esc(src.get("kind", ""))} source, exporter {esc(src.get("exporter", "-"))}, '
            f'opset {esc(src.get("opset", "-"))}; back end {esc((rep.get("backend") or {}).get("used", "-"))}; '
            f'graph-convert {esc(rep.get("graph_convert_version", "?"))}. Made from report.json beside this page.</p>',
            cards([("verification", "all checks passed" if all_ok else "see below", "ok" if all_ok else "bad"),
                   ("total time", f"{num(as_float((rep.get('timings_seconds') or {}).get('total')))} s", ""),
                   ("rewritten graph", f"{num((rep.get('rewritten_graph') or {}).get('nodes'))} nodes", ""),
                   (".tflite ops", num((rep.get("tflite") or {}).get("total_ops")), ""),
                   ("TRANSPOSE left", num((rep.get("tflite") or {}).get("transpose_ops")), "")]),
            table(["", "ONNX name", "TF name", "shape", "layout perm"], io_rows, table_id="table-io")]
    body += stage_section(rep) + verification_section(rep) + transposes_section(rep) + ops_section(rep) + sqnr_section(rep)
    gaps = rep.get("tflite_gaps") or []
    if gaps:
        body += ["<h2>TFLite gaps</h2>", table(["gap"], [(num(g),) for g in gaps])]
    dyn = rep.get("dynamic_batch") or {}
    body.append(f'<p class="sub">Dynamic batch: {esc(num(dyn.get("kept")))} ({esc(dyn.get("reason", ""))}).</p>')
    return page(f"graph-convert report: {what}", body, '<meta name="generator" content="graph-convert">')


# -- summary.html -------------------------------------------------------------------------------
STATUS_COLOUR = {"ok": "#17803d", "timeout": "#d88a00", "interrupted": "#d88a00", "not run": "#8a93a3"}


def render_summary(summary: Mapping[str, Any]) -> str:
    """summary.html for a batch's summary dict (what summary.json holds)."""
    t = summary.get("totals") or {}
    rows = [r for r in summary.get("models") or [] if isinstance(r, dict)]
    by_status = t.get("by_status") or {}
    body = [f"<h1>graph-convert batch: {esc(num(t.get('ok')))}/{esc(num(t.get('models')))} ok</h1>",
            f'<p class="sub">Engine {esc(summary.get("engine", "?"))}, {esc(summary.get("jobs", "?"))} at a time; '
            f'started {esc(summary.get("started", "?"))}. Made from summary.json beside this page.</p>',
            cards([("models", num(t.get("models")), ""), ("ok", num(t.get("ok")), "ok"),
                   ("failed", num(t.get("failed")), "bad" if t.get("failed") else "ok"),
                   ("wall time", f"{num(as_float(t.get('wall_seconds')))} s", ""),
                   ("models / minute", num(as_float(t.get("models_per_minute"))), "")]),
            "<h2>Models by status</h2>",
            bar_chart("chart-status", [(s, float(n), STATUS_COLOUR.get(s, "#c0262d")) for s, n in sorted(by_status.items())]),
            "<h2>Seconds per model</h2>",
            bar_chart("chart-seconds", [(r.get("name", "?"), as_float(r.get("seconds")) or 0.0, STATUS_COLOUR.get(r.get("status"), "#c0262d"))
                                        for r in rows], unit=" s"),
            "<h2>Models</h2>"]
    trows = []
    for r in rows:
        name = str(r.get("name", "?"))
        # each ok model's folder holds its own report.html (outputs written before it existed do not)
        link = Markup(f'<a href="{esc(name)}/report.html">{esc(name)}</a>') if r.get("status") == "ok" else name
        trows.append((link, r.get("status"), num(r.get("exit_code")), r.get("run", ""), num(as_float(r.get("seconds"))),
                      num(r.get("transposes")), num(as_float(r.get("max_error"))), num(r.get("tflite_bytes")), (r.get("reason") or "")[:300]))
    body.append(table(["model", "status", "exit", "run", "seconds", "TRANSPOSE", "max err/scale", ".tflite bytes", "reason"], trows,
                      numeric=(2, 4, 5, 6, 7), table_id="table-models"))
    return page(f"graph-convert batch: {t.get('ok')}/{t.get('models')} ok", body, HTML_MARK)
