"""The ``graph-convert`` command."""
from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import traceback
import warnings

import graph_convert as gc
from graph_convert.cli.session import one_line_stderr, private_tmpdir
from graph_convert import ConvertError, ConvertOptions, PassError, StageError, VerificationError

EXIT_BATCH_FAILED = 1  # batch: at least one model did not convert (summary.json says which and why)
EXIT_USAGE, EXIT_VERIFY, EXIT_PASS = 2, 3, 4
EXIT_QUANT_THRESHOLD = 5  # a quantized variant fell below --min-sqnr / --min-top1
EXIT_INTERNAL = 6  # a stage broke where it should not (TensorFlow runtime error, emitter bug, converter crash)
# a signal (SIGINT, SIGTERM, SIGHUP) ends the run with 128 + its number, the temporary folder removed


class Interrupted(KeyboardInterrupt):
    """SIGTERM/SIGHUP turned into an exception, so every ``finally`` (the temp folder's) runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, frame):
    raise Interrupted(signum)


PLUGIN_HELP = ("load passes/handlers/emitters from the plugin's register(registry): a module name (found on the "
               "Python path or in the current folder, e.g. my_plugin for ./my_plugin.py) or a file path "
               "(path/to/my_plugin.py); repeat for several")


def _version() -> str:
    """As pip says it: the version, where it is installed, and the Python running it."""
    where = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return f"graph-convert {gc.__version__} from {where} (python {sys.version_info.major}.{sys.version_info.minor})"


def _non_negative_int(text: str, option: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = -1
    if v < 0:
        raise ConvertError(f"{option} {text!r}: must be a non-negative integer")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graph-convert", description="PyTorch/ONNX -> verified TensorFlow SavedModel + TFLite")
    p.add_argument("--version", action="version", version=_version())
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="convert a model")
    c.add_argument("source", help="model.onnx, path/to/file.py:factory or package.module:attr")
    c.add_argument("-o", "--output", required=True, help="output directory (written atomically)")
    c.add_argument("--overwrite", action="store_true",
                   help="replace an output folder that graph-convert wrote earlier (never one holding anything else)")
    c.add_argument("-q", "--quiet", action="store_true")
    c.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    _convert_options(c)
    _batch_parser(sub)
    _verify_parser(sub)
    ls = sub.add_parser("passes", help="list the pass pipeline (with plugins)")
    ls.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py", help=PLUGIN_HELP)
    ls.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    v = sub.add_parser("view", help="open a conversion (made with --explorer) in Model Explorer, its evidence on the graphs")
    v.add_argument("output", metavar="OUT", help="a convert output folder holding explorer/")
    v.add_argument("--port", type=int, default=8080, help="the local port Model Explorer serves on (default 8080)")
    v.add_argument("--no-browser", action="store_true", help="serve only; do not open a browser")
    v.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    return p


def _convert_options(c) -> None:
    """The options of one conversion (``convert``, and ``batch`` for each of its models)."""
    c.add_argument("--input-shape", action="append", default=[], metavar="[NAME=]D0,D1,...",
                   help="input shape; repeat for several inputs (required for PyTorch sources)")
    c.add_argument("--inputs", metavar="DATA.npz", help="verify on these arrays (keyed by input name, source layout)")
    c.add_argument("--keep-io-layout", action="store_true", help="keep inputs/outputs in the source layout (default: channels-last)")
    c.add_argument("--dynamic-batch", action="store_true",
                   help="SavedModel/.tflite take any batch size (shorthand for a free dim 0 named 'batch', checked at 5 sizes); "
                        "automatic when the ONNX model's batch dim is symbolic")
    c.add_argument("--dim", action="append", default=[], metavar="NAME=VALUE|NAME=MIN..MAX[/MULT]",
                   help="fix a named (symbolic) input dim, or keep it free within a range and multiple (see Dynamic shapes)")
    c.add_argument("--heads-first", action="store_true",
                   help="attention with head-major weights and no TRANSPOSE (for GPU/NPU delegates; slower on XNNPACK CPU)")
    c.add_argument("--plugin", action="append", default=[], metavar="MODULE|FILE.py", help=PLUGIN_HELP)
    c.add_argument("--disable-pass", action="append", default=[], metavar="NAME", help="skip a pass by name")
    c.add_argument("--verify", choices=ConvertOptions.choices("verify"), default="end",
                   help="ORT check of the rewritten graph (default; on a mismatch the passes are replayed with a check "
                        "after each to name the first diverging pass), after each phase, after every pass, or only of the outputs")
    c.add_argument("--atol", default="1e-4",
                   help="tolerance relative to each output's own scale: max abs error <= atol * max|source output| "
                        "(plus a float32 floor), and cosine >= 1 - atol")
    c.add_argument("--seed", default="0", help="seed of the random verification inputs (a non-negative integer)")
    c.add_argument("--no-tflite", action="store_true", help="write the SavedModel only")
    c.add_argument("--explorer", action="store_true",
                   help="also write Model Explorer node data (explorer/): layout moves, per-op error, per-op SQNR; see 'view'")
    c.add_argument("--backend", choices=ConvertOptions.choices("backend"), default="graph-convert",
                   help="who writes the SavedModel/.tflite: our emitter (default), onnx2tf (verified by us exactly as ours; "
                        "pip install 'graph-convert[onnx2tf]'), or ours with onnx2tf only for models with ops we cannot emit")
    c.add_argument("--onnx2tf-python", metavar="PATH", help="the interpreter that runs onnx2tf (its pins may clash with ours; default: this one)")
    q = c.add_argument_group("quantization (TFLite post-training quantization, checked against ONNX Runtime float32)")
    q.add_argument("--quantize", metavar="LIST", help="any of fp16,int8,int8-full (comma-separated)")
    q.add_argument("--calibration", metavar="DATA.npz|DIR|random",
                   help="calibration samples: .npz keyed by input name (source layout, samples on axis 0), a folder of images, "
                        "or 'random' (accuracy figures then meaningless); required by int8-full")
    q.add_argument("--eval-data", metavar="DATA.npz|DIR", help="held-out samples for the accuracy report (default: 20%% of the calibration data, kept out of calibration)")
    q.add_argument("--mean", metavar="M[,M...]", help="image folders: subtract per channel after scaling pixels to [0, 1]")
    q.add_argument("--std", metavar="S[,S...]", help="image folders: divide per channel after --mean")
    q.add_argument("--size", metavar="H,W", help="image folders: resize to this (default: the input's height and width)")
    q.add_argument("--int8-io", action="store_true", help="int8-full: int8 inputs and outputs (default float)")
    q.add_argument("--quant-debug", action="store_true", help="int8-full: per-layer SQNR, worst layers with the node they came from")
    q.add_argument("--float-ops", metavar="NODE,...", help="int8-full: keep these nodes' layers float; the report shows what it bought")
    q.add_argument("--min-sqnr", type=float, metavar="DB", help=f"fail (exit {EXIT_QUANT_THRESHOLD}, nothing written) if any quantized output's SQNR is lower")
    q.add_argument("--min-top1", type=float, metavar="PCT", help=f"fail (exit {EXIT_QUANT_THRESHOLD}, nothing written) if any classifier output's top-1 agreement is lower")


class _StrictParser(argparse.ArgumentParser):
    """A parser whose errors are a ConvertError (one line naming where the options came from),
    not a usage message and sys.exit: for a batch's per-model options."""

    def error(self, message):
        raise ConvertError(message)


def _batch_parser(sub) -> None:
    b = sub.add_parser("batch", help="convert many models, each in a process of its own, with a summary")
    b.add_argument("batch_inputs", nargs="+", metavar="INPUT",
                   help=".onnx files, folders of them, file.py:factory / module:attr specs, or manifests (.txt, .json)")
    b.add_argument("-o", "--output", required=True, metavar="OUTROOT", help="each model goes to OUTROOT/<name>/")
    b.add_argument("-j", "--jobs", default="1", metavar="N", help="models converted at once (local engine; default 1)")
    b.add_argument("--timeout", metavar="SECONDS", help="stop a model's conversion after this long (status timeout)")
    b.add_argument("--memory-limit", metavar="SIZE",
                   help="stop a model whose processes together hold more resident memory (e.g. 8G; status out of memory)")
    b.add_argument("--engine", choices=["local", "ray"], default="local", help="local processes (default) or Ray tasks")
    b.add_argument("--ray-address", metavar="ADDR", help="the Ray cluster to use (default: RAY_ADDRESS, else a local "
                                                         "instance started for this run)")
    b.add_argument("--ray-transfer", choices=["bytes", "shared"], default="bytes",
                   help="how sources and outputs travel: through Ray's object store (default) or a shared filesystem")
    b.add_argument("--retries", default="2", metavar="N", help="Ray: times a task is retried when its worker dies")
    b.add_argument("--cpus-per-model", default="1", metavar="N", help="Ray: the CPU request of each task")
    b.add_argument("--overwrite", action="store_true", help="redo models an earlier batch into OUTROOT converted already")
    b.add_argument("-q", "--quiet", action="store_true", help="no progress, no table (the summary files are still written)")
    b.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")
    _convert_options(b)


def _child_args(args) -> list[str]:
    """The convert options given to ``batch``, as a model's ``convert`` command line takes them."""
    probe = argparse.ArgumentParser(add_help=False)
    _convert_options(probe)
    out: list[str] = []
    for action in probe._actions:
        value = getattr(args, action.dest, action.default)
        if value == action.default or value is None:
            continue
        flag = action.option_strings[-1]
        if isinstance(action, argparse._StoreTrueAction):
            out.append(flag)
        elif isinstance(value, list):
            for v in value:
                out += [flag, str(v)]
        else:
            out += [flag, str(value)]
    return out


def _check_convert_args(argv: list[str], where: str) -> None:
    """Validate one model's convert command line (a manifest line, or the batch's own options)."""
    p = _StrictParser(prog="graph-convert convert", add_help=False)
    p.add_argument("source")
    p.add_argument("-o", "--output", required=True)
    _convert_options(p)
    try:
        ns = p.parse_args(argv + ["-o", "-"])
        ns.overwrite = False
        options_from_args(ns)
    except ConvertError as e:
        raise ConvertError(f"{where}: {_one_line(e)}") from None


def _positive_int(text: str, option: str) -> int:
    try:
        v = int(text)
    except ValueError:
        v = 0
    if v < 1:
        raise ConvertError(f"{option} {text!r}: must be a positive integer")
    return v


def _batch(args) -> int:
    timeout = gc.parse_timeout(args.timeout) if args.timeout is not None else None
    memory = gc.parse_size(args.memory_limit) if args.memory_limit is not None else None
    try:
        cpus = float(args.cpus_per_model)
    except ValueError:
        cpus = 0.0
    if not 0 < cpus < 1e6:
        raise ConvertError(f"--cpus-per-model {args.cpus_per_model!r}: must be a positive number")
    retries = _non_negative_int(args.retries, "--retries")
    display = "silent" if args.quiet else ("live" if sys.stdout.isatty() else "plain")
    result = gc.convert_batch(args.batch_inputs, args.output, args=_child_args(args), jobs=_positive_int(args.jobs, "--jobs"),
                              timeout=timeout, memory_limit=memory, engine=args.engine, overwrite=args.overwrite,
                              display=display, check_args=_check_convert_args,
                              ray_options={"address": args.ray_address, "transfer": args.ray_transfer, "retries": retries,
                                           "cpus": cpus} if args.engine == "ray" else None)
    if not args.quiet:
        print(result.table())
        print(f"wrote {os.path.join(args.output, 'summary.json')} and summary.md")
    return 0 if result.ok else EXIT_BATCH_FAILED


def _verify_parser(sub) -> None:
    v = sub.add_parser("verify", help="check a .tflite or SavedModel made by any converter against its ONNX/PyTorch source")
    v.add_argument("source", help="model.onnx, path/to/file.py:factory or package.module:attr (with --input-shape)")
    v.add_argument("candidate", help="a .tflite file or a SavedModel folder")
    v.add_argument("--input-shape", action="append", default=[], metavar="[NAME=]D0,D1,...",
                   help="input shape (required for PyTorch sources; for ONNX, the symbolic dims)")
    v.add_argument("--inputs", metavar="DATA.npz", help="also verify on these arrays (keyed by source input name, source layout)")
    v.add_argument("--atol", default="1e-4", help="tolerance relative to each output's own scale (as for convert)")
    v.add_argument("--seed", default="0", help="seed of the random verification inputs")
    v.add_argument("--signature", metavar="NAME", help="the signature to check (default: serving_default, or the only one)")
    v.add_argument("--map", action="append", default=[], metavar="CAND=SRC[:PERM]",
                   help="pair a candidate input/output with a source one, optionally with its layout "
                        "(candidate = transpose(source, PERM), e.g. x=input:0,2,3,1); repeat per tensor")
    v.add_argument("--report", metavar="OUT.json", help="write the figures, the matching and the divergence as JSON")
    v.add_argument("--no-locate", action="store_true", help="on a mismatch, do not search the intermediate tensors")
    v.add_argument("-q", "--quiet", action="store_true")
    v.add_argument("--debug", action="store_true", help="on an error, also print the Python traceback")


def _verify(args) -> int:
    checked = gc.ConvertOptions(atol=args.atol, seed=args.seed)  # validated where convert's are, spelled as flags here
    log = None if args.quiet else (lambda m: print(m, flush=True))
    res = gc.verify_file(args.source, args.candidate, input_shapes=[gc.parse_shape(s) for s in args.input_shape],
                         inputs=args.inputs, atol=checked.atol, seed=checked.seed,
                         signature=args.signature, maps=args.map, report_path=args.report, locate=not args.no_locate, log=log)
    r = res.report
    if not args.quiet:
        for p in r["io"]["inputs"] + r["io"]["outputs"]:
            side = "input " if p in r["io"]["inputs"] else "output"
            print(f"{side} {p['source']!r} <-> {p['candidate']!r} (by {p['matched_by']}; layout {tuple(p['layout_perm'])})")
        print(_table(r))
        print(f"checked on {len(r['verification']['draws'])} input draws: {'; '.join(r['verification']['draws'])}")
        for n in r["verification"]["notes"]:
            print(f"note: {n}")
        for w in r["verification"]["warnings"]:
            print(f"warning: output {w['output']!r}: {w['warning']}")
        if res.divergence is not None:
            print(f"where: {res.divergence['summary']}")
        for e in r.get("sizes_checked", []):  # symbolic source dims: the sizes the candidate was run at
            print(f"at {', '.join(f'{n}={v}' for n, v in e['sizes'].items())}: {e['verdict'][:200]}")
        if res.equivalent:
            print(f"equivalent: {args.candidate} computes what {args.source} computes")
    if res.equivalent:
        return 0
    bad = next((n, f) for n, f in res.figures.items() if not f.ok)
    where = f"; {res.divergence['summary']}" if res.divergence and res.divergence.get("found") else ""
    print(f"graph-convert: verification failed: {args.candidate}: output {bad[0]!r} differs from the source: "
          f"{bad[1].reason}{where}", file=sys.stderr)
    return EXIT_VERIFY


def _table(report: dict) -> str:
    rows = [("stage", "output", "max abs", "/ scale", "cosine", "SQNR dB", "ok")]
    for stage in ("rewritten_onnx", "tensorflow", "tflite_float32", "tflite_int8", "tflite", "saved_model"):
        for name, f in report["verification"].get(stage, {}).items():
            rows.append((stage, name, f"{f['max_abs']:.2e}", f"{f['max_rel']:.2e}", f"{f['cosine']:.6f}", f"{f['sqnr_db']:.1f}",
                         "yes" if f["ok"] else "NO"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _summary(result) -> str:
    r = result.report
    if r.get("backend", {}).get("used") == "onnx2tf":
        return "\n".join([f"backend: onnx2tf ({r['backend']['why']})", _table(r),
                          f"checked on {len(r['verification']['draws'])} input draws: {'; '.join(r['verification']['draws'])}",
                          f"wrote {result.output_dir}/ (saved_model/, model_float32.tflite, report.json)"])
    passes = [p for p in r["passes"] if p["changed"]]
    lines = [f"passes changed the graph: {', '.join(dict.fromkeys(p['name'] for p in passes)) or 'none'}",
             f"rewritten graph: {r['rewritten_graph']['nodes']} nodes, {r['rewritten_graph']['transposes']} Transpose"]
    if "tflite" in r:
        lines.append(f"TFLite float32: {r['tflite']['total_ops']} ops, TRANSPOSE {r['tflite']['transpose_ops']}, {r['tflite']['bytes']} bytes")
    lines.append(_table(r))
    lines.append(f"checked on {len(r['verification']['draws'])} input draws: {'; '.join(r['verification']['draws'])}")
    for w in r["verification"].get("warnings", []):
        lines.append(f"warning: output {w['output']!r}: {w['warning']}")
    dyn = r.get("dynamic", {})
    free = {n: d for n, d in dyn.get("dims", {}).items() if d.get("kept")}
    if free:
        checks = dyn.get("checks", [])
        ok = [e for e in checks if e["verdict"] == "ok"]
        figs = [f for e in ok for k in ("tensorflow", "tflite_float32") for f in e.get(k, {}).values()]
        worst = max((f["max_abs"] for f in figs), default=0.0)
        worst_rel = max((f["max_rel"] for f in figs), default=0.0)  # the figure the tolerance judges
        shown = "; ".join(", ".join(f"{n}={v}" for n, v in e["sizes"].items() if n in free) + (" (--inputs)" if e.get("inputs") else "")
                          for e in ok)
        lines.append(f"dynamic dims {', '.join(free)}: verified at {len(ok)} size(s): {shown} "
                     f"(max abs {worst:.2e}, / scale {worst_rel:.2e})")
        for v, entry in (r.get("quantization") or {}).get("variants", {}).items():
            key = (entry.get("sizes") or {}).get("key")
            sq = [f["sqnr_db"] for e in ok for f in e.get(key, {}).values()] if key else []
            if sq:
                lines.append(f"  {v} ({entry['path']}): the same {len(ok)} size(s), SQNR {min(sq):.1f}-{max(sq):.1f} dB vs ONNX Runtime float32")
        for e in checks:
            if e["verdict"] != "ok":
                lines.append(f"  not taken by the source at {', '.join(f'{n}={v}' for n, v in e['sizes'].items() if n in free)}")
    elif dyn.get("reason"):
        lines.append(f"dynamic batch not kept: {dyn['reason']}")
    quant = ""
    if "quantization" in r:
        lines.append(gc.quantization_tables(r["quantization"]))
        quant = "".join(f"{e['path']}, " for e in r["quantization"]["variants"].values())
    if "tflite_int8" in r:  # a quantized source's int8 file, judged by the int8 rule
        steps = [f.get("max_steps") for f in r["verification"].get("tflite_int8", {}).values() if f.get("max_steps") is not None]
        q8 = r["tflite_int8"]
        hybrid = f" and {q8['hybrid_kernels']} hybrid (float activations, int8 weights)" if q8.get("hybrid_kernels") else ""
        lines.append(f"TFLite int8: {q8['int8_kernels']} int8 kernels{hybrid}, "
                     f"{'every scale' if q8['scales_from_source'] else str(q8['scales_not_from_source']) + ' scale(s) not'} from the source"
                     + (f", at most {max(steps):.2f} quantization steps from ONNX Runtime" if steps else ""))
        quant += "model_int8.tflite, "
    data = r.get("weights", {}).get("rewritten_onnx_data")
    onnx_files = f"model.rewritten.onnx (+ {data})" if data else "model.rewritten.onnx"
    lines.append(f"wrote {result.output_dir}/ (saved_model/, {'model_float32.tflite, ' if 'tflite' in r else ''}{quant}{onnx_files}, report.json) in {r['timings_seconds']['total']:.1f}s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    handlers = {}
    if _in_main_thread():
        for sig in (signal.SIGTERM, signal.SIGHUP):
            handlers[sig] = signal.signal(sig, _raise_interrupted)
    try:
        _die_with_parent()
        with private_tmpdir() as scratch, one_line_stderr(scratch, keep=getattr(args, "debug", False)):
            return _run(args)
    except Interrupted as e:
        print(f"graph-convert: stopped by {signal.Signals(e.signum).name}; nothing was written", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("graph-convert: interrupted; nothing was written", file=sys.stderr)
        return 128 + signal.SIGINT
    finally:
        for sig, old in handlers.items():
            signal.signal(sig, old)


def _die_with_parent() -> None:
    """A batch's model (GRAPH_CONVERT_PARENT_PID set): SIGTERM when the batch process dies, so a
    killed batch or Ray worker leaves no conversion running (and no temporary folder: SIGTERM
    removes it)."""
    parent = os.environ.pop("GRAPH_CONVERT_PARENT_PID", None)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    try:
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError, ValueError):
        return
    if str(os.getppid()) != parent:  # it died before the line above
        raise Interrupted(signal.SIGTERM)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _fail(args, code: int, message: str, error: BaseException) -> int:
    print(f"graph-convert: {message}", file=sys.stderr)
    if getattr(args, "debug", False):
        traceback.print_exception(error, file=sys.stderr)
    return code


def _run(args) -> int:
    if not getattr(args, "debug", False):  # library warnings (numpy, TensorFlow) are not ours to show
        warnings.simplefilter("ignore")
    try:
        if args.command == "passes":
            for p in gc.pass_pipeline(args.plugin):
                grp = f" [fixed-point group {p['group']}]" if p["group"] else ""
                off = f" [off unless --{p['opt_in'].replace('_', '-')}]" if p["opt_in"] else ""
                print(f"{p['phase']:13s} {p['name']}{grp}{off}  (from {p['source']})")
            return 0
        if args.command == "verify":
            return _verify(args)
        if args.command == "batch":
            return _batch(args)
        if args.command == "view":
            gc.view(args.output, port=args.port, browser=not args.no_browser)
            return 0
        log = None if args.quiet else (lambda m: print(m, flush=True))
        progress = gc.stage_progress(args.quiet)
        try:
            result = gc.convert(args.source, None, args.output, options_from_args(args), log=log, progress=progress)
        finally:
            progress.close()
        if not args.quiet:
            print(_summary(result))
        return 0
    except ConvertError as e:  # first: a bad argument or path is answered without loading the quantizer below
        return _fail(args, EXIT_USAGE, f"error: {_one_line(e)}", e)
    except VerificationError as e:
        return _fail(args, EXIT_VERIFY, f"verification failed: {_one_line(e)}", e)
    except gc.QuantizationThresholdError as e:  # looked up only when a later error gets this far
        return _fail(args, EXIT_QUANT_THRESHOLD, _one_line(e), e)
    except PassError as e:
        return _fail(args, EXIT_PASS, _one_line(e), e)
    except StageError as e:
        if e.stage == "convert with onnx2tf":  # onnx2tf's own failure, not ours: its last lines are in the message
            return _fail(args, EXIT_INTERNAL, f"onnx2tf could not convert the model: {_one_line(e)}", e)
        return _fail(args, EXIT_INTERNAL, f"internal error: {_one_line(e)} (a bug in graph-convert or TensorFlow: "
                                          f"--debug shows the traceback)", e)
    except Exception as e:  # whatever no stage caught: still one line, never a raw traceback
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" (in {os.path.basename(where.filename)}:{where.lineno} {where.name})" if where else ""
        return _fail(args, EXIT_INTERNAL, f"internal error: {type(e).__name__}: {_one_line(e)}{at} (--debug shows the traceback)", e)


def options_from_args(args) -> ConvertOptions:
    """The same validated options object the Python API builds."""
    return ConvertOptions(
        input_shapes=[gc.parse_shape(s) for s in args.input_shape], inputs=args.inputs, keep_io_layout=args.keep_io_layout,
        dynamic_batch=args.dynamic_batch, dims=args.dim, heads_first=args.heads_first, plugins=args.plugin, disable_passes=args.disable_pass,
        verify=args.verify, atol=args.atol, seed=args.seed, tflite=not args.no_tflite,
        overwrite=args.overwrite, quantize=args.quantize, calibration=args.calibration, eval_data=args.eval_data,
        int8_io=args.int8_io, quant_debug=args.quant_debug,
        float_ops=args.float_ops.split(",") if args.float_ops is not None else (), min_sqnr=args.min_sqnr,
        min_top1=args.min_top1, mean=args.mean, std=args.std, size=args.size, backend=args.backend,
        onnx2tf_python=args.onnx2tf_python, free_source_model=True, explorer=args.explorer)


# terminal control sequences (colour codes and the like) some libraries put in their messages
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")


def _one_line(e: BaseException) -> str:
    """The message on one line, without terminal escape codes (torch colours parts of its export
    errors; in a log file or a batch's summary they are noise)."""
    text = getattr(e, "cli_message", None) or str(e)  # an option named as its flag (see ConvertOptions)
    return " ".join(_ESCAPES.sub("", text).split()) or type(e).__name__


def entry() -> int:
    """Console-script entry: ``main`` plus a fast exit. TensorFlow leaves a large heap and
    native threads whose teardown costs about a second at interpreter exit; every output file is
    written and closed by then (atomically), so once our streams are flushed the process ends
    at once (``GRAPH_CONVERT_NORMAL_EXIT=1`` keeps the normal interpreter exit).

    ``import tensorflow`` also imports all of Keras (and scikit-learn when installed), which the
    converter never uses: 1.5-2.5 s and ~80 MB per run. With ``TF_USE_LEGACY_KERAS=1`` and no
    ``tf_keras`` installed TensorFlow skips that import; set here for the command-line process
    only (never by the API, which must not change a user's Keras) and only when the user has not
    set it."""
    import importlib.util

    if "tensorflow" not in sys.modules and importlib.util.find_spec("tf_keras") is None:
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    rc = main()
    if os.environ.get("GRAPH_CONVERT_NORMAL_EXIT") == "1":
        return rc
    import logging

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed pipe: nothing left to say
            pass
    os._exit(rc)


if __name__ == "__main__":
    sys.exit(entry())
