"""The IR's node and tensor facts: :class:`Node` (an ONNX node with its *layout marks*) and
:class:`TensorInfo` (dtype and shape of a tensor)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import onnx
from onnx import helper



@dataclass
class TensorInfo:
    """Static facts about a tensor: element type (onnx.TensorProto enum) and shape (int, str or None per dim)."""

    dtype: int = 0
    shape: tuple | None = None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)


@dataclass
class Node:
    """One operator.

    ``in_perms``/``out_perms`` make a node *layout-marked*: ``in_perms[j] = p`` says input ``j`` is
    stored as ``transpose(original_input_j, p)`` (``None`` = as ONNX defines it); ``out_perms``
    likewise for outputs. Lowering to ONNX wraps such a node in Transposes, so ONNX Runtime checks
    the claim; the TF emitter reads it and emits the channels-last kernel directly.
    """

    name: str
    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, onnx.AttributeProto] = field(default_factory=dict)
    domain: str = ""
    doc_string: str = ""
    in_perms: list[tuple | None] | None = None
    out_perms: list[tuple | None] | None = None
    created_by: str | None = None  # name of the pass that created the node, if any
    # (tensor names read inside subgraph attributes that come from the outer scope)
    implicit_inputs: list[str] = field(default_factory=list)

    # -- attributes -------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        a = self.attrs.get(name)
        if a is None:
            return default
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            return v.decode("utf-8")
        if isinstance(v, list) and v and isinstance(v[0], bytes):
            return [x.decode("utf-8") for x in v]
        return v

    def set_attr(self, name: str, value: Any) -> None:
        self.attrs[name] = helper.make_attribute(name, value)

    def del_attr(self, name: str) -> None:
        self.attrs.pop(name, None)

    @property
    def is_layout_marked(self) -> bool:
        return any(p is not None for p in (self.in_perms or []) + (self.out_perms or []))

    def in_perm(self, j: int) -> tuple | None:
        return self.in_perms[j] if self.in_perms and j < len(self.in_perms) else None

    def out_perm(self, k: int) -> tuple | None:
        return self.out_perms[k] if self.out_perms and k < len(self.out_perms) else None

    def __repr__(self) -> str:
        return f"<{self.op_type} {self.name!r} {self.inputs}->{self.outputs}>"
