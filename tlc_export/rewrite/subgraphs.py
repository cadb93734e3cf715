"""Standard-op ONNX subgraphs that compute TLC's local statistics for any input size at run time.

Built with onnx-graphsurgeon's ``graph.layer``. Every window is clamped at run time (k = min(size, kh)),
so one graph serves every input size; when the window covers the map the result equals the global op.

Box-filter forms, picked per op at run time by an If (see ``MATMUL_MAX_SPAN``), or fixed by
``Builder.box_filter`` (``BOX_FILTERS``). Small maps: two banded-matrix MatMuls. Large maps ("cumsum"):
along H, a CumSum then the difference of the prefix sums k1 rows apart gives the h−k1+1 valid window
sums; a Transpose puts W on axis 2 and the same is done along W (so every CumSum in the graph runs on
the same axis: TensorRT ≥ 10.8 computes CumSums on *different* axes of one network as if on one axis,
onnx-tensorrt#1034); a second Transpose restores the layout, one Div scales by 1/(k1·k2) and one edge
Pad restores h×w with TLC's split (top/left ⌊(k−1)/2⌋). Cost O(h·w) whatever the window; everything
accumulates in float32.
"""
from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

Window = tuple[int, int]
# "auto": an If picks the form per op at run time (MATMUL_MAX_SPAN); "cumsum" / "matmul" emit one form and
# no If (for runtimes that prefer straight-line graphs; "matmul" costs O(h·w·(h'+w')) on large maps).
BOX_FILTERS = ("auto", "cumsum", "matmul")


class Builder:
    """Adds named nodes to a gs graph; every tensor and node name starts with ``prefix``."""

    def __init__(self, graph: gs.Graph, prefix: str, opset: int, box_filter: str = "auto"):
        if box_filter not in BOX_FILTERS:
            raise ValueError(f"box filter {box_filter!r} is not one of {', '.join(BOX_FILTERS)}")
        self.graph = graph
        self.prefix = prefix
        self.opset = opset
        self.box_filter = box_filter
        self._count = 0

    def _name(self, what: str) -> str:
        self._count += 1
        return f"{self.prefix}/{what}_{self._count}"

    def const(self, values, dtype=np.int64) -> gs.Constant:
        return gs.Constant(self._name("const"), np.asarray(values, dtype=dtype))

    def op(self, op_type: str, inputs: list, attrs: dict | None = None, outputs: list | None = None,
           n_out: int = 1):
        name = self._name(op_type)
        if outputs is None:
            outputs = [gs.Variable(f"{name}_out{i}" if n_out > 1 else f"{name}_out") for i in range(n_out)]
        node = gs.Node(op_type, name=name, attrs=attrs or {}, inputs=list(inputs), outputs=list(outputs))
        self.graph.nodes.append(node)
        return outputs if n_out > 1 else outputs[0]

    def reduce_mean(self, x: gs.Tensor, axes: list[int]) -> gs.Variable:
        """ReduceMean keeping dims; ``axes`` moved from attribute to input in opset 18."""
        if self.opset >= 18:
            return self.op("ReduceMean", [x, self.const(axes)], {"keepdims": 1})
        return self.op("ReduceMean", [x], {"axes": list(axes), "keepdims": 1})

    def dim(self, x: gs.Tensor, axis: int) -> gs.Variable:
        """Size of ``x`` along ``axis`` as a 1-D int64 tensor of length 1."""
        return self.op("Shape", [x], {"start": axis, "end": axis + 1})

    def shape_like(self, pieces: list[gs.Tensor], shape_node: gs.Node, output: gs.Tensor | None = None) -> gs.Tensor:
        """The shape concatenated from ``pieces`` (standing in for ``shape_node``'s input), cut like
        ``shape_node``'s start/end attributes."""
        start, end = shape_node.attrs.get("start", 0), shape_node.attrs.get("end")
        whole = not start and end is None
        full = self.op("Concat", pieces, {"axis": 0}, outputs=[output] if whole and output is not None else None)
        if whole:
            return full
        stop = np.iinfo(np.int64).max if end is None else int(end)
        return self.op("Slice", [full, self.const([int(start)]), self.const([stop]), self.const([0])],
                       outputs=[output] if output is not None else None)


def _valid_box_sum_axis2(b: Builder, x: gs.Tensor, n: gs.Tensor, k: gs.Tensor) -> gs.Variable:
    """Sums of every length-k run along axis 2 of ``x`` (n−k+1 of them), from one inclusive CumSum C:
    run i sums to C[i+k−1] − C[i−1] with C[−1] = 0. The shifted operand is one Pad with a negative end
    (one zero row in front, the last k rows dropped): a copy of n−k+1 rows instead of padding all n.

    Axis 2 on purpose: ONNX Runtime's CPU CumSum adds whole rows along axis 2 (as fast as an Add)
    but walks element by element along the last axis (about 5x slower)."""
    cums = b.op("CumSum", [x, b.const(2)])
    hi = b.op("Slice", [cums, b.op("Sub", [k, b.const([1])]), n, b.const([2])])
    shift = b.op("Concat", [b.const([0, 0, 1, 0, 0, 0]), b.op("Neg", [k]), b.const([0])], {"axis": 0})
    lo = b.op("Pad", [cums, shift], {"mode": "constant"})
    return b.op("Sub", [hi, lo])


def clamped_window(b: Builder, x: gs.Tensor, window: Window):
    """Run-time (h, w, k1, k2) of ``x`` (N, C, h, w) for a calibrated window (kh, kw)."""
    h, w = b.dim(x, 2), b.dim(x, 3)
    k1 = b.op("Min", [h, b.const([window[0]])])
    k2 = b.op("Min", [w, b.const([window[1]])])
    return h, w, k1, k2


# Window means of a small map are cheaper as two banded-matrix products (GEMMs, ~h'+w' multiply-adds per
# element) than as the ~12 memory-bound passes of the prefix-sum form; on a large map the prefix sums win.
# Measured with ONNX Runtime CPU (2 threads): 512×32×48, window 16: 1.4 ms vs 7 ms; 256×64×96, window 32:
# 7.6 vs 13 ms; 128×128×192, window 64 (h'+w' = 194): even. The choice is made at run time per op (an If
# on h'+w'), so one graph is fast at every input size and the cost stays O(h·w): the matrix form only
# runs while h'+w' <= MATMUL_MAX_SPAN.
MATMUL_MAX_SPAN = 160


def _band_matrix(b: Builder, n: gs.Tensor, k: gs.Tensor, n_out: gs.Tensor) -> gs.Variable:
    """(n, n_out) float32 matrix with 1/k where row j lies in window i (i <= j < i+k), else 0."""
    zero, one = b.const(0), b.const(1)
    starts = b.op("Range", [zero, b.op("Squeeze", [n_out]), one])                      # n_out
    rows = b.op("Unsqueeze", [b.op("Range", [zero, b.op("Squeeze", [n]), one]), b.const([1])])  # n, 1
    inside = b.op("And", [b.op("GreaterOrEqual", [rows, starts]), b.op("Less", [rows, b.op("Add", [starts, k])])])
    return b.op("Div", [b.op("Cast", [inside], {"to": 1}), b.op("Cast", [k], {"to": 1})])


def _valid_mean_by_matmul(b: Builder, x: gs.Tensor, h, w, k1, k2, n_h, n_w) -> gs.Variable:
    """x @ band(w) along W, then band(h)ᵀ @ that along H."""
    along_w = b.op("MatMul", [x, _band_matrix(b, w, k2, n_w)])                                # N, C, h, w'
    rows_t = b.op("Transpose", [_band_matrix(b, h, k1, n_h)], {"perm": [1, 0]})           # h', h
    return b.op("MatMul", [rows_t, along_w])                                                # N, C, h', w'


def _valid_mean_by_cumsum(b: Builder, x: gs.Tensor, h, w, k1, k2) -> gs.Variable:
    along_h = _valid_box_sum_axis2(b, x, h, k1)                            # N, C, h', w
    w_mid = b.op("Transpose", [along_h], {"perm": [0, 1, 3, 2]})           # N, C, w, h'
    along_w = _valid_box_sum_axis2(b, w_mid, w, k2)                        # N, C, w', h'
    sums = b.op("Transpose", [along_w], {"perm": [0, 1, 3, 2]})            # N, C, h', w'
    area = b.op("Cast", [b.op("Mul", [k1, k2])], {"to": 1})               # float32
    return b.op("Div", [sums, area])


def _branch(b: Builder, name: str) -> Builder:
    """A Builder for an If branch: a subgraph whose nodes may read the outer graph's tensors."""
    return Builder(gs.Graph(name=f"{b.prefix}/{name}", opset=b.opset), f"{b.prefix}/{name}", b.opset, b.box_filter)


def valid_local_mean(b: Builder, x: gs.Tensor, window: Window):
    """The (h−k1+1)×(w−k2+1) stride-1 window means of ``x`` and the run-time (k1, k2).

    With ``b.box_filter == "auto"`` an If picks the banded-matrix form for small maps and the prefix-sum
    form otherwise (see MATMUL_MAX_SPAN); both are exact, in float32."""
    # An Identity gives the branches one outer tensor to read; a reduced-precision pass casts at its input
    # (If branches read outer tensors implicitly, which no Cast would otherwise reach).
    x = b.op("Identity", [x])
    h, w, k1, k2 = clamped_window(b, x, window)
    return valid_box_mean(b, x, h, w, k1, k2), k1, k2


def valid_box_mean(b: Builder, x: gs.Tensor, h, w, k1, k2) -> gs.Variable:
    """The (h−k1+1)×(w−k2+1) stride-1 means of ``x`` (N, C, h, w) for run-time k1 ≤ h, k2 ≤ w (1-D int64
    tensors, as h and w); the form as ``valid_local_mean``. ``x`` must be one tensor the If branches can read."""
    one = b.const([1])
    n_h = b.op("Add", [b.op("Sub", [h, k1]), one])
    n_w = b.op("Add", [b.op("Sub", [w, k2]), one])
    if b.box_filter == "matmul":
        return _valid_mean_by_matmul(b, x, h, w, k1, k2, n_h, n_w)
    if b.box_filter == "cumsum":
        return _valid_mean_by_cumsum(b, x, h, w, k1, k2)
    small = b.op("LessOrEqual", [b.op("Add", [n_h, n_w]), b.const([MATMUL_MAX_SPAN])])
    branches = {}
    for name in ("matmul", "cumsum"):
        sub = _branch(b, name)
        out = (_valid_mean_by_matmul(sub, x, h, w, k1, k2, n_h, n_w) if name == "matmul"
               else _valid_mean_by_cumsum(sub, x, h, w, k1, k2))
        out.dtype = np.float32
        sub.graph.outputs = [out]
        branches[name] = sub.graph
    mean = b.op("If", [small], {"then_branch": branches["matmul"], "else_branch": branches["cumsum"]})
    mean.dtype = np.float32
    return mean


def tlc_pads(b: Builder, k1: gs.Tensor, k2: gs.Tensor) -> gs.Variable:
    """Pads restoring h×w from the valid map: top/left ⌊(k−1)/2⌋, the rest bottom/right."""
    one, two = b.const([1]), b.const([2])
    rest_h, rest_w = b.op("Sub", [k1, one]), b.op("Sub", [k2, one])
    top, left = b.op("Div", [rest_h, two]), b.op("Div", [rest_w, two])
    bottom, right = b.op("Sub", [rest_h, top]), b.op("Sub", [rest_w, left])
    zero2 = b.const([0, 0])
    return b.op("Concat", [zero2, top, left, zero2, bottom, right], {"axis": 0})


def replicate_pad(b: Builder, valid: gs.Tensor, pads: gs.Tensor, output: gs.Tensor | None = None):
    return b.op("Pad", [valid, pads], {"mode": "edge"}, outputs=[output] if output is not None else None)


def local_mean(b: Builder, x: gs.Tensor, window: Window, output: gs.Tensor | None = None) -> gs.Tensor:
    """TLC local mean of ``x`` (N, C, h, w), same shape as ``x``."""
    valid, k1, k2 = valid_local_mean(b, x, window)
    return replicate_pad(b, valid, tlc_pads(b, k1, k2), output)


def _conditioning_shift(b: Builder, x: gs.Tensor) -> gs.Variable:
    """A per-(n, c) constant close to the channel mean: the mean of every 8th row and column.

    E[x'] and E[x'²] of x' = x − shift give the same variance for any constant shift in exact
    arithmetic; in float32 a shift near the mean avoids the cancellation in E[x'²] − E[x']² (a shift by
    x[0, 0] left 6e-3 errors in flat regions of real photos, this one 1.5e-5). Two single-axis
    reductions: the shift is a conditioning constant, not a statistic of the output, and must not be
    mistaken for a global op when a converted graph is converted again."""
    big = np.iinfo(np.int64).max
    sub = b.op("Slice", [x, b.const([0, 0]), b.const([big, big]), b.const([2, 3]), b.const([8, 8])])
    return b.reduce_mean(b.reduce_mean(sub, [3]), [2])


def _valid_moments(b: Builder, x: gs.Tensor, window: Window):
    """x' = x − shift (see ``_conditioning_shift``) and, on the valid (h−k1+1)×(w−k2+1) map, the local
    means of x' and x'² (one box filter over both: channels concatenated, the map is scanned once) and
    the local variance; plus the pads that restore h×w and a [C, C] split of 2C channels."""
    shifted = b.op("Sub", [x, _conditioning_shift(b, x)])
    both = b.op("Concat", [shifted, b.op("Mul", [shifted, shifted])], {"axis": 1})
    valid, k1, k2 = valid_local_mean(b, both, window)
    channels = b.dim(x, 1)
    halves = b.op("Concat", [channels, channels], {"axis": 0})
    mean, second = b.op("Split", [valid, halves], {"axis": 1}, n_out=2)
    var = b.op("Sub", [second, b.op("Mul", [mean, mean])])
    return shifted, mean, var, tlc_pads(b, k1, k2), halves


def local_moments(b: Builder, x: gs.Tensor, window: Window):
    """Shifted input x' = x − shift (see ``_conditioning_shift``), its local mean and variance (h×w)."""
    shifted, mean, var, pads, halves = _valid_moments(b, x, window)
    both = replicate_pad(b, b.op("Concat", [mean, var], {"axis": 1}), pads)
    mean, var = b.op("Split", [both, halves], {"axis": 1}, n_out=2)
    return shifted, mean, var


def local_instance_norm(b: Builder, x: gs.Tensor, window: Window, eps: float,
                        scale: gs.Tensor | None, bias: gs.Tensor | None,
                        output: gs.Tensor | None = None) -> gs.Tensor:
    """(x − μ)/√(σ² + eps)·scale + bias with local μ, σ² (scale/bias per channel, shape [C]).

    μ and scale/√(σ² + eps) are computed on the valid map and padded together (per-pixel functions
    commute with replicate padding), so only (x' − μ)·a + bias runs on the full map."""
    shifted, mean, var, pads, halves = _valid_moments(b, x, window)
    return normalise_from_valid_moments(b, shifted, mean, var, halves, eps, scale, bias,
                                        lambda t: replicate_pad(b, t, pads), output)


def normalise_from_valid_moments(b: Builder, shifted: gs.Tensor, mean: gs.Tensor, var: gs.Tensor,
                                 halves: gs.Tensor, eps: float, scale: gs.Tensor | None, bias: gs.Tensor | None,
                                 to_map, output: gs.Tensor | None = None) -> gs.Tensor:
    """(x' − μ)·a + bias with a = scale/√(σ² + eps): μ and a are formed on the small map of the moments and
    brought to h×w together by ``to_map`` (replicate padding, or fast mode's upsampling and padding)."""
    coeff = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var, b.const([eps], np.float32)])])])
    axes = b.const([0, 2, 3])
    if scale is not None:
        coeff = b.op("Mul", [coeff, b.op("Unsqueeze", [scale, axes])])
    both = to_map(b.op("Concat", [mean, coeff], {"axis": 1}))
    mean, coeff = b.op("Split", [both, halves], {"axis": 1}, n_out=2)
    normed = b.op("Mul", [b.op("Sub", [shifted, mean]), coeff],
                  outputs=[output] if output is not None and scale is None else None)
    if scale is None:
        return normed
    return b.op("Add", [normed, b.op("Unsqueeze", [bias, axes])], outputs=[output] if output is not None else None)


def local_group_norm(b: Builder, x: gs.Tensor, window: Window, groups: int, eps: float,
                     output: gs.Tensor | None = None) -> gs.Tensor:
    """Group norm of ``x`` (N, C, h, w) without affine, statistics over the group's channels and a
    local window (the paper's Table 7 extension)."""
    shifted, mean, var = local_moments(b, x, window)
    # Shifts differ per channel, so group moments are taken on the unshifted scale:
    # E_g[x] = mean_c(E[x'] + s_c), E_g[x²] = mean_c(Var[x'] + (E[x'] + s_c)²).
    shift = _conditioning_shift(b, x)
    mean_c = b.op("Add", [mean, shift])
    second_c = b.op("Add", [var, b.op("Mul", [mean_c, mean_c])])
    shape = b.op("Shape", [x])
    grouped = b.op("Concat", [b.const([0, groups, -1]), b.op("Shape", [x], {"start": 2})], {"axis": 0})

    def group_avg(t):
        g = b.op("Reshape", [t, grouped])                                    # N, G, C/G, h, w
        m = b.reduce_mean(g, [2])
        m = b.op("Expand", [m, b.op("Shape", [g])])
        return b.op("Reshape", [m, shape])

    mean_g, second_g = group_avg(mean_c), group_avg(second_c)
    var_g = b.op("Sub", [second_g, b.op("Mul", [mean_g, mean_g])])
    inv_std = b.op("Reciprocal", [b.op("Sqrt", [b.op("Add", [var_g, b.const([eps], np.float32)])])])
    return b.op("Mul", [b.op("Sub", [x, mean_g]), inv_std], outputs=[output] if output is not None else None)
