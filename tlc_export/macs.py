"""Multiply-adds of an ONNX graph at a given input size, read from inferred shapes.

Counted: Conv, ConvTranspose, Gemm and MatMul (everything else is O(elements), not multiply-adds).
A MatMul with a constant operand is a layer (``nn.Linear``); one between two activations (attention's
q·kᵀ and attn·v) is counted apart, since it has no weights and grows with the map in its own way.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

import onnx
import onnx_graphsurgeon as gs

from .calibrate import static_shapes
from .rewrite.patterns import constant_value

LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass
class GraphMacs:
    layers: int = 0                                   # Conv / ConvTranspose / Gemm / MatMul with weights
    activation_matmuls: int = 0                       # MatMul of two activations (attention)
    per_node: dict[str, int] = field(default_factory=dict)   # by first output name (unique)
    unknown: list[str] = field(default_factory=list)  # nodes whose shapes inference could not tell

    @property
    def total(self) -> int:
        return self.layers + self.activation_matmuls


def _dims(shapes: dict, tensor: gs.Tensor) -> list[int] | None:
    if isinstance(tensor, gs.Constant):
        return list(tensor.values.shape)
    value = constant_value(tensor)
    if value is not None:
        return list(value.shape)
    dims = shapes.get(tensor.name)
    if dims is None or not all(isinstance(d, int) and d >= 0 for d in dims):
        return None
    return list(dims)


def node_macs(node: gs.Node, shapes: dict) -> int | None:
    """Multiply-adds of one node (None when a shape it needs is unknown)."""
    if node.op == "Conv":
        weight, out = _dims(shapes, node.inputs[1]), _dims(shapes, node.outputs[0])
        return None if weight is None or out is None else prod(out) * prod(weight[1:])
    if node.op == "ConvTranspose":
        weight, inp = _dims(shapes, node.inputs[1]), _dims(shapes, node.inputs[0])
        return None if weight is None or inp is None else prod(inp) * prod(weight[1:])
    if node.op == "Gemm":
        a, out = _dims(shapes, node.inputs[0]), _dims(shapes, node.outputs[0])
        if a is None or out is None:
            return None
        k = a[0] if node.attrs.get("transA", 0) else a[1]
        return prod(out) * k
    if node.op == "MatMul":
        a, out = _dims(shapes, node.inputs[0]), _dims(shapes, node.outputs[0])
        return None if a is None or out is None else prod(out) * a[-1]
    return None


def run_time_shapes(model: onnx.ModelProto, shape: tuple[int, int, int, int]) -> dict[str, list[int | None]]:
    """Every tensor's shape on an input of ``shape`` (``static_shapes``, thorough)."""
    return static_shapes(model, shape, thorough=True)


def graph_macs(graph: gs.Graph, shapes: dict[str, list[int | None]]) -> GraphMacs:
    """Multiply-adds of ``graph`` with its tensors of ``shapes`` (see ``run_time_shapes``)."""
    result = GraphMacs()
    for node in graph.nodes:
        if node.op not in LAYER_OPS:
            continue
        macs = node_macs(node, shapes)
        if macs is None:
            result.unknown.append(node.name)
            continue
        result.per_node[node.outputs[0].name] = macs
        weighted = node.op != "MatMul" or any(constant_value(t) is not None for t in node.inputs)
        if weighted:
            result.layers += macs
        else:
            result.activation_matmuls += macs
    return result


def per_pixel_macs(node: gs.Node) -> int:
    """Multiply-adds per pixel of a 1×1 Conv (c_out · c_in / groups), of a 1-D Conv across the channel
    vector (weight size · output length) or of a Linear (Gemm / MatMul with a constant K×N weight: K · N),
    as it runs on one pixel's channel vector."""
    weights = [w for t in node.inputs[:2] if (w := constant_value(t)) is not None and w.ndim >= 2]
    if not weights:
        return 0
    macs = int(prod(weights[0].shape))
    shape = node.outputs[0].shape
    if node.op == "Conv" and weights[0].ndim == 3 and shape and isinstance(shape[-1], int):
        macs *= shape[-1]       # a 1-D conv across a pooled vector (ECA) runs at each of its positions
    return macs
