"""Process-wide state a conversion changes, named in one place and safe for conversions running
in several threads of one process at once.

- :func:`quiet_fds`: file descriptors 1 and 2 point at /dev/null while TensorFlow's converter and
  saver and LiteRT run (their C++ logs bypass Python). Counted: the first thread in redirects, the
  last one out restores; a thread's own writes to fd 1/2 in that window are silenced too.
- :func:`quiet_python_output`: ``sys.stdout``/``sys.stderr`` swapped for a sink, Python warnings
  ignored, and the exporters' loggers (``torch.onnx``, ``torch.export``, ``torch._dynamo``, ...,
  ``onnxscript``) silenced, while torch's exporter runs (``warnings.catch_warnings`` is not safe in
  threads, so this one counted change replaces it). Counted the same way, so levels and streams always come back as they were.
- Importing the TensorFlow back end (:mod:`graph_convert.backends.tensorflow`): environment defaults
  ``TF_CPP_MIN_LOG_LEVEL=3`` and ``TF_ENABLE_ONEDNN_OPTS=0`` (``setdefault``: a user's own setting is
  kept), fd 2 pointed away during the import (Python's import lock makes it one thread's), and the
  ``tensorflow`` logger at ERROR (idempotent). ``GRAPH_CONVERT_TF_LOG=1`` leaves all of it alone.
- The command line's own process (:mod:`graph_convert.cli.session`): ``TMPDIR`` and
  ``tempfile.tempdir`` point at a private scratch folder for the run, and fd 2 at a file in it
  while stderr is not a terminal; both restored when the command returns.
- Signals: the command line installs SIGINT/SIGTERM/SIGHUP handlers (main thread only; the Python
  API installs none), and an output folder's final rename blocks them for the calling thread only
  (``pthread_sigmask``).
Nothing else a conversion does outlives it or is seen by another conversion: registries, emitter
tables and TFLite gap records are per conversion (``tests/test_architecture.py``).
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
import sys
import tempfile
import threading
import warnings
from typing import Any, Callable, Iterator

EXPORT_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript")


class Counted:
    """A process-wide change made by the first of any number of overlapping users (threads) and
    undone by the last: ``apply()`` returns what ``undo(saved)`` needs."""

    def __init__(self, apply: Callable[[], Any], undo: Callable[[Any], None]):
        self.apply, self.undo = apply, undo
        self.lock = threading.Lock()
        self.users = 0
        self.saved: Any = None

    @contextlib.contextmanager
    def __call__(self) -> Iterator[None]:
        with self.lock:
            if self.users == 0:
                self.saved = self.apply()
            self.users += 1
        try:
            yield
        finally:
            with self.lock:
                self.users -= 1
                if self.users == 0:
                    saved, self.saved = self.saved, None
                    self.undo(saved)


def _fds_to_devnull() -> tuple[int, int, int]:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a closed or replaced stream: nothing to keep in order
            stream.flush()
    saved = (os.dup(1), os.dup(2), os.open(os.devnull, os.O_WRONLY))
    os.dup2(saved[2], 1)
    os.dup2(saved[2], 2)
    return saved


def _fds_back(saved: tuple[int, int, int]) -> None:
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved:
        os.close(fd)


def _python_output_to_sink() -> tuple:
    sink = io.StringIO()
    loggers = [logging.getLogger(n) for n in EXPORT_LOGGERS]
    saved = (sys.stdout, sys.stderr, [(lg, lg.level) for lg in loggers], list(warnings.filters))
    # above CRITICAL: torch logs a failed export at ERROR through handlers bound at its import to
    # the real stderr (the sink above does not catch them), then raises; the exception is what
    # the user is told, in one line (a wrong-rank --input-shape printed two torch lines first)
    for lg in loggers:
        lg.setLevel(logging.CRITICAL + 1)
    warnings.simplefilter("ignore")
    sys.stdout = sys.stderr = sink
    return saved


def _python_output_back(saved: tuple) -> None:
    sys.stdout, sys.stderr = saved[0], saved[1]
    for lg, level in saved[2]:
        lg.setLevel(level)
    warnings.resetwarnings()  # (also tells the warnings module its filters changed)
    warnings.filters[:] = saved[3]


quiet_fds = Counted(_fds_to_devnull, _fds_back)
quiet_python_output = Counted(_python_output_to_sink, _python_output_back)


def _import_tensorflow_quietly() -> None:
    if "tensorflow" in sys.modules:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    # oneDNN's CPU allocator keeps the memory of every large tensor TensorFlow frees in a pool of
    # its own (a large model's variables stayed resident through the TFLite stage: 1.6 GB of 4.2
    # on a 1.6 GB model); without it freed tensors go back to the system. TensorFlow here only
    # checks a few draws, so its oneDNN kernels gain nothing. A user's own setting is kept.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    if os.environ.get("GRAPH_CONVERT_TF_LOG") == "1":
        import tensorflow  # noqa: F401
        return
    try:
        sys.stderr.flush()
    except Exception:  # a closed stream: nothing to keep in order
        pass
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        except BaseException:
            os.dup2(saved, 2)
            sink.seek(0)
            sys.stderr.write(sink.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def _quiet_tensorflow_python_logs() -> None:
    """TensorFlow's own Python warnings (deprecations of the ops some emitters use) are for
    TensorFlow's developers, not for our users: only its errors go through."""
    import logging

    if os.environ.get("GRAPH_CONVERT_TF_LOG") != "1":
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


def import_tensorflow() -> None:
    """Import TensorFlow with its C++ start-up log lines kept off the user's terminal: TensorFlow
    2.21 prints its oneDNN notice through absl before any log level applies
    (``TF_CPP_MIN_LOG_LEVEL`` does not reach it), so fd 2 is pointed elsewhere for the import (if
    it fails, what it printed is shown); its Python logger is then set to ERROR.
    ``GRAPH_CONVERT_TF_LOG=1`` keeps it all."""
    _import_tensorflow_quietly()
    _quiet_tensorflow_python_logs()


__all__ = ["Counted", "EXPORT_LOGGERS", "import_tensorflow", "quiet_fds", "quiet_python_output"]
