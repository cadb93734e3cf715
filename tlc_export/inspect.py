"""Inspect: what TLC will do to a model, before converting it.

Runs the conversion's own stages — load, export, ``scan_graph``, ``calibrate_windows`` — so the
windows listed are by construction those a conversion uses, and adds what a conversion does not say:
each op's level (downsampling factor), the multiply-adds exact TLC and fast mode add at a run-time
size against the model's own, and the TLC effect at that size on a structured test image.

Extra multiply-adds: a channel-attention MLP runs once on the pooled 1×1 vector in the global model;
exact TLC runs it per pixel on the (h−k1+1)×(w−k2+1) valid map (a channel-reducing first conv on the
full h×w map, where the rewrite moves the mean after it); fast mode (official ``fast_imp``) on the
(h'−k1')×(w'−k2') grid of the map subsampled by r. Restormer's attention runs on overlapping windows,
so its q·kᵀ and attn·v grow by the windows' total area over h·w. Norms add no multiply-adds.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import onnx_graphsurgeon as gs

from .api import (DEFAULT_EXPORTER, DEFAULT_OPSET, check_multiple, export_stage, known_module_path, module_as_loaded, parse_calib, parse_size,
                  resolve_calib)

from .calibrate import calibrate_windows, calibration_shape, import_graph
from .fast_rules import max_factor, subsampling_factor
from .load import LoadedModel, load_model
from .macs import GraphMacs, graph_macs, per_pixel_macs, run_time_shapes
from .rewrite import scan_graph
from .rewrite.kinds.avgpool import pool_after
from .rewrite.ops import GlobalOp, KeptGlobal
from .rewrite.pointwise import pointwise_chain
from .rewrite.scopes import module_scopes

DEFAULT_SIZE = (720, 1280)
PROBE_SIDE = 256           # export size when no calibration is given or suggested


@dataclass
class InspectedOp:
    onnx_name: str
    module_path: str
    kind: str
    pattern: str
    factor: float              # downsampling of the op's level: image side / map side
    window: list[int] | None   # its input's H×W at the calibration size (None without --calib)
    map_at_size: list[int] | None  # its input's H×W at the run-time size
    action: str                # rewritten | kept global
    reason: str
    mlp_macs_per_pixel: int = 0
    extra_macs_exact: int | None = None
    extra_macs_fast: int | None = None


@dataclass
class Inspection:
    source: str
    preset: str | None
    family: str | None
    calib: list[int] | None
    calib_note: str
    size: list[int]
    ops: list[InspectedOp]
    model_macs: int
    attention_macs: int
    unknown_mac_nodes: list[str] = field(default_factory=list)
    effect: dict | None = None
    effect_note: str = ""

    @property
    def extra_exact(self) -> int:
        return sum(o.extra_macs_exact or 0 for o in self.ops)

    @property
    def extra_fast(self) -> int:
        return sum(o.extra_macs_fast or 0 for o in self.ops)

    def as_dict(self) -> dict:
        out = asdict(self)
        out["extra_macs_exact"], out["extra_macs_fast"] = self.extra_exact, self.extra_fast
        return out

    def table(self) -> str:
        return render_table(self)


# ---------------------------------------------------------------------------------------------------
# Loading and exporting, as convert does


def _load(model, arch, arch_kwargs, trust_pickle) -> LoadedModel:
    if isinstance(model, (str, Path)):
        return load_model(Path(model), arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle)
    return module_as_loaded(model, arch, arch_kwargs)


def _graph(loaded: LoadedModel, export_size: tuple[int, int], progress):
    """(ONNX model, export shape, module-path prefix, known module paths): convert's own export stage
    (the same exporter choice, second-size check and .pt2 handling)."""
    if loaded.module is None:
        return loaded.onnx_model, None, "", set()
    stage = export_stage(loaded, export_size, None, DEFAULT_OPSET, False, DEFAULT_EXPORTER, progress)
    return stage.model, stage.shape, stage.prefix, {t["path"] for t in stage.traced}


def _say(progress, message):
    if progress is not None:
        progress(message)


def _module_path(op: GlobalOp, prefix: str, known: set[str]) -> str:
    """The report's module path (as ``localize_graph`` writes it)."""
    path = op.module_path
    path = "" if path == prefix.rstrip(".") else path.removeprefix(prefix)
    return known_module_path(path, known) if prefix else path


# ---------------------------------------------------------------------------------------------------
# Extra multiply-adds


def _valid(n: int, k: int) -> int:
    return n - min(n, k) + 1


def mlp_after_pool(graph: gs.Graph, op: GlobalOp) -> list[tuple[gs.Node, bool]]:
    """The weighted nodes (1×1 convs, Linear as Gemm/MatMul) that run per pixel after a pool once it is
    local, each with whether it runs on the full map (a Linear on the pooled vector; the channel-reducing
    first conv the rewrite moves the mean after) instead of the valid map."""
    use = op.attrs.get("use")
    if use is not None and not use.pointwise_only:   # the local mean is padded first: all on h×w
        nodes = [n for n, _ in use.vector_nodes] + [n for chain, _ in use.entries for n in chain]
        return [(n, True) for n in nodes if n.op in ("Conv", "Gemm", "MatMul") and per_pixel_macs(n)]
    chain = pointwise_chain(op.output, {t.name for t in graph.outputs})
    convs = [n for n in chain if n.op == "Conv"]
    full = bool(chain) and pool_after(chain[0])
    return [(n, full and n is chain[0]) for n in convs]


def fast_grid(n: int, k: int, map_at_calib: int, calib_side: int) -> tuple[int, int]:
    """(r, output length) of official fast_imp along one axis of length ``n``, window ``k``: r is the largest
    of 5, 4, 3, 2, 1 dividing n, capped at max(1, 5·map_at_calib // calib_side); the mean runs on the
    ::r subsampled axis (n' = ceil(n / r)) with window k' = min(n' − 1, k // r): n' − k' outputs."""
    r = subsampling_factor(n, max_factor(map_at_calib, calib_side))
    sub = -(-n // r)
    k_sub = max(1, min(sub - 1, k // r))
    return r, sub - k_sub


def avgpool_extras(graph, op, window, size_map, calib_map, calib) -> tuple[int, int, int]:
    """(per-pixel MLP MACs, exact extra, fast extra) of a channel-attention pool."""
    (h, w), (kh, kw) = size_map, window
    convs = mlp_after_pool(graph, op)
    per_pixel = sum(per_pixel_macs(n) for n, _ in convs)
    valid = _valid(h, kh) * _valid(w, kw)
    exact = sum(per_pixel_macs(n) * ((h * w if full else valid) - 1) for n, full in convs)
    if kh >= h and kw >= w:
        return per_pixel, exact, 0           # both forms are the global op there
    _, rows = fast_grid(h, kh, calib_map[0], calib[0])
    _, cols = fast_grid(w, kw, calib_map[1], calib[1])
    return per_pixel, exact, per_pixel * (rows * cols - 1)


def attention_extra(op: GlobalOp, window, size_map, macs: GraphMacs) -> int:
    """Extra q·kᵀ and attn·v multiply-adds of attention on TLC's overlapping windows."""
    from .reference.attention import window_grid

    k1, k2, starts = window_grid(tuple(size_map), tuple(window))
    global_macs = sum(macs.per_node.get(n.outputs[0].name, 0) for n in op.nodes if n.op == "MatMul")
    area = size_map[0] * size_map[1]
    return round(global_macs * (len(starts) * k1 * k2 - area) / area)


# ---------------------------------------------------------------------------------------------------
# The TLC effect on a structured image


def effect_image(channels: int, size: tuple[int, int]):
    """A real photo (scikit-image's Chelsea) resized to ``size``: edges, texture and flat areas."""
    import torch
    import torch.nn.functional as F

    from .verify import photo_input

    photo = torch.from_numpy(photo_input(channels))
    return F.interpolate(photo, size=size, mode="bilinear", align_corners=False).clamp(0, 1)


def tlc_effect(loaded: LoadedModel, calib: tuple[int, int], size: tuple[int, int], channels: int,
               progress=None) -> dict:
    """max / mean |local − global| of the final output at ``size``, eager PyTorch (the reference)."""
    import torch

    from .progress import module_calls
    from .reference import to_local

    image = effect_image(channels, size)
    local, _ = to_local(copy.deepcopy(loaded.module), calib)
    layers = sum(1 for m in loaded.module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)))
    outputs = []
    for label, model in (("global", loaded.module), ("TLC", local)):
        _say(progress, f"TLC effect: eager {label} model at {size[0]}x{size[1]}")
        with torch.no_grad(), module_calls(model, f"eager {label} {size[0]}x{size[1]}", layers,
                                           (torch.nn.Conv2d, torch.nn.Linear)):
            out = model.eval()(image)
        if isinstance(out, (list, tuple)):
            out = out[-1] if loaded.family == "hinet" else out[0]
        outputs.append(out)
    diff = (outputs[1] - outputs[0]).abs()
    return {"max_abs": float(diff.max()), "mean_abs": float(diff.mean()),
            "image": f"scikit-image chelsea resized to {size[0]}x{size[1]}"}


# ---------------------------------------------------------------------------------------------------


def _calib_choice(calib, loaded: LoadedModel) -> tuple[tuple[int, int] | None, str]:
    """(calibration size or None, a line saying where it comes from or what is suggested)."""
    from .zoo.crops import training_crop

    crop = training_crop(loaded.preset)
    suggestion = (f"{crop.calib[0]}x{crop.calib[1]} = 1.5 x the {crop.crop} training crop ({crop.source}"
                  f"{'; ' + crop.note if crop.note else ''})") if crop else None
    if calib is None:
        if suggestion:
            return None, f"suggested --calib {suggestion}, i.e. --calib auto"
        return None, "no training crop is recorded for this model: measure one with 'tlc-export sweep'"
    calib_parsed = parse_calib(calib)
    resolved = resolve_calib(calib_parsed, loaded)
    if calib_parsed == "auto":
        return resolved, f"--calib auto: {suggestion}"
    return resolved, f"--calib {resolved[0]}x{resolved[1]}" + (f" (auto would be {suggestion})" if crop else "")


def _inspected(graph, op, path, calib, calib_windows, size_maps, macs) -> InspectedOp:
    size_map = list(size_maps[op.name])
    factor = size_maps.factor(op.name)
    row = InspectedOp(op.name, path, op.kind, op.pattern, factor, None, size_map, "rewritten",
                      "exact local op (TLC)")
    if calib is None:
        return row
    window = calib_windows[op.name]
    row.window = list(window)
    if op.kind == "avgpool":
        row.mlp_macs_per_pixel, row.extra_macs_exact, row.extra_macs_fast = avgpool_extras(
            graph, op, window, size_map, window, calib)
    elif op.kind == "attention":
        row.extra_macs_exact = attention_extra(op, window, size_map, macs)
    else:
        row.extra_macs_exact, row.extra_macs_fast = 0, 0
    return row


def scan(onnx_model, graph: gs.Graph) -> tuple[list[GlobalOp], list[KeptGlobal]]:
    """(ops a conversion localises, ops it keeps global, each with a ``reason``): the rewrite's scan."""
    found = scan_graph(graph, module_scopes(onnx_model))
    return found.ops, found.kept


def _kept_row(kept, path: str, shapes: dict, size) -> InspectedOp:
    """A node left global: its map at the run-time size where inference knows it; no TLC cost."""
    dims = shapes.get(kept.nodes[0].inputs[0].name) if kept.nodes else None
    hw = list(dims[2:]) if dims and len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]) else None
    factor = round(size[0] / hw[0], 3) if hw and hw[0] else math.nan
    return InspectedOp(kept.name, path, kept.kind, "", factor, None, hw, "kept global", kept.reason, 0, 0, 0)


def _maps_at(onnx_model, ops, shapes, size, shape) -> dict[str, tuple[int, int]]:
    """Each op's input H×W at the run-time size: from inferred shapes, else as calibration reads them
    (``calibrate_windows`` at that size, which runs the graph when inference cannot tell)."""
    maps = {op.name: tuple(d[2:]) for op in ops
            if (d := shapes.get(op.source.name)) and len(d) == 4 and all(isinstance(v, int) for v in d[2:])}
    missing = [op for op in ops if op.name not in maps]
    if missing:
        maps.update(calibrate_windows(onnx_model, missing, size, shape))
    return maps


class _SizeMaps(dict):
    """{op name: (h, w) at the run-time size}, plus each op's downsampling factor."""

    def __init__(self, maps, size):
        super().__init__(maps)
        self.size = size

    def factor(self, name) -> float:
        h = self[name][0]
        return round(self.size[0] / h, 3) if h else math.inf


def inspect_model(model, calib=None, *, size: tuple[int, int] | str = DEFAULT_SIZE, arch=None, arch_kwargs=None,
                  trust_pickle: bool = False, effect: bool = True,
                  progress: Callable[[str], None] | None = None) -> Inspection:
    """Inspect ``model`` (any input ``convert`` takes, or an nn.Module); ``calib`` a size, ``"auto"`` or None."""
    size = parse_size(size, "--size") if isinstance(size, str) else tuple(size)
    _say(progress, f"loading {model if isinstance(model, (str, Path)) else type(model).__name__}")
    loaded = _load(model, arch, arch_kwargs, trust_pickle)
    calib, calib_note = _calib_choice(calib, loaded)
    if loaded.module is not None:
        check_multiple(loaded, size, "--size")
    from .zoo.crops import training_crop

    crop = training_crop(loaded.preset)
    export_size = calib or (crop.calib if crop else (PROBE_SIDE, PROBE_SIDE))
    onnx_model, shape, prefix, known = _graph(loaded, export_size, progress)
    graph = import_graph(onnx_model)
    ops, kept = scan(onnx_model, graph)
    _say(progress, f"measuring {len(ops)} global ops at {size[0]}x{size[1]}")
    run_shape = calibration_shape(onnx_model, size, shape)
    shapes = run_time_shapes(onnx_model, run_shape)
    size_maps = _SizeMaps(_maps_at(onnx_model, ops, shapes, size, shape), size)
    windows = calibrate_windows(onnx_model, ops, calib, shape) if calib else {}
    macs = graph_macs(graph, shapes)
    rows = [_inspected(graph, op, _module_path(op, prefix, known), calib, windows, size_maps, macs)
            for op in ops]
    rows += [_kept_row(k, _module_path(k, prefix, known), shapes, size) for k in kept]
    result = Inspection(str(model) if isinstance(model, (str, Path)) else "<module>", loaded.preset,
                        loaded.family, list(calib) if calib else None, calib_note, list(size), rows,
                        macs.layers, macs.activation_matmuls, macs.unknown)
    if effect and calib and ops and loaded.module is not None:
        result.effect = tlc_effect(loaded, calib, size, run_shape[1], progress)
    elif calib and ops:
        result.effect_note = ("not measured (--no-effect)" if not effect else
                              "not measured: it needs the PyTorch model, not an .onnx graph")
    return result


# ---------------------------------------------------------------------------------------------------
# The table


def human(n: float | None) -> str:
    """1234567 -> '1.23 M' (multiply-adds)."""
    if n is None:
        return "-"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n:.0f}"


def _share(n: int, total: int) -> str:
    return f"{100 * n / total:+.2f} %" if total else "n/a"


def _hw(v) -> str:
    return f"{v[0]}x{v[1]}" if v else "-"


def _op_rows(result: Inspection) -> list[list[str]]:
    size = _hw(result.size)
    head = ["#", "ONNX node", "module", "kind", "down", "window", f"map@{size}", "action", "MLP MAC/px",
            "+exact", "+fast"]
    rows = [head]
    for i, o in enumerate(result.ops):
        action = o.action if o.action == "rewritten" else f"{o.action}: {o.reason}"
        rows.append([str(i), o.onnx_name, o.module_path or "-", o.kind, f"{o.factor:g}", _hw(o.window),
                     _hw(o.map_at_size), action, str(o.mlp_macs_per_pixel or "-"), human(o.extra_macs_exact),
                     human(o.extra_macs_fast)])
    return rows


def _columns(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def render_table(result: Inspection) -> str:
    name = result.preset or result.family or result.source
    kept = sum(o.action != "rewritten" for o in result.ops)
    total = result.model_macs + result.attention_macs
    size = _hw(result.size)
    lines = [f"==== TLC inspection: {name} ({result.source}) ====",
             f"calibration: {result.calib_note}",
             f"global ops: {len(result.ops)} ({len(result.ops) - kept} rewritten, {kept} kept global); "
             f"down = the level's downsampling factor, window = input H×W at the calibration size",
             "+exact / +fast = multiply-adds exact TLC / fast mode add at the run-time size "
             "('-': no fast form, official fast_imp raises for attention)",
             ""]
    lines += _columns(_op_rows(result)) if result.ops else ["(no op aggregates over all pixels)"]
    lines += ["", f"model multiply-adds at {size}: {human(total)} (conv/linear layers {human(result.model_macs)}, "
                  f"attention matmuls {human(result.attention_macs)})"]
    if result.unknown_mac_nodes:
        lines.append(f"  (not counted: {len(result.unknown_mac_nodes)} nodes whose shapes inference could not tell)")
    if result.calib:
        has_fast = any(o.extra_macs_fast is not None for o in result.ops)
        fast = f"{human(result.extra_fast)} ({_share(result.extra_fast, total)})" if has_fast else "n/a"
        lines.append(f"exact TLC adds {human(result.extra_exact)} ({_share(result.extra_exact, total)}); "
                     f"fast mode adds {fast}")
    if result.effect_note:
        lines.append(f"TLC effect: {result.effect_note}")
    if result.effect:
        e = result.effect
        lines.append(f"TLC effect at {size} ({e['image']}, eager reference): max |local - global| "
                     f"{e['max_abs']:.4g}, mean {e['mean_abs']:.4g}")
    return "\n".join(lines)
