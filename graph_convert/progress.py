"""What a long run shows while it works: a live display (rich) when stdout is a terminal, plain
lines when it is not (a log file, a CI job), nothing with ``-q``.

- :class:`StageProgress`: one ``convert``, the stage running and its elapsed time.
- :class:`BatchProgress`: a ``batch``, models done / running / failed and the time left.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Any, TextIO


def mode_for(quiet: bool, stream: TextIO | None = None) -> str:
    """``silent`` with -q, ``live`` on a terminal, else ``plain``."""
    if quiet:
        return "silent"
    stream = stream or sys.stdout
    try:
        tty = stream.isatty()
    except (AttributeError, ValueError):
        tty = False
    return "live" if tty else "plain"


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class StageProgress:
    """Called by the pipeline as ``progress(event, stage)``, event ``start`` or ``end``."""

    def __init__(self, mode: str, stream: TextIO | None = None):
        self.mode, self.stream = mode, stream or sys.stdout
        self.t0 = time.perf_counter()
        self._started: dict[str, float] = {}
        self._live = None
        self._task = None

    def __call__(self, event: str, name: str) -> None:
        now = time.perf_counter()
        if event == "start":
            self._started[name] = now
            if self.mode == "live":
                self._show(name)
        elif event == "end" and self.mode == "plain":
            took = now - self._started.get(name, now)
            print(f"[{_clock(now - self.t0)}] {name}: {took:.1f} s", file=self.stream, flush=True)

    def _show(self, name: str) -> None:
        from rich.console import Console
        from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        if self._live is None:
            self._live = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                                  console=Console(file=self.stream), transient=True)
            self._live.start()
        if self._task is not None:
            self._live.remove_task(self._task)
        self._task = self._live.add_task(f"convert: {name}", total=None)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None


class BatchProgress:
    """Models done, running and failed, with an estimate of the time left."""

    def __init__(self, mode: str, total: int, jobs: int, stream: TextIO | None = None):
        self.mode, self.total, self.jobs = mode, total, jobs
        self.stream = stream or sys.stdout
        self.done = self.failed = self.running = 0
        self.t0 = time.perf_counter()
        self._lock = threading.Lock()
        self._durations: list[float] = []
        self._live = self._task = None

    def begin(self, line: str) -> None:
        if self.mode == "silent":
            return
        print(line, file=self.stream, flush=True)
        if self.mode == "live" and self.total:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._live = Progress(SpinnerColumn(), TextColumn("batch"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("running {task.fields[running]}, failed {task.fields[failed]}"),
                                  TimeElapsedColumn(), TextColumn("{task.fields[left]}"),
                                  console=Console(file=self.stream), transient=True)
            self._live.start()
            self._task = self._live.add_task("batch", total=self.total, running=0, failed=0, left="")

    def left(self) -> float | None:
        """Seconds left: the mean time per model so far, over the models to go, ``jobs`` at a time."""
        if not self._durations:
            return None
        per = sum(self._durations) / len(self._durations)
        to_go = self.total - self.done
        return per * to_go / max(1, min(self.jobs, to_go or 1))

    def started(self, name: str) -> None:
        with self._lock:
            self.running += 1
            self._refresh()

    def finished(self, row: dict[str, Any]) -> None:
        with self._lock:
            self.running = max(0, self.running - 1)
            self.done += 1
            self.failed += row["status"] != "ok"
            if row.get("seconds") is not None:
                self._durations.append(row["seconds"])
            line = self._line(row)
            if self.mode == "plain":
                print(line, file=self.stream, flush=True)
            elif self.mode == "live":
                self._live.console.print(line, markup=False, highlight=False)
            self._refresh()

    def _line(self, row: dict[str, Any]) -> str:
        figs = ""
        if row["status"] == "ok":
            t = row.get("transposes")
            err = row.get("max_error")
            figs = (f"  TRANSPOSE {t if t is not None else '-'}" + (f"  max err/scale {err:.1e}" if isinstance(err, float) else ""))
        else:
            figs = f"  {row.get('reason', '')}"
        left = self.left()
        eta = f"  ({_clock(left)} left)" if left is not None and self.done < self.total else ""
        width = len(str(self.total))
        took = f"{row['seconds']:.1f} s" if isinstance(row.get("seconds"), (int, float)) else "-"
        return f"[{self.done:>{width}}/{self.total}] {row['status']:<19} {row['name']}  {took}{figs}{eta}"

    def _refresh(self) -> None:
        if self._live is not None:
            left = self.left()
            self._live.update(self._task, completed=self.done, running=self.running, failed=self.failed,
                              left=f"~{_clock(left)} left" if left is not None else "")

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
