"""Transposed (channel) attention — Restormer's MDTA — found in an ONNX graph; made local by
``rewrite.attention`` (windows of the qkv map, outputs averaged).

Pattern
-------
Restormer's attention turns a qkv map X [B, 3C, h, w] into Y [B, C, h, w]: X is split into q, k, v,
each reshaped to [B, heads, c, h·w]; q and k are L2-normalised along the pixel axis; the c×c map
softmax((q kᵀ)·temperature) mixes v's channels; the product is reshaped back. It is *global*
because the c×c map sums over all pixels. ``match_transposed_attention`` finds it structurally from
each Softmax:

* Softmax over the last axis of ``MatMul(q̂, Transpose(k̂))`` (optionally scaled by constants),
  where q̂ and k̂ are normalised over their last axis (``ReduceL2/Clip/Expand/Div``,
  ``LpNormalization`` or ``Sqrt(ReduceSum(x²))`` variants) — the contracted axis is the normalised one;
* the Softmax feeds ``MatMul(·, v)``;
* q, k, v derive from one rank-4 tensor X through layout ops only (Slice/Split/Reshape/…, no
  Transpose — the pixel axis is the flattened h·w of X): X is the nearest common such ancestor;
* Y is the first rank-4 tensor reached from the second MatMul through layout ops.

The region is every node between X and Y; it must not leak intermediate tensors and may read
nothing but X and constants. Node names are not used (foreign graphs may have none); the
exporter's scoped name of the Softmax gives the report's module path.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .. import attention as window_attention
from ..graphutil import is_constant, producer, rank, reduce_axes, value_through_identity
from ..ops import GlobalOp, KeptGlobal
from ..options import RewriteOptions
from ..subgraphs import Builder

KIND = "attention"
KEEPS_REGION = True     # localize rewires the region to run on windows
PATTERN = "Softmax(MatMul(L2Norm(q), L2Norm(k)^T))@v"
#: Ops that only move data (their first input is the data); q, k, v reach X through these alone.
_LAYOUT_UP = {"Reshape", "Slice", "Split", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
#: Ops the attention output may pass through on its way back to a 4-D map.
_LAYOUT_DOWN = _LAYOUT_UP | {"Transpose"}
TLC_MARK = window_attention.TLC_MARK


def _last_axis(node: gs.Node, axes: list[int] | None, x: gs.Tensor) -> bool:
    if axes is None or len(axes) != 1:
        return False
    r = rank(x)
    return axes[0] == -1 or (r is not None and axes[0] == r - 1)


def _norm_source(d: gs.Tensor, x: gs.Tensor) -> bool:
    """Whether the divisor ``d`` is ‖x‖₂ over x's last axis (clamped/broadcast/with eps)."""
    for _ in range(8):
        node = producer(d)
        if node is None:
            return False
        if node.op == "ReduceL2":
            return node.inputs[0] is x and node.attrs.get("keepdims", 1) == 1 and _last_axis(node, reduce_axes(node), x)
        if node.op == "Sqrt":
            inner = producer(node.inputs[0])
            if inner is not None and inner.op in ("ReduceSumSquare", "ReduceSum") and inner.attrs.get("keepdims", 1) == 1:
                src = inner.inputs[0]
                if inner.op == "ReduceSum":
                    sq = producer(src)
                    if sq is None or not ((sq.op == "Mul" and sq.inputs[0] is x and sq.inputs[1] is x)
                                          or (sq.op == "Pow" and sq.inputs[0] is x
                                              and np.all(value_through_identity(sq.inputs[1]) == 2))):
                        return False
                    src = x
                return src is x and _last_axis(inner, reduce_axes(inner), x)
            d = node.inputs[0]
            continue
        if node.op in ("Expand", "Clip", "Identity", "Cast"):
            d = node.inputs[0]
        elif node.op in ("Max", "Add") and len(node.inputs) == 2:
            consts = [is_constant(i, {}) for i in node.inputs]
            if consts.count(True) != 1:
                return False
            d = node.inputs[consts.index(False)]
        else:
            return False
    return False


def _normalised_input(t: gs.Tensor) -> gs.Tensor | None:
    """x when ``t`` is x L2-normalised over its last axis, else None."""
    node = producer(t)
    if node is None:
        return None
    if node.op == "LpNormalization":
        x = node.inputs[0]
        if node.attrs.get("p", 2) == 2 and _last_axis(node, [int(node.attrs.get("axis", -1))], x):
            return x
        return None
    if node.op == "Div":
        x, d = node.inputs
        return x if _norm_source(d, x) else None
    if node.op == "Mul":
        for x, r in (node.inputs, node.inputs[::-1]):
            rec = producer(r)
            if rec is not None and rec.op == "Reciprocal" and _norm_source(rec.inputs[0], x):
                return x
    return None


def _chain_up(t: gs.Tensor) -> list[gs.Tensor]:
    """``t`` and its ancestors through data-moving ops (first input), nearest first."""
    chain = [t]
    for _ in range(16):
        node = producer(chain[-1])
        if node is None or node.op not in _LAYOUT_UP:
            break
        chain.append(node.inputs[0])
    return chain


def _transposed_last_two(node: gs.Node | None) -> bool:
    if node is None or node.op != "Transpose" or "perm" not in node.attrs:
        return False
    perm = list(node.attrs["perm"])
    r = len(perm)
    return r >= 2 and perm == list(range(r - 2)) + [r - 1, r - 2]


def _scores_matmul(t: gs.Tensor) -> gs.Node | None:
    """The MatMul under optional constant scalings (temperature) feeding the Softmax."""
    memo: dict[int, bool] = {}
    for _ in range(4):
        node = producer(t)
        if node is None:
            return None
        if node.op == "MatMul":
            return node
        if node.op in ("Mul", "Div", "Add") and len(node.inputs) == 2 and is_constant(node.inputs[1], memo):
            t = node.inputs[0]
        elif node.op in ("Mul", "Add") and len(node.inputs) == 2 and is_constant(node.inputs[0], memo):
            t = node.inputs[1]
        else:
            return None
    return None


def _output_map(t: gs.Tensor) -> gs.Tensor | None:
    """The first rank-4 tensor at least one layout op below ``t`` (the attention output map). Shape
    nodes on the way are size side information (einops' ``rearrange`` reads the shape it reshapes)."""
    for _ in range(6):
        data = [c for c in t.outputs if c.op != "Shape"]
        if len(data) != 1 or data[0].op not in _LAYOUT_DOWN:
            return None
        t = data[0].outputs[0]
        if rank(t) == 4:
            return t
    return None


def _region(x: gs.Tensor, y: gs.Tensor) -> list[gs.Node]:
    """Nodes on a path from ``x`` to ``y`` (descendants of x that are ancestors of y)."""
    below: set[int] = set()
    stack = list(x.outputs)
    while stack:
        node = stack.pop()
        if id(node) in below:
            continue
        below.add(id(node))
        for out in node.outputs:
            if out is not y:
                stack.extend(out.outputs)
    region: dict[int, gs.Node] = {}
    stack = [producer(y)]
    while stack:
        node = stack.pop()
        if node is None or id(node) in region or id(node) not in below:
            continue
        region[id(node)] = node
        for inp in node.inputs:
            if inp is not x:
                stack.append(producer(inp))
    return list(region.values())


#: Ops that keep a map's batch and spatial size (checked further for Conv/pools).
_SIZE_KEEPING = {"Conv", "Add", "Sub", "Mul", "Div", "Relu", "LeakyRelu", "Sigmoid", "Tanh", "Gelu", "Erf",
                 "Identity", "BatchNormalization", "InstanceNormalization", "Clip", "Neg", "Abs"}


def _keeps_size(node: gs.Node) -> bool:
    if node.op != "Conv":
        return node.op in _SIZE_KEEPING
    kernel = node.attrs.get("kernel_shape")
    strides = node.attrs.get("strides", [1, 1])
    dil = node.attrs.get("dilations", [1, 1])
    pads = node.attrs.get("pads", [0, 0, 0, 0])
    if kernel is None or len(kernel) != 2 or list(strides) != [1, 1] or node.attrs.get("auto_pad", "NOTSET") != "NOTSET":
        return False
    return all(pads[i] + pads[i + 2] == (kernel[i] - 1) * dil[i] for i in range(2))


def _same_map_size(t: gs.Tensor, x: gs.Tensor) -> bool:
    """Whether the 4-D ``t`` has ``x``'s batch and spatial size by construction: x is reached from t
    through size-keeping ops (stride-1 'same' convolutions, elementwise ops)."""
    seen, stack = set(), [x]
    while stack:
        cur = stack.pop()
        if cur is t:
            return True
        node = producer(cur)
        if node is None or id(node) in seen or not _keeps_size(node) or len(seen) > 64:
            continue
        seen.add(id(node))
        stack.extend(i for i in node.inputs if isinstance(i, gs.Variable) and i.name)
    return False


def _shape_sources(t: gs.Tensor, memo: dict[int, bool]) -> list[gs.Node] | None:
    """The Shape nodes an integer tensor is computed from (with constants), or None when it also
    depends on data."""
    found: dict[int, gs.Node] = {}
    stack = [t]
    while stack:
        cur = stack.pop()
        if is_constant(cur, memo):
            continue
        node = producer(cur)
        if node is None:
            return None
        if node.op == "Shape":
            found[id(node)] = node
            continue
        if node.op not in ("Gather", "Slice", "Concat", "Unsqueeze", "Squeeze", "Reshape", "Cast", "Identity",
                           "Add", "Sub", "Mul", "Div", "Mod", "Min", "Max", "Floor", "Ceil"):
            return None
        stack.extend(i for i in node.inputs if i.name or isinstance(i, gs.Constant))
    return list(found.values())


def _rebuildable_target(node: gs.Node, y: gs.Tensor) -> bool:
    """A Reshape whose output's non-batch sizes are known channel counts but for the pixel axis (one
    flattened, or the last two: h, w); or an Expand feeding elementwise ops (broadcast works without it)."""
    if node.op == "Expand":
        return all(c.op in ("Div", "Mul", "Add", "Sub") for c in node.outputs[0].outputs)
    if node.op != "Reshape" or node.outputs[0].shape is None:
        return False
    dims = list(node.outputs[0].shape)
    free = [i for i, d in enumerate(dims) if i > 0 and not isinstance(d, int)]
    return free in ([len(dims) - 1], [len(dims) - 2, len(dims) - 1])


def match_transposed_attention(softmax: gs.Node, graph: gs.Graph) -> GlobalOp | KeptGlobal | None:
    """The transposed-attention region around ``softmax``, or None when it is no such attention."""
    if softmax.op != "Softmax":
        return None
    logits = softmax.inputs[0]
    axis = int(softmax.attrs.get("axis", -1))
    r = rank(logits)
    if not (axis == -1 or (r is not None and axis == r - 1)):
        return None
    mm1 = _scores_matmul(logits)
    if mm1 is None:
        return None
    q = _normalised_input(mm1.inputs[0])
    kt = producer(mm1.inputs[1])
    if q is None or not _transposed_last_two(kt):
        return None
    k = _normalised_input(kt.inputs[0])
    if k is None or len(softmax.outputs[0].outputs) != 1:
        return None
    mm2 = softmax.outputs[0].outputs[0]
    if mm2.op != "MatMul" or mm2.inputs[0] is not softmax.outputs[0]:
        return None
    v = mm2.inputs[1]
    chains = [_chain_up(q), _chain_up(k), _chain_up(v)]
    common = [t for t in chains[0] if any(t is u for u in chains[1]) and any(t is u for u in chains[2])]
    if not common:
        return None
    x = common[0]
    if rank(x) not in (4, None) or isinstance(x, gs.Constant):
        return None
    source_node = producer(x)
    if source_node is not None and TLC_MARK in source_node.name:
        return None                      # already a window batch of ours: converted before
    y = _output_map(mm2.outputs[0])
    if y is None:
        return None
    nodes = _region(x, y)
    ids = {id(n) for n in nodes}
    outputs = {id(t) for t in graph.outputs}
    memo: dict[int, bool] = {}
    external = []            # sizes read from outside, e.g. ``b, c, h, w = x.shape`` of the block input
    targets = []             # Reshape/Expand targets computed from outside sizes (e.g. of the graph input)
    for node in nodes:
        for out in node.outputs:
            if out is y:
                continue
            if id(out) in outputs or any(id(c) not in ids for c in out.outputs):
                return KeptGlobal(KIND, softmax.name or softmax.outputs[0].name,
                                  f"transposed attention whose intermediate {out.name!r} is used outside "
                                  f"the attention", nodes)
        for i, inp in enumerate(node.inputs):
            if inp is x or (not inp.name and not isinstance(inp, gs.Constant)):
                continue
            p = producer(inp)
            if (p is not None and id(p) in ids) or is_constant(inp, memo):
                continue
            sources = _shape_sources(inp, memo)
            if sources and i == 1 and _rebuildable_target(node, y):
                # rebuilt from the window batch (sizes of the graph input, dynamo); sizes as inferred now
                targets.append((node, list(node.outputs[0].shape)))
                continue
            if not sources or not all(rank(s.inputs[0]) == 4 and _same_map_size(s.inputs[0], x) for s in sources):
                return KeptGlobal(KIND, softmax.name or softmax.outputs[0].name,
                                  f"transposed attention that also reads {inp.name!r}, which is not computed "
                                  f"from its qkv map", nodes)
            external.append((node, i))
    # Node names may be absent in foreign graphs; the Softmax's output name is unique either way.
    return GlobalOp(KIND, softmax.name or softmax.outputs[0].name, PATTERN, nodes, x, y,
                    {"external_sizes": external, "computed_targets": targets})


def match(node: gs.Node, graph: gs.Graph) -> GlobalOp | KeptGlobal | None:
    return match_transposed_attention(node, graph) if node.op == "Softmax" else None


def localize(b: Builder, op: GlobalOp, window, options: RewriteOptions) -> str:
    """The region stays in the graph: it is fed the windows of its qkv map."""
    window_attention.local_transposed_attention(b, op, window)
    return window_attention.IMPLEMENTATION
