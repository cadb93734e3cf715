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


def _infer(model: onnx.ModelProto) -> dict[str, frozenset[int]]:
    from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

    dims = model.graph.input[0].type.tensor_type.shape.dim if model.graph.input else []
    if len(dims) != 4 or not (dims[2].dim_param and dims[3].dim_param):
        return {}      # a static graph: no symbol to follow
    batch = dims[0].dim_param or None
    try:
        inferred = SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=True)
    except Exception:  # noqa: BLE001 - an op the inference does not know: fall back to the structural patterns
        return {}
    if inferred is None:
        return {}
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
    axes = plane_axes(graph).get(tensor.name)
    if not axes or rank is None:
        return False
    return (axis % rank) in axes
