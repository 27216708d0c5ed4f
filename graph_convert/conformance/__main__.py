"""``python -m graph_convert.conformance``: run every case, write docs/CONFORMANCE.md and the baseline."""
from __future__ import annotations

import sys

from graph_convert.conformance.table import main

sys.exit(main())
