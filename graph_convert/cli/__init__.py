"""The ``graph-convert`` command (:mod:`main`)."""
from __future__ import annotations

from graph_convert.cli.main import (  # noqa: F401
    EXIT_BATCH_FAILED,
    EXIT_INTERNAL,
    EXIT_PASS,
    EXIT_QUANT_THRESHOLD,
    EXIT_USAGE,
    EXIT_VERIFY,
    entry,
    main,
    options_from_args,
)
