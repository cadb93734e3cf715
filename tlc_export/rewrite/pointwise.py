"""Per-pixel ops: applying them before or after a replicate Pad gives the same result."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .graphutil import constant_value

POINTWISE_UNARY = {"Relu", "Sigmoid", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Tanh", "Softplus",
                   "Softsign", "HardSwish", "Gelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt",
                   "Reciprocal", "Identity", "Cast", "Clip", "Mish", "ThresholdedRelu", "Celu"}
POINTWISE_BINARY = {"Add", "Sub", "Mul", "Div", "PRelu", "Pow"}


def _per_channel_constant(tensor: gs.Tensor) -> bool:
    """A constant broadcasting per channel at most (shape (C, 1, 1), (1, C, 1, 1), scalar …)."""
    value = constant_value(tensor)
    if value is None:
        return False
    return value.ndim <= 1 and value.size == 1 or (value.ndim >= 2 and all(d == 1 for d in value.shape[-2:]))


def is_one_by_one_conv(node: gs.Node) -> bool:
    """A stride-1, unpadded 1×1 Conv with constant weights: a per-pixel linear map over channels."""
    if node.op != "Conv":
        return False
    weight = node.inputs[1]
    kernel = node.attrs.get("kernel_shape") or (list(weight.shape[2:]) if weight.shape is not None else None)
    flat = all(v == 1 for v in node.attrs.get("strides", [1, 1])) and \
        not any(node.attrs.get("pads", [0, 0, 0, 0])) and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
    return kernel is not None and all(k == 1 for k in kernel) and flat \
        and all(constant_value(t) is not None for t in node.inputs[1:] if t.name)


def _is_pointwise(node: gs.Node, tensor: gs.Tensor) -> bool:
    """Whether ``node`` acts on ``tensor`` pixel by pixel, identically at every pixel."""
    if node.op in POINTWISE_UNARY:
        return node.inputs[0] is tensor and all(constant_value(t) is not None for t in node.inputs[1:] if t.name)
    if node.op in POINTWISE_BINARY:
        others = [t for t in node.inputs if t is not tensor]
        return len(others) == 1 and _per_channel_constant(others[0])
    if node.op == "Conv":
        return node.inputs[0] is tensor and is_one_by_one_conv(node)
    return False


def pointwise_chain(tensor: gs.Tensor, graph_outputs: set[str]) -> list[gs.Node]:
    """The longest single-consumer chain of per-pixel nodes starting at ``tensor`` (e.g. the 1×1-conv
    MLP of squeeze-and-excitation); its last node's output is where a replicate Pad may move to."""
    chain = []
    while len(tensor.outputs) == 1 and tensor.name not in graph_outputs:
        node = tensor.outputs[0]
        if not _is_pointwise(node, tensor) or len(node.outputs) != 1:
            break
        chain.append(node)
        tensor = node.outputs[0]
    return chain
