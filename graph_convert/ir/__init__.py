"""The IR: ONNX graphs held in NetworkX behind a narrow API (see :mod:`graph_convert.ir.graph`)."""
from __future__ import annotations

from graph_convert.ir.graph import Graph, GraphError, Node, TensorInfo
from graph_convert.ir.onnx_io import from_onnx, load_graph, load_model, lower_node, to_onnx

__all__ = ["Graph", "GraphError", "Node", "TensorInfo", "from_onnx", "load_graph", "load_model", "lower_node", "to_onnx"]
