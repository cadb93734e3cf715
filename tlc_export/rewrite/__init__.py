"""Rewrite: every global op of the graph becomes an exact local (TLC) subgraph.

``localize(graph, ops, windows)`` is a pass from graph to graph: each matched op's nodes are detached
and a subgraph from ``subgraphs`` produces the same output tensor, so consumers are untouched.
"""
from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from . import attention, fast, subgraphs
from .patterns import GlobalOp, constant_value, find_global_ops, pointwise_chain

IMPLEMENTATION = "boxfilter"  # banded MatMul or CumSum, chosen per run (subgraphs.MATMUL_MAX_SPAN)


@dataclass(frozen=True)
class RewriteRecord:
    """One rewritten op, as written to the report."""

    onnx_name: str
    module_path: str
    op: str
    pattern: str
    window: tuple[int, int]
    implementation: str
    max_r: tuple[int, int] | None = None   # fast mode's subsampling cap per axis (None: exact)


def detach(op: GlobalOp) -> None:
    """Disconnect the nodes of a matched op; cleanup() then removes them."""
    for node in op.nodes:
        node.outputs.clear()
        node.inputs.clear()


def localize(graph: gs.Graph, ops: list[GlobalOp], windows: dict[str, tuple[int, int]], opset: int,
             box_filter: str = "auto", max_r: dict[str, tuple[int, int]] | None = None) -> list[RewriteRecord]:
    """Replace ``ops`` in ``graph`` (in place) by their local subgraphs; returns what was done.
    ``box_filter``: see ``subgraphs.BOX_FILTERS``. ``max_r``: ops (by name) rewritten in fast mode
    (``fast``), with their subsampling caps."""
    records = []
    max_r = max_r or {}
    suffix = "" if box_filter == "auto" else f"-{box_filter}"
    for op in ops:
        window = windows[op.name]
        fast_r = max_r.get(op.name)
        implementation = (fast.IMPLEMENTATION if fast_r else IMPLEMENTATION) + suffix
        b = subgraphs.Builder(graph, f"{op.name}/tlc", opset, box_filter)
        if op.kind == "attention":  # the region stays: it is fed the windows of its qkv map
            attention.local_transposed_attention(b, op, window)
            records.append(RewriteRecord(op.name, op.module_path, op.kind, op.pattern, tuple(window),
                                         attention.IMPLEMENTATION))
            continue
        detach(op)
        if op.kind == "avgpool":
            _local_mean_padding_late(graph, b, op, window, fast_r)
        elif op.kind == "instancenorm" and fast_r:
            fast.fast_local_instance_norm(b, op.source, window, fast_r, op.attrs["eps"], op.attrs["scale"],
                                          op.attrs["bias"], output=op.output)
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
        records.append(RewriteRecord(op.name, op.module_path, op.kind, op.pattern, tuple(window), implementation,
                                     fast_r))
    forget_intermediate_shapes(graph)
    graph.cleanup().toposort()
    return records


def _local_mean_padding_late(graph: gs.Graph, b: subgraphs.Builder, op: GlobalOp, window, max_r=None) -> None:
    """Local mean whose replicate Pad moves past the per-pixel nodes that follow it (the MLP of
    squeeze-and-excitation runs on the (h−k1+1)×(w−k2+1) valid map instead of h×w: exact, since
    per-pixel functions commute with replicate padding, and cheaper; MPRNet's official local CALayer
    does the same).

    When the MLP opens with a channel-reducing 1×1 conv, the mean moves after that conv too: the conv is
    affine and the window weights sum to one, so mean(W·x + b) = W·mean(x) + b, and the box filter, a
    dozen memory-bound passes per channel, then runs on c/r channels instead of c (see ``_pool_after``).

    Fast mode (``max_r``): the map is subsampled first, so a moved conv runs on the samples only, and
    nearest upsampling joins the replicate Pad after the chain (both commute with per-pixel nodes)."""
    chain = pointwise_chain(op.output, {t.name for t in graph.outputs})
    source, pooled = op.source, op.output
    if max_r is not None:
        source, grid = fast.subsample(b, source, window, max_r)
    if chain and _pool_after(chain[0]):
        reducer = chain.pop(0)
        reducer.inputs[0] = source
        pooled = reducer.outputs[0]
        source = gs.Variable(f"{pooled.name}/tlc_full", dtype=pooled.dtype)
        reducer.outputs[0] = source
    if max_r is None:
        valid, k1, k2 = subgraphs.valid_local_mean(b, source, window)
        pads = subgraphs.tlc_pads(b, k1, k2)

        def to_map(t, out):
            return subgraphs.replicate_pad(b, t, pads, out)
    else:
        valid = fast.valid_mean(b, b.op("Identity", [source]), grid)

        def to_map(t, out):
            return fast.upsample_and_pad(b, t, grid, out)
    if not chain:
        to_map(valid, pooled)
        return
    chain[0].inputs[chain[0].inputs.index(pooled)] = valid
    last = chain[-1].outputs[0]
    unpadded = gs.Variable(f"{last.name}/tlc_valid", dtype=last.dtype)
    chain[-1].outputs[0] = unpadded
    to_map(unpadded, last)


# A 1×1 conv c_in→c_out on the full map costs c_in·c_out multiply-adds per pixel (GEMM speed); pooling
# after it saves c_in−c_out channels of box filter (~5 ns per channel-pixel on this CPU against ~0.025 ns
# per multiply-add: ratio ~0.005, taken as 0.01 to move only when clearly cheaper). SE reductions r >= 4 on
# up to ~256 channels qualify; NAFNet's c→c SCA conv does not.
_GEMM_TO_BOXFILTER_COST = 0.01


def _pool_after(node: gs.Node) -> bool:
    """Whether the local mean should move past ``node``: a channel-reducing, ungrouped 1×1 Conv."""
    weight = constant_value(node.inputs[1]) if node.op == "Conv" and len(node.inputs) > 1 else None
    if weight is None or weight.ndim != 4 or int(node.attrs.get("group", 1)) != 1:
        return False
    c_out, c_in = weight.shape[:2]
    return c_in * c_out * _GEMM_TO_BOXFILTER_COST < c_in - c_out


def forget_intermediate_shapes(graph: gs.Graph) -> None:
    """Drop the exporter's intermediate shapes: a pooled (N, C, 1, 1) tensor is now N×C×h×w, and so is
    everything computed from it; ONNX Runtime plans buffers from declared shapes, so stale ones break it."""
    keep = {t.name for t in graph.inputs} | {t.name for t in graph.outputs}
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Variable) and tensor.name not in keep:
            tensor.shape = None


__all__ = ["GlobalOp", "RewriteRecord", "constant_value", "find_global_ops", "localize"]
