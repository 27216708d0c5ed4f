"""``python -m graph_convert.cli``: the ``graph-convert`` command."""
from __future__ import annotations

import sys

from graph_convert.cli.main import entry

sys.exit(entry())
