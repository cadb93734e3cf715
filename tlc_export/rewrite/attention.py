"""Transposed (channel) attention — Restormer's MDTA — found in an ONNX graph and made local.

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

Rewrite
-------
The region is kept as it is and fed the *windows* of X instead of X: its Reshapes take their sizes
from Shape ops on its own tensors, so on a [B·nr·nc, 3C, k1, k2] batch of windows it computes the
attention of each window independently (Reshapes with baked constant targets are rebuilt). The
window layout is megvii-research/TLC ``LocalAttention.grids()`` computed in integer arithmetic from
the run-time size (``window_layout``). The outputs are merged with gathers only (no scatter: ONNX
``ScatterElements``/``ScatterND`` with ``reduction="add"`` are not TensorRT built-ins — ScatterND's
reduction is explicitly unsupported in the onnx-tensorrt 10.15 operator table, ScatterElements'
goes to a plugin), see ``_merge``.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from ..errors import UserError
from .patterns import GlobalOp, constant_value, _reduce_axes
from .subgraphs import Builder

Window = tuple[int, int]

PATTERN = "Softmax(MatMul(L2Norm(q), L2Norm(k)^T))@v"
IMPLEMENTATION = "window-gather"
#: Ops that only move data (their first input is the data); q, k, v reach X through these alone.
_LAYOUT_UP = {"Reshape", "Slice", "Split", "Squeeze", "Unsqueeze", "Flatten", "Identity"}
#: Ops the attention output may pass through on its way back to a 4-D map.
_LAYOUT_DOWN = _LAYOUT_UP | {"Transpose"}
#: A node of ours in a rewritten graph: its tensors are never matched again.
TLC_MARK = "/tlc_attention/"


# ---------------------------------------------------------------------------------------------------
# Matching


def _producer(t: gs.Tensor) -> gs.Node | None:
    return t.inputs[0] if len(t.inputs) == 1 else None


def _rank(t: gs.Tensor) -> int | None:
    if t.shape is not None:
        return len(t.shape)
    node = _producer(t)
    if node is not None and node.op == "Reshape":
        target = node.inputs[1]
        if target.shape is not None and len(target.shape) == 1 and isinstance(target.shape[0], int):
            return int(target.shape[0])
    return None


def _is_constant(t: gs.Tensor, memo: dict[int, bool]) -> bool:
    """True when ``t`` is computed from constants alone (no graph input upstream)."""
    if isinstance(t, gs.Constant):
        return True
    if id(t) in memo:
        return memo[id(t)]
    memo[id(t)] = False                       # cycles cannot happen; this also stops re-entry
    node = _producer(t)
    result = node is not None and all(_is_constant(i, memo) for i in node.inputs if i.name or isinstance(i, gs.Constant))
    memo[id(t)] = result
    return result


def _last_axis(node: gs.Node, axes: list[int] | None, x: gs.Tensor) -> bool:
    if axes is None or len(axes) != 1:
        return False
    rank = _rank(x)
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def _norm_source(d: gs.Tensor, x: gs.Tensor) -> bool:
    """Whether the divisor ``d`` is ‖x‖₂ over x's last axis (clamped/broadcast/with eps)."""
    for _ in range(8):
        node = _producer(d)
        if node is None:
            return False
        if node.op == "ReduceL2":
            return node.inputs[0] is x and node.attrs.get("keepdims", 1) == 1 and _last_axis(node, _reduce_axes(node), x)
        if node.op == "Sqrt":
            inner = _producer(node.inputs[0])
            if inner is not None and inner.op in ("ReduceSumSquare", "ReduceSum") and inner.attrs.get("keepdims", 1) == 1:
                src = inner.inputs[0]
                if inner.op == "ReduceSum":
                    sq = _producer(src)
                    if sq is None or not ((sq.op == "Mul" and sq.inputs[0] is x and sq.inputs[1] is x)
                                          or (sq.op == "Pow" and sq.inputs[0] is x
                                              and np.all(constant_value(sq.inputs[1]) == 2))):
                        return False
                    src = x
                return src is x and _last_axis(inner, _reduce_axes(inner), x)
            d = node.inputs[0]
            continue
        if node.op in ("Expand", "Clip", "Identity", "Cast"):
            d = node.inputs[0]
        elif node.op in ("Max", "Add") and len(node.inputs) == 2:
            consts = [constant_value(i) is not None for i in node.inputs]
            if consts.count(True) != 1:
                return False
            d = node.inputs[consts.index(False)]
        else:
            return False
    return False


def _normalised_input(t: gs.Tensor) -> gs.Tensor | None:
    """x when ``t`` is x L2-normalised over its last axis, else None."""
    node = _producer(t)
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
            rec = _producer(r)
            if rec is not None and rec.op == "Reciprocal" and _norm_source(rec.inputs[0], x):
                return x
    return None


def _chain_up(t: gs.Tensor) -> list[gs.Tensor]:
    """``t`` and its ancestors through data-moving ops (first input), nearest first."""
    chain = [t]
    for _ in range(16):
        node = _producer(chain[-1])
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
    for _ in range(4):
        node = _producer(t)
        if node is None:
            return None
        if node.op == "MatMul":
            return node
        if node.op in ("Mul", "Div", "Add") and len(node.inputs) == 2 and constant_value(node.inputs[1]) is not None:
            t = node.inputs[0]
        elif node.op in ("Mul", "Add") and len(node.inputs) == 2 and constant_value(node.inputs[0]) is not None:
            t = node.inputs[1]
        else:
            return None
    return None


def _output_map(t: gs.Tensor) -> gs.Tensor | None:
    """The first rank-4 tensor at least one layout op below ``t`` (the attention output map)."""
    for _ in range(6):
        if len(t.outputs) != 1 or t.outputs[0].op not in _LAYOUT_DOWN:
            return None
        t = t.outputs[0].outputs[0]
        if _rank(t) == 4:
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
            stack.extend(out.outputs)
    region: dict[int, gs.Node] = {}
    stack = [_producer(y)]
    while stack:
        node = stack.pop()
        if node is None or id(node) in region or id(node) not in below:
            continue
        region[id(node)] = node
        for inp in node.inputs:
            if inp is not x:
                stack.append(_producer(inp))
    return list(region.values())


def match_transposed_attention(softmax: gs.Node, graph: gs.Graph) -> GlobalOp | None:
    """The transposed-attention region around ``softmax``, or None when it is no such attention."""
    if softmax.op != "Softmax":
        return None
    logits = softmax.inputs[0]
    axis = int(softmax.attrs.get("axis", -1))
    rank = _rank(logits)
    if not (axis == -1 or (rank is not None and axis == rank - 1)):
        return None
    mm1 = _scores_matmul(logits)
    if mm1 is None:
        return None
    q = _normalised_input(mm1.inputs[0])
    kt = _producer(mm1.inputs[1])
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
    if _rank(x) not in (4, None) or isinstance(x, gs.Constant):
        return None
    producer = _producer(x)
    if producer is not None and TLC_MARK in producer.name:
        return None                      # already a window batch of ours: converted before
    y = _output_map(mm2.outputs[0])
    if y is None:
        return None
    nodes = _region(x, y)
    ids = {id(n) for n in nodes}
    outputs = {id(t) for t in graph.outputs}
    memo: dict[int, bool] = {}
    for node in nodes:
        for out in node.outputs:
            if out is y:
                continue
            if id(out) in outputs or any(id(c) not in ids for c in out.outputs):
                raise UserError(f"unsupported global op: node {softmax.name!r} (transposed attention whose "
                                f"intermediate {out.name!r} is used outside the attention)")
        for inp in node.inputs:
            if inp is x or (not inp.name and not isinstance(inp, gs.Constant)):
                continue
            p = _producer(inp)
            if (p is None or id(p) not in ids) and not _is_constant(inp, memo):
                raise UserError(f"unsupported global op: node {softmax.name!r} (transposed attention that "
                                f"also reads {inp.name!r}, which is not computed from its qkv map)")
    # Node names may be absent in foreign graphs; the Softmax's output name is unique either way.
    return GlobalOp("attention", softmax.name or softmax.outputs[0].name, PATTERN, nodes, x, y)


# ---------------------------------------------------------------------------------------------------
# Window layout (integer graph arithmetic)


def window_layout(b: Builder, n: gs.Tensor, window: int):
    """TLC's windows along one axis of run-time length ``n`` (1-D int64 of length 1).

    Returns (k, count, starts): k = min(n, window); starts = min(j·step, n − k) for j < count, where
    num = (n − 1)//k + 1, step = ceil((n − k)/(num − 1)) (k when num = 1) and
    count = ceil((n − k)/step) + 1 — the same windows as ``reference.attention.window_starts``.

    Upstream computes ``ceil((n − k)/(num − 1) − 1e-8)``: the 1e-8 only keeps an exact integer ratio
    from rounding up under floating-point error, which integer ceil = (a + b − 1)//b never has (for
    a non-integer ratio a/b with b < 1e8 the fraction is ≥ 1/b > 1e-8, so the guard changes nothing).
    When num = 1 (n = k) the step is irrelevant: one window at 0, which max(step, 1) gives.
    """
    k = b.op("Min", [n, b.const([window])])
    one = b.const([1])
    num = b.op("Add", [b.op("Div", [b.op("Sub", [n, one]), k]), one])
    den = b.op("Max", [b.op("Sub", [num, one]), one])
    rest = b.op("Sub", [n, k])                                            # n − k ≥ 0
    step = b.op("Div", [b.op("Sub", [b.op("Add", [rest, den]), one]), den])
    step = b.op("Max", [step, one])
    count = b.op("Add", [b.op("Div", [b.op("Sub", [b.op("Add", [rest, step]), one]), step]), one])
    j = _arange(b, count)
    starts = b.op("Min", [b.op("Mul", [j, step]), rest])
    return k, count, starts


def _scalar(b: Builder, t: gs.Tensor) -> gs.Variable:
    return b.op("Squeeze", [t, b.const([0])])


def _arange(b: Builder, length: gs.Tensor) -> gs.Variable:
    """0, 1, …, length − 1 (``length`` 1-D of size 1)."""
    return b.op("Range", [b.const(0), _scalar(b, length), b.const(1)])


def _window_indices(b: Builder, starts: gs.Tensor, k: gs.Tensor) -> gs.Variable:
    """The flattened positions start + i (i < k) of every window: count·k indices."""
    grid = b.op("Add", [b.op("Unsqueeze", [starts, b.const([1])]),
                        b.op("Unsqueeze", [_arange(b, k), b.const([0])])])
    return b.op("Reshape", [grid, b.const([-1])])


def _cover_indices(b: Builder, n: gs.Tensor, k: gs.Tensor, starts: gs.Tensor):
    """For every position y < n, its flat index (window·k + offset) in the first and in the last
    window covering it (the same window when only one covers it)."""
    y = b.op("Unsqueeze", [_arange(b, n), b.const([1])])                  # n×1
    s = b.op("Unsqueeze", [starts, b.const([0])])                          # 1×count
    one = b.const([1])
    axis = b.const([1])

    def count_less(t):  # #{r : t_r < y} per y
        less = b.op("Cast", [b.op("Less", [t, y])], {"to": 7})             # int64
        return b.op("ReduceSum", [less, axis], {"keepdims": 0})

    # first covering window: #{r : s_r + k ≤ y}; last: #{r : s_r ≤ y} − 1
    first = count_less(b.op("Sub", [b.op("Add", [s, k]), one]))
    last = b.op("Sub", [count_less(b.op("Sub", [s, one])), one])
    y = b.op("Squeeze", [y, axis])

    def flat(r):
        return b.op("Add", [b.op("Mul", [r, k]), b.op("Sub", [y, b.op("Gather", [starts, r], {"axis": 0})])])

    return flat(first), flat(last)


# ---------------------------------------------------------------------------------------------------
# Rewrite


def _gather_windows(b: Builder, x: gs.Tensor, rows, cols) -> gs.Variable:
    """[B, C3, h, w] → [B·nr·nc, C3, k2, k1]: the windows of each image consecutive (row-major), each
    stored transposed (see ``_merge``)."""
    (_, k1, nr, starts_r), (_, k2, nc, starts_c) = rows, cols
    by_rows = b.op("Gather", [x, _window_indices(b, starts_r, k1)], {"axis": 2})      # B, C3, nr·k1, w
    flipped = b.op("Transpose", [by_rows], {"perm": [0, 1, 3, 2]})                   # B, C3, w, nr·k1
    both = b.op("Gather", [flipped, _window_indices(b, starts_c, k2)], {"axis": 2})  # B, C3, nc·k2, nr·k1
    six = b.op("Reshape", [both, b.op("Concat", [b.const([0, 0]), nc, k2, nr, k1], {"axis": 0})])
    moved = b.op("Transpose", [six], {"perm": [0, 4, 2, 1, 3, 5]})                  # B, nr, nc, C3, k2, k1
    return b.op("Reshape", [moved, b.op("Concat", [b.const([-1]), b.dim(x, 1), k2, k1], {"axis": 0})])


def _merge(b: Builder, yw: gs.Tensor, rows, cols, output: gs.Tensor) -> None:
    """[B·nr·nc, C, k2, k1] window outputs → [B, C, h, w] averaged where windows overlap.

    Along one axis no position is covered by more than two windows (TLC's layout: the first
    regular windows are more than k/2 apart and the flush window starts ≥ k after the last-but-one;
    checked exhaustively for every size ≤ 20000 and window ≤ size in tests/test_restormer_graph.py).
    So the mean along an axis is (O[first] + O[last]) / 2 with ``first``/``last`` the two covering
    windows — the same one twice when only one covers the position — which needs neither a count
    map nor a scatter: two Gathers and an Add per axis, one Mul by 1/4 at the end (a map covered by
    one window comes back exactly: (O + O) + (O + O) = 4·O, and 4·O/4 = O in floating point).
    """
    (h, k1, nr, starts_r), (w, k2, nc, starts_c) = rows, cols
    six = b.op("Reshape", [yw, b.op("Concat", [b.const([-1]), nr, nc, b.dim(yw, 1), k2, k1], {"axis": 0})])
    moved = b.op("Transpose", [six], {"perm": [0, 3, 2, 4, 1, 5]})                  # B, C, nc, k2, nr, k1
    cols_first = b.op("Reshape", [moved, b.op("Concat", [b.const([0, 0]), b.op("Mul", [nc, k2]),
                                                         b.op("Mul", [nr, k1])], {"axis": 0})])
    c_first, c_last = _cover_indices(b, w, k2, starts_c)
    merged_c = b.op("Add", [b.op("Gather", [cols_first, c_first], {"axis": 2}),
                            b.op("Gather", [cols_first, c_last], {"axis": 2})])     # B, C, w, nr·k1
    rows_first = b.op("Transpose", [merged_c], {"perm": [0, 1, 3, 2]})              # B, C, nr·k1, w
    r_first, r_last = _cover_indices(b, h, k1, starts_r)
    merged = b.op("Add", [b.op("Gather", [rows_first, r_first], {"axis": 2}),
                          b.op("Gather", [rows_first, r_last], {"axis": 2})])       # B, C, h, w
    b.op("Mul", [merged, b.const([0.25], np.float32)], outputs=[output])


def _rebuild_constant_shapes(b: Builder, op: GlobalOp, xw: gs.Tensor) -> None:
    """Reshape/Expand targets baked as constants would pin the region to the export size; make them
    follow the window batch (Reshape: batch copied with 0, pixel axis −1, the output map's h, w from
    the windows; Expand before a broadcasting op: all ones)."""
    memo: dict[int, bool] = {}
    for node in op.nodes:
        if node.op not in ("Reshape", "Expand") or not _is_constant(node.inputs[1], memo):
            continue
        target = constant_value(node.inputs[1])
        if target is None:
            raise UserError(f"node {node.name!r}: a {node.op} with a computed constant target inside the attention "
                            f"{op.name!r}; constant-fold the graph first (polygraphy surgeon sanitize --fold-constants)")
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        if node.op == "Expand":
            if not all(c.op in ("Div", "Mul", "Add", "Sub") for c in node.outputs[0].outputs):
                raise UserError(f"node {node.name!r}: Expand to a constant shape inside the attention {op.name!r}")
            node.inputs[1] = b.const([1] * len(target))
            continue
        if node.attrs.get("allowzero", 0):
            raise UserError(f"node {node.name!r}: Reshape with allowzero=1 and a constant shape inside the "
                            f"attention {op.name!r}")
        if node.outputs[0] is op.output:
            if len(target) != 4:
                raise UserError(f"node {node.name!r}: the attention output Reshape has target {target}")
            node.inputs[1] = b.op("Concat", [b.const([0, target[1]]), b.dim(xw, 2), b.dim(xw, 3)], {"axis": 0})
            continue
        new = [0] + target[1:]
        if -1 not in new[1:] and len(new) > 1:
            new[-1] = -1
        node.inputs[1] = b.const(new)


def local_transposed_attention(b: Builder, op: GlobalOp, window: Window) -> None:
    """Rewire ``op``'s region (kept in the graph) to run on the windows of its qkv map and merge the
    window outputs into ``op.output`` (in place)."""
    x, y = op.source, op.output
    b.prefix = f"{op.name}{TLC_MARK.rstrip('/')}"
    h, w = b.dim(x, 2), b.dim(x, 3)
    rows = (h, *window_layout(b, h, int(window[0])))
    cols = (w, *window_layout(b, w, int(window[1])))
    xw = _gather_windows(b, x, rows, cols)
    ids = {id(n) for n in op.nodes}
    for node in op.nodes:
        for i, inp in enumerate(node.inputs):
            if inp is x:
                node.inputs[i] = xw
    last = _producer(y)
    assert last is not None and id(last) in ids
    yw = gs.Variable(f"{b.prefix}/windows_out")
    last.outputs[last.outputs.index(y)] = yw
    _rebuild_constant_shapes(b, op, xw)
    _merge(b, yw, rows, cols, y)
