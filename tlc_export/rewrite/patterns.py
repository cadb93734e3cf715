"""Finding the global ops of an ONNX graph (onnx-graphsurgeon IR): one walk, each node offered to every
kind of ``kinds.KINDS`` in turn, then the unclaimed nodes to ``kinds.DETECTORS``."""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs

from .graphutil import constant_value
from .kinds import DETECTORS, KINDS
from .ops import GlobalOp, KeptGlobal
from .pointwise import pointwise_chain


@dataclass
class GraphScan:
    ops: list[GlobalOp] = field(default_factory=list)        # to localise, in topological order
    kept: list[KeptGlobal] = field(default_factory=list)     # aggregations over all pixels left global


def scan_graph(graph: gs.Graph, scopes: dict[str, str] | None = None) -> GraphScan:
    """Every node that aggregates over all pixels, as an op to localise or one kept global.
    ``scopes``: node name → module path (from the exporter's node metadata), where known."""
    scan = GraphScan()
    claimed: set[int] = set()
    for kinds in (KINDS, DETECTORS):
        for node in graph.nodes:
            if id(node) in claimed:
                continue
            found = next((f for kind in kinds if (f := kind.match(node, graph)) is not None), None)
            if found is None:
                continue
            if scopes and found.name in scopes:
                found.scope = scopes[found.name]
            claimed.update(id(n) for n in found.nodes)
            (scan.kept if isinstance(found, KeptGlobal) else scan.ops).append(found)
    return scan


def find_global_ops(graph: gs.Graph) -> list[GlobalOp]:
    """The global ops of ``graph`` that can be localised, in topological order."""
    return scan_graph(graph).ops


__all__ = ["GlobalOp", "GraphScan", "KeptGlobal", "constant_value", "find_global_ops", "pointwise_chain",
           "scan_graph"]
