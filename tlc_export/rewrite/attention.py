"""Transposed (channel) attention made local: the matched region (``kinds.attention``) runs on the
windows of its qkv map and the window outputs are averaged where they overlap.

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
from .graphutil import is_constant, producer, rank, value_through_identity
from .ops import GlobalOp
from .subgraphs import Builder

Window = tuple[int, int]

IMPLEMENTATION = "window-gather"
#: A node of ours in a rewritten graph: its tensors are never matched again.
TLC_MARK = "/tlc_attention/"


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


def _is_size_arithmetic(t: gs.Tensor) -> bool:
    """An integer scalar or vector: shape arithmetic, which follows the windows by itself once the
    region reads the window batch."""
    r = rank(t)
    return (r is not None and r <= 1) or getattr(t, "dtype", None) in (np.int64, np.int32)


def _rebuild_constant_shapes(b: Builder, op: GlobalOp, xw: gs.Tensor) -> None:
    """Reshape/Expand targets baked as constants would pin the region to the export size; make them
    follow the window batch (Reshape: batch copied with 0, pixel axis −1, the output map's h, w from
    the windows; Expand before a broadcasting op: all ones)."""
    memo: dict[int, bool] = {}
    for node in op.nodes:
        if node.op not in ("Reshape", "Expand") or not is_constant(node.inputs[1], memo):
            continue
        if _is_size_arithmetic(node.inputs[0]):
            continue     # a size computed in the graph (a .pt2 program's h·w scalar to [-1]), not data
        target = value_through_identity(node.inputs[1])
        if target is None:
            raise UserError(f"node {node.name!r}: a {node.op} with a computed constant target inside the attention "
                            f"{op.name!r}; constant-fold the graph first (polygraphy surgeon sanitize --fold-constants)")
        target = [int(v) for v in np.asarray(target).reshape(-1)]
        if node.op == "Expand":
            if not all(c.op in ("Div", "Mul", "Add", "Sub") for c in node.outputs[0].outputs):
                raise UserError(f"node {node.name!r}: Expand to a constant shape inside the attention {op.name!r}")
            node.inputs[1] = b.const([1] * len(target))
            continue
        # the batch is copied: 0, or its size where 0 means zero (allowzero=1, the dynamo exporter's)
        batch = b.dim(node.inputs[0], 0) if node.attrs.get("allowzero", 0) else b.const([0])
        if node.outputs[0] is op.output:
            if len(target) != 4:
                raise UserError(f"node {node.name!r}: the attention output Reshape has target {target}")
            node.inputs[1] = b.op("Concat", [batch, b.const([target[1]]), b.dim(xw, 2), b.dim(xw, 3)], {"axis": 0})
            continue
        rest = target[1:]
        if -1 not in rest and rest:
            rest[-1] = -1
        node.inputs[1] = b.op("Concat", [batch, b.const(rest)], {"axis": 0})


def _window_sizes(b: Builder, op: GlobalOp, xw: gs.Tensor) -> None:
    """Sizes the region reads from outside (Shape of a map the size of X, e.g. the block input) are
    recomputed from a window-sized shape: batch and spatial dims of the window batch ``xw``, channels
    of the original map. The integer ops between are cloned, so uses outside the region keep theirs."""
    memo: dict[int, bool] = {}
    clones: dict[int, gs.Tensor] = {}

    def window_shape(shape_node: gs.Node) -> gs.Tensor:
        src = shape_node.inputs[0]
        return b.shape_like([b.op("Shape", [xw], {"start": 0, "end": 1}), b.dim(src, 1),
                             b.op("Shape", [xw], {"start": 2, "end": 4})], shape_node)

    def clone(t: gs.Tensor) -> gs.Tensor:
        if is_constant(t, memo):
            return t
        if id(t) in clones:
            return clones[id(t)]
        node = producer(t)
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


def _rebuild_computed_targets(b: Builder, op: GlobalOp, xw: gs.Tensor) -> None:
    """Reshape/Expand targets computed from sizes outside the region (the dynamo exporter derives them
    from the graph input): batch from the Reshape's input, channel counts as inferred, a flattened pixel
    axis −1, an (h, w) pair the window's; Expand before a broadcasting op: all ones."""
    for node, dims in op.attrs.get("computed_targets", []):
        if node.op == "Expand":
            node.inputs[1] = b.const([1] * len(dims))
            continue
        batch = b.dim(node.inputs[0], 0)      # not 0: the dynamo exporter's Reshapes have allowzero=1
        fixed = [d for d in dims[1:] if isinstance(d, int)]
        if isinstance(dims[-2], int):          # one flattened pixel axis
            pieces = [batch, b.const(fixed + [-1])]
        else:
            pieces = [batch, b.const(fixed), b.dim(xw, 2), b.dim(xw, 3)] if fixed else [batch, b.dim(xw, 2), b.dim(xw, 3)]
        node.inputs[1] = b.op("Concat", pieces, {"axis": 0})


def _rebuild_static_batch(b: Builder, op: GlobalOp) -> None:
    """A graph exported with a static batch of 1 (a ``.pt2`` with only H, W dynamic) builds Reshape
    targets as Concat(const [1, …], sizes …); on the window batch that 1 must be the batch of the
    Reshape's input."""
    shape = getattr(op.source, "shape", None)
    if not shape or shape[0] != 1:
        return
    for node in op.nodes:
        if node.op != "Reshape" or _is_size_arithmetic(node.inputs[0]):
            continue
        concat = producer(node.inputs[1])
        if concat is None or concat.op != "Concat" or not concat.inputs:
            continue
        first = value_through_identity(concat.inputs[0])
        if first is None or np.asarray(first).reshape(-1)[:1].tolist() != [1]:
            continue
        rest = [int(v) for v in np.asarray(first).reshape(-1)[1:]]
        pieces = [b.dim(node.inputs[0], 0)] + ([b.const(rest)] if rest else [])
        node.inputs[1] = b.op("Concat", [*pieces, *concat.inputs[1:]], {"axis": 0})


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
    last = producer(y)
    assert last is not None and id(last) in ids
    yw = gs.Variable(f"{b.prefix}/windows_out")
    last.outputs[last.outputs.index(y)] = yw
    _window_sizes(b, op, xw)
    _rebuild_computed_targets(b, op, xw)
    _rebuild_constant_shapes(b, op, xw)
    _rebuild_static_batch(b, op)
    _merge(b, yw, rows, cols, y)
