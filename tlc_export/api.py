"""The Python API: ``convert`` runs load → trace → export → calibrate → rewrite → check → write.

The CLI is a thin layer over these functions.
"""
from __future__ import annotations

import json
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field
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
from .fileio import atomic_write_bytes, atomic_write_text, refuse_overwriting_input
from .load import LoadedModel, load_model
from .rewrite import KeptRecord, RewriteRecord, kept_records, kept_warning, localize, scan_graph
from .rewrite.scopes import module_scopes
from .rewrite.subgraphs import BOX_FILTERS

DEFAULT_OPSET = 17
DEFAULT_EXPORTER = "dynamo"   # see README "Exporters" for the measurements behind this choice
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


def parse_input_shape(text: str) -> tuple[int, int, int, int]:
    parts = str(text).strip().lower().split("x")
    if len(parts) != 4 or not all(re.fullmatch(r"\d+", p) and int(p) > 0 for p in parts):
        raise UserError(f"--input-shape {text!r} is not NxCxHxW with positive integers, e.g. 1x3x256x256")
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


def _say(progress: Callable[[str], None] | None, message: str) -> None:
    if progress is not None:
        progress(message)


def stderr_progress(message: str) -> None:
    print(f"tlc-export: {message}", file=sys.stderr, flush=True)


def _check_multiple(loaded: LoadedModel, size: tuple[int, int], what: str) -> None:
    m = loaded.input_multiple
    if m > 1 and (size[0] % m or size[1] % m):
        raise UserError(f"{loaded.preset or loaded.family} needs H and W to be multiples of {m}; "
                        f"{what} {size[0]}x{size[1]} is not (e.g. use {size[0] // m * m or m}x{size[1] // m * m or m})")


def _input_channels(loaded: LoadedModel, size: tuple[int, int]) -> int:
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


def _known_module_path(path: str, known: set[str]) -> str:
    """Map an exporter scope path onto a real module path: a module called several times is scoped
    ``name_1``, ``name_2``…; drop such suffixes where that gives a known path."""
    if not known or path in known:
        return path
    parts = path.split(".")
    for i in range(len(parts)):
        trimmed = re.sub(r"_\d+$", "", parts[i])
        if trimmed != parts[i]:
            candidate = ".".join(parts[:i] + [trimmed] + parts[i + 1:])
            resolved = _known_module_path(candidate, known)
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
                  box_filter: str = "auto") -> RewriteStage:
    """Find, calibrate and localise every global op of ``model``; ops that cannot be localised are kept
    global and listed. A graph whose global ops are all kept global is refused (``UserError``): the
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
        records = localize(graph, scan.ops, windows, opset, box_filter)
    out = gs.export_onnx(graph)
    if impl == "plugin":
        add_plugin_opset(out)
    if module_prefix:
        def unprefixed(path: str) -> str:
            return "" if path == module_prefix.rstrip(".") else path.removeprefix(module_prefix)

        def known(path: str) -> str:
            return _known_module_path(unprefixed(path), known_paths)

        records = [RewriteRecord(r.onnx_name, known(r.module_path), r.op, r.pattern, r.window, r.implementation)
                   for r in records]
        kept = [KeptRecord(k.onnx_name, known(k.module_path), k.kind, k.reason) for k in kept]
    return RewriteStage(out, records, kept)


def localize_graph(model: onnx.ModelProto, calib: tuple[int, int], input_shape=None, impl: str = "standard",
                   module_prefix: str = "", known_paths: set[str] = frozenset(),
                   box_filter: str = "auto") -> tuple[onnx.ModelProto, list[RewriteRecord]]:
    """The rewrite stage on its own (``rewrite_stage``), warning about ops kept global."""
    stage = rewrite_stage(model, calib, input_shape, impl, module_prefix, known_paths, box_filter)
    if stage.kept:
        warnings.warn(kept_warning(stage.kept))
    return stage.model, stage.records


SELF_CHECK_ATOL = 1e-5


def check_graph(model: onnx.ModelProto, shape: tuple[int, int, int, int], impl: str = "standard",
                source: onnx.ModelProto | None = None) -> None:
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
    outputs = _run_once(lambda: ort_session(model, impl=impl), model, image, "the converted graph")
    if not all(np.isfinite(o).all() for o in outputs if np.issubdtype(o.dtype, np.floating)):
        raise RuntimeError("the rewritten graph produced non-finite values at the calibration size")
    if source is not None:
        _compare_with_source(source, outputs, image, shape)


def _run_once(make_session, model: onnx.ModelProto, image: np.ndarray, what: str) -> list[np.ndarray]:
    """One ONNX Runtime run; a failure (e.g. a graph that cannot run at this size) is one clear line."""
    try:
        return make_session().run(None, {graph_input(model).name: image})
    except Exception as exc:  # ONNX Runtime raises its own exception types
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        size = "x".join(map(str, image.shape[2:]))
        raise UserError(f"{what} fails in ONNX Runtime at {size} ({first}); check that the model runs at "
                        f"this size (choose another --calib) or export it another way") from None


def _compare_with_source(source: onnx.ModelProto, outputs: list[np.ndarray], image: np.ndarray, shape) -> None:
    from .runtime import ort_session

    expected = _run_once(lambda: ort_session(source), source, image, "the source graph")
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
    if opset < DEFAULT_OPSET:
        raise UserError(f"--opset {opset} is too old: tlc-export writes opset {DEFAULT_OPSET} or newer")
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
            exporter: str = DEFAULT_EXPORTER,
            progress: Callable[[str], None] | None = None) -> ConversionResult:
    """Convert ``model`` (a file path, or an in-memory ``nn.Module`` with ``output`` given) to a TLC ONNX
    graph. See the README for the options."""
    start = time.perf_counter()
    if isinstance(calib, str):
        calib = parse_size(calib)
    if isinstance(input_shape, str):
        input_shape = parse_input_shape(input_shape)
    if impl not in IMPLEMENTATIONS:
        raise UserError(f"--impl {impl!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if box_filter not in BOX_FILTERS:
        raise UserError(f"--box-filter {box_filter!r} is not one of {', '.join(BOX_FILTERS)}")
    opset = _check_exporter_opset(exporter, opset)
    in_memory = not isinstance(model, (str, Path))
    if in_memory and output is None:
        raise UserError("converting an in-memory nn.Module needs an output path")
    source = Path("<module>") if in_memory else Path(model)
    out_path = Path(output) if output else default_output(source, tlc)
    if out_path.suffix.lower() != ".onnx":
        raise UserError(f"output {out_path} must end in .onnx")
    report_path = Path(report) if report else out_path.with_suffix(".json")
    refuse_overwriting_input(out_path, [source])
    refuse_overwriting_input(report_path, [source])

    if in_memory:
        loaded = module_as_loaded(model, arch, arch_kwargs)
    else:
        _say(progress, f"loading {source}")
        loaded = load_model(source, arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle)
    if loaded.architecture:
        _say(progress, f"architecture {loaded.architecture} ({loaded.loader})")
    notes = list(loaded.notes)
    traced = []
    prefix = ""
    if loaded.module is not None:
        from .trace import list_global_ops

        _check_multiple(loaded, calib, "--calib")
        shape = input_shape or (1, _input_channels(loaded, calib), calib[0], calib[1])
        _check_multiple(loaded, shape[2:], "--input-shape")
        exporter, form_notes = _program_exporter(loaded, exporter)
        notes += form_notes
        traced = [asdict(t) for t in list_global_ops(loaded.module)]
        _say(progress, f"exporting ONNX at {'x'.join(map(str, shape))} with the {exporter} exporter "
                       f"({'static' if static else 'dynamic batch/H/W'}, opset {opset})")
        graph_model, exporter, export_notes = export_faithfully(loaded, shape, opset, static, exporter,
                                                                lambda m: _say(progress, m))
        notes += export_notes
        prefix = "model." if loaded.program is None else ""
    else:
        graph_model = loaded.onnx_model
        shape = input_shape

    records: list[RewriteRecord] = []
    kept: list[KeptRecord] = []
    source_graph = graph_model
    if tlc:
        _say(progress, f"calibrating at {calib[0]}x{calib[1]} and rewriting global ops")
        stage = rewrite_stage(graph_model, calib, shape, impl, module_prefix=prefix,
                              known_paths={t["path"] for t in traced}, box_filter=box_filter)
        graph_model, records, kept = stage.model, stage.records, stage.kept
        if kept:
            notes.append(kept_warning(kept))
            warnings.warn(kept_warning(kept))
        if not records:
            message = "no global op found in the graph: nothing to convert, nothing written"
            warnings.warn(message)
            return ConversionResult(None, None, {"rewritten": [], "warning": message}, loaded=loaded,
                                    warnings=[message])
    _say(progress, "checking the graph with onnx.checker and ONNX Runtime (TLC: against the source graph)")
    check_shape = calibration_shape(graph_model, calib, shape)
    check_graph(graph_model, check_shape, impl if tlc else "standard", source=source_graph if tlc else None)

    result_report = {
        "tool": "tlc-export", "version": __version__, "source": str(source), "format": loaded.format,
        "preset": loaded.preset, "family": loaded.family, "arch_kwargs": loaded.arch_kwargs, "notes": notes,
        "architecture": loaded.architecture, "loader": loaded.loader,
        "exporter": exporter if loaded.module is not None else None,
        "input_multiple": loaded.input_multiple if loaded.module is not None else None,
        "calib": list(calib), "tlc": tlc, "impl": impl if tlc else None,
        "box_filter": box_filter if tlc else None, "dynamic": not static,
        "opset": next(o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx")),
        "inputs": _io_table(v for v in graph_model.graph.input
                            if v.name not in {i.name for i in graph_model.graph.initializer}),
        "outputs": _io_table(graph_model.graph.output),
        "torch_global_ops": traced,
        "rewritten": [asdict(r) for r in records],
        "kept_global": [asdict(k) for k in kept],
    }
    result_report["seconds"] = round(time.perf_counter() - start, 2)
    atomic_write_bytes(out_path, graph_model.SerializeToString())
    atomic_write_text(report_path, json.dumps(result_report, indent=2) + "\n")
    _say(progress, f"wrote {out_path} ({len(records)} global ops rewritten) and {report_path}")
    return ConversionResult(out_path, report_path, result_report, graph_model, loaded)
