"""Group normalisation: GroupNormalization (opset 18+), or the exporters' Reshape(x, [0, G, -1]) >
InstanceNormalization(scale 1, bias 0) > Reshape(back) decomposition. Statistics over the group's channels
and a local window (the paper's Table 7 extension)."""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .. import subgraphs
from ..graphutil import constant_value, single_consumer
from ..ops import GlobalOp
from ..options import RewriteOptions

KIND = "groupnorm"


def _match_decomposed(node: gs.Node) -> GlobalOp | None:
    """Reshape(x, [0, G, -1]) > InstanceNormalization(scale 1, bias 0) > Reshape(back to x's shape):
    PyTorch's export of ``nn.GroupNorm`` (the affine Mul/Add after it stay as they are)."""
    inp = node.inputs[0]
    if len(inp.inputs) != 1 or inp.inputs[0].op != "Reshape":
        return None
    reshape_in = inp.inputs[0]
    target = constant_value(reshape_in.inputs[1])
    if target is None or target.size != 3 or int(target[0]) != 0 or int(target[2]) != -1:
        return None
    groups = int(target[1])
    scale, bias = constant_value(node.inputs[1]), constant_value(node.inputs[2])
    if scale is None or bias is None or not (np.all(scale == 1) and np.all(bias == 0)):
        return None
    reshape_out = single_consumer(node.outputs[0])
    if reshape_out is None or reshape_out.op != "Reshape":
        return None
    shape_src = reshape_out.inputs[1]
    source = reshape_in.inputs[0]
    if not (len(shape_src.inputs) == 1 and shape_src.inputs[0].op == "Shape" and shape_src.inputs[0].inputs[0] is source):
        return None
    return GlobalOp(KIND, node.name, "Reshape>InstanceNormalization>Reshape",
                    [reshape_in, node, reshape_out], source, reshape_out.outputs[0],
                    {"groups": groups, "eps": float(node.attrs.get("epsilon", 1e-5)), "scale": None, "bias": None})


def _group_affine(node: gs.Node, source: gs.Tensor, groups: int):
    """GroupNormalization's scale/bias as per-channel tensors (opset 18 gives them per group)."""
    scale, bias = node.inputs[1], node.inputs[2]
    channels = source.shape[1] if source.shape is not None else None
    s, b = constant_value(scale), constant_value(bias)
    if s is not None and b is not None and channels is not None and s.size == groups and channels != groups:
        per = channels // groups
        s, b = np.repeat(s, per).astype(np.float32), np.repeat(b, per).astype(np.float32)
        return (gs.Constant(f"{node.name}/scale_per_channel", s), gs.Constant(f"{node.name}/bias_per_channel", b))
    return scale, bias


def match(node: gs.Node, graph: gs.Graph) -> GlobalOp | None:
    if node.op == "InstanceNormalization":
        return _match_decomposed(node)
    if node.op == "GroupNormalization":
        groups = int(node.attrs["num_groups"])
        scale, bias = _group_affine(node, node.inputs[0], groups)
        return GlobalOp(KIND, node.name, "GroupNormalization", [node], node.inputs[0], node.outputs[0],
                        {"groups": groups, "eps": float(node.attrs.get("epsilon", 1e-5)), "scale": scale, "bias": bias})
    return None


def localize(b: subgraphs.Builder, op: GlobalOp, window, options: RewriteOptions) -> str:
    scale, bias = op.attrs["scale"], op.attrs["bias"]
    out = None if scale is not None else op.output
    normed = subgraphs.local_group_norm(b, op.source, window, op.attrs["groups"], op.attrs["eps"], output=out)
    if scale is not None:
        axes = b.const([0, 2, 3])
        b.op("Add", [b.op("Mul", [normed, b.op("Unsqueeze", [scale, axes])]),
                     b.op("Unsqueeze", [bias, axes])], outputs=[op.output])
    return options.boxfilter_implementation
