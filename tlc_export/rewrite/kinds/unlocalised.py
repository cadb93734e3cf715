"""Aggregations over all pixels that no localisable kind claims, found in a second pass and kept global:
an H·W contraction (MatMul over the flattened pixel axis: an unrecognised transposed attention, a
softmax-weighted context pool), a LayerNormalization over the spatial axes, an InstanceNormalization that is no exported
GroupNorm."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ..graphutil import int_list, producer, rank
from ..ops import KeptGlobal

KIND = "global-aggregation"
_THROUGH = {"Div", "Mul", "Add", "Sub", "Identity", "Cast", "Slice", "Split", "LpNormalization", "Squeeze",
            "Unsqueeze", "Neg", "Relu", "Gelu", "Sigmoid", "Softmax"}


def _pixel_last(t: gs.Tensor) -> bool:
    """Whether the last axis of ``t`` is the flattened H·W of a 4-D map (Reshape of a rank-4 map whose
    target ends in -1 or in a computed size)."""
    for _ in range(8):
        node = producer(t)
        if node is None:
            return False
        if node.op == "Reshape":
            target = int_list(node.inputs[1])
            last_computed = target is None
            return rank(node.inputs[0]) == 4 and (last_computed or (len(target) >= 3 and target[-1] == -1))
        if node.op == "Flatten":
            return rank(node.inputs[0]) == 4 and int(node.attrs.get("axis", 1)) == 2
        if node.op not in _THROUGH:
            return False
        t = node.inputs[0]
    return False


def _pixel_second_last(t: gs.Tensor) -> bool:
    """Whether the second-last axis of ``t`` is a flattened H·W: a pixel-last tensor with its last two
    axes swapped (kᵀ), or with a unit axis appended (GCNet/MIRNet's softmax-weighted context pool)."""
    node = producer(t)
    if node is None:
        return False
    if node.op == "Transpose" and "perm" in node.attrs:
        perm = list(node.attrs["perm"])
        return len(perm) >= 2 and perm[-2:] == [len(perm) - 1, len(perm) - 2] and _pixel_last(node.inputs[0])
    if node.op == "Unsqueeze":
        axes = node.attrs.get("axes") or (int_list(node.inputs[1]) if len(node.inputs) > 1 else None)
        r = rank(node.outputs[0])
        return axes is not None and len(axes) == 1 and (axes[0] == -1 or axes[0] == (r or 0) - 1) \
            and _pixel_last(node.inputs[0])
    return False


def match(node: gs.Node, graph: gs.Graph) -> KeptGlobal | None:
    if node.op == "MatMul" and _pixel_last(node.inputs[0]) and _pixel_second_last(node.inputs[1]):
        return KeptGlobal("hw-contraction", node.name, "a MatMul contracting over all pixels (flattened H·W) "
                          "that is not the recognised transposed attention (e.g. a softmax-weighted context pool)", [node])
    if node.op == "LayerNormalization" and rank(node.inputs[0]) == 4 and int(node.attrs.get("axis", -1)) % 4 <= 2:
        return KeptGlobal("layernorm", node.name, "a LayerNormalization over H and W (its affine parameters "
                          "have the export's spatial size)", [node])
    if node.op == "InstanceNormalization":
        return KeptGlobal("instancenorm", node.name, f"InstanceNormalization on a {rank(node.inputs[0])}-D "
                          f"tensor that is not an exported GroupNorm", [node])
    return None


def localize(b, op, window, options) -> str:  # pragma: no cover - match never returns a GlobalOp
    raise AssertionError("kept global")
