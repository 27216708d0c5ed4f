"""A small run of benchmarks/fuzz.py: mutated models through the real CLI end cleanly, never
pass a wrong model and leave nothing beside the output (10-20 s on 2 cores)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = os.path.join(ROOT, "benchmarks", "fuzz.py")
BUILT = "conv_chain,residual,attention,multi_io,misc,spelled,dynamic,sequence"  # no torch export


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_under_test", FUZZ)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fuzz_run_holds_the_three_properties(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, FUZZ, "12", "--seed", "7", "--jobs", "1", "--bases", BUILT,
                           "--keep-failures", str(tmp_path / "failures")],
                          capture_output=True, text=True, env=env, timeout=600)
    report = proc.stdout + proc.stderr[-4000:]
    assert "12 mutations" in proc.stdout, report
    assert "property failures: 0 (none)" in proc.stdout, report
    assert proc.returncode == 0, report


def test_mutations_are_reproducible_from_seed_and_index():
    fz = _fuzz_module()
    bases = fz.load_bases(["conv_chain", "attention"], lambda m: None)
    for i in range(30):
        assert fz.make_mutation(3, i, bases) == fz.make_mutation(3, i, bases)
    assert len({fz.make_mutation(3, i, bases)[1] for i in range(30)}) > 5  # many kinds, not one


def test_comparison_is_scale_aware():
    fz = _fuzz_module()
    ref = np.linspace(-1e-6, 1e-6, 50, dtype=np.float32)
    assert fz.compare("y", ref, ref + np.float32(1e-13)) is None
    assert "cosine" in fz.compare("y", ref, -ref) or "max abs" in fz.compare("y", ref, -ref)  # tiny but wrong
    assert "NaN" in fz.compare("y", np.array([1.0, np.nan], np.float32), np.array([1.0, 2.0], np.float32))
    assert fz.compare("y", np.array([np.inf, 1.0], np.float32), np.array([np.inf, 1.0], np.float32)) is None
    assert "shape" in fz.compare("y", np.zeros((1, 2), np.float32), np.zeros((2, 1), np.float32))
