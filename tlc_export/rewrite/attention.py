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
from Shape ops on its own tensors, so on a [B·nr·nc, 3C, ·, ·] batch of windows it computes the
attention of each window independently, each image's windows apart from the others' (Reshapes with
baked constant targets are rebuilt, ``_rebuild_constant_shapes``). The window layout is
megvii-research/TLC ``LocalAttention.grids()`` computed in integer arithmetic from the run-time size
(``window_layout``); the window outputs are averaged where they overlap (``_merge``).

* Windows are stored transposed, [B·nr·nc, 3C, k2, k1]: the attention does not depend on the order
  of the pixels inside a window, and this layout lets every copy move contiguous rows (ONNX Runtime's
  Gather along the last axis copies element by element, about 5× slower than along axis 2; the
  untransposed layout measured 147 vs 99 ms per level-1 Restormer block at 256², global 54 ms). The
  price: where one window covers the map, the result is the global attention up to float rounding
  (its pixel sums run in another order; ~2e-7 here), not bit for bit.
* No scatter: ONNX ``ScatterND``/``ScatterElements`` with ``reduction="add"`` are not TensorRT
  built-ins (the onnx-tensorrt 10.15 table lists ScatterND's reduction as unsupported; TensorRT
  routes ScatterElements' reductions to a plugin). The merge is Gathers only.
* Ops used: Shape, Gather, Transpose, Reshape, Concat, Range, Squeeze/Unsqueeze (constant axes),
  Min/Max/Add/Sub/Mul/Div on int64, LessOrEqual, Cast, ReduceSum (initializer axes), Mul — all in
  the TensorRT 10.15 ONNX operator table within its restrictions (``tlc_export.trtcheck`` finds
  nothing to report on a converted Restormer).
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


def _value(t: gs.Tensor) -> np.ndarray | None:
    """A constant's value, through Identity nodes (the exporter routes de-duplicated initializers —
    e.g. equal ``temperature`` parameters of a freshly built model — through Identity)."""
    for _ in range(4):
        value = constant_value(t)
        node = _producer(t)
        if value is not None or node is None or node.op != "Identity":
            return value
        t = node.inputs[0]
    return None


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
                                              and np.all(_value(sq.inputs[1]) == 2))):
                        return False
                    src = x
                return src is x and _last_axis(inner, _reduce_axes(inner), x)
            d = node.inputs[0]
            continue
        if node.op in ("Expand", "Clip", "Identity", "Cast"):
            d = node.inputs[0]
        elif node.op in ("Max", "Add") and len(node.inputs) == 2:
            consts = [_is_constant(i, {}) for i in node.inputs]
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
    memo: dict[int, bool] = {}
    for _ in range(4):
        node = _producer(t)
        if node is None:
            return None
        if node.op == "MatMul":
            return node
        if node.op in ("Mul", "Div", "Add") and len(node.inputs) == 2 and _is_constant(node.inputs[1], memo):
            t = node.inputs[0]
        elif node.op in ("Mul", "Add") and len(node.inputs) == 2 and _is_constant(node.inputs[0], memo):
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
            if out is not y:
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
        node = _producer(cur)
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
        if _is_constant(cur, memo):
            continue
        node = _producer(cur)
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
    external = []            # sizes read from outside, e.g. ``b, c, h, w = x.shape`` of the block input
    for node in nodes:
        for out in node.outputs:
            if out is y:
                continue
            if id(out) in outputs or any(id(c) not in ids for c in out.outputs):
                raise UserError(f"unsupported global op: node {softmax.name!r} (transposed attention whose "
                                f"intermediate {out.name!r} is used outside the attention)")
        for i, inp in enumerate(node.inputs):
            if inp is x or (not inp.name and not isinstance(inp, gs.Constant)):
                continue
            p = _producer(inp)
            if (p is not None and id(p) in ids) or _is_constant(inp, memo):
                continue
            sources = _shape_sources(inp, memo)
            if not sources or not all(_rank(s.inputs[0]) == 4 and _same_map_size(s.inputs[0], x) for s in sources):
                raise UserError(f"unsupported global op: node {softmax.name!r} (transposed attention that "
                                f"also reads {inp.name!r}, which is not computed from its qkv map)")
            external.append((node, i))
    # Node names may be absent in foreign graphs; the Softmax's output name is unique either way.
    return GlobalOp("attention", softmax.name or softmax.outputs[0].name, PATTERN, nodes, x, y,
                    {"external_sizes": external})


# ---------------------------------------------------------------------------------------------------
# Window layout (integer graph arithmetic)


def window_layout(b: Builder, n: gs.Tensor, window: int):
    """TLC's windows along one axis of run-time length ``n`` (1-D int64 of length 1).

    Returns (k, count, starts, offsets): k = min(n, window); starts = min(j·step, n − k) for j < count, where
    num = (n − 1)//k + 1, step = ceil((n − k)/(num − 1)) (k when num = 1) and
    count = ceil((n − k)/step) + 1 — the same windows as ``reference.attention.window_starts``;
    offsets = j·k − starts (position y of window j is at j·k + y − s_j once the windows are laid end to end).

    Upstream computes ``ceil((n − k)/(num − 1) − 1e-8)``: the 1e-8 only keeps an exact integer ratio
    from rounding up under floating-point error, which integer ceil = (a + b − 1)//b never has (for
    a non-integer ratio a/b with b < 1e8 the fraction is ≥ 1/b > 1e-8, so the guard changes nothing).
    When num = 1 (n = k) the step is irrelevant: one window at 0, which max(step, 1) gives.
    """
    k = b.op("Min", [n, b.const([window])])
    one = b.const([1])
    den = b.op("Max", [b.op("Div", [b.op("Sub", [n, one]), k]), one])    # max(num − 1, 1)
    rest = b.op("Sub", [n, k])                                            # n − k ≥ 0
    step = b.op("Div", [b.op("Sub", [b.op("Add", [rest, den]), one]), den])
    step = b.op("Max", [step, one])
    count = b.op("Add", [b.op("Div", [b.op("Sub", [b.op("Add", [rest, step]), one]), step]), one])
    j = _arange(b, count)
    starts = b.op("Min", [b.op("Mul", [j, step]), rest])
    offsets = b.op("Sub", [b.op("Mul", [j, k]), starts])                  # window j holds y at j·k + y − s_j
    return k, count, starts, offsets


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


def _cover_indices(b: Builder, n: gs.Tensor, k: gs.Tensor, starts: gs.Tensor, offsets: gs.Tensor):
    """For every position y < n, its flat index (window·k + offset) in the first and in the last
    window covering it (the same window when only one covers it)."""
    y = _arange(b, n)                                                      # n
    y_col = b.op("Unsqueeze", [y, b.const([1])])                           # n×1
    s = b.op("Unsqueeze", [starts, b.const([0])])                          # 1×count
    axis = b.const([1])

    def count_at_most(t):  # #{r : t_r ≤ y} per y
        hits = b.op("Cast", [b.op("LessOrEqual", [t, y_col])], {"to": 7})  # int64
        return b.op("ReduceSum", [hits, axis], {"keepdims": 0})

    # first covering window: #{r : s_r + k ≤ y}; last: #{r : s_r ≤ y} − 1
    first = count_at_most(b.op("Add", [s, k]))
    last = b.op("Sub", [count_at_most(s), b.const([1])])
    return (b.op("Add", [b.op("Gather", [offsets, first], {"axis": 0}), y]),
            b.op("Add", [b.op("Gather", [offsets, last], {"axis": 0}), y]))


# ---------------------------------------------------------------------------------------------------
# Rewrite


def _gather_windows(b: Builder, x: gs.Tensor, rows, cols) -> gs.Variable:
    """[B, C3, h, w] → [B·nr·nc, C3, k2, k1]: the windows of each image consecutive (row-major), each
    stored transposed (see ``_merge``)."""
    (_, k1, nr, starts_r, _), (_, k2, nc, starts_c, _) = rows, cols
    by_rows = b.op("Gather", [x, _window_indices(b, starts_r, k1)], {"axis": 2})      # B, C3, nr·k1, w
    flipped = b.op("Transpose", [by_rows], {"perm": [0, 1, 3, 2]})                   # B, C3, w, nr·k1
    both = b.op("Gather", [flipped, _window_indices(b, starts_c, k2)], {"axis": 2})  # B, C3, nc·k2, nr·k1
    six = b.op("Reshape", [both, b.op("Concat", [b.const([0, 0]), nc, k2, nr, k1], {"axis": 0})])
    moved = b.op("Transpose", [six], {"perm": [0, 4, 2, 1, 3, 5]})                  # B, nr, nc, C3, k2, k1
    return b.op("Reshape", [moved, b.op("Concat", [b.const([-1]), b.dim(x, 1), k2, k1], {"axis": 0})])


def _merge(b: Builder, yw: gs.Tensor, rows, cols, output: gs.Tensor) -> None:
    """[B·nr·nc, C, k2, k1] window outputs → [B, C, h, w], averaged where windows overlap.

    Along one axis no position is covered by more than two windows: three regular windows span
    2·step > k (step ≥ (n − k)/(num − 1) > k/2 once there are three windows), and the flush window
    starts at least k after the last-but-one regular start — shown for num − 1 ≤ k + 1 and checked
    exhaustively for every size ≤ 20000 and window ≤ size (tests/test_restormer_graph.py reruns it to
    8192). So the mean along an axis is (O[first] + O[last]) / 2 with ``first``/``last`` the first and
    the last window covering the position — the same window twice when one covers it — which needs
    neither a count map nor a scatter: two Gathers (along axis 2, contiguous rows) and an Add per
    axis, one Transpose between the axes, one Mul by 1/4 at the end. The merge itself is exact when
    one window covers the map: (O + O) + (O + O) = 4·O and 4·O/4 = O in floating point.
    """
    (h, k1, nr, starts_r, offsets_r), (w, k2, nc, starts_c, offsets_c) = rows, cols
    six = b.op("Reshape", [yw, b.op("Concat", [b.const([-1]), nr, nc, b.dim(yw, 1), k2, k1], {"axis": 0})])
    moved = b.op("Transpose", [six], {"perm": [0, 3, 2, 4, 1, 5]})                  # B, C, nc, k2, nr, k1
    cols_first = b.op("Reshape", [moved, b.op("Concat", [b.const([0, 0, -1]), b.op("Mul", [nr, k1])], {"axis": 0})])
    c_first, c_last = _cover_indices(b, w, k2, starts_c, offsets_c)
    merged_c = b.op("Add", [b.op("Gather", [cols_first, c_first], {"axis": 2}),
                            b.op("Gather", [cols_first, c_last], {"axis": 2})])     # B, C, w, nr·k1
    rows_first = b.op("Transpose", [merged_c], {"perm": [0, 1, 3, 2]})              # B, C, nr·k1, w
    r_first, r_last = _cover_indices(b, h, k1, starts_r, offsets_r)
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
        target = _value(node.inputs[1])
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


def _window_sizes(b: Builder, op: GlobalOp, xw: gs.Tensor) -> None:
    """Sizes the region reads from outside (Shape of a map the size of X, e.g. the block input) are
    recomputed from a window-sized shape: batch and spatial dims of the window batch ``xw``, channels
    of the original map. The integer ops between are cloned, so uses outside the region keep theirs."""
    memo: dict[int, bool] = {}
    clones: dict[int, gs.Tensor] = {}

    def window_shape(shape_node: gs.Node) -> gs.Tensor:
        src = shape_node.inputs[0]
        full = b.op("Concat", [b.op("Shape", [xw], {"start": 0, "end": 1}), b.dim(src, 1),
                               b.op("Shape", [xw], {"start": 2, "end": 4})], {"axis": 0})
        start, end = shape_node.attrs.get("start", 0), shape_node.attrs.get("end")
        if start == 0 and end is None:
            return full
        ends = [end if end is not None else 4]
        return b.op("Slice", [full, b.const([start]), b.const(ends), b.const([0])])

    def clone(t: gs.Tensor) -> gs.Tensor:
        if _is_constant(t, memo):
            return t
        if id(t) in clones:
            return clones[id(t)]
        node = _producer(t)
        if node.op == "Shape":
            new = window_shape(node)
        else:
            inputs = [clone(i) if (i.name or isinstance(i, gs.Constant)) else i for i in node.inputs]
            outs = b.op(node.op, inputs, dict(node.attrs), n_out=len(node.outputs))
            outs = outs if isinstance(outs, list) else [outs]
            for o, new_o in zip(node.outputs, outs):
                clones[id(o)] = new_o
            new = clones[id(t)]
        clones[id(t)] = new
        return new

    for node, i in op.attrs.get("external_sizes", []):
        node.inputs[i] = clone(node.inputs[i])


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
    _window_sizes(b, op, xw)
    _rebuild_constant_shapes(b, op, xw)
    _merge(b, yw, rows, cols, y)
