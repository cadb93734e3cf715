"""What consumes a pooled tensor, and whether a local-mean map can take its place.

A global mean gives an (N, C, 1, 1) map or an (N, C) vector; TLC replaces it by an (N, C, h, w) map of
local means, and everything computed from it must then run per pixel. ``follow_pooled`` walks the
consumers and returns a ``PooledUse`` plan, or the reason why the replacement is no drop-in.

Two layouts are followed (spatial axes are the last two in "map" mode; absent in "vector" mode, whose
local form carries them as axes 1, 2: (N, d1, …) → (N, h, w, d1, …), so a Linear over channels — Gemm or
MatMul on the last axis — runs per pixel unchanged, like a 1×1 conv):

* map → map: per-pixel ops (unary, elementwise, 1×1 Conv, BatchNorm, Softmax/Concat/Split on a
  non-spatial axis, Expand) and Reshapes whose target ends in 1, 1 (re-targeted to h, w);
* map → vector ("entries"): Flatten(axis 1), Squeeze of both spatial axes, Reshape to rank 2; Squeeze
  of one spatial axis gives an (N, C, 1) vector (ECA: ``y.squeeze(-1).transpose(-1, -2)``);
* vector → vector: Gemm/MatMul with constant weights, unary and elementwise ops, Softmax, Concat, Split,
  Unsqueeze, Squeeze, Reduce*, Transpose on non-batch axes (axes shifted by 2 locally); a 1-D Conv with
  constant weights on an (N, Cin, L) vector (ECA's convolution across channels), run on the pixels as
  a batch;
* vector → map ("exits"): Reshape to a target ending in 1, 1, Unsqueezes adding the last two axes, or
  one Unsqueeze adding the last axis to a vector whose last axis is 1 ((N, C, 1) → (N, C, 1, 1));
* Shape of a pooled tensor (``y.view(y.size(0), -1)``; einops' ``rearrange('b c -> b c 1 1')`` through
  the TorchScript exporter builds the exit's target from the vector's): answered with the global shape,
  read off the local tensor ((N, C, 1, 1) from (N, C, h, w); (N, C) from (N, h, w, C)), so the size
  arithmetic downstream sees the values it was written for.

The walk stops where a pooled-derived tensor meets a full map (an elementwise op with a non-constant
operand whose spatial size is not 1×1): from there on it is an ordinary map.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from .graphutil import constant_value, int_list, rank, reduce_axes, value_through_identity
from .pointwise import POINTWISE_BINARY, POINTWISE_UNARY, is_one_by_one_conv

MAP, VECTOR = "map", "vector"
_ELEMENTWISE = POINTWISE_BINARY | {"Max", "Min", "Sum", "Mean"}
_AXIS_OPS = {"Softmax", "LogSoftmax", "Hardmax", "Concat", "Split"}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL2", "ReduceL1"}
_MAX_REGION = 256


class NotDropIn(Exception):
    """The pooled tensor is used in a way a local-mean map cannot take part in (the message says how)."""


@dataclass
class PooledUse:
    """The nodes downstream of a pooled tensor, by what the rewrite must do with them."""

    mode: str                                               # the pooled tensor's own layout
    vector_nodes: list[tuple[gs.Node, int | None]] = field(default_factory=list)  # (node, input rank): axes shift by 2
    entries: list[tuple[list[gs.Node], int]] = field(default_factory=list)  # map → vector (1 or 2 nodes, vector rank)
    exits: list[tuple[list[gs.Node], int]] = field(default_factory=list)  # vector → map (1 or 2 nodes, vector rank)
    spatial_reshapes: list[gs.Node] = field(default_factory=list)  # map reshapes ending in 1, 1
    shapes: list[tuple[gs.Node, str]] = field(default_factory=list)  # Shape ops reading a pooled tensor

    @property
    def pointwise_only(self) -> bool:
        return self.mode == MAP and not (self.vector_nodes or self.entries or self.spatial_reshapes)


def _ends_in_one_one(target: gs.Tensor) -> bool:
    """A Reshape target (constant, or a Concat of pieces) whose last two entries are 1."""
    values = int_list(target)
    if values is not None:
        return len(values) >= 4 and values[-2:] == [1, 1]
    node = target.inputs[0] if len(target.inputs) == 1 else None
    if node is None or node.op != "Concat":
        return False
    tail: list[int] = []
    for piece in reversed(node.inputs):
        values = int_list(piece)
        if values is None:
            break
        tail = values + tail
        if len(tail) >= 2:
            break
    return len(tail) >= 2 and tail[-2:] == [1, 1]


def target_rank(target: gs.Tensor) -> int | None:
    values = int_list(target)
    if values is not None:
        return len(values)
    return int(target.shape[0]) if target.shape is not None and isinstance(target.shape[0], int) else None


def _one_by_one(t: gs.Tensor) -> bool:
    """Whether ``t`` is known to be 1×1 spatially (another pooled tensor). An unknown size counts as a
    full map: a wrong guess there fails the conversion's own check at the calibration size, loudly."""
    return t.shape is not None and len(t.shape) >= 2 and all(d == 1 for d in t.shape[-2:])


def _axis(node: gs.Node, r: int | None, default: int) -> int | None:
    a = int(node.attrs.get("axis", default))
    return a % r if r is not None else (a if a >= 0 else None)


def unsqueeze_axes(node: gs.Node) -> list[int] | None:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    return int_list(node.inputs[1]) if len(node.inputs) > 1 else None


def _squeeze_axes(node: gs.Node) -> list[int] | None:
    return unsqueeze_axes(node)


def _spatial_unsqueezes(node: gs.Node, vec_rank: int | None) -> list[gs.Node] | None:
    """1 or 2 Unsqueezes from ``node`` whose output has the vector's axes followed by two new ones."""
    chain, dims = [node], vec_rank
    if dims is None:
        return None
    marks = ["v"] * dims
    for _ in range(2):
        axes = unsqueeze_axes(chain[-1])
        if axes is None:
            return None
        out_rank = len(marks) + len(axes)
        for a in sorted(x % out_rank for x in axes):
            marks.insert(a, "n")
        if marks == ["v"] * dims + ["n", "n"]:
            return chain
        nxt = chain[-1].outputs[0].outputs
        if len(marks) != dims + 1 or marks[-1] != "n" or len(nxt) != 1 or nxt[0].op != "Unsqueeze":
            return None
        chain.append(nxt[0])
    return None


def _spatial_squeezes(node: gs.Node) -> tuple[list[gs.Node], int] | None:
    """1 or 2 nodes from ``node`` turning an (N, C, 1, 1) map into an (N, C) vector, or one Squeeze of
    a single spatial axis into an (N, C, 1) vector; with the vector's rank."""
    if node.op == "Flatten":
        return ([node], 2) if int(node.attrs.get("axis", 1)) == 1 else None
    if node.op == "Reshape":
        return ([node], 2) if target_rank(node.inputs[1]) == 2 else None
    if node.op != "Squeeze":
        return None
    axes = _squeeze_axes(node)
    if axes is None:
        return None
    axes = sorted(a % 4 for a in axes)
    if axes == [2, 3]:
        return [node], 2
    if axes not in ([3], [2]):
        return None
    nxt = node.outputs[0].outputs
    if len(nxt) == 1 and nxt[0].op == "Squeeze":
        second = _squeeze_axes(nxt[0])
        if second is not None and sorted(a % 3 for a in second) == [2]:
            return [node, nxt[0]], 2
    return [node], 3


def _is_in(t: gs.Tensor, tensors: list[gs.Tensor]) -> bool:
    return any(t is u for u in tensors)


def _vector_node_ok(node: gs.Node, inputs_in: list[gs.Tensor], r: int | None) -> bool:
    """Whether a vector-mode node runs per pixel once its axes are shifted by 2."""
    others = [t for t in node.inputs if t.name and all(t is not u for u in inputs_in)]
    consts = all(constant_value(t) is not None or value_through_identity(t) is not None for t in others)
    op = node.op
    if op in POINTWISE_UNARY:
        return _is_in(node.inputs[0], inputs_in) and consts
    if op in _ELEMENTWISE:
        for t in others:
            v = value_through_identity(t)
            if v is None or (r is not None and v.ndim >= r and v.shape[0] != 1):
                return False
        return True
    if op == "Gemm":
        return node.inputs[0] is inputs_in[0] and len(inputs_in) == 1 and consts and not node.attrs.get("transA", 0)
    if op == "MatMul":
        w = value_through_identity(node.inputs[1])
        return node.inputs[0] is inputs_in[0] and len(inputs_in) == 1 and w is not None and w.ndim == 2
    if op in _AXIS_OPS:
        default = 1 if op == "Concat" else (0 if op == "Split" else -1)
        return consts and _axis(node, r, default) not in (0, None)
    if op in _REDUCE:
        axes = reduce_axes(node)
        return consts and axes is not None and r is not None and all(a % r != 0 for a in axes)
    if op in ("Unsqueeze", "Squeeze"):
        axes = unsqueeze_axes(node)
        out_r = None if r is None or axes is None else (r + len(axes) if op == "Unsqueeze" else r)
        return axes is not None and out_r is not None and all(a % out_r != 0 for a in axes)
    if op == "Transpose":
        perm = node.attrs.get("perm")
        return perm is not None and list(perm)[0] == 0
    if op == "Conv":
        return r == 3 and node.inputs[0] is inputs_in[0] and len(inputs_in) == 1 and consts
    return False


def _singleton_exit(node: gs.Node, vector: gs.Tensor, r: int | None) -> bool:
    """One Unsqueeze adding the last axis to a vector whose last axis is statically 1."""
    axes = unsqueeze_axes(node)
    shape = vector.shape
    return (r is not None and r >= 3 and axes is not None and len(axes) == 1 and axes[0] % (r + 1) == r
            and shape is not None and len(shape) == r and shape[-1] == 1)


def _map_node_ok(node: gs.Node, inputs_in: list[gs.Tensor]) -> str | None:
    """'region' / 'merge' for a map-mode node, None when it is not per pixel."""
    others = [t for t in node.inputs if t.name and all(t is not u for u in inputs_in)]
    op = node.op
    if op in POINTWISE_UNARY or op == "BatchNormalization":
        return "region" if _is_in(node.inputs[0], inputs_in) and all(constant_value(t) is not None for t in others) else None
    if op in _ELEMENTWISE or op == "Expand":
        full = [t for t in others if value_through_identity(t) is None and not _one_by_one(t)]
        return "merge" if full and op != "Expand" else "region"
    if op == "Conv":
        return "region" if is_one_by_one_conv(node) and _is_in(node.inputs[0], inputs_in) else None
    if op in _AXIS_OPS:
        r = rank(node.inputs[0])
        default = 1 if op == "Concat" else (0 if op == "Split" else -1)
        a = _axis(node, r, default)
        return "region" if a is not None and r is not None and a < r - 2 and a != 0 else None
    if op == "Reshape":
        return "region" if _ends_in_one_one(node.inputs[1]) else None
    return None


def follow_pooled(pooled: gs.Tensor, mode: str, graph_outputs: set[str], vector_rank: int = 2) -> PooledUse:
    """The plan for replacing ``pooled`` by local means; raises ``NotDropIn`` with the reason.
    ``vector_rank``: the rank of ``pooled`` in vector mode ((N, C) or (N, C, 1))."""
    use = PooledUse(mode)
    region: dict[int, str] = {id(pooled): mode}          # tensor id -> layout
    vec_rank: dict[int, int | None] = {id(pooled): vector_rank if mode == VECTOR else None}
    stack, seen = [pooled], set()
    while stack:
        t = stack.pop()
        if t.name in graph_outputs and region[id(t)] == VECTOR:
            # a pooled map as an output becomes the local-mean map, as when TLC replaces the pooling module;
            # a vector output (a classifier's features) has no per-pixel form
            raise NotDropIn(f"the pooled vector reaches the graph output {t.name!r}")
        for node in list(t.outputs):
            if id(node) in seen:
                continue
            seen.add(id(node))
            if len(seen) > _MAX_REGION:
                raise NotDropIn("the pooled tensor feeds too many nodes to follow")
            new = _classify(node, region, vec_rank, use)
            stack.extend(new)
    return use


def _add(tensors, layout, region, vec_rank, r=None) -> list[gs.Tensor]:
    for t in tensors:
        region[id(t)] = layout
        vec_rank[id(t)] = r
    return list(tensors)


def _classify(node: gs.Node, region, vec_rank, use: PooledUse) -> list[gs.Tensor]:
    """File ``node`` (a consumer of a region tensor) in ``use``; returns its outputs that join the region."""
    inputs_in = [t for t in node.inputs if id(t) in region]
    layouts = {region[id(t)] for t in inputs_in}
    if len(layouts) != 1:
        raise NotDropIn(f"node {node.name!r} ({node.op}) mixes pooled maps and vectors")
    layout = layouts.pop()
    if node.op == "Shape":
        if layout == MAP and not _one_by_one(inputs_in[0]):   # an Expand's output is a full map globally
            raise NotDropIn(f"node {node.name!r} (Shape) reads a pooled map not known to be 1×1")
        use.shapes.append((node, layout))
        return []       # size data, not a pooled value: the walk ends here
    if layout == MAP:
        entry = _spatial_squeezes(node) if len(inputs_in) == 1 and node.inputs[0] is inputs_in[0] else None
        if entry:
            use.entries.append(entry)
            return _add(entry[0][-1].outputs, VECTOR, region, vec_rank, entry[1])
        verdict = _map_node_ok(node, inputs_in)
        if verdict is None:
            raise NotDropIn(f"node {node.name!r} ({node.op}) uses the pooled map in a way that is not per pixel")
        if verdict == "merge":
            return []
        if node.op == "Reshape":
            use.spatial_reshapes.append(node)
        return _add(node.outputs, MAP, region, vec_rank)
    r = vec_rank[id(inputs_in[0])]
    if node.op in ("Reshape", "Unsqueeze"):
        chain = _spatial_unsqueezes(node, r) if node.op == "Unsqueeze" else (
            [node] if _ends_in_one_one(node.inputs[1]) and target_rank(node.inputs[1]) else None)
        if chain is None and node.op == "Unsqueeze" and _singleton_exit(node, inputs_in[0], r):
            chain = [node]
        if chain and r is not None:
            use.exits.append((chain, r))
            return _add(chain[-1].outputs, MAP, region, vec_rank)
    if not _vector_node_ok(node, inputs_in, r):
        raise NotDropIn(f"node {node.name!r} ({node.op}) uses the pooled vector in a way that does not run "
                        f"per pixel")
    use.vector_nodes.append((node, r))
    out_r = r
    if r is not None and node.op in ("Unsqueeze", "Squeeze"):
        n = len(unsqueeze_axes(node))
        out_r = r + n if node.op == "Unsqueeze" else r - n
    elif r is not None and node.op in _REDUCE and not node.attrs.get("keepdims", 1):
        out_r = r - len(reduce_axes(node))
    elif node.op in ("Gemm",):
        out_r = 2
    return _add(node.outputs, VECTOR, region, vec_rank, out_r)


__all__ = ["target_rank", "unsqueeze_axes", "MAP", "VECTOR", "NotDropIn", "PooledUse", "follow_pooled"]
