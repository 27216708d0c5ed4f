"""TensorFlow side: the emitter (IR -> tf.function), SavedModel and TFLite writers and runners.

Importing this package imports TensorFlow with its C++ start-up log lines kept off the user's
terminal: TensorFlow 2.21 prints its oneDNN notice through absl before any log level applies
(``TF_CPP_MIN_LOG_LEVEL`` does not reach it), so file descriptor 2 is pointed elsewhere for the
import. If the import fails, what it printed is shown. ``GRAPH_CONVERT_TF_LOG=1`` keeps it all.
"""
from __future__ import annotations

import os
import sys
import tempfile


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


_import_tensorflow_quietly()


def _quiet_tensorflow_python_logs() -> None:
    """TensorFlow's own Python warnings (deprecations of the ops some emitters use) are for
    TensorFlow's developers, not for our users: only its errors go through."""
    import logging

    if os.environ.get("GRAPH_CONVERT_TF_LOG") != "1":
        logging.getLogger("tensorflow").setLevel(logging.ERROR)


_quiet_tensorflow_python_logs()
