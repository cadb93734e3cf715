"""Which tensor axes hold a flattened image plane (H·W), from ONNX Runtime's symbolic shape inference.

Structural patterns find the global ops the kinds know; an aggregation over all pixels in a layout
nobody anticipated (channels-last ``Linear`` q/k/v, a ``k·qᵀ`` product, a pool over a reshaped map)
would slip past them. Symbolic shapes do not depend on layout: with the input's height and width
symbolic, an axis whose size is a product of two or more symbols other than the batch (``height*width``,
``floor(h/2)*floor(w/2)``, or the fresh symbols inference gives a ConvTranspose's output) is a flattened
plane, and a MatMul contracting it or a reduction over it aggregates over all pixels.
"""
from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

_CACHE_ATTR = "_tlc_plane_axes"    # cached on the graph object (gs.Graph is not hashable)


def _plane_dim(dim: onnx.TensorShapeProto.Dimension, batch: str | None) -> bool:
    if not dim.dim_param:
        return False
    import sympy

    try:
        symbols = sympy.sympify(dim.dim_param.replace("floor", "sympy_floor"),
                                locals={"sympy_floor": sympy.floor}).free_symbols
    except (sympy.SympifyError, TypeError, ValueError, SyntaxError):
        return False
    return len({str(s) for s in symbols} - {batch}) >= 2


_CANDIDATE_OPS = {"MatMul", "Einsum", "Softmax", "LogSoftmax", "LpNormalization", "ReduceMean", "ReduceSum",
                  "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare", "ReduceLogSumExp",
                  "ReduceProd", "ArgMax", "ArgMin"}
# Probe sizes for graphs symbolic inference refuses: multiples of every usual input multiple (≤ 64).
_PROBES = ((64, 64), (128, 64), (64, 128))


def _probed(model: onnx.ModelProto) -> dict[str, frozenset[int]]:
    """Plane axes from static shapes at three input sizes: an axis whose size changes with H and with W."""
    from ..shapes import input_dims, run_for_values

    dims = input_dims(model)
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else 1
    channels = dims[1] if isinstance(dims[1], int) and dims[1] > 0 else 3
    # Only the inputs of ops that could aggregate over a plane: few tensors, run at small sizes.
    names = sorted({i for n in model.graph.node if n.op_type in _CANDIDATE_OPS for i in n.input[:2] if i}
                   - {init.name for init in model.graph.initializer})
    try:
        base, taller, wider = ({k: list(v.shape) for k, v in run_for_values(model, names, (batch, channels, h, w)).items()}
                               for h, w in _PROBES)
    except Exception:  # noqa: BLE001 - the graph refuses the probe sizes: structural patterns only
        return {}
    found = {}
    for name, shape in base.items():
        t, w = taller.get(name), wider.get(name)
        if t is None or w is None or len(t) != len(shape) or len(w) != len(shape):
            continue
        axes = frozenset(i for i, (a, b, c) in enumerate(zip(shape, t, w)) if a != b and a != c)
        if axes:
            found[name] = axes
    return found


def _infer(model: onnx.ModelProto) -> dict[str, frozenset[int]]:
    """Plane axes from symbolic shapes (height and width as symbols), else from probe sizes."""
    from ..shapes import symbolic_inference

    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    if len(dims) != 4 or not (dims[2].dim_param and dims[3].dim_param):
        return {}      # a static graph: no symbol to follow
    # Plain symbols for the inference (the dynamo exporter writes "4*hb" for a multiple of 4).
    dims[2].dim_param, dims[3].dim_param = "tlc_height", "tlc_width"
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    batch = dims[0].dim_param or None
    inferred = symbolic_inference(model, guess_output_rank=True)
    if inferred is None:       # an op or layout the inference does not follow: probe sizes instead
        return _probed(model)
    found = {}
    for value in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]:
        axes = frozenset(i for i, d in enumerate(value.type.tensor_type.shape.dim) if _plane_dim(d, batch))
        if axes:
            found[value.name] = axes
    return found


def plane_axes(graph: gs.Graph) -> dict[str, frozenset[int]]:
    """Tensor name → the axes that are a flattened plane (computed once per graph)."""
    cached = graph.__dict__.get(_CACHE_ATTR)   # not getattr: gs.Graph resolves unknown names as ONNX functions
    if cached is None:
        model = gs.export_onnx(graph.copy(), do_type_check=False)
        del model.graph.value_info[:]   # inference starts from the input's symbols, not the exporter's guesses
        cached = _infer(model)
        graph.__dict__[_CACHE_ATTR] = cached
    return cached


def on_plane_axis(graph: gs.Graph, tensor: gs.Tensor, axis: int, rank: int | None) -> bool:
    """Whether ``axis`` of ``tensor`` is a flattened plane. An axis of static size is none (the plane
    scales with the input): the common case, answered without the graph-wide inference."""
    shape = getattr(tensor, "shape", None)
    if shape is not None and rank and isinstance(shape[axis % rank], int) and shape[axis % rank] >= 0:
        return False
    axes = plane_axes(graph).get(tensor.name)
    if not axes or rank is None:
        return False
    return (axis % rank) in axes
