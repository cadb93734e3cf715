"""Global average pooling over H×W (channel attention's squeeze): GlobalAveragePool, a spatial ReduceMean,
a spatial ReduceSum divided by the map size, or either over the flattened H·W axis of Reshape(x, (N, C, -1)).

Localised as a TLC local mean when everything computed from the pooled tensor can run per pixel
(``pooled.follow_pooled``: 1×1 convs, or a Linear over channels on the (N, C) vector, reshaped back to
(N, C, 1, 1)); otherwise kept global with the reason. With per-pixel consumers only, the replicate Pad
moves past them."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .. import fast, subgraphs
from ..graphutil import constant_value, int_list, producer, rank, reduce_axes, single_consumer
from ..ops import GlobalOp, KeptGlobal
from ..pooled import MAP, VECTOR, NotDropIn, follow_pooled
from ..pooled_local import rewire, to_vector_layout
from ..options import RewriteOptions
from ..pointwise import pointwise_chain

KIND = "avgpool"


def spatial_axes(node: gs.Node) -> str | None:
    """How a Reduce node covers the spatial axes of a 4-D map: "spatial" (exactly H and W), "more" (H, W
    and channels or batch), or None (not all pixels)."""
    r = rank(node.inputs[0])
    axes = reduce_axes(node)
    if r is None:
        if axes is None:
            return None
        r = 4 if set(axes) <= {2, 3, -1, -2} else None
        if r is None:
            return None
    if axes is None:
        if node.attrs.get("noop_with_empty_axes", 0):
            return None
        axes = list(range(r))
    axes = {a % r for a in axes}
    if r != 4 or not {2, 3} <= axes:
        return None
    return "spatial" if axes == {2, 3} else "more"


def flattened_map(node: gs.Node) -> gs.Tensor | None:
    """The 4-D map x when ``node`` reduces the last axis of Reshape(x, (N, C, H·W)) (``x.flatten(2)``,
    ``x.view(b, c, -1)``), else None. The Reshape must keep x's first two axes (by its inferred shapes, or
    a constant target [0 | N, 0 | C, -1]): a channels-last (N, H·W, C) layer norm is no pixel mean.
    Where the shapes cannot tell, no match (Restormer's channel layer norms must not be taken for pools)."""
    axes = reduce_axes(node)
    flat = producer(node.inputs[0])
    if flat is None or flat.op != "Reshape" or axes is None or len(axes) != 1:
        return None
    x, out = flat.inputs[0], flat.outputs[0]
    if rank(out) != 3 or axes[0] % 3 != 2 or rank(x) != 4:
        return None
    target = int_list(flat.inputs[1])
    if target is not None:
        known = x.shape if x.shape is not None else [None] * 4
        keeps = all(t == 0 or (isinstance(d, int) and t == d) for t, d in zip(target[:2], known[:2]))
        return x if keeps and target[2] == -1 else None
    pieces = _concat_pieces(flat.inputs[1])
    if pieces is not None and len(pieces) == 3:
        return x if pieces[0] in (0, ("dim", id(x), 0)) and pieces[1] in (0, ("dim", id(x), 1)) \
            and pieces[2] == -1 else None
    if x.shape is None or out.shape is None:
        return None
    # the channel count carries over to axis 1 (a channels-last (N, H·W, C) has H·W there)
    return x if isinstance(x.shape[1], int) and out.shape[1] == x.shape[1] else None


def _concat_pieces(target: gs.Tensor) -> list | None:
    """A Concat-built Reshape target as a list of ints and ("dim", id(tensor), axis) for sizes read with
    Shape > Gather (> Unsqueeze); None when it is built otherwise."""
    node = producer(target)
    if node is None or node.op != "Concat":
        return None
    pieces: list = []
    for piece in node.inputs:
        values = int_list(piece)
        if values is not None:
            pieces += values
            continue
        src = producer(piece)
        while src is not None and src.op in ("Unsqueeze", "Cast"):
            src = producer(src.inputs[0])
        shape = producer(src.inputs[0]) if src is not None and src.op == "Gather" else None
        index = int_list(src.inputs[1]) if shape is not None else None
        if shape is None or shape.op != "Shape" or not index or len(index) != 1 or shape.attrs.get("start", 0):
            return None
        pieces.append(("dim", id(shape.inputs[0]), index[0]))
    return pieces


def _reduction(node: gs.Node):
    """(source map, layout, vector rank) of a mean-like reduction over all pixels; KeptGlobal for one that
    also reduces channels; None for anything else."""
    kind = spatial_axes(node)
    keep = bool(node.attrs.get("keepdims", 1))
    if kind == "more":
        return KeptGlobal(KIND, node.name, f"{node.op} over the channels and all pixels at once: TLC "
                                          f"localises per-channel means only", [node])
    if kind == "spatial":
        return node.inputs[0], (MAP if keep else VECTOR), 2
    source = flattened_map(node)
    if source is not None:
        return source, VECTOR, 3 if keep else 2
    return None


def _pooled(node: gs.Node):
    """(pattern, nodes, source, output, layout, vector rank, attrs) of a global mean at ``node``, a
    KeptGlobal, or None."""
    if node.op == "GlobalAveragePool":
        if rank(node.inputs[0]) not in (None, 4):
            return KeptGlobal(KIND, node.name, f"GlobalAveragePool on a {rank(node.inputs[0])}-D tensor; TLC "
                                              f"localises 2-D maps", [node])
        return "GlobalAveragePool", [node], node.inputs[0], node.outputs[0], MAP, 2, {}
    if node.op not in ("ReduceMean", "ReduceSum"):
        return None
    found = _reduction(node)
    if found is None or isinstance(found, KeptGlobal):
        return found
    source, layout, vec_rank = found
    if node.op == "ReduceMean":
        return "ReduceMean", [node], source, node.outputs[0], layout, vec_rank, {}
    div = single_consumer(node.outputs[0])
    if div is None or div.op != "Div" or div.inputs[0] is not node.outputs[0]:
        return KeptGlobal(KIND, node.name, "a sum over all pixels not divided by the map size: TLC "
                                          "localises means", [node])
    # calibrate checks that the divisor is h·w at the calibration size
    return "ReduceSum>Div", [node, div], source, div.outputs[0], layout, vec_rank, {"divisor": div.inputs[1]}


def match(node: gs.Node, graph: gs.Graph) -> GlobalOp | KeptGlobal | None:
    found = _pooled(node)
    if found is None or isinstance(found, KeptGlobal):
        return found
    pattern, nodes, source, output, layout, vec_rank, attrs = found
    try:
        use = follow_pooled(output, layout, {t.name for t in graph.outputs}, vec_rank)
    except NotDropIn as exc:
        return KeptGlobal(KIND, node.name, f"{exc}; a local-mean map cannot take the pooled tensor's place", nodes)
    if use.vector_nodes or use.entries or layout == VECTOR:
        pattern += ">per-pixel Linear"
    return GlobalOp(KIND, node.name, pattern, nodes, source, output,
                    {**attrs, "use": use, "layout": layout, "vector_rank": vec_rank})


def localize(b: subgraphs.Builder, op: GlobalOp, window, options: RewriteOptions) -> str:
    """Local mean whose replicate Pad moves past the per-pixel nodes that follow it (the MLP of
    squeeze-and-excitation runs on the (h−k1+1)×(w−k2+1) valid map instead of h×w: exact, since
    per-pixel functions commute with replicate padding, and cheaper; MPRNet's official local CALayer
    does the same).

    When the MLP opens with a channel-reducing 1×1 conv, the mean moves after that conv too: the conv is
    affine and the window weights sum to one, so mean(W·x + b) = W·mean(x) + b, and the box filter, a
    dozen memory-bound passes per channel, then runs on c/r channels instead of c (see ``pool_after``).

    Fast mode (``options.fast_cap``): the map is subsampled first, so a moved conv runs on the samples
    only, and nearest upsampling joins the replicate Pad after the chain (both commute with per-pixel
    nodes)."""
    use = op.attrs["use"]
    max_r = options.fast_cap(op.name)
    if not use.pointwise_only:
        out = op.output if use.mode == MAP else None
        local = (subgraphs.local_mean(b, op.source, window, output=out) if max_r is None
                 else fast.fast_local_mean(b, op.source, window, max_r, output=out))
        if use.mode == VECTOR:
            to_vector_layout(b, local, op.output, op.attrs["vector_rank"])
        rewire(b, use)
        return options.implementation(op.name)
    chain = pointwise_chain(op.output, {t.name for t in b.graph.outputs})
    source, pooled = op.source, op.output
    if max_r is not None:
        source, grid = fast.subsample(b, source, window, max_r)
    if chain and pool_after(chain[0]):
        reducer = chain.pop(0)
        reducer.inputs[0] = source
        pooled = reducer.outputs[0]
        source = gs.Variable(f"{pooled.name}/tlc_full", dtype=pooled.dtype)
        reducer.outputs[0] = source
    if max_r is None:
        valid, to_map = _exact_valid_mean(b, source, window)
    else:
        valid = fast.valid_mean(b, b.op("Identity", [source]), grid)

        def to_map(t, out):
            return fast.upsample_and_pad(b, t, grid, out)
    if not chain:
        to_map(valid, pooled)
        return options.implementation(op.name)
    chain[0].inputs[chain[0].inputs.index(pooled)] = valid
    last = chain[-1].outputs[0]
    unpadded = gs.Variable(f"{last.name}/tlc_valid", dtype=last.dtype)
    chain[-1].outputs[0] = unpadded
    to_map(unpadded, last)
    return options.implementation(op.name)


def _exact_valid_mean(b: subgraphs.Builder, source: gs.Tensor, window):
    """The (h−k1+1)×(w−k2+1) local means of ``source`` and the function padding a valid map back to h×w."""
    valid, k1, k2 = subgraphs.valid_local_mean(b, source, window)
    pads = subgraphs.tlc_pads(b, k1, k2)

    def to_map(t, out):
        return subgraphs.replicate_pad(b, t, pads, out)
    return valid, to_map


# A 1×1 conv c_in→c_out on the full map costs c_in·c_out multiply-adds per pixel (GEMM speed); pooling
# after it saves c_in−c_out channels of box filter (~5 ns per channel-pixel on this CPU against ~0.025 ns
# per multiply-add: ratio ~0.005, taken as 0.01 to move only when clearly cheaper). SE reductions r >= 4 on
# up to ~256 channels qualify; NAFNet's c→c SCA conv does not.
_GEMM_TO_BOXFILTER_COST = 0.01


def pool_after(node: gs.Node) -> bool:
    """Whether the local mean should move past ``node``: a channel-reducing, ungrouped 1×1 Conv."""
    weight = constant_value(node.inputs[1]) if node.op == "Conv" and len(node.inputs) > 1 else None
    if weight is None or weight.ndim != 4 or int(node.attrs.get("group", 1)) != 1:
        return False
    c_out, c_in = weight.shape[:2]
    return c_in * c_out * _GEMM_TO_BOXFILTER_COST < c_in - c_out
