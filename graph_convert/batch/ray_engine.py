"""``batch --engine ray``: each model a Ray task on an existing cluster (or a local instance
started for the run when no address is given), with CPU and memory requests, retried when its
worker dies; the rows come back to the driver, which writes the summary.

How outputs reach OUTROOT (``--ray-transfer``):

- ``bytes`` (default): the driver ships the source file (with its external-data files) and the
  files named by --inputs / --calibration / --eval-data to the task; the task converts into a
  private folder on its node and returns the output folder as a tar archive; the driver puts it
  in place with the same atomic, never-replace-what-is-not-ours rules as ``convert``. It works on
  any cluster, with no shared filesystem, and the driver stays the only writer of OUTROOT.
- ``shared``: OUTROOT and the sources are on a filesystem every node mounts at the same path;
  the task's convert writes OUTROOT/<name> directly (no copy through the object store: for
  models of several GB).
"""
from __future__ import annotations

import fcntl
import io
import os
import shutil
import tarfile
import tempfile
import threading
from typing import Any

from graph_convert.batch.jobs import Job, source_file
from graph_convert.batch.runner import figures, run_one
from graph_convert.errors import ConvertError
from graph_convert.conversion.output import OutputDir, OutputError, remove_if_unlocked

FILE_OPTIONS = ("--inputs", "--calibration", "--eval-data")
BASE_MEMORY = 2 << 30  # bytes a small conversion needs (TensorFlow, ONNX Runtime, torch imported)


def memory_request(job: Job) -> int:
    """The task's memory request: its --memory-limit, else 2 GiB plus 4x the source file."""
    if job.memory_limit is not None:
        return job.memory_limit
    path = source_file(job.source)
    size = os.path.getsize(path) if path and os.path.isfile(path) else 0
    return BASE_MEMORY + 4 * size


def shipped(job: Job) -> tuple[Job, dict[str, str]]:
    """The job as a worker runs it (paths relative to its private folder) and the files to ship
    there, by their name inside the payload."""
    files: dict[str, str] = {}
    src = job.source
    path = source_file(src)
    if path is not None:
        files["source/" + os.path.basename(path)] = path
        src = "source/" + os.path.basename(path) + src[len(path):]
        if path.endswith(".onnx"):
            for rel in _external_files(path):
                files["source/" + rel] = os.path.join(os.path.dirname(path), rel)
    args, it, n = [], iter(job.args), 0
    for a in it:
        key, eq, val = a.partition("=")
        if key not in FILE_OPTIONS:
            args.append(a)
            continue
        val = val if eq else next(it, "")
        full = os.path.join(job.cwd, val)
        if os.path.exists(full):
            n += 1
            val = f"opt{n}/{os.path.basename(full.rstrip(os.sep))}"
            files[val] = full
        args += [key, val]
    return Job(job.name, src, args, ".", job.timeout, job.memory_limit, job.origin), files


def _external_files(path: str) -> list[str]:
    import onnx

    try:
        model = onnx.load(path, load_external_data=False)
    except Exception:  # the convert names what is wrong with the file
        return []
    names = set()
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            loc = next((e.value for e in t.external_data if e.key == "location"), None)
            if loc and os.path.isfile(os.path.join(os.path.dirname(path), loc)):
                names.add(os.path.normpath(loc))
    return sorted(n for n in names if not n.startswith(".."))


def _pack(files: dict[str, str]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, path in sorted(files.items()):
            tar.add(path, arcname=name)
    return buf.getvalue()


def _unpack(data: bytes, into: str) -> None:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(into, filter="data")


def _private_dir() -> tuple[str, int]:
    """A locked folder for one task; folders of tasks whose worker died (lock free) are removed."""
    base = os.path.join(tempfile.gettempdir(), "graph-convert-ray")
    os.makedirs(base, exist_ok=True)
    for entry in os.listdir(base):
        remove_if_unlocked(os.path.join(base, entry))
    path = tempfile.mkdtemp(dir=base)
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return path, fd


def task(job: Job, out_root: str | None, redo: bool, payload: bytes | None, source: str) -> tuple[dict, bytes | None]:
    """Runs on a Ray worker. ``out_root`` None: bytes transfer (the job's paths are relative to
    a private folder here, the payload fills it, and the output comes back as a tar)."""
    if out_root is not None:
        return run_one(job, out_root, redo=redo), None
    root, fd = _private_dir()
    try:
        if payload:
            _unpack(payload, root)
        out_root = os.path.join(root, "out")
        os.mkdir(out_root)
        row = run_one(Job(job.name, job.source, job.args, root, job.timeout, job.memory_limit, job.origin), out_root)
        row["source"] = source
        data = None
        if row["status"] == "ok":
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                tar.add(os.path.join(out_root, job.name), arcname=".")
            data = buf.getvalue()
        return row, data
    finally:
        shutil.rmtree(root, ignore_errors=True)
        os.close(fd)


def place(out_root: str, name: str, data: bytes, redo: bool) -> None:
    """Put a returned output folder in place, exactly as ``convert`` would have."""
    out = OutputDir(os.path.join(out_root, name), overwrite=redo)
    work = out.prepare()
    try:
        _unpack(data, work)
        out.commit(os.listdir(work))
    finally:
        out.discard()


def _reachable(address: str) -> None:
    """A ``host:port`` address that nothing answers on is one clear line at once (Ray itself
    retries for minutes)."""
    import re
    import socket

    m = re.fullmatch(r"(?:ray://)?\[?([^\]]+?)\]?:(\d+)", address)
    if not m:
        return  # "auto", "local", or a form Ray resolves itself
    try:
        socket.create_connection((m.group(1), int(m.group(2))), timeout=5).close()
    except OSError as e:
        raise ConvertError(f"--ray-address {address}: cannot connect to a Ray cluster there ({e.strerror or e})") from None


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (RAY_ADDRESS when None, else a local instance for the run)."""
    try:
        import ray
    except ImportError:
        raise ConvertError("--engine ray: Ray is not installed (pip install 'graph-convert[ray]')") from None
    if ray.is_initialized():
        return
    import logging

    if address:
        _reachable(address)

    try:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, include_dashboard=False,
                 logging_level=logging.ERROR, configure_logging=False)
    except ConnectionError as e:
        raise ConvertError(f"--ray-address {address}: cannot connect to a Ray cluster there ({' '.join(str(e).split())[:200]})") from None


def _largest_node() -> tuple[float, float]:
    """(CPUs, memory bytes) of the largest live node: a request above them would wait forever."""
    import ray

    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return (max((n.get("CPU", 0.0) for n in nodes), default=0.0), max((n.get("memory", 0.0) for n in nodes), default=0.0))


def _unschedulable(job: Job, run: str, need: int, have: float) -> dict[str, Any]:
    return {"name": job.name, "source": job.source, "status": "out of memory", "exit_code": None, "run": run, "seconds": None,
            "reason": f"its Ray task would request {need / 2**30:.1f} GiB of memory and the largest node offers "
                      f"{have / 2**30:.1f} GiB (--memory-limit sets the request)"}


def _failed_row(job: Job, error: BaseException, retries: int) -> dict[str, Any]:
    first = " ".join(str(error).split())[:300]
    died = type(error).__name__ in ("WorkerCrashedError", "NodeDiedError", "OutOfMemoryError", "ActorDiedError")
    why = f"its Ray worker died {retries + 1} times" if died else "its Ray task failed"
    return {"name": job.name, "source": job.source, "status": "crashed", "exit_code": None,
            "reason": f"{why} ({type(error).__name__}: {first})", "seconds": None}


def run_ray(todo: list[tuple[Job, str]], out_root: str, rows: dict[str, dict], *, progress, stop: threading.Event, address: str | None = None,
            transfer: str = "bytes", retries: int = 2, cpus: float = 1.0) -> dict[str, dict]:
    """Submit every job as a Ray task and gather the rows into ``rows`` as they finish."""
    import ray

    connect(address)
    remote = ray.remote(task)
    refs: dict[Any, tuple[Job, str]] = {}
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))  # what can run at once: the rest waits
    node_cpus, node_memory = _largest_node()
    if cpus > node_cpus:
        raise ConvertError(f"--cpus-per-model {cpus:g}: the largest Ray node has {node_cpus:g} CPUs")
    for job, run in todo:
        need = memory_request(job)
        if need > node_memory:
            rows[job.name] = row = _unschedulable(job, run, need, node_memory)
            progress.finished(row)
            continue
        opts = {"num_cpus": cpus, "memory": need, "max_retries": retries, "retry_exceptions": False}
        if transfer == "shared":
            ref = remote.options(**opts).remote(job, out_root, run == "redone", None, job.source)
        else:
            local, files = shipped(job)
            ref = remote.options(**opts).remote(local, None, False, _pack(files), job.source)
        refs[ref] = (job, run)
        if len(refs) <= slots:
            progress.started(job.name)
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in done:
                job, run = refs[ref]
                rows[job.name] = row = _gather(ray, ref, job, run, out_root, transfer, retries)
                progress.finished(row)
                if len(pending) >= slots:
                    progress.started(refs[pending[slots - 1]][0].name)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
            job, run = refs[ref]
            rows[job.name] = {"name": job.name, "source": job.source, "status": "interrupted", "exit_code": None,
                              "reason": "the batch was stopped", "seconds": None, "run": run}
        raise


def _gather(ray, ref, job: Job, run: str, out_root: str, transfer: str, retries: int) -> dict[str, Any]:
    try:
        row, data = ray.get(ref)
    except ray.exceptions.RayError as e:
        return dict(_failed_row(job, e, retries), run=run)
    row["run"] = run
    if data is not None:
        try:
            place(out_root, job.name, data, run == "redone")
        except OutputError as e:
            row.update(status="bad input", exit_code=2, reason=" ".join(str(e).split()))
            return row
    if row["status"] == "ok" and transfer != "shared":
        row.update(figures(os.path.join(out_root, job.name)))
    return row
