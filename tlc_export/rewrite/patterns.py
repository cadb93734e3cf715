"""Finding the global ops of an ONNX graph (onnx-graphsurgeon IR).

A ``GlobalOp`` names the nodes to replace, the 4-D map whose spatial size is the op's window at the
calibration size (``source``), and the tensor the local replacement must produce (``output``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UserError


@dataclass
class GlobalOp:
    kind: str                      # avgpool | instancenorm | groupnorm | attention
    name: str                      # ONNX name of the anchor node (reported)
    pattern: str                   # what was matched, e.g. "GlobalAveragePool", "Reshape>InstanceNormalization>Reshape"
    nodes: list[gs.Node]
    source: gs.Tensor
    output: gs.Tensor
    attrs: dict = field(default_factory=dict)

    @property
    def module_path(self) -> str:
        """The PyTorch module path, recovered from the exporter's scoped node name: ``/a/b/Op`` -> ``a.b``;
        container children are scoped with their parent's name (``/enc/enc.0/conv/Op`` -> ``enc.0.conv``)."""
        parts = [p for p in self.name.split("/") if p][:-1]
        path: list[str] = []
        for part in parts:
            if path and part.startswith(path[-1] + "."):
                path[-1] = part
            else:
                path.append(part)
        return ".".join(path)


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else None."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        value = tensor.inputs[0].attrs.get("value")
        return np.asarray(value.values) if value is not None else None
    return None


def _rank(tensor: gs.Tensor) -> int | None:
    return len(tensor.shape) if tensor.shape is not None else None


def _reduce_axes(node: gs.Node) -> list[int] | None:
    """Axes of a Reduce* node (attribute before opset 18, input after); None means all axes."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1].name:
        value = constant_value(node.inputs[1])
        if value is None:
            raise UserError(f"node {node.name!r}: {node.op} with run-time axes is not supported; "
                            f"constant-fold the graph first (polygraphy surgeon sanitize --fold-constants)")
        return [int(a) for a in value.reshape(-1)]
    return None


def _spatial_reduce(node: gs.Node) -> bool | None:
    """True when a Reduce node averages/sums exactly H and W of a 4-D map; None when it is no spatial
    reduction at all; raises for a spatial reduction TLC cannot localise."""
    rank = _rank(node.inputs[0])
    axes = _reduce_axes(node)
    if rank is None:
        if axes is None:
            return None
        rank = 4 if set(axes) <= {2, 3, -1, -2} else None
        if rank is None:
            return None
    if axes is None:
        if node.attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(rank))
    axes = {a % rank for a in axes}
    if rank != 4 or not {2, 3} <= axes:
        return None
    keepdims = node.attrs.get("keepdims", 1)
    if axes != {2, 3} or not keepdims:
        raise UserError(f"unsupported global op: node {node.name!r} ({node.op} over axes {sorted(axes)}, "
                        f"keepdims={keepdims}) reduces the spatial axes in a way TLC cannot localise")
    return True


def _single_consumer(tensor: gs.Tensor) -> gs.Node | None:
    return tensor.outputs[0] if len(tensor.outputs) == 1 else None


def _match_decomposed_group_norm(node: gs.Node) -> GlobalOp | None:
    """Reshape(x, [0, G, -1]) > InstanceNormalization(scale 1, bias 0) > Reshape(back to x's shape):
    PyTorch's legacy export of ``nn.GroupNorm`` (the affine Mul/Add after it stay as they are)."""
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
    reshape_out = _single_consumer(node.outputs[0])
    if reshape_out is None or reshape_out.op != "Reshape":
        return None
    shape_src = reshape_out.inputs[1]
    source = reshape_in.inputs[0]
    if not (len(shape_src.inputs) == 1 and shape_src.inputs[0].op == "Shape" and shape_src.inputs[0].inputs[0] is source):
        return None
    return GlobalOp("groupnorm", node.name, "Reshape>InstanceNormalization>Reshape",
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


def find_global_ops(graph: gs.Graph) -> list[GlobalOp]:
    """All global ops of ``graph`` in topological order. Raises ``UserError`` for a global op that
    cannot be localised (naming the node)."""
    found: list[GlobalOp] = []
    claimed: set[int] = set()
    for node in graph.nodes:
        if id(node) in claimed:
            continue
        op = None
        if node.op == "GlobalAveragePool":
            if _rank(node.inputs[0]) not in (None, 4):
                raise UserError(f"unsupported global op: node {node.name!r} (GlobalAveragePool on a "
                                f"{_rank(node.inputs[0])}-D tensor; TLC localises 2-D maps)")
            op = GlobalOp("avgpool", node.name, "GlobalAveragePool", [node], node.inputs[0], node.outputs[0])
        elif node.op == "ReduceMean" and _spatial_reduce(node):
            op = GlobalOp("avgpool", node.name, "ReduceMean", [node], node.inputs[0], node.outputs[0])
        elif node.op == "ReduceSum" and _spatial_reduce(node):
            div = _single_consumer(node.outputs[0])
            if div is None or div.op != "Div" or div.inputs[0] is not node.outputs[0]:
                raise UserError(f"unsupported global op: node {node.name!r} (spatial ReduceSum not followed "
                                f"by a division by the map size)")
            op = GlobalOp("avgpool", node.name, "ReduceSum>Div", [node, div], node.inputs[0], div.outputs[0],
                          {"divisor": div.inputs[1]})
        elif node.op == "InstanceNormalization":
            rank = _rank(node.inputs[0])
            if rank == 4:
                op = GlobalOp("instancenorm", node.name, "InstanceNormalization", [node], node.inputs[0],
                              node.outputs[0], {"eps": float(node.attrs.get("epsilon", 1e-5)),
                                                "scale": node.inputs[1], "bias": node.inputs[2]})
            else:
                op = _match_decomposed_group_norm(node)
                if op is None:
                    raise UserError(f"unsupported global op: node {node.name!r} (InstanceNormalization on a "
                                    f"{rank}-D tensor that is not an exported GroupNorm)")
        elif node.op == "Softmax":
            from .attention import match_transposed_attention  # attention builds on this module

            op = match_transposed_attention(node, graph)
        elif node.op == "GroupNormalization":
            groups = int(node.attrs["num_groups"])
            scale, bias = _group_affine(node, node.inputs[0], groups)
            op = GlobalOp("groupnorm", node.name, "GroupNormalization", [node], node.inputs[0], node.outputs[0],
                          {"groups": groups, "eps": float(node.attrs.get("epsilon", 1e-5)),
                           "scale": scale, "bias": bias})
        if op is not None:
            claimed.update(id(n) for n in op.nodes)
            found.append(op)
    return found


# Per-pixel ops: applying them before or after a replicate Pad gives the same result.
_POINTWISE_UNARY = {"Relu", "Sigmoid", "HardSigmoid", "LeakyRelu", "Elu", "Selu", "Tanh", "Softplus",
                    "Softsign", "HardSwish", "Gelu", "Erf", "Exp", "Log", "Neg", "Abs", "Sqrt",
                    "Reciprocal", "Identity", "Cast", "Clip", "Mish", "ThresholdedRelu", "Celu"}
_POINTWISE_BINARY = {"Add", "Sub", "Mul", "Div", "PRelu", "Pow"}


def _per_channel_constant(tensor: gs.Tensor) -> bool:
    """A constant broadcasting per channel at most (shape (C, 1, 1), (1, C, 1, 1), scalar …)."""
    value = constant_value(tensor)
    if value is None:
        return False
    return value.ndim <= 1 and value.size == 1 or (value.ndim >= 2 and all(d == 1 for d in value.shape[-2:]))


def _is_pointwise(node: gs.Node, tensor: gs.Tensor) -> bool:
    """Whether ``node`` acts on ``tensor`` pixel by pixel, identically at every pixel."""
    if node.op in _POINTWISE_UNARY:
        return node.inputs[0] is tensor and all(constant_value(t) is not None for t in node.inputs[1:] if t.name)
    if node.op in _POINTWISE_BINARY:
        others = [t for t in node.inputs if t is not tensor]
        return len(others) == 1 and _per_channel_constant(others[0])
    if node.op == "Conv":
        weight = node.inputs[1]
        kernel = node.attrs.get("kernel_shape") or (list(weight.shape[2:]) if weight.shape is not None else None)
        flat = all(v == 1 for v in node.attrs.get("strides", [1, 1])) and \
            not any(node.attrs.get("pads", [0, 0, 0, 0])) and node.attrs.get("auto_pad", "NOTSET") in ("NOTSET", "VALID")
        return node.inputs[0] is tensor and kernel is not None and all(k == 1 for k in kernel) and flat \
            and all(constant_value(t) is not None for t in node.inputs[1:] if t.name)
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
