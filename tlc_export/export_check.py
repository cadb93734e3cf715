"""Is the exported global graph the model? Compared with the eager model at a second input size.

Exporters can bake sizes: the TorchScript tracer turns ``int(H / 2)`` into a constant, so a graph can
be exact at the export size and wrong at every other (spandrel's MPRNet: 0.34 off at 96×80). Every
export where PyTorch is in the loop is checked here, before any rewrite, at a size unlike the export
size (another aspect ratio, same input multiple).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

# Exporter rounding is ~1e-6 on O(1) images; baked sizes and lost ops are orders of magnitude above.
TOLERANCE = 1e-4


@dataclass
class Fidelity:
    size: tuple[int, int]
    max_abs: float          # inf when the graph does not run at that size
    error: str = ""         # why the graph did not run

    @property
    def ok(self) -> bool:
        return self.max_abs <= TOLERANCE

    def describe(self) -> str:
        h, w = self.size
        if self.error:
            return f"does not run at {h}x{w} ({self.error})"
        return f"is {self.max_abs:.2g} off the eager model at {h}x{w} (tolerance {TOLERANCE:g})"


def _round_to(value: int, multiple: int) -> int:
    return max(multiple, (value + multiple - 1) // multiple * multiple)


def _implied_multiple(h: int, w: int, cap: int = 16) -> int:
    """The power of two (≤ ``cap``) dividing both export sides: a TorchScript module or a bare module
    does not say which sizes it accepts, but it ran at the export size (Restormer needs multiples of 8;
    a size it cannot take would be blamed on the export)."""
    m = 1
    while m < cap and h % (2 * m) == 0 and w % (2 * m) == 0:
        m *= 2
    return m


def second_size(export_hw: tuple[int, int], multiple: int) -> tuple[int, int]:
    """A size unlike the export size: another aspect ratio, smaller for large exports (cheap), larger
    for small ones; both sides different from the export's and multiples of ``multiple`` (and of the
    power of two the export size implies)."""
    h, w = export_hw
    m = math.lcm(max(1, multiple), 4, _implied_multiple(h, w))
    scale = (3, 4, 5, 8) if h * w >= 128 * 128 else (3, 2, 5, 4)
    h2, w2 = _round_to(h * scale[0] // scale[1] + 1, m), _round_to(w * scale[2] // scale[3] + 1, m)
    h2 = h2 if h2 != h else h2 + m
    w2 = w2 if w2 != w else w2 + m
    return h2, w2


def _as_list(out) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def compare_at(graph: onnx.ModelProto, eager: nn.Module, shape: tuple[int, int, int, int]) -> Fidelity:
    """Max abs difference over all outputs between the graph in ONNX Runtime and ``eager``."""
    from .calibrate import graph_input
    from .errors import first_line
    from .runtime import ort_session

    x = torch.rand(*shape, generator=torch.Generator().manual_seed(7))
    try:
        with torch.no_grad():  # on a copy: some forwards scale their input in place (spandrel's RCAN)
            want = [t.numpy() for t in _as_list(eager(x.clone()))]
    except Exception as exc:  # the model itself refuses the size (a .pt2's guards, a size check)
        return Fidelity(shape[2:], float("inf"), f"the model itself fails there: {first_line(exc, 120)}")
    try:
        got = ort_session(graph).run(None, {graph_input(graph).name: x.numpy()})
    except Exception as exc:
        return Fidelity(shape[2:], float("inf"), first_line(exc, 120))
    worst = 0.0
    for g, e in zip(got, want):
        if g.shape != e.shape:
            return Fidelity(shape[2:], float("inf"), f"output shape {g.shape} instead of {e.shape}")
        worst = max(worst, float(np.abs(g.astype(np.float64) - e).max()))
    return Fidelity(shape[2:], worst)


def _eager(loaded) -> nn.Module:
    from .export import FinalOutputFirst

    module = loaded.module
    if isinstance(module, torch.jit.ScriptModule):
        return module
    return FinalOutputFirst(module, loaded.family == "hinet").eval()


def export_faithfully(loaded, shape, opset: int, static: bool, exporter: str, say=lambda m: None):
    """Export ``loaded`` with ``exporter`` and check the graph at a second size (dynamic exports).

    When the TorchScript exporter's graph is wrong there, the dynamo exporter is tried and used if it is
    right (said in the returned notes); a graph wrong either way is refused with the numbers.
    Returns (graph, exporter used, notes)."""
    from .errors import UserError
    from .export import export_onnx

    from .export import ExporterFailed

    try:
        graph = export_onnx(loaded.module, shape, opset=opset, dynamic=not static, family=loaded.family,
                            exporter=exporter, program=loaded.program)
    except ExporterFailed as exc:
        if exporter != "torchscript" or isinstance(loaded.module, torch.jit.ScriptModule):
            raise
        say(f"{exc}; exporting with dynamo instead")
        graph = export_onnx(loaded.module, shape, opset=opset, dynamic=not static, family=loaded.family,
                            exporter="dynamo")
        return graph, "dynamo", [f"{exc}: exported with dynamo instead"]
    if static:
        return graph, exporter, []
    size = second_size(shape[2:], loaded.input_multiple)
    check = compare_at(graph, _eager(loaded), (shape[0], shape[1], *size))
    if check.ok:
        return graph, exporter, []
    if check.error.startswith("the model itself fails"):
        h, w = size
        raise UserError(f"the model does not run at {h}x{w}, only at sizes like its export size "
                        f"({check.error.split(': ', 1)[1]}): it was exported or scripted with sizes baked in; "
                        f"convert it with --static --input-shape at the size it runs at, or export it again "
                        f"with dynamic sizes")
    first = f"the {exporter}-exported graph {check.describe()}"
    if exporter == "torchscript" and not isinstance(loaded.module, torch.jit.ScriptModule):
        say(f"{first}; exporting with dynamo instead")
        try:
            graph = export_onnx(loaded.module, shape, opset=opset, dynamic=True, family=loaded.family,
                                exporter="dynamo")
        except UserError as exc:
            raise UserError(f"{first} (it bakes sizes computed in Python, e.g. int(H / 2)), and {exc}") from None
        retry = compare_at(graph, _eager(loaded), (shape[0], shape[1], *size))
        if retry.ok:
            return graph, "dynamo", [f"{first} (it bakes sizes computed in Python, e.g. int(H / 2)): "
                                     f"exported with dynamo instead ({retry.max_abs:.2g} off)"]
        first += f", and the dynamo-exported one {retry.describe()}"
    raise UserError(f"{first}: the export is not faithful to the model (likely a size computed in Python "
                    f"and baked as a constant, or an op the exporter mistranslates); nothing written")
