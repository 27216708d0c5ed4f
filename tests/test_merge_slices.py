"""merge_slices: Slices that cut different axes of one tensor become one Slice per reader
(Swin's patch merging, x[:, 0::2, 1::2]); the result is ORT-equivalent, and Slices that cut the
same axis, or feed anything else, are left alone."""
from __future__ import annotations

import numpy as np

from tests.helpers import Builder, assert_equivalent, run_pipeline


def _i64(*v):
    return np.array(v, np.int64)


def _slice(b: Builder, x: str, start: int, end: int, axis: int, step: int) -> str:
    return b.op("Slice", [x, b.const(_i64(start), dtype=np.int64), b.const(_i64(end), dtype=np.int64),
                          b.const(_i64(axis), dtype=np.int64), b.const(_i64(step), dtype=np.int64)])


def test_patch_merging_slices_become_one_per_quadrant():
    b = Builder(opset=17)
    x = b.input("x", [2, 7, 8, 5])
    rows = [_slice(b, x, r, 2**62, 1, 2) for r in (0, 1)]
    quads = [_slice(b, r, c, 2**62, -2, 2) for r in rows for c in (0, 1)]  # negative axis too
    for q in quads:  # odd sizes: the quadrants differ in shape
        b.output(q)
    model = b.model()
    g, records = run_pipeline(model, keep_io_layout=True)
    rec = [r for r in records if r.name == "merge_slices"][0]
    assert rec.changed and rec.details == {"merged": 4}
    assert g.count("Slice") == 4
    assert_equivalent(model, g, atol=0)


def test_same_axis_or_other_readers_are_left_alone():
    b = Builder(opset=17)
    x = b.input("x", [4, 9, 6])
    a = _slice(b, x, 1, 8, 1, 1)
    b.output(_slice(b, a, -1, -9, 1, -3))  # the same axis again: not merged
    c = _slice(b, x, 0, 3, 0, 1)
    b.output(_slice(b, c, 1, 5, 2, 2))
    b.output(b.op("Relu", [c]))  # c has a reader that is not a Slice: merging would add work
    model = b.model()
    g, records = run_pipeline(model, keep_io_layout=True)
    assert g.count("Slice") == 4
    assert not [r for r in records if r.name == "merge_slices"][0].changed
    assert_equivalent(model, g, atol=0)
