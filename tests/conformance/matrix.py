"""One cell of the architecture × form matrix: build, write the form, convert, compare, count."""
from __future__ import annotations

import re
import tempfile
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from tlc_export.errors import UserError

from .archs import ARCHS, sample_image, true_counts
from .forms import CALIB, convert_form, run_graph, write_form
from .reference import TLCReference

ATOL = 1e-5
EFFECT_MIN = 5e-5     # the TLC effect must be clearly above the tolerance (5x)
WRONG_FILE = 1e-3     # a global graph this far off the model: the written file itself is wrong there


@dataclass
class Cell:
    arch: str
    form: str
    status: str = "FAIL"          # exact | kept-global | no-global-op | FAIL
    what: str = ""                # failure, or the kept-global reasons
    errors: dict = field(default_factory=dict)     # "HxW" -> max abs error against the reference
    effects: dict = field(default_factory=dict)    # "HxW" -> max |local − global| of the reference
    rewritten: int | None = None
    kept: int | None = None
    true_total: int = 0
    true_kept: int = 0
    seconds: float | None = None

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


_REFS: dict[str, tuple] = {}


def reference(name: str):
    """(model, reference, true counts) for one architecture, cached per process."""
    if name not in _REFS:
        arch = ARCHS[name]
        model = arch.build()
        calls, kept_calls, total, kept = true_counts(arch, model)
        ref = TLCReference(model, arch.kept, CALIB)
        assert len(ref.ops) == calls and len(ref.kept_ops) == kept_calls, (
            f"{name}: the reference found {len(ref.ops)} global ops ({len(ref.kept_ops)} kept), "
            f"the module tree {calls} ({kept_calls})")
        _REFS[name] = (model, ref, total, kept)
    return _REFS[name]


def run_cell(name: str, form: str, keep_files: Path | None = None) -> Cell:
    arch = ARCHS[name]
    model, ref, total, kept = reference(name)
    cell = Cell(name, form, true_total=total, true_kept=kept)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(keep_files or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            _fill(cell, arch, model, ref, form, folder)
        except Exception as exc:  # a traceback from the converter is itself a finding
            last = traceback.extract_tb(exc.__traceback__)[-1]
            cell.status = "FAIL"
            cell.what = f"{type(exc).__name__}: {_first_line(exc)[:160]} " \
                        f"({Path(last.filename).name}:{last.lineno})"
    return cell


def _fill(cell: Cell, arch, model, ref, form: str, folder: Path) -> None:
    try:
        path = write_form(model, form, folder, arch.multiple)
    except Exception as exc:
        cell.what = f"PyTorch cannot write this form: {type(exc).__name__}: {_first_line(exc)[:120]}"
        cell.status = "n/a"
        return
    try:
        result, cell.seconds, said = convert_form(path, folder)
    except UserError as exc:
        # Every global op kept global: the converter refuses by name, which is the right answer there.
        said_kept = re.match(r"nothing to convert: (\d+) ", str(exc))
        if said_kept and cell.true_total and int(said_kept[1]) == cell.true_kept == cell.true_total:
            cell.status, cell.kept = "kept-global", cell.true_kept
            cell.what = f"refused by name, all {cell.true_kept} kept global: {str(exc)[:200]}"
            return
        if form == "torchscript" and str(exc).startswith("the TorchScript exporter fails on the model"):
            cell.status = "n/a"     # torch.onnx cannot translate this TorchScript module (only it can read one)
            cell.what = f"the converter refuses by name: {str(exc)[:200]}"
            return
        if form in ("torchscript", "pt2") and str(exc).startswith("the model does not run at"):
            cell.status = "n/a"     # the trace / program PyTorch wrote runs only at its export size
            cell.what = f"the {form} file PyTorch writes runs at its export size only; the converter says so: " \
                        f"{str(exc)[:160]}"
            return
        if str(exc).startswith("the source graph, before any rewrite, fails") or (
                "-exported graph does not run at" in str(exc) and "ONNXRuntimeError" in str(exc)):
            cell.status = "n/a"     # PyTorch wrote a graph ONNX Runtime cannot run; the converter says so
            cell.what = f"the converter refuses by name: {str(exc)[:200]}"
            return
        raise
    report = result.report
    cell.rewritten = len(report.get("rewritten", []))
    kept_entries = report.get("kept_global", [])
    cell.kept = len(kept_entries)
    if result.onnx_path is None:
        if cell.true_total == 0:
            cell.status, cell.what = "no-global-op", "none in the module tree; the converter agrees"
        else:
            cell.what = f"silent no-op: converter wrote nothing ({report.get('warning', '')[:80]}) " \
                        f"but the model has {cell.true_total} global ops"
        return
    problems = []
    for h, w in arch.sizes:
        image = sample_image(h, w, seed=h * 7 + w)
        expected = ref(image)
        out = torch.from_numpy(run_graph(result.onnx_path, image)).double()
        if out.shape != expected.shape:
            problems.append(f"{h}x{w}: output {tuple(out.shape)} != {tuple(expected.shape)}")
            continue
        key = f"{h}x{w}"
        cell.errors[key] = (out - expected).abs().max().item()
        cell.effects[key] = (expected - ref(image, local=False)).abs().max().item()
        if not cell.errors[key] <= ATOL:
            problems.append(f"{key}: max err {cell.errors[key]:.1e} > {ATOL:g}")
    if (cell.rewritten, cell.kept) != (cell.true_total - cell.true_kept, cell.true_kept):
        problems.append(f"counts: rewritten {cell.rewritten} + kept {cell.kept}, expected "
                        f"{cell.true_total - cell.true_kept} + {cell.true_kept}")
    unexplained = [e for e in kept_entries if not (isinstance(e, dict) and e.get("reason"))]
    if unexplained:
        problems.append(f"{len(unexplained)} kept_global entries without a reason")
    if kept_entries and not said:
        problems.append("ops kept global without a warning")
    if ref.rewritable and cell.effects and min(cell.effects.values()) < EFFECT_MIN:
        problems.append(f"TLC effect {min(cell.effects.values()):.1e} < {EFFECT_MIN:g}: the check is blind")
    if problems:
        if any("max err" in p for p in problems):
            diagnosis, global_err = _global_graph_error(path, folder, arch, ref)
            if form != "state_dict" and global_err is not None and global_err > WRONG_FILE:
                # The file PyTorch wrote is itself wrong at this size (a trace baked int(H / 2)): the
                # converter is faithful to it and cannot know the model behind it.
                cell.status = "n/a"
                cell.what = f"the {form} file PyTorch writes is already wrong at other sizes ({diagnosis})"
                return
            problems.append(diagnosis)
        cell.what = "; ".join(problems)
        return
    reasons = sorted({str(e.get("reason", e)) if isinstance(e, dict) else str(e) for e in kept_entries})
    cell.status = "kept-global" if cell.kept else "exact"
    cell.what = "; ".join(reasons)


def _global_graph_error(path: Path, folder: Path, arch, ref) -> tuple[str, float | None]:
    """Diagnose a wrong TLC graph: is the converter's global graph (``tlc=False``) already off?"""
    from tlc_export import convert

    h, w = arch.sizes[0]
    try:
        result = convert(str(path), calib=CALIB, output=folder / "model.global.onnx", tlc=False)
        image = sample_image(h, w, seed=h * 7 + w)
        out = torch.from_numpy(run_graph(result.onnx_path, image)).double()
        err = (out - ref(image, local=False)).abs().max().item()
        return f"its global graph (--no-tlc) is off by {err:.1e} at {h}x{w}", err
    except Exception as exc:
        return f"its global graph (--no-tlc) fails: {type(exc).__name__}: {_first_line(exc)[:80]}", None
