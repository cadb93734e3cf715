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
from .rewrite.ops import GlobalOp

Window = tuple[int, int]


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The image input: the first graph input that is not an initializer."""
    inits = {i.name for i in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in inits:
            return inp
    raise UserError("the ONNX graph has no input")


def input_dims(model: onnx.ModelProto) -> list[int | str | None]:
    dims = graph_input(model).type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


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


def _with_static_input(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
    fixed = copy.deepcopy(model)
    dims = graph_input(fixed).type.tensor_type.shape.dim
    for d, v in zip(dims, shape):
        d.Clear()
        d.dim_value = int(v)
    # Stale intermediate shapes from the exporter would fight the new input size.
    del fixed.graph.value_info[:]
    return fixed


def _inferred_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # inference gives up on some graphs; ONNX Runtime settles those below
        return {}
    return _shapes_of(inferred)


def _shapes_of(inferred: onnx.ModelProto) -> dict[str, list[int | None]]:
    shapes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    return shapes


def static_shapes(model: onnx.ModelProto, shape: tuple[int, ...], thorough: bool = False) -> dict[str, list[int | None]]:
    """Inferred shape of every tensor of ``model`` when its input is fixed to ``shape`` (the input too).
    ``thorough``: ONNX Runtime's symbolic shape inference, which follows shape arithmetic (a pad to a
    multiple of 16 computed from the input size) where ONNX's stops; where it refuses the graph (a
    Reshape to a computed shape), ONNX's inference after folding the now-constant shape arithmetic."""
    fixed = _with_static_input(model, shape)
    known = (_symbolic_shapes(fixed) or _inferred_shapes(_folded(fixed))) if thorough else _inferred_shapes(fixed)
    known[graph_input(fixed).name] = list(shape)
    return known


def _folded(model: onnx.ModelProto) -> onnx.ModelProto:
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        return fold_constants(model, num_passes=None)


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]] | None:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True)
    except Exception:  # it refuses some graphs; ONNX's inference is the fallback
        return None
    return _shapes_of(inferred)


def _run_for_values(model: onnx.ModelProto, names: list[str], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Run ``model`` once on a random input of ``shape`` and return the named intermediate tensors."""
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
        image = np.random.default_rng(0).random(shape, dtype=np.float32)
        values = session.run(names, {graph_input(model).name: image})
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the graph cannot run at the calibration size {shape[2]}x{shape[3]} "
                        f"({first[:300]}); choose a --calib the model accepts") from None
    return dict(zip(names, values))


def calibrate_windows(model: onnx.ModelProto, ops: list[GlobalOp], calib: tuple[int, int],
                      input_shape: tuple[int, ...] | None = None) -> dict[str, Window]:
    """``{op.name: (kh, kw)}`` for every global op, from the graph at the calibration size."""
    shape = calibration_shape(model, calib, input_shape)
    fixed = _with_static_input(model, shape)
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
