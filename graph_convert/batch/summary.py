"""A batch's summary: OUTROOT/summary.json (strict JSON, for machines), OUTROOT/summary.md, the
same table on stdout and OUTROOT/summary.html (charts; for people). The files are written
atomically and only ever replace a summary a batch wrote."""
from __future__ import annotations

import json
import os
import tempfile
from typing import Any

from graph_convert.errors import ConvertError
from graph_convert.conversion.output import current_umask
from graph_convert.conversion.report_html import HTML_MARK, render_summary

TOOL = "graph-convert batch"
FILES = ("summary.json", "summary.md", "summary.html")


def previous(out_root: str) -> dict[str, dict]:
    """The rows of an earlier batch into ``out_root`` by model name ({} when there was none).
    Refuses a summary.json / summary.md that a batch did not write (the user's files)."""
    rows: dict[str, dict] = {}
    path = os.path.join(out_root, "summary.json")
    if os.path.lexists(path):
        try:
            with open(path) as f:
                data = json.load(f)
            ours = isinstance(data, dict) and data.get("tool") == TOOL
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise ConvertError(f"batch output {out_root}: summary.json there was not written by graph-convert batch; "
                               f"nothing was touched (choose another -o)")
        rows = {r["name"]: r for r in data.get("models", []) if isinstance(r, dict) and "name" in r}
    md = os.path.join(out_root, "summary.md")
    if os.path.lexists(md):
        with open(md, errors="replace") as f:
            if not f.readline().startswith(f"# {TOOL}"):
                raise ConvertError(f"batch output {out_root}: summary.md there was not written by graph-convert batch; "
                                   f"nothing was touched (choose another -o)")
    page = os.path.join(out_root, "summary.html")
    if os.path.lexists(page):
        with open(page, errors="replace") as f:
            if HTML_MARK not in f.read(4096):
                raise ConvertError(f"batch output {out_root}: summary.html there was not written by graph-convert batch; "
                                   f"nothing was touched (choose another -o)")
    return rows


def totals(rows: list[dict], wall: float) -> dict[str, Any]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    converted = [r for r in rows if r.get("run") != "skipped" and r["status"] == "ok"]
    return {"models": len(rows), "ok": counts.get("ok", 0), "failed": len(rows) - counts.get("ok", 0),
            "by_status": counts, "converted_now": len(converted),
            "skipped": sum(1 for r in rows if r.get("run") == "skipped"), "wall_seconds": round(wall, 2),
            "models_per_minute": round(60 * len(converted) / wall, 2) if wall > 0 and converted else 0.0}


def _fmt(v, kind: str) -> str:
    if v is None:
        return "-"
    if kind == "e":
        return f"{v:.1e}"
    if kind == "s":
        return f"{v:.1f}"
    if kind == "b":
        return f"{v / 1e6:.2f} MB" if v >= 1e5 else f"{v / 1e3:.1f} kB"
    return str(v)


COLUMNS = [("model", "name", ""), ("status", "status", ""), ("exit", "exit_code", ""), ("run", "run", ""),
           ("seconds", "seconds", "s"), ("TRANSPOSE", "transposes", ""), ("max err/scale", "max_error", "e"),
           (".tflite", "tflite_bytes", "b"), ("reason", "reason", "")]


def table_rows(rows: list[dict]) -> list[list[str]]:
    out = [[c[0] for c in COLUMNS]]
    for r in rows:
        cells = [_fmt(r.get(key), kind) for _, key, kind in COLUMNS]
        cells[-1] = (r.get("reason") or "")[:160]
        out.append(cells)
    return out


def text_table(rows: list[dict]) -> str:
    t = table_rows(rows)
    widths = [max(len(r[i]) for r in t) for i in range(len(t[0]) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in t]
    lines.insert(1, "  ".join("-" * w for w in widths) + "  ------")
    return "\n".join(line.rstrip() for line in lines)


def totals_line(t: dict) -> str:
    parts = ", ".join(f"{n} {s}" for s, n in sorted(t["by_status"].items()) if s != "ok")
    return (f"{t['ok']}/{t['models']} ok ({t['converted_now']} converted now, {t['skipped']} already done)"
            f"{'; ' + parts if parts else ''}; {t['wall_seconds']:.1f} s wall, {t['models_per_minute']} models/min")


def markdown(summary: dict) -> str:
    t = table_rows(summary["models"])
    esc = [[c.replace("|", "\\|") for c in r] for r in t]
    lines = [f"# {TOOL}: {summary['totals']['ok']}/{summary['totals']['models']} ok", "",
             f"Engine {summary['engine']}, {summary['jobs']} at a time; started {summary['started']}.", "",
             "| " + " | ".join(esc[0]) + " |", "|" + "---|" * len(esc[0])]
    lines += ["| " + " | ".join(r) + " |" for r in esc[1:]]
    lines += ["", totals_line(summary["totals"]), ""]
    return "\n".join(lines)


def write(out_root: str, summary: dict) -> None:
    os.makedirs(out_root, exist_ok=True)
    for name, text in (("summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n"), ("summary.md", markdown(summary)),
                       ("summary.html", render_summary(summary))):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out_root)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
            os.chmod(tmp, 0o666 & ~current_umask())
            os.replace(tmp, os.path.join(out_root, name))
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

