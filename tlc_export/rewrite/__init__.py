"""Rewrite: every global op of the graph becomes an exact local (TLC) subgraph.

``localize(graph, ops, windows)`` is a pass from graph to graph: each matched op's nodes are detached
and a subgraph from ``subgraphs`` produces the same output tensor, so consumers are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from . import attention, subgraphs
from .patterns import GlobalOp, constant_value, find_global_ops, pointwise_chain

IMPLEMENTATION = "cumsum-boxfilter"


@dataclass(frozen=True)
class RewriteRecord:
    """One rewritten op, as written to the report."""

    onnx_name: str
    module_path: str
    op: str
    pattern: str
    window: tuple[int, int]
    implementation: str


def detach(op: GlobalOp) -> None:
    """Disconnect the nodes of a matched op; cleanup() then removes them."""
    for node in op.nodes:
        node.outputs.clear()
        node.inputs.clear()


def localize(graph: gs.Graph, ops: list[GlobalOp], windows: dict[str, tuple[int, int]], opset: int) -> list[RewriteRecord]:
    """Replace ``ops`` in ``graph`` (in place) by their local subgraphs; returns what was done."""
    records = []
    for op in ops:
        window = windows[op.name]
        b = subgraphs.Builder(graph, f"{op.name}/tlc", opset)
        if op.kind == "attention":  # the region stays: it is fed the windows of its qkv map
            attention.local_transposed_attention(b, op, window)
            records.append(RewriteRecord(op.name, op.module_path, op.kind, op.pattern, tuple(window),
                                         attention.IMPLEMENTATION))
            continue
        detach(op)
        if op.kind == "avgpool":
            _local_mean_padding_late(graph, b, op, window)
        elif op.kind == "instancenorm":
            subgraphs.local_instance_norm(b, op.source, window, op.attrs["eps"], op.attrs["scale"],
                                          op.attrs["bias"], output=op.output)
        elif op.kind == "groupnorm":
            scale, bias = op.attrs["scale"], op.attrs["bias"]
            out = None if scale is not None else op.output
            normed = subgraphs.local_group_norm(b, op.source, window, op.attrs["groups"], op.attrs["eps"], output=out)
            if scale is not None:
                axes = b.const([0, 2, 3])
                b.op("Add", [b.op("Mul", [normed, b.op("Unsqueeze", [scale, axes])]),
                             b.op("Unsqueeze", [bias, axes])], outputs=[op.output])
        else:  # pragma: no cover - patterns only yields the kinds above
            raise AssertionError(op.kind)
        records.append(RewriteRecord(op.name, op.module_path, op.kind, op.pattern, tuple(window), IMPLEMENTATION))
    forget_intermediate_shapes(graph)
    graph.cleanup().toposort()
    return records


def _local_mean_padding_late(graph: gs.Graph, b: subgraphs.Builder, op: GlobalOp, window) -> None:
    """Local mean whose replicate Pad moves past the per-pixel nodes that follow it (the MLP of
    squeeze-and-excitation runs on the (h−k1+1)×(w−k2+1) valid map instead of h×w: exact, since
    per-pixel functions commute with replicate padding, and cheaper; MPRNet's official local CALayer
    does the same)."""
    chain = pointwise_chain(op.output, {t.name for t in graph.outputs})
    valid, k1, k2 = subgraphs.valid_local_mean(b, op.source, window)
    pads = subgraphs.tlc_pads(b, k1, k2)
    if not chain:
        subgraphs.replicate_pad(b, valid, pads, op.output)
        return
    chain[0].inputs[chain[0].inputs.index(op.output)] = valid
    last = chain[-1].outputs[0]
    unpadded = gs.Variable(f"{last.name}/tlc_valid", dtype=last.dtype)
    chain[-1].outputs[0] = unpadded
    subgraphs.replicate_pad(b, unpadded, pads, last)


def forget_intermediate_shapes(graph: gs.Graph) -> None:
    """Drop the exporter's intermediate shapes: a pooled (N, C, 1, 1) tensor is now N×C×h×w, and so is
    everything computed from it; ONNX Runtime plans buffers from declared shapes, so stale ones break it."""
    keep = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep:
            tensor.shape = None


__all__ = ["GlobalOp", "RewriteRecord", "constant_value", "find_global_ops", "localize"]
