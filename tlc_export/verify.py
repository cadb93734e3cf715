"""Verify: the converted graph against the eager PyTorch TLC reference, through polygraphy.

Both run as polygraphy runners (``OnnxrtRunner`` for the graph, ``EagerRunner`` below for the
reference — polygraphy's own ``PytRunner`` moves tensors to CUDA) on the same inputs: seeded random
images at several sizes plus a real photo from scikit-image at full resolution. ``Comparator`` checks
them; the report adds max/mean abs error and PSNR per output, and the TLC effect (PSNR between the
global and the local eager outputs).
"""
from __future__ import annotations

import copy
import json
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from torch import nn

from .calibrate import graph_input
from .errors import UserError, first_line


class EagerRunner(BaseRunner):
    """A polygraphy runner for an eager ``nn.Module`` on the CPU (outputs named like the graph's)."""

    def __init__(self, model: nn.Module, input_name: str, output_names: list[str], final_stage_last: bool,
                 name: str = "eager"):
        super().__init__(name=name, prefix="eager-runner")
        self._model = model
        self._input_name = input_name
        self._output_names = output_names
        self._final_stage_last = final_stage_last

    def activate_impl(self):
        self._model.eval()

    def get_input_metadata_impl(self):
        return TensorMetadata().add(self._input_name, np.float32, (-1, -1, -1, -1))

    def infer_impl(self, feed_dict):
        x = torch.from_numpy(np.ascontiguousarray(feed_dict[self._input_name]))
        start = time.perf_counter()
        with torch.no_grad():
            try:
                out = self._model(x)
            except RuntimeError as exc:
                raise UserError(self._cannot_run(x, exc)) from None
        self.inference_time = time.perf_counter() - start
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        if self._final_stage_last:
            outs = outs[::-1]
        return OrderedDict((name, o.numpy()) for name, o in zip(self._output_names, outs))

    def deactivate_impl(self):
        pass

    def _cannot_run(self, x: torch.Tensor, exc: RuntimeError) -> str:
        size = "x".join(map(str, x.shape[-2:]))
        first = first_line(exc)
        if self.name != "eager-tlc":
            return f"the PyTorch model fails at {size} ({first}): choose --sizes it can take"
        # A pooled (N, C) vector fed to a Linear or a Conv1d across channels (ECA): the graph runs these
        # per pixel, the eager reference only swaps the pooling module for one returning an (N, C, h, w) map.
        return (f"the eager TLC reference cannot run this model at {size} ({first}): it swaps each pooling "
                f"for a local-mean (N, C, h, w) map, and the model uses the pooled tensor in a way only the "
                f"graph rewrite runs per pixel (a vector through a Linear or a Conv1d); verify cannot check "
                f"this graph (the converter only checked it against the global graph at the calibration size)")


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak * peak / mse)


def photo_input(channels: int, multiple: int = 1, max_side: int | None = None) -> np.ndarray:
    """A real photo shipped with scikit-image (Chelsea the cat, 300×451) as 1×C×H×W in [0, 1],
    cropped to the model's size multiple."""
    from skimage import data

    img = data.chelsea().astype(np.float32) / 255.0
    if channels == 1:
        img = img.mean(axis=2, keepdims=True)
    elif channels != 3:
        img = np.concatenate([img] * (channels // 3 + 1), axis=2)[..., :channels]
    h, w = img.shape[:2]
    if max_side:
        h, w = min(h, max_side), min(w, max_side)
    h, w = h // multiple * multiple, w // multiple * multiple
    return np.ascontiguousarray(img[:h, :w].transpose(2, 0, 1)[None])


def random_inputs(channels: int, sizes: list[tuple[int, int]], seed: int = 0, batch: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.random((batch, channels, h, w), dtype=np.float32) for h, w in sizes]


@dataclass
class OutputStats:
    input_shape: tuple[int, ...]
    output: str
    max_abs: float
    mean_abs: float
    psnr_vs_reference: float
    psnr_global_vs_local: float | None


@dataclass
class VerifyReport:
    passed: bool
    atol: float
    rows: list[OutputStats] = field(default_factory=list)

    def table(self) -> str:
        lines = [f"{'input':>16s} {'output':>10s} {'max abs':>10s} {'mean abs':>10s} {'PSNR ref':>9s} {'TLC effect':>10s}"]
        for r in self.rows:
            effect = "" if r.psnr_global_vs_local is None else f"{r.psnr_global_vs_local:8.2f}dB"
            lines.append(f"{'x'.join(map(str, r.input_shape)):>16s} {r.output:>10s} {r.max_abs:10.2e} "
                         f"{r.mean_abs:10.2e} {r.psnr_vs_reference:9.2f} {effect:>10s}")
        lines.append(f"{'PASS' if self.passed else 'FAIL'} (atol {self.atol:g}); TLC effect = PSNR between the "
                     f"global and the local eager outputs (lower: TLC changes more)")
        return "\n".join(lines)


def verify(reference: nn.Module, onnx_model: onnx.ModelProto | str, inputs: list[np.ndarray], *,
           global_model: nn.Module | None = None, atol: float = 1e-4, final_stage_last: bool = False,
           impl: str = "standard") -> VerifyReport:
    """Run ``reference`` (eager, already local) and the graph on ``inputs``; compare every output."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.comparator import Comparator, SimpleCompareFunc

    from .runtime import ort_session

    from .fileio import read_onnx
    from .guards import check_atol

    atol = check_atol(atol)
    model = read_onnx(onnx_model) if isinstance(onnx_model, (str, Path)) else onnx_model
    input_name = graph_input(model).name
    output_names = [o.name for o in model.graph.output]
    feeds = [OrderedDict([(input_name, x)]) for x in inputs]
    graph_runner = OnnxrtRunner(lambda: ort_session(model, impl=impl), name="onnxruntime")
    eager = EagerRunner(reference, input_name, output_names, final_stage_last, name="eager-tlc")
    runners = [graph_runner, eager]
    if global_model is not None:
        runners.append(EagerRunner(global_model, input_name, output_names, final_stage_last, name="eager-global"))
    from polygraphy.logger import G_LOGGER

    previous = G_LOGGER.module_severity
    G_LOGGER.module_severity = G_LOGGER.ERROR  # our table replaces polygraphy's per-output log
    try:
        results = Comparator.run(runners, data_loader=feeds)
        accuracy = Comparator.compare_accuracy(results, comparisons=[(0, 1)],
                                               compare_func=SimpleCompareFunc(atol=atol, rtol=0.0))
    finally:
        G_LOGGER.module_severity = previous
    passed = bool(accuracy)
    report = VerifyReport(passed, atol)
    graph_outs, eager_outs = results[0][1], results[1][1]
    global_outs = results[2][1] if global_model is not None else None
    for i, x in enumerate(inputs):
        for name in output_names:
            got, want = graph_outs[i][name], eager_outs[i][name]
            diff = np.abs(got.astype(np.float64) - want)
            effect = psnr(global_outs[i][name], want) if global_outs is not None else None
            report.rows.append(OutputStats(tuple(x.shape), name, float(diff.max()), float(diff.mean()),
                                           psnr(got, want), effect))
    return report


def verify_checkpoint(model_path, onnx_path, calib: tuple[int, int] | str, *, arch=None, arch_kwargs=None,
                      sizes: list[tuple[int, int]] | None = None, atol: float = 1e-4, photo: bool = True,
                      trust_pickle: bool = False, impl: str = "standard", batch: int = 1,
                      fast: bool = False) -> VerifyReport:
    """Load ``model_path`` as the converter does, build its eager TLC reference at ``calib`` (``fast``: the
    official fast mode, for graphs converted with --fast) and verify."""
    from . import guards
    from .fileio import read_onnx
    from .api import resolve_calib
    from .load import load_model
    from .reference import to_local

    atol = guards.check_atol(atol)
    guards.check_arch_kwargs(arch, arch_kwargs)
    model = read_onnx(onnx_path)
    loaded = load_model(model_path, arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle)
    calib = resolve_calib(calib, loaded)
    if loaded.module is None:
        raise UserError("verify needs the PyTorch model (a checkpoint, TorchScript or .pt2), not an .onnx file")
    guards.check_finite_weights(guards.module_tensors(loaded.module), str(model_path))
    channels = graph_input(model).type.tensor_type.shape.dim[1].dim_value or 3
    m = loaded.input_multiple
    if sizes is None:
        sizes = [(calib[0] + 2 * max(m, 8), calib[1] + 3 * max(m, 8)), (max(m, calib[0] // 2 // m * m), calib[1] * 2)]
    sizes = [(h // m * m or m, w // m * m or m) for h, w in sizes]
    for h, w in sizes:              # the reference, the global model and the graph all run at each size
        guards.check_run_size(loaded.module, (batch, channels, h, w), f"--sizes {h}x{w}", m)
    inputs = random_inputs(channels, sizes, batch=batch)
    if photo:
        inputs.append(photo_input(channels, m))
    local, localised = to_local(copy.deepcopy(loaded.module), calib, fast=fast)
    _refuse_partial_reference(model, len(localised))
    return verify(local, model, inputs, global_model=loaded.module, atol=atol,
                  final_stage_last=loaded.family == "hinet", impl=impl)


def _refuse_partial_reference(graph: onnx.ModelProto, localised: int) -> None:
    """An eager reference that localises nothing while the graph rewrote ops (a TorchScript module, whose
    code the reference cannot transform) is the global model: refuse rather than report a mismatch that
    says nothing about the graph. (Counts are not compared otherwise: a module called several times is
    one reference op but several graph ops.)"""
    from .fileio import ONNX_REPORT_KEY

    stored = next((p.value for p in graph.metadata_props if p.key == ONNX_REPORT_KEY), None)
    if stored is None:
        return
    rewritten = len(json.loads(stored).get("rewritten", []))
    if localised == 0 and rewritten:
        raise UserError(f"the eager TLC reference localises {localised} of the {rewritten} ops the graph "
                        f"rewrote (it cannot transform a TorchScript module's code): "
                        f"it cannot verify this graph; verify from the model's Python code or a state dict")
