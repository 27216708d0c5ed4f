"""One model of a batch: ``graph-convert convert`` in a process (and session) of its own, with a
timeout and a resident-memory limit over all of its processes, and its row for the summary.

A crash, an out-of-memory kill or a hang costs that model only. A model past its timeout or
memory limit gets SIGTERM (the convert then removes its temporary folder), SIGKILL if it is still
there after ``GRACE`` seconds, and any temporary folder a killed run left is removed.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

from graph_convert.batch.jobs import Job
from graph_convert.conversion.output import is_ours, remove_dead_temps

GRACE = 10.0  # seconds between SIGTERM and SIGKILL
POLL = 0.05  # how often the child is reaped (its exit noticed within this)
SAMPLE = 0.2  # how often the memory of a model with --memory-limit is sampled
# a model's status from its convert's exit code (README "Batch"); 2 splits by its message
STATUS = {0: "ok", 2: "bad input", 3: "verification failed", 4: "crashed", 5: "quality threshold", 6: "crashed"}
FAILED = ("bad input", "unsupported ops", "verification failed", "quality threshold", "timeout", "out of memory", "crashed")


def convert_command(job: Job, output: str, overwrite: bool) -> list[str]:
    return [sys.executable, "-m", "graph_convert.cli", "convert", job.source, "-o", output, "-q", *job.args] + \
        (["--overwrite"] if overwrite else [])


def session_rss(sid: int) -> int:
    """Resident bytes of every process in session ``sid`` (the convert and its children)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            if int(fields[3]) == sid:  # field 6 of stat, the session id
                total += int(fields[21]) * page  # field 24, rss in pages
        except (OSError, IndexError, ValueError):
            continue
    return total


class _Watch:
    """Waits for the child, enforcing the timeout and the memory limit."""

    def __init__(self, proc: subprocess.Popen, job: Job, stop=None):
        self.proc, self.job, self.stop = proc, job, stop
        self.killed_for: str | None = None
        self.peak = 0
        self.rusage = None
        self.status = None

    def _stop(self, why: str) -> None:
        self.killed_for = why
        for sig, wait in ((signal.SIGTERM, GRACE), (signal.SIGKILL, 30.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            end = time.monotonic() + wait
            while time.monotonic() < end:
                if self._reap():
                    return
                time.sleep(POLL)

    def _reap(self) -> bool:
        if self.status is not None:
            return True
        pid, status, ru = os.wait4(self.proc.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.status, self.rusage = status, ru
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        return True

    def wait(self) -> int:
        start = sampled = time.monotonic()
        while not self._reap():
            if self.job.memory_limit is not None and time.monotonic() - sampled >= SAMPLE:
                sampled = time.monotonic()
                rss = session_rss(self.proc.pid)
                self.peak = max(self.peak, rss)
                if rss > self.job.memory_limit:
                    self._stop("out of memory")
                    break
            if self.job.timeout is not None and time.monotonic() - start > self.job.timeout:
                self._stop("timeout")
                break
            if self.stop is not None and self.stop.is_set():
                self._stop("interrupted")
                break
            time.sleep(POLL)
        try:  # whatever is left of its session (a child the convert started)
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self.proc.returncode


def run_one(job: Job, out_root: str, *, redo: bool = False, stop=None) -> dict[str, Any]:
    """Convert ``job`` into ``out_root/job.name``; the summary row. ``stop`` (a threading.Event)
    set by the batch ends the model early (status ``interrupted``)."""
    output = os.path.join(out_root, job.name)
    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as out:
        env = dict(os.environ, GRAPH_CONVERT_PARENT_PID=str(os.getpid()))
        proc = subprocess.Popen(convert_command(job, output, redo), cwd=job.cwd, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)
        watch = _Watch(proc, job, stop)
        rc = watch.wait()
        err.seek(0)
        stderr = err.read().decode("utf-8", "replace")
    seconds = time.perf_counter() - t0
    left = remove_dead_temps(output)  # a killed run's temporary folder
    row = _row(job, rc, stderr, watch, seconds)
    if left:
        row["cleaned_temporary_folders"] = left
    if row["status"] == "ok":
        row.update(figures(output))
    return row


def _reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    if not lines:
        return ""
    last = lines[-1]
    for prefix in ("graph-convert: ", "error: "):
        last = last[len(prefix):] if last.startswith(prefix) else last
    return last


def _row(job: Job, rc: int, stderr: str, watch: _Watch, seconds: float) -> dict[str, Any]:
    reason = _reason(stderr)
    if watch.killed_for == "timeout":
        status, reason = "timeout", f"stopped after its --timeout of {job.timeout:g} s"
    elif watch.killed_for == "out of memory":
        status, reason = "out of memory", f"stopped at {watch.peak / 2**30:.2f} GiB resident, over its --memory-limit of " \
                                          f"{job.memory_limit / 2**30:.2f} GiB"
    elif watch.killed_for == "interrupted":
        status, reason = "interrupted", "the batch was stopped"
    elif rc in STATUS:
        status = STATUS[rc]
        if rc == 2 and "unsupported ops" in reason:
            status = "unsupported ops"
    else:
        status = "crashed"
        name = signal.Signals(-rc).name if rc < 0 and -rc in signal.valid_signals() else None
        why = f"killed by {name}" if name else f"exit code {rc}"
        if name == "SIGKILL":
            why += " (out of memory? the kernel's OOM killer sends it)"
        reason = f"{why}{': ' + reason if reason else ''}"
    peak = max(watch.peak, watch.rusage.ru_maxrss * 1024 if watch.rusage is not None else 0)
    tail = [ln for ln in stderr.splitlines() if ln.strip()][-20:]
    return {"name": job.name, "source": job.source, "status": status, "exit_code": rc, "reason": reason,
            "seconds": round(seconds, 2), "peak_rss_gb": round(peak / 1e9, 3), "stderr_tail": tail if status != "ok" else []}


def figures(output: str) -> dict[str, Any]:
    """TRANSPOSE ops left, the worst error (relative to each output's scale) and the .tflite size,
    from a finished output's report.json."""
    try:
        with open(os.path.join(output, "report.json")) as f:
            report = json.load(f)
    except (OSError, ValueError):
        return {}
    ver = report.get("verification", {})
    stage = next((s for s in ("tflite_float32", "tflite", "saved_model", "tensorflow") if ver.get(s)), None)
    figs = list(ver.get(stage, {}).values()) if stage else []
    worst, worst_abs = (_worst(figs, key) for key in ("max_rel", "max_abs"))
    tfl = report.get("tflite") or {}
    return {"transposes": tfl.get("transpose_ops"), "tflite_ops": tfl.get("total_ops"), "tflite_bytes": tfl.get("bytes"),
            "max_error": worst, "max_abs_error": worst_abs, "checked_stage": stage,
            "convert_seconds": (report.get("timings_seconds") or {}).get("total")}


def _worst(figs: list[dict], key: str) -> float | None:
    """The largest figure; report.json writes a non-finite one as a string ("nan", "inf")."""
    vals = [float(f[key]) for f in figs if isinstance(f, dict) and isinstance(f.get(key), (int, float, str))]
    return max(vals, key=lambda v: float("inf") if v != v else v) if vals else None


def finished(out_root: str, name: str) -> bool:
    """A complete output of an earlier run (nothing is written unless every check passed)."""
    path = os.path.join(out_root, name)
    return os.path.isdir(path) and not os.path.islink(path) and is_ours(path) and os.path.isfile(os.path.join(path, "report.json"))
