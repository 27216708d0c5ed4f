"""Exhaustive tests of the permutation arithmetic in :mod:`graph_convert.ir.perm` (ranks 1-6)."""
from __future__ import annotations

import doctest
import itertools
import math

import numpy as np
import pytest

from graph_convert.ir import perm as P
RANKS = range(1, 7)
# distinct sizes so that an axis of an array is identified by its size alone
DISTINCT = (2, 3, 4, 5, 6, 7)


def all_perms(rank: int) -> list[tuple[int, ...]]:
    return list(itertools.permutations(range(rank)))


def test_doctests_pass() -> None:
    """The worked examples in perm.py's docstrings are correct and run as doctests."""
    failing = []
    runner = doctest.DocTestRunner(verbose=False, optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(P):
        r = runner.run(test, out=lambda _text: None)
        if r.failed:
            failing.append(test.name.rsplit(".", 1)[-1])
    assert runner.tries > 0, "perm.py lost its worked examples"
    result = doctest.testmod(P, verbose=False, report=False)
    assert result.failed == 0, (
        f"BUG in graph_convert/ir/perm.py: doctests of {failing} fail; a docstring that starts with "
        "'>>>' right after the quotes has indent 0, so its indented expected output never matches"
    )


@pytest.mark.parametrize("rank", RANKS)
def test_identity_and_is_identity(rank: int) -> None:
    ident = P.identity(rank)
    assert ident == tuple(range(rank))
    perms = all_perms(rank)
    assert [p for p in perms if P.is_identity(p)] == [ident]


@pytest.mark.parametrize("rank", RANKS)
def test_invert_is_an_involution_and_undoes(rank: int) -> None:
    ident = P.identity(rank)
    for p in all_perms(rank):
        inv = P.invert(p)
        assert sorted(inv) == list(range(rank))
        assert P.invert(inv) == p
        assert P.compose(p, inv) == ident, p
        assert P.compose(inv, p) == ident, p


@pytest.mark.parametrize("rank", RANKS)
def test_compose_identities_for_every_pair(rank: int) -> None:
    """compose/invert laws over all (p, q); the semantics are pinned by transposing labelled axes
    (apply_to_shape is checked against numpy below)."""
    perms = all_perms(rank)
    ident = P.identity(rank)
    labels = tuple(f"a{i}" for i in range(rank))
    invs = {p: P.invert(p) for p in perms}
    for p in perms:
        assert P.compose(p, ident) == p
        assert P.compose(ident, p) == p
        once = P.apply_to_shape(labels, p)
        for q in perms:
            pq = P.compose(p, q)
            assert P.apply_to_shape(once, q) == P.apply_to_shape(labels, pq), (p, q)
            assert invs[pq] == P.compose(invs[q], invs[p]), (p, q)


@pytest.mark.parametrize("rank", [1, 2, 3, 4])
def test_compose_matches_numpy_for_every_pair(rank: int) -> None:
    x = np.arange(math.prod(DISTINCT[:rank])).reshape(DISTINCT[:rank])
    perms = all_perms(rank)
    for p in perms:
        xp = np.transpose(x, p)
        for q in perms:
            np.testing.assert_array_equal(np.transpose(xp, q), np.transpose(x, P.compose(p, q)))


@pytest.mark.parametrize("rank", [3, 4, 5])
def test_compose_associative(rank: int) -> None:
    perms = all_perms(rank)
    rng = np.random.default_rng(rank)
    for _ in range(2000):
        p, q, r = (perms[i] for i in rng.integers(0, len(perms), 3))
        assert P.compose(P.compose(p, q), r) == P.compose(p, P.compose(q, r))


@pytest.mark.parametrize("rank", RANKS)
def test_apply_to_shape_matches_numpy(rank: int) -> None:
    shape = DISTINCT[:rank]
    x = np.arange(math.prod(shape)).reshape(shape)
    for p in all_perms(rank):
        y = np.transpose(x, p)
        assert P.apply_to_shape(shape, p) == y.shape
        # symbolic dims travel with their axis
        sym = tuple(f"d{i}" for i in range(rank))
        assert P.apply_to_shape(sym, p) == tuple(f"d{s - 2}" for s in y.shape)


@pytest.mark.parametrize("rank", RANKS)
def test_remap_axis_matches_numpy(rank: int) -> None:
    shape = DISTINCT[:rank]
    x = np.arange(math.prod(shape)).reshape(shape)
    for p in all_perms(rank):
        y = np.transpose(x, p)
        for axis in range(-rank, rank):
            a = P.remap_axis(axis, p)
            assert 0 <= a < rank
            assert y.shape[axis] == x.shape[a], (p, axis)
            # element-wise: index k along ``axis`` of y is index k along ``a`` of x
            k = shape[a] - 1
            np.testing.assert_array_equal(np.take(y, k, axis=axis), np.transpose(np.take(x, k, axis=a), _drop_axis(p, axis % rank)))


def _drop_axis(p: tuple[int, ...], i: int) -> tuple[int, ...]:
    """Perm acting on the remaining axes after removing axis ``i`` of the output (``p[i]`` of the input)."""
    removed = p[i]
    return tuple(a - (a > removed) for j, a in enumerate(p) if j != i)


@pytest.mark.parametrize("rank", range(2, 7))
def test_channels_last_and_first(rank: int) -> None:
    cl, cf = P.channels_last(rank), P.channels_first(rank)
    assert P.compose(cl, cf) == P.identity(rank)
    assert P.compose(cf, cl) == P.identity(rank)
    assert P.invert(cl) == cf
    nc = ("N", "C", *(f"S{i}" for i in range(rank - 2)))
    assert P.apply_to_shape(nc, cl) == ("N", *nc[2:], "C")
    assert P.apply_to_shape(P.apply_to_shape(nc, cl), cf) == nc
    shape = DISTINCT[:rank]
    x = np.arange(math.prod(shape)).reshape(shape)
    np.testing.assert_array_equal(np.moveaxis(x, 1, -1), np.transpose(x, cl))
    # the channel axis of the NC... view is the last axis of the N...C tensor
    assert P.remap_axis(1, cf) == rank - 1


def _numpy_preserves(shape: tuple[int, ...], p: tuple[int, ...]) -> bool:
    x = np.arange(math.prod(shape)).reshape(shape)
    return bool(np.array_equal(np.transpose(x, p).reshape(-1), x.reshape(-1)))


@pytest.mark.parametrize("rank", RANKS)
def test_is_memory_order_preserving_matches_numpy(rank: int) -> None:
    rng = np.random.default_rng(100 + rank)
    perms = all_perms(rank)
    shapes = {tuple([1] * rank), tuple([2] * rank)}
    while len(shapes) < 12 and len(shapes) < 3**rank:
        shapes.add(tuple(int(d) for d in rng.choice([1, 1, 2, 3], rank)))
    both = {True: 0, False: 0}
    for shape in sorted(shapes):
        for p in perms:
            want = _numpy_preserves(shape, p)
            assert P.is_memory_order_preserving(shape, p) == want, (shape, p)
            both[want] += 1
    assert both[True] > 0 and (rank == 1 or both[False] > 0)


@pytest.mark.parametrize("rank", range(2, 6))
def test_is_memory_order_preserving_symbolic_dims_are_conservative(rank: int) -> None:
    """A symbolic dim may be 1 or not: a True answer must hold for every value it can take."""
    rng = np.random.default_rng(200 + rank)
    for _ in range(20):
        shape = [int(d) for d in rng.choice([1, 1, 3], rank)]
        sym = rng.choice(rank, size=int(rng.integers(1, rank + 1)), replace=False)
        sym_shape = tuple("N" if i in sym else d for i, d in enumerate(shape))
        for p in all_perms(rank):
            if P.is_memory_order_preserving(sym_shape, p):
                for values in itertools.product([1, 2], repeat=len(sym)):
                    concrete = list(shape)
                    for i, v in zip(sorted(sym), values):
                        concrete[i] = v
                    assert _numpy_preserves(tuple(concrete), p), (sym_shape, p, concrete)
