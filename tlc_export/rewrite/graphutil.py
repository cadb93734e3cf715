"""Small queries on an onnx-graphsurgeon graph shared by the global-op kinds (constants, ranks, axes)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UserError


def producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 else None


def single_consumer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return np.asarray(value.values) if value is not None else None
    return None


def value_through_identity(t: gs.Tensor) -> np.ndarray | None:
    """A constant's value, through Identity nodes (the exporter routes de-duplicated initializers —
    e.g. equal ``temperature`` parameters of a freshly built model — through Identity)."""
    for _ in range(4):
        value = constant_value(t)
        node = producer(t)
        if value is not None or node is None or node.op != "Identity":
            return value
        t = node.inputs[0]
    return None


def is_constant(t: gs.Tensor, memo: dict[int, bool]) -> bool:
    """True when ``t`` is computed from constants alone (no graph input upstream)."""
    if isinstance(t, gs.Constant):
        return True
    if id(t) in memo:
        return memo[id(t)]
    memo[id(t)] = False                       # cycles cannot happen; this also stops re-entry
    node = producer(t)
    result = node is not None and all(is_constant(i, memo) for i in node.inputs if i.name or isinstance(i, gs.Constant))
    memo[id(t)] = result
    return result


def rank(t: gs.Tensor) -> int | None:
    """The rank of ``t``: its declared shape, else the length of a Reshape target."""
    if t.shape is not None:
        return len(t.shape)
    node = producer(t)
    if node is not None and node.op == "Reshape":
        target = node.inputs[1]
        if target.shape is not None and len(target.shape) == 1 and isinstance(target.shape[0], int):
            return int(target.shape[0])
        value = constant_value(target)
        if value is not None:
            return int(value.size)
    return None


def reduce_axes(node: gs.Node) -> list[int] | None:
    """Axes of a Reduce* node (attribute before opset 18, input after); None means all axes."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = value_through_identity(node.inputs[1])
        if value is None:
            raise UserError(f"node {node.name!r}: {node.op} with run-time axes is not supported; "
                            f"constant-fold the graph first (polygraphy surgeon sanitize --fold-constants)")
        return [int(a) for a in value.reshape(-1)]
    return None


def int_list(t: gs.Tensor) -> list[int] | None:
    """A constant int tensor as a list, else None."""
    value = value_through_identity(t)
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
