"""Graph → graph simplifications applied before the global ops are looked for."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graphutil import constant_value, producer


def _static_shape(t: gs.Tensor) -> tuple[int, ...] | None:
    shape = getattr(t, "shape", None)
    if shape is None or not all(isinstance(d, int) and d >= 0 for d in shape):
        return None
    return tuple(shape)


def bypass_identity_gathers(graph: gs.Graph) -> int:
    """torch.export decomposes ``as_strided`` on a pooled (N, C, 1, 1) map (HAT's channel attention) into
    ``Gather(Reshape(x, [-1]), I)`` with constant indices I. When I is ``arange(x.size)`` in x's own
    shape the pair is the identity: its consumers read x instead, so the pool's consumers are per pixel
    again. Returns how many were bypassed."""
    bypassed = 0
    for node in graph.nodes:
        if node.op != "Gather" or int(node.attrs.get("axis", 0)) != 0 or len(node.inputs) != 2:
            continue
        flat = producer(node.inputs[0])
        if flat is None or flat.op != "Reshape":
            continue
        target = constant_value(flat.inputs[1])
        x = flat.inputs[0]
        shape = _static_shape(x)
        indices = constant_value(node.inputs[1])
        if target is None or shape is None or indices is None or list(np.ravel(target)) not in ([-1], [int(np.prod(shape))]):
            continue
        if tuple(indices.shape) != shape or not np.array_equal(indices.ravel(), np.arange(int(np.prod(shape)))):
            continue
        out = node.outputs[0]
        if out in graph.outputs:
            continue
        for user in list(out.outputs):
            for i, t in enumerate(user.inputs):
                if t is out:
                    user.inputs[i] = x
        bypassed += 1
    if bypassed:
        graph.cleanup()
    return bypassed
