"""Permutation arithmetic for layouts: the one place where axis bookkeeping lives.

Convention: a permutation ``p`` describes ``y = transpose(x, p)``, i.e. axis ``i`` of ``y`` is
axis ``p[i]`` of ``x`` (the same meaning as ONNX ``Transpose(perm=p)`` and ``np.transpose``).
"""
from __future__ import annotations

from typing import Sequence

Perm = tuple[int, ...]


def identity(rank: int) -> Perm:
    """The permutation that changes nothing.

    >>> identity(3)
    (0, 1, 2)
    """
    return tuple(range(rank))


def is_identity(p: Sequence[int]) -> bool:
    """Whether ``p`` changes nothing.

    >>> is_identity((0, 1, 2)), is_identity((0, 2, 1))
    (True, False)
    """
    return all(i == a for i, a in enumerate(p))


def invert(p: Sequence[int]) -> Perm:
    """Permutation that undoes ``p``.

    >>> invert((0, 2, 3, 1))   # NCHW->NHWC undone by NHWC->NCHW
    (0, 3, 1, 2)
    """
    out = [0] * len(p)
    for i, a in enumerate(p):
        out[a] = i
    return tuple(out)


def compose(first: Sequence[int], then: Sequence[int]) -> Perm:
    """Single permutation equal to transposing by ``first`` and then by ``then``.

    >>> compose((0, 2, 3, 1), (0, 3, 1, 2))
    (0, 1, 2, 3)
    >>> compose((1, 0, 2), (0, 2, 1))
    (1, 2, 0)
    """
    return tuple(first[a] for a in then)


def apply_to_shape(shape: Sequence, p: Sequence[int]) -> tuple:
    """Shape of ``transpose(x, p)`` for ``x`` of ``shape``.

    >>> apply_to_shape((1, 3, 224, 224), (0, 2, 3, 1))
    (1, 224, 224, 3)
    """
    return tuple(shape[a] for a in p)


def remap_axis(axis: int, p: Sequence[int]) -> int:
    """Axis of ``x`` that axis ``axis`` of ``transpose(x, p)`` refers to (negative axes allowed).

    >>> remap_axis(1, (0, 3, 1, 2))   # channel axis of NCHW view of an NHWC tensor
    3
    >>> remap_axis(-1, (0, 3, 1, 2))
    2
    """
    return p[axis % len(p)]


def channels_last(rank: int) -> Perm:
    """NC... -> N...C (rank >= 2; rank 2 has nothing to move).

    >>> channels_last(4), channels_last(3)
    ((0, 2, 3, 1), (0, 2, 1))
    """
    if rank < 2:
        raise ValueError(f"rank {rank} has no channel axis")
    return (0, *range(2, rank), 1)


def channels_first(rank: int) -> Perm:
    """N...C -> NC... (inverse of :func:`channels_last`).

    >>> channels_first(4)
    (0, 3, 1, 2)
    """
    return invert(channels_last(rank))


def is_memory_order_preserving(shape: Sequence, p: Sequence[int]) -> bool:
    """True when ``transpose(x, p)`` only moves size-1 axes, so it equals a reshape.

    >>> is_memory_order_preserving((1, 1, 1, 8), (0, 3, 1, 2))
    True
    >>> is_memory_order_preserving((1, 2, 2, 8), (0, 3, 1, 2))
    False
    """
    # unknown (symbolic) dims count as non-1: conservative, never a wrong answer
    kept = [a for a in p if shape[a] != 1]
    return kept == sorted(kept)
