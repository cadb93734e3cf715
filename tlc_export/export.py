"""Export: an ``nn.Module`` becomes an ONNX graph with dynamic batch, height and width.

PyTorch's TorchScript-based exporter is used because it keeps ``GlobalAveragePool`` and
``InstanceNormalization`` as single nodes whose names carry the module path (``/a/b/Op``), which the
rewrite matches and the report cites. The first graph output is always the final restored image.
"""
from __future__ import annotations

import io
import warnings

import onnx
import torch
from torch import nn

from .errors import UserError

INPUT_NAME = "input"
OUTPUT_NAME = "output"

# Families whose forward returns the stages earliest first: the final stage must lead the outputs.
_FINAL_STAGE_LAST = {"hinet"}


class FinalOutputFirst(nn.Module):
    """Wraps a multi-output restorer so the final restored image is output 0 (the others follow)."""

    def __init__(self, model: nn.Module, reverse: bool):
        super().__init__()
        self.model = model
        self.reverse = reverse

    def train(self, mode: bool = True):
        # torch.export modules refuse train()/eval() (they are inference graphs already); the
        # exporter toggles the mode, so only switch children that allow it.
        self.training = mode
        for child in self.model.modules():
            try:
                child.train(mode)
            except NotImplementedError:
                pass
        return self

    def forward(self, x):
        out = self.model(x)
        if isinstance(out, (list, tuple)):
            out = list(out)[::-1] if self.reverse else list(out)
            return tuple(out)
        return out


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int, int], opset: int = 17,
                dynamic: bool = True, family: str | None = None) -> onnx.ModelProto:
    """Export ``model`` at ``input_shape`` (N, C, H, W); H, W and N stay dynamic unless ``dynamic`` is False."""
    reverse = family in _FINAL_STAGE_LAST
    # A TorchScript module cannot be called from inside another module's trace: export it as it is.
    wrapped = model if isinstance(model, torch.jit.ScriptModule) else FinalOutputFirst(model, reverse)
    wrapped.eval()
    example = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        try:
            out = wrapped(example)
        except Exception as exc:
            raise UserError(f"the model cannot run on a {'x'.join(map(str, input_shape))} input "
                            f"({str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__})") from None
    n_out = len(out) if isinstance(out, tuple) else 1
    outputs = [OUTPUT_NAME] + [f"{OUTPUT_NAME}_{i}" for i in range(1, n_out)]
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        dynamic_axes.update({name: {0: "batch", 2: "out_height", 3: "out_width"} for name in outputs})
    buffer = io.BytesIO()
    # no_grad: otherwise the trace records autograd state and keeps every activation alive (full
    # Restormer at 192x192: 8.0 GB peak against 1.6 GB; at a 576 calibration it exhausts 23 GB).
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated; its warnings are noise here
        torch.onnx.export(wrapped, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=outputs, dynamic_axes=dynamic_axes,
                          do_constant_folding=True)
    return onnx.load_from_string(buffer.getvalue())
