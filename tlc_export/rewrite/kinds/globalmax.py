"""Global max pooling (GlobalMaxPool, a ReduceMax over H and W): TLC localises means and normalisations;
a max over all pixels has no TLC counterpart here, so it stays global and is reported."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ..ops import KeptGlobal
from .avgpool import flattened_map, spatial_axes

KIND = "globalmaxpool"
REASON = "a max over all pixels: TLC defines local means and normalisations, not local maxima"


def match(node: gs.Node, graph: gs.Graph) -> KeptGlobal | None:
    if node.op == "GlobalMaxPool" or (node.op == "ReduceMax" and (spatial_axes(node) or flattened_map(node))):
        return KeptGlobal(KIND, node.name, REASON, [node])
    return None


def localize(b, op, window, options) -> str:  # pragma: no cover - match never returns a GlobalOp
    raise AssertionError("global max pools are kept global")
