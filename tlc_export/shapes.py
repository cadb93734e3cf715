"""Tensor shapes of an ONNX graph with its input fixed to one size: ONNX shape inference (data
propagation), ONNX Runtime's symbolic inference, or inference after folding the now-constant shape
arithmetic. Used by calibration, the multiply-add counts and the plane-axis detector."""
from __future__ import annotations

import copy

import numpy as np
import onnx

from .errors import UserError


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


def with_static_input(model: onnx.ModelProto, shape: tuple[int, ...]) -> onnx.ModelProto:
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
    fixed = with_static_input(model, shape)
    known = (_symbolic_shapes(fixed) or _inferred_shapes(_folded(fixed))) if thorough else _inferred_shapes(fixed)
    known[graph_input(fixed).name] = list(shape)
    return known


def _folded(model: onnx.ModelProto) -> onnx.ModelProto:
    from polygraphy.backend.onnx import fold_constants
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        return fold_constants(model, num_passes=None)


def symbolic_inference(model: onnx.ModelProto, **options) -> onnx.ModelProto | None:
    """ONNX Runtime's symbolic shape inference, quiet (it logs a warning per undecidable comparison),
    or None where it refuses the graph."""
    import logging

    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    log = logging.getLogger("onnxruntime.tools.symbolic_shape_infer")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        return SymbolicShapeInference.infer_shapes(model, auto_merge=True, **options)
    except Exception:  # noqa: BLE001 - it refuses some graphs; callers have a fallback
        return None
    finally:
        log.setLevel(level)


def _symbolic_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]] | None:
    inferred = symbolic_inference(model)
    return None if inferred is None else _shapes_of(inferred)


def run_for_values(model: onnx.ModelProto, names: list[str], shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Run ``model`` once on a random input of ``shape`` (no graph optimisation, so every named tensor
    exists) and return the named intermediate tensors. ONNX Runtime's exceptions pass through."""
    import onnxruntime as ort

    probe = copy.deepcopy(model)
    del probe.graph.output[:]
    for name in names:
        probe.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    return dict(zip(names, session.run(names, {graph_input(model).name: image})))
