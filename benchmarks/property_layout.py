"""Property-based run of the layout machinery: N random networks (tests/netgen.py) through the
whole pipeline; prints a table of outcomes. Usage: python benchmarks/property_layout.py [N]"""
from __future__ import annotations

import os
import sys
import time
from collections import Counter

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from hypothesis import HealthCheck, given, settings  # noqa: E402

from tests.netgen import networks  # noqa: E402
from tests.test_property import check_network  # noqa: E402


def main(n: int) -> int:
    stats = Counter()
    ranks = Counter()
    kinds = Counter()
    worst = [0.0]
    failing: list = []
    t0 = time.perf_counter()

    @settings(max_examples=n, deadline=None, derandomize=False, database=None,
              suppress_health_check=list(HealthCheck))
    @given(networks())
    def run(net):
        stats["examples"] += 1
        ranks[net["rank"]] += 1
        kinds.update(s["kind"] for s in net["layers"])
        try:
            rep = check_network(net)
        except Exception:
            failing.append(net)  # hypothesis shrinks: the last one recorded is the minimal example
            raise
        stats["tflite_transposes"] += rep["tflite"]["transpose_ops"]
        worst[0] = max(worst[0], max(f["max_abs"] for f in rep["verification"]["tflite_float32"].values()))

    failed = None
    try:
        run()
    except Exception as e:  # hypothesis re-raises the shrunk failure
        failed = e
    dt = time.perf_counter() - t0
    print(f"examples run      {stats['examples']}")
    print(f"ranks             {dict(sorted(ranks.items()))}")
    print(f"layer kinds       {dict(sorted(kinds.items()))}")
    print(f"TRANSPOSE total   {stats['tflite_transposes']}")
    print(f"worst TFLite err  {worst[0]:.2e}")
    print(f"time              {dt:.0f} s ({dt / max(stats['examples'], 1):.2f} s/example)")
    print(f"result            {'FAILED: ' + str(failed)[:2000] if failed else 'no failure'}")
    if failing:
        print(f"minimal failing network (paste into tests/test_property.py regressions):\n{failing[-1]!r}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
