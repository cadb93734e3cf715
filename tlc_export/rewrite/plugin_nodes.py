"""Rewrite, plugin form: each global op becomes one custom node served by a TensorRT plugin.

``localize_plugin(graph, ops, windows, opset)`` is the counterpart of ``localize``: average pools
become ``tlc_export::TLCLocalMean(x)`` and instance norms ``tlc_export::TLCLocalInstanceNorm(x, scale,
bias)``, each producing the op's original output tensor. Group norms have no plugin and get the
standard-op subgraph (``localize``), recorded with that implementation.

Node contract (TensorRT's ONNX parser and ``tlc_trt_plugin``):
* op_type = plugin name, domain ``tlc_export``;
* ``window``: ints [kh, kw] (the calibrated window; clamped to the map at run time);
* ``eps``: float (instance norm only);
* ``plugin_namespace`` = "tlc_export", ``plugin_version`` = "1" (read by the parser's plugin lookup);
* ``aot`` (int 0/1) only when asked for: forces TensorRT's AOT or JIT implementation.

The exported model needs ``opset_import`` domain ``tlc_export`` version 1: call
``add_plugin_opset(model)`` on the ``gs.export_onnx`` result.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import RewriteRecord, detach, forget_intermediate_shapes, localize
from .ops import GlobalOp

DOMAIN = "tlc_export"
PLUGIN_VERSION = "1"
IMPLEMENTATION = "plugin"
MEAN_OP = "TLCLocalMean"
INSTANCE_NORM_OP = "TLCLocalInstanceNorm"


def _attrs(window, aot: bool | None, **extra) -> dict:
    attrs = {"window": [int(window[0]), int(window[1])], **extra,
             "plugin_namespace": DOMAIN, "plugin_version": PLUGIN_VERSION}
    if aot is not None:
        attrs["aot"] = int(bool(aot))
    return attrs


def _as_float_tensor(t: gs.Tensor) -> gs.Tensor:
    """Plugin inputs are float32: constants of another float type are converted in place of a Cast."""
    if isinstance(t, gs.Constant) and np.asarray(t.values).dtype != np.float32:
        return gs.Constant(f"{t.name}_f32", np.asarray(t.values, dtype=np.float32))
    return t


SUBGRAPH_ONLY = ("groupnorm", "attention")


def localize_plugin(graph: gs.Graph, ops: list[GlobalOp], windows: dict[str, tuple[int, int]], opset: int,
                    box_filter: str = "auto", aot: bool | None = None) -> list[RewriteRecord]:
    """Replace ``ops`` in ``graph`` (in place) by plugin nodes (group norms and Restormer attention,
    which have no plugin, by standard subgraphs with ``box_filter``)."""
    fallback = [op for op in ops if op.kind in SUBGRAPH_ONLY]
    done = {r.onnx_name: r for r in localize(graph, fallback, windows, opset, box_filter)} if fallback else {}
    records = []
    for op in ops:
        if op.kind in SUBGRAPH_ONLY:
            records.append(done[op.name])
            continue
        window = tuple(int(k) for k in windows[op.name])
        detach(op)
        name = f"{op.name}/tlc_plugin"
        if op.kind == "avgpool":
            node = gs.Node(MEAN_OP, name=name, domain=DOMAIN, attrs=_attrs(window, aot),
                           inputs=[op.source], outputs=[op.output])
        elif op.kind == "instancenorm":
            node = gs.Node(INSTANCE_NORM_OP, name=name, domain=DOMAIN,
                           attrs=_attrs(window, aot, eps=float(op.attrs["eps"])),
                           inputs=[op.source, _as_float_tensor(op.attrs["scale"]), _as_float_tensor(op.attrs["bias"])],
                           outputs=[op.output])
        else:  # pragma: no cover - patterns only yields the kinds above
            raise AssertionError(op.kind)
        graph.nodes.append(node)
        records.append(RewriteRecord(op.name, op.module_path, op.kind, op.pattern, window, IMPLEMENTATION))
    # Pooled outputs are h×w now, and so is everything computed from them: drop the stale shapes.
    forget_intermediate_shapes(graph)
    graph.cleanup().toposort()
    return records


def add_plugin_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    """Add ``opset_import`` domain ``tlc_export`` version 1 (in place; also returned)."""
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(onnx.helper.make_operatorsetid(DOMAIN, 1))
    return model


__all__ = ["DOMAIN", "INSTANCE_NORM_OP", "MEAN_OP", "add_plugin_opset", "localize_plugin"]
