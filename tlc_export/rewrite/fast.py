"""Fast TLC (the official ``fast_imp``) as standard-op ONNX subgraphs, for any input size at run time.

Per op the graph holds the calibrated window (kh, kw) and ``max_r`` (``fast_rules.max_factors``); from
the run-time h×w it computes (see ``reference.fast`` for the rules and the eager reference):

- ``cover`` = kh ≥ h and kw ≥ w: then r = 1, no sample skipped and k = (h, w): the box filter below
  gives the 1×1 global mean, so no If is needed for the global case;
- otherwise r = the first of 5, 4, 3, 2, 1 dividing h (resp. w), capped at max_r, and the map is cut by
  one Slice with steps r starting at the *second* sample (x[..., r::r]): the official window of output
  j averages samples j+1 … j+k of x[..., ::r], which is the stride-1 box from j of that tail;
  k = min(h' − 1, kh // r) where h' − 1 is the tail's length;
- the stride-1 box means of the tail (``subgraphs.valid_box_mean``: banded MatMuls or prefix sums,
  float32), then nearest upsampling by (r1, r2) and an edge Pad to h×w split floor/ceil, both as
  index Gathers (each value repeated r times, exact).

Per-pixel functions commute with nearest upsampling and replicate padding, so channel-attention MLPs
and the instance-norm coefficients run on the small (h' − k1)×(w' − k2) grid, r1·r2 times fewer pixels
than the official code spends, and give the same numbers. Where the official code has an empty window
(a map of one sample along an axis that the window does not cover) it fails; the graph output there
is undefined (the eager reference raises).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from ..fast_rules import FACTORS
from .subgraphs import (Builder, Window, _conditioning_shift, normalise_from_valid_moments, replicate_pad,
                        valid_box_mean)

_BIG = np.iinfo(np.int64).max


@dataclass
class FastGrid:
    """Run-time geometry of one fast op on one map (1-D int64 tensors of length 1)."""

    h: gs.Tensor
    w: gs.Tensor
    r1: gs.Tensor
    r2: gs.Tensor
    k1: gs.Tensor
    k2: gs.Tensor
    cover: gs.Tensor | None = None    # set when r is 1 statically (max_r 1×1): the tail is the whole map


def _factor(b: Builder, n: gs.Tensor, max_r: int) -> gs.Variable:
    """min(max_r, the first of 5, 4, 3, 2, 1 dividing n), built from the smallest factor outwards."""
    r = b.const([1])
    for f in reversed(FACTORS[:-1]):
        divides = b.op("Equal", [b.op("Mod", [n, b.const([f])]), b.const([0])])
        r = b.op("Where", [divides, b.const([f]), r])
    return b.op("Min", [r, b.const([int(max_r)])])


def subsample(b: Builder, x: gs.Tensor, window: Window, max_r: tuple[int, int]) -> tuple[gs.Variable, FastGrid]:
    """The samples of ``x`` the fast windows read (x[..., r1::r1, r2::r2], or x itself when the window
    covers the map) and the run-time geometry. With ``max_r`` (1, 1) (deep levels) r is 1 whatever the
    size: ``x`` itself is the tail and ``valid_mean`` drops the first window instead (no copy of x)."""
    h, w = b.dim(x, 2), b.dim(x, 3)
    kh, kw = b.const([int(window[0])]), b.const([int(window[1])])
    cover = b.op("And", [b.op("GreaterOrEqual", [kh, h]), b.op("GreaterOrEqual", [kw, w])])
    one, zero = b.const([1]), b.const([0])
    if tuple(max_r) == (1, 1):
        k1 = b.op("Where", [cover, h, b.op("Min", [b.op("Sub", [h, one]), kh])])
        k2 = b.op("Where", [cover, w, b.op("Min", [b.op("Sub", [w, one]), kw])])
        return b.op("Identity", [x]), FastGrid(h, w, one, one, k1, k2, cover)
    r1 = b.op("Where", [cover, one, _factor(b, h, max_r[0])])
    r2 = b.op("Where", [cover, one, _factor(b, w, max_r[1])])
    starts = b.op("Concat", [b.op("Where", [cover, zero, r1]), b.op("Where", [cover, zero, r2])], {"axis": 0})
    steps = b.op("Concat", [r1, r2], {"axis": 0})
    tail = b.op("Slice", [x, starts, b.const([_BIG, _BIG]), b.const([2, 3]), steps])
    tail = b.op("Identity", [tail])           # one outer tensor for the box filter's If branches
    n1, n2 = b.dim(tail, 2), b.dim(tail, 3)
    k1 = b.op("Where", [cover, n1, b.op("Min", [n1, b.op("Div", [kh, r1])])])
    k2 = b.op("Where", [cover, n2, b.op("Min", [n2, b.op("Div", [kw, r2])])])
    return tail, FastGrid(h, w, r1, r2, k1, k2)


def valid_mean(b: Builder, tail: gs.Tensor, grid: FastGrid) -> gs.Variable:
    """The (h' − k1)×(w' − k2) fast window means (before upsampling) of a ``subsample`` tail."""
    means = valid_box_mean(b, tail, b.dim(tail, 2), b.dim(tail, 3), grid.k1, grid.k2)
    if grid.cover is None:
        return means
    # r = 1 with the whole map as tail: windows start at 0 … h−k; fast mode's start at 1 (unless global).
    first = b.op("Where", [grid.cover, b.const([0]), b.const([1])])
    return b.op("Slice", [means, b.op("Concat", [first, first], {"axis": 0}), b.const([_BIG, _BIG]),
                          b.const([2, 3])])


def upsample_and_pad(b: Builder, valid: gs.Tensor, grid: FastGrid, output: gs.Tensor | None = None):
    """Nearest upsampling of ``valid`` (N, C, a, c) by (r1, r2), then an edge Pad to h×w (top/left
    get the floor of the difference), as two Gathers: columns first (on the small map), then rows. The
    full-size map is written once (an Expand-Reshape-Pad chain writes it twice: 30 % slower on a
    64×720×1280 map)."""
    if grid.cover is not None:        # r = 1: nothing to upsample
        return replicate_pad(b, valid, _pads(b, grid, b.dim(valid, 2), b.dim(valid, 3)), output)
    cols = b.op("Gather", [valid, _spread_index(b, grid.w, b.dim(valid, 3), grid.r2)], {"axis": 3})
    return b.op("Gather", [cols, _spread_index(b, grid.h, b.dim(valid, 2), grid.r1)], {"axis": 2},
                outputs=[output] if output is not None else None)


def _spread_index(b: Builder, n_out: gs.Tensor, n_small: gs.Tensor, r: gs.Tensor) -> gs.Variable:
    """For every output position y < n_out, the sample it shows: ``clamp(y − top, 0, n_small·r − 1) // r``
    with ``top = (n_out − n_small·r) // 2`` (nearest upsampling by r, then replicate padding)."""
    up = b.op("Mul", [n_small, r])
    top = b.op("Div", [b.op("Sub", [n_out, up]), b.const([2])])
    y = b.op("Range", [b.const(0), b.op("Squeeze", [n_out, b.const([0])]), b.const(1)])
    shifted = b.op("Min", [b.op("Max", [b.op("Sub", [y, top]), b.const([0])]), b.op("Sub", [up, b.const([1])])])
    return b.op("Div", [shifted, r])


def _pads(b: Builder, grid: FastGrid, rows: gs.Tensor, cols: gs.Tensor) -> gs.Variable:
    """Edge-Pad amounts from rows×cols to h×w: floor of the difference before, the rest after."""
    rest_h, rest_w = b.op("Sub", [grid.h, rows]), b.op("Sub", [grid.w, cols])
    two = b.const([2])
    top, left = b.op("Div", [rest_h, two]), b.op("Div", [rest_w, two])
    zero2 = b.const([0, 0])
    return b.op("Concat", [zero2, top, left, zero2, b.op("Sub", [rest_h, top]), b.op("Sub", [rest_w, left])],
                {"axis": 0})


def fast_local_mean(b: Builder, x: gs.Tensor, window: Window, max_r: tuple[int, int],
                    output: gs.Tensor | None = None) -> gs.Tensor:
    """Official fast TLC local mean of ``x`` (N, C, h, w), same shape as ``x``."""
    tail, grid = subsample(b, x, window, max_r)
    return upsample_and_pad(b, valid_mean(b, tail, grid), grid, output)


def fast_local_instance_norm(b: Builder, x: gs.Tensor, window: Window, max_r: tuple[int, int], eps: float,
                             scale: gs.Tensor | None, bias: gs.Tensor | None,
                             output: gs.Tensor | None = None) -> gs.Tensor:
    """(x − μ)/√(σ² + eps)·scale + bias with μ, σ² from the fast pooling of x and x² (the official local
    instance norm in fast mode). Both moments are taken on x − shift (same variance, no float32
    cancellation; see ``subgraphs._conditioning_shift``) of the sampled tail only, and μ with the
    coefficient a = scale/√(σ² + eps) are upsampled and padded together."""
    shift = _conditioning_shift(b, x)
    tail, grid = subsample(b, x, window, max_r)
    shifted_tail = b.op("Sub", [tail, shift])
    both = b.op("Concat", [shifted_tail, b.op("Mul", [shifted_tail, shifted_tail])], {"axis": 1})
    valid = valid_mean(b, b.op("Identity", [both]), grid)
    channels = b.dim(x, 1)
    halves = b.op("Concat", [channels, channels], {"axis": 0})
    mean, second = b.op("Split", [valid, halves], {"axis": 1}, n_out=2)
    var = b.op("Sub", [second, b.op("Mul", [mean, mean])])
    return normalise_from_valid_moments(b, b.op("Sub", [x, shift]), mean, var, halves, eps, scale, bias,
                                        lambda t: upsample_and_pad(b, t, grid), output)
