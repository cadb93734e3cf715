"""Rewiring what consumes a pooled tensor (``pooled.PooledUse``) to run per pixel on the local-mean map.

Vector-mode tensors (N, d1, …) become (N, h, w, d1, …): a Transpose at each entry, non-negative axes of
the vector nodes shifted by 2, Gemm turned into MatMul + Add on the last axis, and a Reshape/Transpose
back to (N, d1, …, h, w) at each exit. Map-mode Reshapes ending in 1, 1 take h, w instead.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graphutil import int_list, value_through_identity
from .pooled import VECTOR, PooledUse, target_rank, unsqueeze_axes
from .subgraphs import Builder


def _detach(nodes: list[gs.Node]) -> tuple[list[gs.Tensor], list[gs.Tensor]]:
    """Disconnect ``nodes`` (a chain); returns the first node's inputs and the last node's outputs."""
    inputs, outputs = list(nodes[0].inputs), list(nodes[-1].outputs)
    for node in nodes:
        node.inputs.clear()
        node.outputs.clear()
    return inputs, outputs


def to_vector_layout(b: Builder, local_map: gs.Tensor, output: gs.Tensor | None = None, rank: int = 2):
    """(N, C, h, w) → the local form (N, h, w, C) of an (N, C) vector ((N, h, w, C, 1) for rank 3)."""
    if rank == 2:
        return b.op("Transpose", [local_map], {"perm": [0, 2, 3, 1]}, outputs=[output] if output else None)
    moved = b.op("Transpose", [local_map], {"perm": [0, 2, 3, 1]})
    return b.op("Unsqueeze", [moved, b.const([-1])], outputs=[output] if output else None)


def _shift(axes: list[int]) -> list[int]:
    """Vector axes in the local layout: non-negative ones move past the two inserted spatial axes."""
    return [a + 2 if a > 0 else a for a in axes]


def _gemm_as_matmul(b: Builder, node: gs.Node) -> None:
    """Y = alpha·A·op(B) + beta·C on the last axis of the local (N, h, w, K) tensor."""
    a, y = node.inputs[0], node.outputs[0]
    weight = np.asarray(value_through_identity(node.inputs[1]), dtype=np.float32)
    if node.attrs.get("transB", 0):
        weight = weight.T
    weight = weight * float(node.attrs.get("alpha", 1.0))
    bias = value_through_identity(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    _detach([node])
    if bias is None:
        b.op("MatMul", [a, b.const(weight, np.float32)], outputs=[y])
        return
    bias = np.asarray(bias, dtype=np.float32) * float(node.attrs.get("beta", 1.0))
    b.op("Add", [b.op("MatMul", [a, b.const(weight, np.float32)]), b.const(bias, np.float32)], outputs=[y])


def _conv_over_pixels(b: Builder, node: gs.Node) -> None:
    """A 1-D Conv on the local (N, h, w, Cin, L) tensor: the pixels as a batch, (N·h·w, Cin, L), and back."""
    local, y = node.inputs[0], node.outputs[0]
    batched = b.op("Reshape", [local, b.op("Concat", [b.const([-1]), b.op("Shape", [local], {"start": 3})],
                                           {"axis": 0})])
    node.inputs[0] = batched
    conv_out = gs.Variable(f"{node.name}_pixels_out")
    node.outputs[0] = conv_out
    shape = b.op("Concat", [b.op("Shape", [local], {"end": 3}), b.op("Shape", [conv_out], {"start": 1})], {"axis": 0})
    b.op("Reshape", [conv_out, shape], outputs=[y])


def _shift_node_axes(b: Builder, node: gs.Node, rank: int | None) -> None:
    """Shift the axes of a vector-mode node by the two spatial axes of the local layout."""
    if node.op == "Transpose":
        perm = list(node.attrs["perm"])
        node.attrs["perm"] = [0, 1, 2] + [p + 2 for p in perm[1:]]
    elif "axis" in node.attrs or node.op in ("Softmax", "LogSoftmax", "Hardmax", "Concat", "Split"):
        default = 1 if node.op == "Concat" else (0 if node.op == "Split" else -1)
        node.attrs["axis"] = _shift([int(node.attrs.get("axis", default))])[0]
    if "axes" in node.attrs:
        node.attrs["axes"] = _shift(list(node.attrs["axes"]))
    elif node.op in ("Unsqueeze", "Squeeze") or node.op.startswith("Reduce"):
        if len(node.inputs) > 1 and node.inputs[1].name:
            node.inputs[1] = b.const(_shift(int_list(node.inputs[1])))


def _respatial_reshape(b: Builder, node: gs.Node) -> None:
    """A map Reshape to (…, 1, 1): keep the run-time h, w instead."""
    x, target = node.inputs[0], node.inputs[1]
    n = target_rank(target)
    head = b.op("Slice", [target, b.const([0]), b.const([n - 2]), b.const([0])])
    node.inputs[1] = b.op("Concat", [head, b.op("Shape", [x], {"start": -2})], {"axis": 0})


def rewire(b: Builder, use: PooledUse) -> None:
    """Apply ``use`` to the graph (the pooled tensor itself must already be the local-mean map, in the
    local vector layout when ``use.mode`` is VECTOR)."""
    for chain, rank in use.entries:
        outputs = list(chain[-1].outputs)
        inputs, _ = _detach(chain)
        to_vector_layout(b, inputs[0], outputs[0], rank)
    for node, rank in use.vector_nodes:
        if node.op == "Gemm":
            _gemm_as_matmul(b, node)
        elif node.op == "Conv":
            _conv_over_pixels(b, node)
        else:
            _shift_node_axes(b, node, rank)
    for chain, rank in use.exits:
        _exit_chain(b, chain, rank)
    for node in use.spatial_reshapes:
        _respatial_reshape(b, node)
    for node, layout in use.shapes:
        _global_shape(b, node, layout)


def _global_shape(b: Builder, node: gs.Node, layout: str) -> None:
    """Shape of a pooled tensor as the global graph had it, read off the local form: (N, d…) from a
    vector's (N, h, w, d…), (N, C…, 1, 1) from a map's (N, C…, h, w); then the node's start/end."""
    local, out = node.inputs[0], node.outputs[0]
    _detach([node])
    if layout == VECTOR:
        own = [b.op("Shape", [local], {"end": 1}), b.op("Shape", [local], {"start": 3})]
    else:
        own = [b.op("Shape", [local], {"end": -2}), b.const([1, 1])]
    b.shape_like(own, node, output=out)


def _exit_chain(b: Builder, chain: list[gs.Node], vec_rank: int) -> None:
    """Local (N, h, w, d…) → (N, d…, h, w) where the vector returns to a map."""
    y = chain[-1].outputs[0]
    first = chain[0]
    local, target = first.inputs[0], (first.inputs[1] if first.op == "Reshape" else None)
    n_out = target_rank(target) if target is not None else None
    adds_one_axis = len(chain) == 1 and len(unsqueeze_axes(first) or []) == 1
    _detach(chain)
    if target is not None:
        middle = b.op("Slice", [target, b.const([1]), b.const([n_out - 2]), b.const([0])])
        shape = b.op("Concat", [b.op("Shape", [local], {"start": 0, "end": 3}), middle], {"axis": 0})
        local = b.op("Reshape", [local, shape])
        vec_rank = n_out - 2
    elif adds_one_axis:         # (N, d…, 1) → (N, d…, 1, 1)
        local = b.op("Squeeze", [local, b.const([-1])])
        vec_rank -= 1
    b.op("Transpose", [local], {"perm": [0, *range(3, vec_rank + 2), 1, 2]}, outputs=[y])


__all__ = ["VECTOR", "rewire", "to_vector_layout"]
