"""Rewrite: every global op of the graph becomes an exact local (TLC) subgraph.

``find_global_ops`` (``patterns``) asks each kind of the registry (``kinds``) to match; ``localize(graph,
ops, windows)`` is a pass from graph to graph: each matched op's nodes are detached and its kind's
``localize`` produces the same output tensor, so consumers are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from . import subgraphs
from .graphutil import constant_value
from .kinds import BY_NAME
from .ops import GlobalOp, KeptGlobal
from .options import BOXFILTER as IMPLEMENTATION, RewriteOptions
from .patterns import GraphScan, find_global_ops, scan_graph


@dataclass(frozen=True)
class RewriteRecord:
    """One rewritten op, as written to the report."""

    onnx_name: str
    module_path: str
    op: str
    pattern: str
    window: tuple[int, int]
    implementation: str


@dataclass(frozen=True)
class KeptRecord:
    """One aggregation over all pixels left global, as written to the report's ``kept_global``."""

    onnx_name: str
    module_path: str
    kind: str
    reason: str


def kept_records(kept: list[KeptGlobal]) -> list[KeptRecord]:
    return [KeptRecord(k.name, k.module_path, k.kind, k.reason) for k in kept]


def kept_warning(kept: list[KeptRecord]) -> str:
    """One line naming every op kept global."""
    named = "; ".join(f"{k.onnx_name} ({k.module_path or '?'}, {k.kind}: {k.reason})" for k in kept)
    return f"{len(kept)} unsupported global op(s) kept global (TLC does not apply to them): {named}"


def detach(op: GlobalOp) -> None:
    """Disconnect the nodes of a matched op; cleanup() then removes them."""
    for node in op.nodes:
        node.outputs.clear()
        node.inputs.clear()


def localize(graph: gs.Graph, ops: list[GlobalOp], windows: dict[str, tuple[int, int]], opset: int,
             box_filter: str = "auto", options: RewriteOptions | None = None) -> list[RewriteRecord]:
    """Replace ``ops`` in ``graph`` (in place) by their local subgraphs; returns what was done.
    ``box_filter``: see ``subgraphs.BOX_FILTERS`` (ignored when ``options`` is given)."""
    options = options or RewriteOptions(box_filter=box_filter)
    records = []
    for op in ops:
        kind = BY_NAME[op.kind]
        window = tuple(windows[op.name])
        b = subgraphs.Builder(graph, f"{op.name}/tlc", opset, options.box_filter)
        if not getattr(kind, "KEEPS_REGION", False):
            detach(op)
        implementation = kind.localize(b, op, window, options)
        records.append(RewriteRecord(op.name, op.module_path, op.kind, op.pattern, window, implementation))
    forget_intermediate_shapes(graph)
    graph.cleanup().toposort()
    return records


def forget_intermediate_shapes(graph: gs.Graph) -> None:
    """Drop the exporter's intermediate shapes: a pooled (N, C, 1, 1) tensor is now N×C×h×w, and so is
    everything computed from it; ONNX Runtime plans buffers from declared shapes, so stale ones break it."""
    keep = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep:
            tensor.shape = None


__all__ = ["GlobalOp", "GraphScan", "IMPLEMENTATION", "KeptGlobal", "KeptRecord", "kept_records", "kept_warning", "RewriteOptions", "RewriteRecord", "constant_value",
           "find_global_ops", "localize", "scan_graph"]
