"""The Python API: ``convert`` runs load → trace → export → calibrate → rewrite → check → write.

The CLI is a thin layer over these functions.
"""
from __future__ import annotations

import json
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from . import __version__
from .calibrate import calibrate_windows, calibration_shape, graph_input, import_graph
from .errors import UserError
from .export import EXPORTERS, MIN_OPSET
from .export_check import export_faithfully
from .fast_rules import FAST_KINDS, max_factors
from . import guards
from .convert_outputs import bake_shape, claim_outputs
from .load import LoadedModel, load_model
from .progress import ticking
from .rewrite import KeptRecord, RewriteOptions, RewriteRecord, kept_records, kept_warning, localize, scan_graph
from .rewrite.scopes import module_scopes
from .rewrite.subgraphs import BOX_FILTERS

DEFAULT_OPSET = 17
DEFAULT_EXPORTER = "torchscript"   # see README "Exporters": the measurements behind this choice
IMPLEMENTATIONS = ("standard", "plugin")


def parse_size(text: str, what: str = "--calib") -> tuple[int, int]:
    """``384x384``, ``384`` or ``384,384`` → (H, W); anything else (zero, negative, non-integer) refused."""
    parts = re.split(r"[x,]", str(text).strip().lower())
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or not all(re.fullmatch(r"\d+", p.strip()) for p in parts):
        raise UserError(f"{what} {text!r} is not a size: write HxW with positive integers, e.g. 384x384")
    h, w = (int(p) for p in parts)
    if h < 1 or w < 1:
        raise UserError(f"{what} {text!r} must be positive, e.g. 384x384")
    return h, w


AUTO_CALIB = "auto"


def parse_calib(value) -> tuple[int, int] | str:
    """``--calib``: a size (see ``parse_size``) or ``auto`` (the preset's training crop × 1.5, which
    ``resolve_calib`` settles once the model is loaded). The one place ``auto`` is accepted."""
    if isinstance(value, str) and value.strip().lower() == AUTO_CALIB:
        return AUTO_CALIB
    if isinstance(value, str):
        return parse_size(value)
    return (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))


def resolve_calib(calib: tuple[int, int] | str, loaded: LoadedModel) -> tuple[int, int]:
    """``calib`` as a size; ``auto`` from the zoo's record of the preset's training crop."""
    if calib != AUTO_CALIB:
        return parse_calib(calib)
    from .zoo.crops import training_crop

    crop = training_crop(loaded.preset)
    if crop is None:
        raise UserError("--calib auto knows only the zoo presets' training crops; for this model measure a "
                        "size with 'tlc-export sweep MODEL --pairs DIR --calib-sizes ...' and pass --calib HxW")
    return crop.calib


def parse_arch_kwargs(text: str | None) -> dict | None:
    """``--arch-kwargs`` JSON → dict (None when absent); anything but a JSON object is refused."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--arch-kwargs is not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(value, dict):
        raise UserError("--arch-kwargs must be a JSON object, e.g. '{\"width\": 32}'")
    return value


def parse_input_shape(text: str, what: str = "--input-shape") -> tuple[int, int, int, int]:
    parts = str(text).strip().lower().split("x")
    if len(parts) != 4 or not all(re.fullmatch(r"\d+", p) and int(p) > 0 for p in parts):
        raise UserError(f"{what} {text!r} is not NxCxHxW with positive integers, e.g. 1x3x256x256")
    n, c, h, w = (int(p) for p in parts)
    return n, c, h, w


@dataclass
class ConversionResult:
    onnx_path: Path | None
    report_path: Path | None
    report: dict
    model: onnx.ModelProto | None = None
    loaded: LoadedModel | None = None
    warnings: list[str] = field(default_factory=list)
    triton_path: Path | None = None


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def stderr_progress(message: str) -> None:
    print(f"tlc-export: {message}", file=sys.stderr, flush=True)


def check_multiple(loaded: LoadedModel, size: tuple[int, int], what: str) -> None:
    m = loaded.input_multiple
    if m > 1 and (size[0] % m or size[1] % m):
        raise UserError(f"{loaded.preset or loaded.family} needs H and W to be multiples of {m}; "
                        f"{what} {size[0]}x{size[1]} is not (e.g. use {size[0] // m * m or m}x{size[1] // m * m or m})")


def input_channels_of(loaded: LoadedModel, size: tuple[int, int]) -> int:
    from . import zoo

    if loaded.family is not None:
        return zoo.input_channels(loaded.family, loaded.preset, loaded.arch_kwargs)
    if loaded.channels is not None:
        return loaded.channels
    from .reference.convert import run_on_image

    try:
        return run_on_image(loaded.module, size)
    except (ValueError, RuntimeError):
        raise UserError("cannot tell the model's input channels; give them with --input-shape NxCxHxW") from None


def _io_table(values) -> list[dict]:
    rows = []
    for vi in values:
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                for d in vi.type.tensor_type.shape.dim]
        rows.append({"name": vi.name, "shape": dims,
                     "dtype": onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name})
    return rows


def known_module_path(path: str, known: set[str]) -> str:
    """Map an exporter scope path onto a real module path: a module called several times is scoped
    ``name_1``, ``name_2``…; drop such suffixes where that gives a known path."""
    if not known or path in known:
        return path
    parts = path.split(".")
    for i in range(len(parts)):
        trimmed = re.sub(r"_\d+$", "", parts[i])
        if trimmed != parts[i]:
            candidate = ".".join(parts[:i] + [trimmed] + parts[i + 1:])
            resolved = known_module_path(candidate, known)
            if resolved in known:
                return resolved
    return path


@dataclass
class RewriteStage:
    """The rewrite stage's result: the TLC graph, what was rewritten, what was kept global."""

    model: onnx.ModelProto
    records: list[RewriteRecord]
    kept: list[KeptRecord]


def rewrite_stage(model: onnx.ModelProto, calib: tuple[int, int], input_shape=None, impl: str = "standard",
                  module_prefix: str = "", known_paths: set[str] = frozenset(),
                  box_filter: str = "auto", fast: bool = False) -> RewriteStage:
    """Find, calibrate and localise every global op of ``model``; ops that cannot be localised are kept
    global and listed (``fast``: local means and instance norms in the official fast mode, see
    ``rewrite.fast``). A graph whose global ops are all kept global is refused (``UserError``): the
    result would be the global model under a TLC name."""
    graph = import_graph(model)
    scan = scan_graph(graph, module_scopes(model))
    kept = kept_records(scan.kept)
    if not scan.ops:
        if kept:
            raise UserError(f"nothing to convert: {kept_warning(kept)}; export the global model with --no-tlc")
        return RewriteStage(model, [], [])
    windows = calibrate_windows(model, scan.ops, calib, input_shape)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), DEFAULT_OPSET)
    if impl == "plugin":
        from .rewrite.plugin_nodes import add_plugin_opset, localize_plugin

        records = localize_plugin(graph, scan.ops, windows, opset, box_filter)
    else:
        max_r = ({op.name: max_factors(windows[op.name], calib) for op in scan.ops if op.kind in FAST_KINDS}
                 if fast else {})
        records = localize(graph, scan.ops, windows, opset, options=RewriteOptions(box_filter, max_r))
    out = gs.export_onnx(graph)
    if impl == "plugin":
        add_plugin_opset(out)
    if module_prefix:
        def unprefixed(path: str) -> str:
            return "" if path == module_prefix.rstrip(".") else path.removeprefix(module_prefix)

        def known(path: str) -> str:
            return known_module_path(unprefixed(path), known_paths)

        records = [replace(r, module_path=known(r.module_path)) for r in records]
        kept = [KeptRecord(k.onnx_name, known(k.module_path), k.kind, k.reason) for k in kept]
    return RewriteStage(out, records, kept)


def localize_graph(model: onnx.ModelProto, calib: tuple[int, int], input_shape=None, impl: str = "standard",
                   module_prefix: str = "", known_paths: set[str] = frozenset(),
                   box_filter: str = "auto", fast: bool = False) -> tuple[onnx.ModelProto, list[RewriteRecord]]:
    """The rewrite stage on its own (``rewrite_stage``), warning about ops kept global."""
    stage = rewrite_stage(model, calib, input_shape, impl, module_prefix, known_paths, box_filter, fast)
    if stage.kept:
        warnings.warn(kept_warning(stage.kept))
    return stage.model, stage.records


SELF_CHECK_ATOL = 1e-5


def check_graph(model: onnx.ModelProto, shape: tuple[int, int, int, int], impl: str = "standard",
                source: onnx.ModelProto | None = None) -> list:
    """onnx.checker, then ONNX Runtime loads the graph and runs it once at ``shape``. With ``source`` (the
    graph before the rewrite) and ``shape`` the calibration size, where every window covers its map, the
    two graphs must agree (≤ ``SELF_CHECK_ATOL`` × max(1, |output|)): this catches rewrite bugs on
    architectures nobody has checked by hand; a mismatch is refused with the numbers."""
    from .runtime import ort_session

    try:
        onnx.checker.check_model(model, full_check=False)
    except onnx.checker.ValidationError as exc:
        raise RuntimeError(f"the rewritten graph fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    image = np.random.default_rng(0).random(shape, dtype=np.float32)
    # The source first: a graph broken as exported (DAT from the TorchScript exporter) is not blamed
    # on the conversion.
    expected = None if source is None else \
        _run_once(lambda: ort_session(source), source, image, "the source graph, before any rewrite,")
    outputs = _run_once(lambda: ort_session(model, impl=impl), model, image, "the converted graph")
    if not all(np.isfinite(o).all() for o in outputs if np.issubdtype(o.dtype, np.floating)):
        raise RuntimeError("the rewritten graph produced non-finite values at the calibration size")
    if source is not None:
        _compare_with_source(source, outputs, expected, shape)
    return outputs


def _run_once(make_session, model: onnx.ModelProto, image: np.ndarray, what: str) -> list[np.ndarray]:
    """One ONNX Runtime run; a failure (e.g. a graph that cannot run at this size) is one clear line."""
    try:
        return make_session().run(None, {graph_input(model).name: image})
    except Exception as exc:  # ONNX Runtime raises its own exception types
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        size = "x".join(map(str, image.shape[2:]))
        raise UserError(f"{what} fails in ONNX Runtime at {size} ({first}); check that the model runs at "
                        f"this size (choose another --calib) or export it another way") from None


def _compare_with_source(source: onnx.ModelProto, outputs: list[np.ndarray], expected: list[np.ndarray],
                         shape) -> None:
    for meta, got, want in zip(source.graph.output, outputs, expected):
        if not np.issubdtype(want.dtype, np.floating):
            continue
        if got.shape != want.shape and want.shape[-2:] == (1, 1) and got.ndim == want.ndim:
            want = np.broadcast_to(want, got.shape)   # a pooled output is now its local-mean map
        if got.shape != want.shape:
            raise UserError(f"self-check failed: at the calibration size {shape[2]}x{shape[3]} output "
                            f"{meta.name!r} of the TLC graph is {got.shape}, the source graph's {want.shape}; "
                            f"this is a rewrite bug: please report it with the model")
        err = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
        tol = SELF_CHECK_ATOL * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
        if not err <= tol:
            raise UserError(f"self-check failed: at the calibration size {shape[2]}x{shape[3]}, where every "
                            f"window covers its map, output {meta.name!r} of the TLC graph differs from the "
                            f"source graph by {err:.3g} (max abs; allowed {tol:.1g}); this is a rewrite bug: "
                            f"please report it with the model")


def _check_exporter_opset(exporter: str, opset: int | None) -> int:
    """The opset to write: the exporter's lowest unless given; refused below what tlc-export or the
    exporter supports."""
    if exporter not in EXPORTERS:
        raise UserError(f"--exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    if opset is None:
        return MIN_OPSET[exporter]
    guards.check_opset(opset)   # the range tlc-export, the exporter and ONNX Runtime support
    if opset < MIN_OPSET[exporter]:
        raise UserError(f"--opset {opset}: the {exporter} exporter writes opset {MIN_OPSET[exporter]} or newer "
                        f"(use --exporter torchscript for opset {opset})")
    return opset


def _program_exporter(loaded: LoadedModel, exporter: str) -> tuple[str, list[str]]:
    """A .pt2 program goes through the dynamo exporter as it is; a static one is refused (its graph
    would only run at one size). TorchScript modules can only take the TorchScript exporter."""
    import torch

    if loaded.program is not None:
        from .load.program import input_dims

        dims = input_dims(loaded.program)
        if dims is not None and len(dims) == 4 and all(isinstance(d, int) for d in dims[2:]):
            raise UserError(f"{loaded.path} was exported with static height and width "
                            f"({'x'.join(map(str, dims))}): a TLC graph must run at other sizes; re-export "
                            f"with torch.export.export(..., dynamic_shapes=...) for dynamic height and width")
        if dims is not None and isinstance(dims[0], int):
            return "dynamo", [f"the .pt2 fixes the batch at {dims[0]}: so does the graph"]
        return "dynamo", []
    if isinstance(loaded.module, torch.jit.ScriptModule):
        return "torchscript", []
    return exporter, []


def default_output(source: Path, tlc: bool) -> Path:
    stem = source.name
    for suffix in (".onnx", ".pt2", ".pth", ".pt", ".ckpt", ".bin"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return source.with_name(f"{stem}.{'tlc' if tlc else 'global'}.onnx")


def module_as_loaded(module, arch: str | None = None, arch_kwargs: dict | None = None) -> LoadedModel:
    """An in-memory module as the loader would describe it; ``arch`` names its preset or family
    (for the output order and the input size multiple)."""
    from . import zoo

    loaded = LoadedModel(Path("<module>"), "module", module=module.eval(), arch_kwargs=dict(arch_kwargs or {}))
    if arch is not None:
        loaded.preset = zoo.find_preset(arch)
        loaded.family = zoo.presets()[loaded.preset][0] if loaded.preset else arch.lower()
    return loaded


def convert(model, calib: tuple[int, int] | str, *, arch: str | None = None,
            arch_kwargs: dict | None = None, output: str | Path | None = None,
            input_shape: tuple[int, int, int, int] | str | None = None, static: bool = False,
            opset: int | None = None, tlc: bool = True, report: str | Path | None = None,
            trust_pickle: bool = False, impl: str = "standard", box_filter: str = "auto",
            fast: bool = False, triton_repo: str | Path | None = None, exporter: str = DEFAULT_EXPORTER,
            progress: Callable[[str], None] | None = None) -> ConversionResult:
    """Convert ``model`` (a file path, or an in-memory ``nn.Module`` with ``output`` given) to a TLC ONNX
    graph. See the README for the options."""
    start = time.perf_counter()
    calib = parse_calib(calib)
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    opset = _check_options(impl, box_filter, fast, exporter, opset, arch, arch_kwargs)
    in_memory = not isinstance(model, (str, Path))
    if in_memory and output is None:
        raise UserError("converting an in-memory nn.Module needs an output path")
    source = Path("<module>") if in_memory else Path(model)
    output_notes: list[str] = []           # "created directory ..." once the outputs are written
    out = claim_outputs(None if in_memory else source, Path(output) if output else default_output(source, tlc),
                        report, graph_named=output is not None, triton_repo=triton_repo, impl=impl,
                        note=output_notes.append)
    guards.check_arch_size(arch, arch_kwargs)

    loaded = _load_for_conversion(model, source, in_memory, arch, arch_kwargs, trust_pickle, progress)
    calib = resolve_calib(calib, loaded)
    exported = export_stage(loaded, calib, input_shape, opset, static and not tlc, exporter, progress)
    notes = list(loaded.notes) + exported.notes
    stage = RewriteStage(exported.model, [], [])
    if tlc:
        _say(progress, f"calibrating at {calib[0]}x{calib[1]} and rewriting global ops")
        with ticking("calibrating and rewriting"):
            stage = rewrite_stage(exported.model, calib, exported.shape, impl, module_prefix=exported.prefix,
                                  known_paths={t["path"] for t in exported.traced}, box_filter=box_filter,
                                  fast=fast)
        if not stage.records:
            message = "no global op found in the graph: nothing to convert, nothing written"
            warnings.warn(message)
            return ConversionResult(None, None, {"rewritten": [], "warning": message}, loaded=loaded,
                                    warnings=[message])
    said = _stage_warnings(stage, fast)
    notes += said
    graph_model = _checked(stage.model, exported, calib, impl if tlc else "standard", tlc,
                           bake=static and tlc and loaded.module is not None, progress=progress)

    result_report = {
        "tool": "tlc-export", "version": __version__, "source": str(source), "format": loaded.format,
        "preset": loaded.preset, "family": loaded.family, "arch_kwargs": loaded.arch_kwargs, "notes": notes,
        "architecture": loaded.architecture, "loader": loaded.loader,
        "exporter": exported.exporter if loaded.module is not None else None,
        "input_multiple": loaded.input_multiple if loaded.module is not None else None,
        "calib": list(calib), "tlc": tlc, "impl": impl if tlc else None,
        "box_filter": box_filter if tlc else None, "fast": fast if tlc else None, "dynamic": not static,
        "opset": next(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": _io_table(v for v in graph_model.graph.input
                            if v.name not in {i.name for i in graph_model.graph.initializer}),
        "outputs": _io_table(graph_model.graph.output),
        "torch_global_ops": exported.traced,
        "rewritten": [asdict(r) for r in stage.records],
        "kept_global": [asdict(k) for k in stage.kept],
    }
    result_report["seconds"] = round(time.perf_counter() - start, 2)
    out.write(graph_model, result_report)
    _say(progress, f"wrote {out.graph} ({len(stage.records)} global ops rewritten) and {out.report}")
    result = ConversionResult(out.graph, out.report, result_report, graph_model, loaded, triton_path=out.triton_entry)
    result.warnings.extend(said + output_notes)
    return result


def _check_options(impl: str, box_filter: str, fast: bool, exporter: str, opset: int | None,
                   arch: str | None, arch_kwargs: dict | None) -> int:
    """Refuse option values and combinations before any work; returns the opset to write."""
    if impl not in IMPLEMENTATIONS:
        raise UserError(f"--impl {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if box_filter not in BOX_FILTERS:
        raise UserError(f"--box-filter {box_filter!r} is not one of {', '.join(BOX_FILTERS)}")
    if fast and impl == "plugin":
        raise UserError("--fast is built from standard ops only; drop --impl plugin (or --fast)")
    guards.check_arch_kwargs(arch, arch_kwargs)
    return _check_exporter_opset(exporter, opset)


def _load_for_conversion(model, source: Path, in_memory: bool, arch, arch_kwargs, trust_pickle: bool,
                         progress) -> LoadedModel:
    if in_memory:
        loaded = module_as_loaded(model, arch, arch_kwargs)
    else:
        _say(progress, f"loading {source}")
        loaded = load_model(source, arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle)
    _check_loaded(loaded, source)
    if loaded.architecture:
        _say(progress, f"architecture {loaded.architecture} ({loaded.loader})")
    return loaded


@dataclass
class ExportStage:
    """The export stage's result: the global graph and what the later stages need to know of it."""

    model: onnx.ModelProto
    shape: tuple[int, int, int, int] | None   # the export input shape (None: an .onnx file as given)
    exporter: str | None = None
    notes: list[str] = field(default_factory=list)
    traced: list[dict] = field(default_factory=list)   # global ops found in the eager module
    prefix: str = ""                                    # exporter scope prefix of module paths


def export_stage(loaded: LoadedModel, calib, input_shape, opset: int, static: bool, exporter: str,
                  progress) -> ExportStage:
    """The global ONNX graph of ``loaded`` (an .onnx input as it is). ``static`` bakes the export shape;
    a static TLC graph is exported and calibrated dynamic and its shape baked in after the rewrite, so
    the calibration size need not be the static size."""
    if loaded.module is None:
        guards.check_run_size(None, (1, 1, *calib), f"--calib {calib[0]}x{calib[1]}")
        return ExportStage(loaded.onnx_model, input_shape)
    from .trace import list_global_ops

    exporter, notes = _program_exporter(loaded, exporter)   # before running the model
    check_multiple(loaded, calib, "--calib")
    guards.check_run_size(None, (1, 1, *calib), f"--calib {calib[0]}x{calib[1]}")
    shape = input_shape or (1, input_channels_of(loaded, calib), calib[0], calib[1])
    check_multiple(loaded, shape[2:], "--input-shape")
    _check_sizes(loaded, shape, calib, input_shape is not None)
    traced = [asdict(t) for t in list_global_ops(loaded.module)]
    _say(progress, f"exporting ONNX at {'x'.join(map(str, shape))} with the {exporter} exporter "
                   f"({'static' if static else 'dynamic batch/H/W'}, opset {opset})")
    with ticking("exporting ONNX"):
        graph_model, exporter, export_notes = export_faithfully(loaded, shape, opset, static, exporter,
                                                                lambda m: _say(progress, m))
    return ExportStage(graph_model, shape, exporter, notes + export_notes, traced,
                       "model." if loaded.program is None else "")


def _stage_warnings(stage: RewriteStage, fast: bool) -> list[str]:
    """The rewrite's warnings (ops kept global; group norm without a fast mode), also raised as warnings."""
    said = []
    if stage.kept:
        said.append(kept_warning(stage.kept))
    if fast and any(r.op == "groupnorm" for r in stage.records):
        said.append("--fast: group norm has no official fast mode; its ops are rewritten in exact TLC")
    for message in said:
        warnings.warn(message)
    return said


def _checked(graph_model: onnx.ModelProto, exported: ExportStage, calib, impl: str, tlc: bool, bake: bool,
             progress) -> onnx.ModelProto:
    """onnx.checker and ONNX Runtime on the final graph; for TLC the self-check against the source graph
    at the calibration size, where every window covers its map. ``bake``: then the static shape."""
    _say(progress, "checking the graph with onnx.checker and ONNX Runtime (TLC: against the source graph)")
    check_graph(graph_model, calibration_shape(graph_model, calib, exported.shape), impl,
                source=exported.model if tlc else None)
    if bake:
        graph_model = bake_shape(graph_model, exported.shape, check_graph(graph_model, exported.shape, impl))
    return graph_model


def _check_loaded(loaded: LoadedModel, source: Path) -> None:
    """Refuse an ONNX file without a graph and weights that are not finite (naming the tensor)."""
    if loaded.onnx_model is not None:
        if not loaded.onnx_model.graph.node:
            raise UserError(f"{source} holds no ONNX graph (no nodes; an empty or truncated file?)")
        guards.check_finite_weights(guards.onnx_tensors(loaded.onnx_model), str(source))
    elif loaded.module is not None:
        guards.check_finite_weights(guards.module_tensors(loaded.module), str(source))


def _check_sizes(loaded: LoadedModel, shape, calib, shape_given: bool) -> None:
    """Refuse export/calibration sizes whose activations cannot fit in memory (estimated first)."""
    what = "--input-shape " + "x".join(map(str, shape)) if shape_given else f"--calib {calib[0]}x{calib[1]}"
    guards.check_run_size(loaded.module, tuple(shape), what, loaded.input_multiple)
    if shape_given:
        guards.check_run_size(loaded.module, (1, shape[1], *calib), f"--calib {calib[0]}x{calib[1]}",
                              loaded.input_multiple)
