"""``graph-convert batch``: many models, each converted in a process of its own, into
OUTROOT/<name>/ (exactly what ``convert`` writes), with OUTROOT/summary.json and summary.md.

Engines: ``local`` (a pool of ``jobs`` processes on this machine, the default) and ``ray``
(:mod:`graph_convert.batch.ray_engine`, Ray tasks on an existing cluster). A model already
converted by an earlier batch into the same OUTROOT is skipped unless its source file or its
options changed (then it is redone) or ``overwrite`` is set.
"""
from __future__ import annotations

import concurrent.futures as cf
import os
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from graph_convert.batch import summary as summ
from graph_convert.batch.jobs import Collector, Job, parse_size, parse_timeout
from graph_convert.batch.runner import figures, finished, run_one
from graph_convert.errors import ConvertError
from graph_convert.conversion.report import json_safe

__all__ = ["BatchResult", "Collector", "Job", "convert_batch", "parse_size", "parse_timeout", "run_batch"]


@dataclass
class BatchResult:
    out_root: str
    rows: list[dict[str, Any]]
    totals: dict[str, Any]
    summary: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.totals["failed"] == 0

    def table(self) -> str:
        """The per-model table and the totals line, as printed and as in summary.md."""
        return summ.text_table(self.rows) + "\n" + summ.totals_line(self.totals)


@dataclass
class Plan:
    """What a batch will do: rows already done (skipped), and the jobs to run (with ``redo``)."""

    skipped: dict[str, dict[str, Any]]
    todo: list[tuple[Job, str]]  # (job, "ran" | "redone")
    fingerprints: dict[str, str]  # of the sources as they were when the batch started


def plan(jobs: list[Job], out_root: str, overwrite: bool) -> Plan:
    prev = summ.previous(out_root)
    skipped, todo, fps = {}, [], {}
    for job in jobs:
        fp = fps[job.name] = job.fingerprint()
        if not finished(out_root, job.name):
            todo.append((job, "ran"))
        elif overwrite or (job.name in prev and prev[job.name].get("fingerprint") != fp):
            todo.append((job, "redone"))
        else:
            row = dict(prev.get(job.name) or {"name": job.name, "source": job.source, "status": "ok", "exit_code": 0,
                                               "reason": "", "seconds": None})
            row.update({"run": "skipped", "fingerprint": fp, "reason": "converted and verified by an earlier run"})
            row.update(figures(os.path.join(out_root, job.name)))
            skipped[job.name] = row
    return Plan(skipped, todo, fps)


def run_local(todo: list[tuple[Job, str]], out_root: str, parallel: int, progress, stop: threading.Event,
              rows: dict[str, dict]) -> None:
    """Each job's convert in its own process, ``parallel`` at a time; ``rows`` filled as they end
    (also when a signal stops the batch)."""

    def one(job: Job, run: str) -> dict:
        if stop.is_set():
            return _not_run(job)
        progress.started(job.name)
        return run_one(job, out_root, redo=run == "redone", stop=stop)

    with cf.ThreadPoolExecutor(max_workers=max(1, parallel), thread_name_prefix="batch") as pool:
        futures = {pool.submit(one, job, run): (job, run) for job, run in todo}
        try:
            pending = set(futures)
            while pending:
                done, pending = cf.wait(pending, timeout=0.5, return_when=cf.FIRST_COMPLETED)
                for fut in done:
                    job, run = futures[fut]
                    row = fut.result()
                    row["run"] = run if row["status"] != "not run" else "not run"
                    rows[job.name] = row
                    if row["status"] != "not run":
                        progress.finished(row)
        except BaseException:
            stop.set()  # the children get SIGTERM and remove their temporary folders
            for fut in futures:
                fut.cancel()
            cf.wait(list(futures))
            for fut, (job, run) in futures.items():
                if fut.done() and not fut.cancelled() and job.name not in rows:
                    rows[job.name] = dict(fut.result(), run=run)
            raise
        finally:
            _fill_not_run(todo, rows)


def _not_run(job: Job) -> dict:
    return {"name": job.name, "source": job.source, "status": "not run", "exit_code": None,
            "reason": "the batch was stopped before it started", "seconds": None}


def _fill_not_run(todo, rows: dict) -> None:
    for job, _ in todo:
        rows.setdefault(job.name, dict(_not_run(job), run="not run"))


class _Rows(dict):
    """The rows of the models that ended, by name; each new one may rewrite the summary (at most
    every ``CHECKPOINT`` seconds), so a batch killed outright still leaves one."""

    def __init__(self, write: Callable[[], None]):
        super().__init__()
        self._write, self._last = write, -CHECKPOINT  # the first row is written at once

    def __setitem__(self, key, value) -> None:
        super().__setitem__(key, value)
        if time.monotonic() - self._last >= CHECKPOINT:
            self._last = time.monotonic()
            self._write()


CHECKPOINT = 5.0


def run_batch(jobs: list[Job], out_root: str, *, engine: str = "local", parallel: int = 1, overwrite: bool = False,
              progress=None, ray_options: dict[str, Any] | None = None, on_plan: Callable[[Plan], None] | None = None) -> BatchResult:
    """Convert ``jobs`` into ``out_root`` and write its summary (also when stopped by a signal,
    which is re-raised once the running models are stopped)."""
    from graph_convert.progress import BatchProgress

    out_root = os.path.abspath(out_root)
    if os.path.lexists(out_root) and not os.path.isdir(out_root):
        raise ConvertError(f"batch output {out_root}: exists and is not a folder")
    the_plan = plan(jobs, out_root, overwrite)
    progress = progress or BatchProgress("silent", len(the_plan.todo), parallel)
    if on_plan is not None:
        on_plan(the_plan)
    os.makedirs(out_root, exist_ok=True)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    t0 = time.perf_counter()
    stop = threading.Event()
    rows = _Rows(lambda: _finish(jobs, the_plan, rows, out_root, engine, parallel, started, time.perf_counter() - t0))
    try:
        if engine == "ray":
            from graph_convert.batch.ray_engine import run_ray

            run_ray(the_plan.todo, out_root, rows, progress=progress, stop=stop, **(ray_options or {}))
        elif engine == "local":
            run_local(the_plan.todo, out_root, parallel, progress, stop, rows)
        else:
            raise ConvertError(f"--engine {engine!r}: choose local or ray")
    finally:
        progress.close()
        _fill_not_run(the_plan.todo, rows)
        result = _finish(jobs, the_plan, rows, out_root, engine, parallel, started, time.perf_counter() - t0)
    return result


def _finish(jobs, the_plan: Plan, rows: dict, out_root: str, engine: str, parallel: int, started: str, wall: float) -> BatchResult:
    """Write the summary: every model's row (one still running or waiting is ``not run``)."""
    ordered = []
    for job in jobs:
        row = the_plan.skipped.get(job.name) or rows.get(job.name) or \
            dict(_not_run(job), run="not run", reason="not finished when this summary was written")
        row.setdefault("fingerprint", the_plan.fingerprints.get(job.name))
        row["output"] = job.name if finished(out_root, job.name) and row["status"] == "ok" else None
        row["origin"] = job.origin
        ordered.append(row)
    tot = summ.totals(ordered, wall)
    summary = {"tool": summ.TOOL, "engine": engine, "jobs": parallel, "started": started,
               "out_root": out_root, "totals": tot, "models": ordered}
    summ.write(out_root, json_safe(summary))
    return BatchResult(out_root, ordered, tot, summary)


def convert_batch(inputs: list[str], output: str, *, args: list[str] | tuple = (), jobs: int = 1, timeout: float | None = None,
                  memory_limit: int | None = None, engine: str = "local", overwrite: bool = False, display: str = "silent",
                  check_args: Callable[[list[str], str], None] | None = None, ray_options: dict[str, Any] | None = None,
                  stream=None) -> BatchResult:
    """The batch behind ``graph-convert batch``: ``inputs`` as on its command line, ``args`` the
    convert options every model gets (a manifest line adds its own), ``display`` ``silent``,
    ``plain`` or ``live``. ``check_args(argv, where)`` validates a model's convert options before
    any work (the CLI passes its parser)."""
    from graph_convert.progress import BatchProgress

    if jobs < 1:
        raise ConvertError(f"jobs {jobs!r}: must be at least 1")  # the CLI checks its --jobs itself (_positive_int)
    coll = Collector(list(args), check_args or (lambda argv, where: None), timeout, memory_limit, exclude=output)
    for item in inputs:
        coll.add(item)
    job_list = coll.finish()
    if engine == "ray":  # before anything is written or shown: an unreachable cluster is one line
        from graph_convert.batch.ray_engine import connect

        connect((ray_options or {}).get("address"))
    progress = BatchProgress(display, 0, jobs, stream)

    def begin(p: Plan) -> None:
        progress.total = len(p.todo)
        at_once = f"{jobs} at a time" if engine == "local" else "as Ray tasks"
        progress.begin(f"batch: {len(job_list)} model{'s' if len(job_list) != 1 else ''}: {len(p.skipped)} already done, {len(p.todo)} to convert, "
                       f"{at_once} (engine {engine}) -> {os.path.abspath(output)}")

    return run_batch(job_list, output, engine=engine, parallel=jobs, overwrite=overwrite, progress=progress,
                     ray_options=ray_options, on_plan=begin)
