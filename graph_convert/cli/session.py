"""What one ``graph-convert`` process does to its surroundings, and undoes: a private temporary
folder, and (when stderr is not a terminal) a stderr that holds only our own line.

* **A private TMPDIR.** TensorFlow's autograph writes every converted function as
  ``$TMPDIR/__autograph_generated_file*.py`` and deletes it in an ``atexit`` hook; ONNX Runtime's
  telemetry writes ``$TMPDIR/.ses`` when it is imported; onnx2tf and the exporters make folders
  there. The command ends with ``os._exit`` (see :func:`graph_convert.cli.main.entry`), which runs
  no ``atexit`` hook, so every run left its files behind (127 after the test suite). The command
  therefore points ``TMPDIR`` (the environment, which child processes and native code read, and
  :data:`tempfile.tempdir`) at a folder of its own, ``graph-convert-scratch-*`` in the user's
  temporary folder, before anything imports TensorFlow or ONNX Runtime, and removes it when the
  run ends: after success, a failure, SIGINT, SIGTERM or SIGHUP (those become exceptions). A
  folder left by a run killed with SIGKILL is removed by the next run: each holds a lock
  (``flock``) for its owner's lifetime, and a folder whose lock is free has no owner.
* **One stderr line.** Libraries write to stderr on their own (torch's logger, with terminal
  colour codes in its exception texts; TensorFlow's C++ logging). When stderr is not a terminal
  (a file, a pipe, a batch's child), file descriptor 2 goes to a file in the scratch folder for
  the run and our messages go to the real stderr, so a script reading it sees exactly one line
  on a failure. ``--debug`` keeps everything.
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import sys
import tempfile
import time
from typing import Iterator

PREFIX = "graph-convert-scratch-"
CREATING = "graph-convert-new-"  # a scratch folder's name until its lock is taken
LOCK = ".lock"
# a folder without its lock file, or still under its CREATING name, may be one a run is creating
# this instant: left alone this long
UNLOCKED_GRACE_SECONDS = 60.0


@contextlib.contextmanager
def private_tmpdir() -> Iterator[str]:
    """TMPDIR points at a fresh folder of this process's for the duration; removed afterwards."""
    parent = tempfile.gettempdir()
    sweep(parent)
    # locked before it takes its PREFIX name: a run sweeping at this instant never finds it with
    # its lock file created and not yet taken (it took that for an orphan and removed the folder)
    new = tempfile.mkdtemp(prefix=CREATING, dir=parent)
    fd = os.open(os.path.join(new, LOCK), os.O_CREAT | os.O_RDWR, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX)
    path = os.path.join(parent, PREFIX + os.path.basename(new)[len(CREATING):])
    os.rename(new, path)
    old_env, old_tempdir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = path
    tempfile.tempdir = path
    try:
        yield path
    finally:
        tempfile.tempdir = old_tempdir
        if old_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = old_env
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def sweep(parent: str) -> list[str]:
    """Remove the scratch folders in ``parent`` whose owner is gone (its lock is free; one still
    being created: older than the grace period); the folders removed."""
    removed = []
    try:
        names = [n for n in os.listdir(parent) if n.startswith((PREFIX, CREATING))]
    except OSError:
        return removed
    for name in names:
        path = os.path.join(parent, name)
        if _orphaned(path) if name.startswith(PREFIX) else _stale(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _stale(path: str) -> bool:
    try:
        return time.time() - os.stat(path).st_mtime > UNLOCKED_GRACE_SECONDS
    except OSError:
        return False


def _orphaned(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, LOCK), os.O_RDWR)
    except FileNotFoundError:
        return _stale(path)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # its owner is running
    finally:
        os.close(fd)  # closing drops the lock we may have taken
    return True


@contextlib.contextmanager
def one_line_stderr(scratch: str, keep: bool) -> Iterator[None]:
    """When stderr is not a terminal (and not ``keep``): fd 2 writes to a file in ``scratch`` and
    ``sys.stderr`` to the real stderr, for the duration. A ``sys.stderr`` someone replaced (a test's
    capture) is left as it is."""
    try:
        real_is_tty = os.isatty(2)
    except OSError:
        real_is_tty = False
    if keep or real_is_tty:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    sink = os.open(os.path.join(scratch, "library-stderr.log"), os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
    os.dup2(sink, 2)
    os.close(sink)
    ours = sys.stderr is sys.__stderr__
    old = sys.stderr
    if ours:
        sys.stderr = io.TextIOWrapper(os.fdopen(os.dup(saved), "wb", buffering=0), encoding="utf-8", errors="replace",
                                      line_buffering=True)
    try:
        yield
    finally:
        if ours:
            sys.stderr.flush()
            sys.stderr.close()
            sys.stderr = old
        os.dup2(saved, 2)
        os.close(saved)
