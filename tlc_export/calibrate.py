"""Calibrate: the window of each global op is the spatial size of its input on a calib-sized image.

Read from the graph itself, so ``.onnx`` inputs need no PyTorch: ONNX shape inference (with data
propagation) on a copy whose input is fixed to the calibration shape; where inference cannot tell a
size (shape arithmetic it does not follow), ONNX Runtime runs the graph once at that size with the
needed tensors added as outputs.
"""
from __future__ import annotations

import copy

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .errors import UserError
from .rewrite.graphutil import constant_value
from .shapes import graph_input, input_dims, run_for_values, static_shapes, with_static_input  # noqa: F401
from .rewrite.ops import GlobalOp

Window = tuple[int, int]


def calibration_shape(model: onnx.ModelProto, calib: tuple[int, int],
                      input_shape: tuple[int, ...] | None = None) -> tuple[int, int, int, int]:
    """N×C×H×W used for calibration: batch 1 (or the static batch), the graph's channels, calib H×W."""
    dims = input_dims(model)
    if len(dims) != 4:
        raise UserError(f"the graph input has rank {len(dims)}; tlc-export expects an N×C×H×W image input")
    channels = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else None
    if input_shape is not None:
        channels = input_shape[1]
    if channels is None:
        raise UserError("the graph input's channel count is dynamic; give it with --input-shape NxCxHxW")
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1
    return batch, channels, calib[0], calib[1]


def _run_for_values(model: onnx.ModelProto, names: list[str], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Run ``model`` once on a random input of ``shape`` and return the named intermediate tensors."""
    try:
        return run_for_values(model, names, shape)
    except Exception as exc:  # ONNX Runtime raises its own exception types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the graph cannot run at the calibration size {shape[2]}x{shape[3]} "
                        f"({first[:300]}); choose a --calib the model accepts") from None


def calibrate_windows(model: onnx.ModelProto, ops: list[GlobalOp], calib: tuple[int, int],
                      input_shape: tuple[int, ...] | None = None) -> dict[str, Window]:
    """``{op.name: (kh, kw)}`` for every global op, from the graph at the calibration size."""
    shape = calibration_shape(model, calib, input_shape)
    fixed = with_static_input(model, shape)
    known = static_shapes(model, shape)

    def spatial(name):
        dims = known.get(name)
        # Inference may say 0 (or less) for a map that vanishes at this size: that is a real answer.
        if dims and len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]):
            return int(dims[2]), int(dims[3])
        return None

    # Tensors to read by running: sources whose size inference missed, and non-constant divisors of
    # ReduceSum>Div (they must equal h·w for the pattern to be a mean).
    to_run = [op.source.name for op in ops if spatial(op.source.name) is None]
    divisors = {op.name: op.attrs["divisor"] for op in ops if "divisor" in op.attrs}
    to_run += [d.name for d in divisors.values() if constant_value(d) is None]
    values = _run_for_values(fixed, sorted(set(to_run)), shape) if to_run else {}

    windows = {}
    for op in ops:
        window = spatial(op.source.name)
        if window is None:
            dims = values[op.source.name].shape
            if len(dims) != 4:
                raise UserError(f"node {op.name!r}: its input is {len(dims)}-D at calibration; expected N×C×H×W")
            window = (int(dims[2]), int(dims[3]))
        if window[0] < 1 or window[1] < 1:
            raise UserError(f"calibration {calib[0]}x{calib[1]} makes the window of node {op.name!r} "
                            f"{window[0]}x{window[1]}, smaller than 1 pixel; use a larger --calib")
        if op.name in divisors:
            d = divisors[op.name]
            value = constant_value(d)
            value = values[d.name] if value is None else value
            if np.asarray(value).size != 1 or float(np.asarray(value).reshape(-1)[0]) != window[0] * window[1]:
                raise UserError(f"unsupported global op: node {op.name!r} (ReduceSum over H, W divided by "
                                f"{np.asarray(value).reshape(-1)[:4]}, not by the map size {window[0]}x{window[1]})")
        windows[op.name] = window
    return windows


def import_graph(model: onnx.ModelProto) -> gs.Graph:
    """gs graph with inferred shapes (ranks are needed to tell spatial reductions apart)."""
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception:  # ranks then come from the exporter's value_info alone
        pass
    from .rewrite.simplify import bypass_identity_gathers

    graph = gs.import_onnx(model)
    bypass_identity_gathers(graph)
    return graph
