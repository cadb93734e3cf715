"""Aggregations over a flattened image plane that no localisable kind claimed, found by symbolic shapes
(``rewrite.plane_axes``) whatever the layout, and kept global: a MatMul contracting the H·W axis (a
transposed attention in a layout the attention kind does not localise, e.g. RetinexFormer's
channels-last q/k/v and k·qᵀ; a softmax-weighted context pool), and a reduction or softmax over it.

One op per contraction: the reductions and softmaxes over the plane that feed it (q/k normalisation,
the context pool's softmax) are claimed with it."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from ..graphutil import producer, rank, reduce_axes
from ..ops import KeptGlobal
from ..plane_axes import on_plane_axis

KIND = "global-aggregation"
_REDUCTIONS = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL1", "ReduceL2", "ReduceSumSquare",
               "ReduceLogSumExp", "ReduceProd", "ArgMax", "ArgMin"}
_FEEDS_SEARCH = 12   # nodes walked from a reduction to the contraction it may feed (normalise → transpose → MatMul)


def _contracts_plane(node: gs.Node, graph: gs.Graph) -> bool:
    if node.op != "MatMul" or len(node.inputs) != 2:
        return False
    a, b = node.inputs
    ra, rb = rank(a), rank(b)
    return on_plane_axis(graph, a, -1, ra) and on_plane_axis(graph, b, -2 if (rb or 0) >= 2 else -1, rb)


def _over_plane(node: gs.Node, graph: gs.Graph) -> bool:
    """A reduction, softmax or normalisation whose axes include a flattened plane."""
    x = node.inputs[0] if node.inputs else None
    if x is None:
        return False
    r = rank(x)
    if node.op in _REDUCTIONS:
        axes = reduce_axes(node)
        if axes is None:          # no axes: reduces every axis, the plane among them
            return bool(r) and any(on_plane_axis(graph, x, i, r) for i in range(r))
        return any(on_plane_axis(graph, x, a, r) for a in axes)
    if node.op in ("Softmax", "LogSoftmax", "Hardmax", "LpNormalization"):
        return on_plane_axis(graph, x, int(node.attrs.get("axis", -1)), r)
    return False


def _feeders(matmul: gs.Node, graph: gs.Graph) -> list[gs.Node]:
    """The plane reductions/softmaxes upstream of ``matmul`` (within a few nodes on each input)."""
    found, seen, frontier = [], set(), [t for t in matmul.inputs]
    for _ in range(_FEEDS_SEARCH):
        nxt = []
        for t in frontier:
            node = producer(t)
            if node is None or id(node) in seen or node.op in ("MatMul", "Conv", "Gemm"):
                continue
            seen.add(id(node))
            if _over_plane(node, graph):
                found.append(node)
            nxt.extend(node.inputs)
        frontier = nxt
    return found


def _feeds_contraction(node: gs.Node, graph: gs.Graph) -> bool:
    frontier, seen = list(node.outputs), set()
    for _ in range(_FEEDS_SEARCH):
        nxt = []
        for t in frontier:
            for user in t.outputs:
                if id(user) in seen:
                    continue
                seen.add(id(user))
                if _contracts_plane(user, graph):
                    return True
                nxt.extend(user.outputs)
        frontier = nxt
    return False


def match(node: gs.Node, graph: gs.Graph) -> KeptGlobal | None:
    if _contracts_plane(node, graph):
        feeders = _feeders(node, graph)
        if any(f.op in ("Softmax", "LogSoftmax") for f in feeders):
            what = "a softmax-weighted pool over all pixels (a context block)"
        else:
            what = ("a transposed attention over all pixels in a layout the attention kind does not localise "
                    "(e.g. channels-last q/k/v, k·qᵀ)")
        return KeptGlobal("hw-contraction", node.name, f"{what}: a MatMul contracting a flattened H·W axis",
                          [node, *feeders])
    if _over_plane(node, graph) and not _feeds_contraction(node, graph):
        return KeptGlobal("hw-reduction", node.name,
                          f"{node.op} over a flattened H·W axis (a pool or normalisation over all pixels in a "
                          f"layout no localisable kind matches)", [node])
    return None


def localize(b, op, window, options) -> str:  # pragma: no cover - match never returns a GlobalOp
    raise AssertionError("kept global")
