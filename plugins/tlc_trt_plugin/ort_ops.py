"""ONNX Runtime custom ops for the plugin-form graph (CPU, numpy), through onnxruntime-extensions PyOps.

The plugin-form graph has nodes ``tlc_export::TLCLocalMean(x)`` and
``tlc_export::TLCLocalInstanceNorm(x, scale, bias)`` with attributes ``window`` (ints [kh, kw]),
``eps`` (float), ``plugin_namespace``/``plugin_version`` (strings, for TensorRT).

onnxruntime-extensions (0.15.2, checked with onnxruntime 1.31.1 on Python 3.11) registers every
Python op in its own domain ``ai.onnx.contrib`` and only reads int64, float and string attributes,
so it cannot serve domain ``tlc_export`` nor the ``window`` ints directly. ``to_ort_model`` therefore
makes an ORT-runnable copy: the plugin nodes move to ``ai.onnx.contrib`` and gain ``window_h`` /
``window_w`` int attributes (everything else is unchanged; undeclared attributes are ignored).
``inference_session`` does both steps.
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx

from . import numpy_ref

DOMAIN = "tlc_export"
PYOP_DOMAIN = "ai.onnx.contrib"
OP_TYPES = ("TLCLocalMean", "TLCLocalInstanceNorm")

_registered = False


def register() -> None:
    """Define the two PyOps (once per process)."""
    global _registered
    if _registered:
        return
    from onnxruntime_extensions import PyCustomOpDef, onnx_op

    f32, i64 = PyCustomOpDef.dt_float, PyCustomOpDef.dt_int64

    @onnx_op(op_type="TLCLocalMean", inputs=[f32], outputs=[f32],
             attrs={"window_h": i64, "window_w": i64})
    def _tlc_local_mean(x, window_h, window_w):
        return numpy_ref.local_mean(np.asarray(x, dtype=np.float32), (window_h, window_w))

    @onnx_op(op_type="TLCLocalInstanceNorm", inputs=[f32, f32, f32], outputs=[f32],
             attrs={"window_h": i64, "window_w": i64, "eps": PyCustomOpDef.dt_float})
    def _tlc_local_instance_norm(x, scale, bias, window_h, window_w, eps):
        return numpy_ref.local_instance_norm(np.asarray(x, dtype=np.float32), scale, bias,
                                             (window_h, window_w), eps)

    _registered = True


def session_options(options=None):
    """``onnxruntime.SessionOptions`` with the custom-op library registered (PyOps defined)."""
    import onnxruntime as ort
    from onnxruntime_extensions import get_library_path

    register()
    options = options if options is not None else ort.SessionOptions()
    options.register_custom_ops_library(get_library_path())
    return options


def _convert_graph(graph: onnx.GraphProto) -> int:
    count = 0
    for node in graph.node:
        for attr in node.attribute:                       # nested graphs (If/Loop/Scan bodies)
            if attr.type == onnx.AttributeProto.GRAPH:
                count += _convert_graph(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                count += sum(_convert_graph(g) for g in attr.graphs)
        if node.domain != DOMAIN or node.op_type not in OP_TYPES:
            continue
        window = next((list(a.ints) for a in node.attribute if a.name == "window"), None)
        if window is None or len(window) != 2:
            raise ValueError(f"node {node.name!r} ({node.op_type}) needs a 'window' attribute of two ints")
        names = {a.name for a in node.attribute}
        for name, value in (("window_h", window[0]), ("window_w", window[1])):
            if name not in names:
                node.attribute.append(onnx.helper.make_attribute(name, int(value)))
        if node.op_type == "TLCLocalInstanceNorm" and "eps" not in names:
            node.attribute.append(onnx.helper.make_attribute("eps", 1e-5))
        node.domain = PYOP_DOMAIN
        count += 1
    return count


def to_ort_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """An ORT-runnable copy of a plugin-form model (see the module docstring)."""
    model = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else copy.deepcopy(model)
    if _convert_graph(model.graph):
        domains = {o.domain for o in model.opset_import}
        if PYOP_DOMAIN not in domains:
            model.opset_import.append(onnx.helper.make_operatorsetid(PYOP_DOMAIN, 1))
    return model


def inference_session(model: onnx.ModelProto | str | Path, options=None, providers=None):
    """A CPU ``InferenceSession`` running the plugin-form ``model`` with the numpy custom ops."""
    import onnxruntime as ort

    return ort.InferenceSession(to_ort_model(model).SerializeToString(), session_options(options),
                                providers=providers or ["CPUExecutionProvider"])
