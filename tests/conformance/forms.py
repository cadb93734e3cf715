"""Every input form PyTorch can make of one model, each converted by tlc-export and run in ONNX Runtime.

Forms: ``state_dict`` (.pth, through the converter's loader), ``torchscript`` (torch.jit.trace),
``pt2`` (torch.export with dynamic H/W), ``onnx_ts`` (TorchScript ONNX exporter), ``onnx_dynamo``
(torch.export-based ONNX exporter). The source export is at the calibration size with dynamic H/W.
"""
from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

FORMS = ("state_dict", "torchscript", "pt2", "onnx_ts", "onnx_dynamo")
CALIB = (64, 64)


class FirstOutput(nn.Module):
    """Nothing but the model: tuple outputs stay tuples (the converter's first graph output is the image)."""


def _dims(multiple: int):
    from torch.export import Dim

    if multiple > 1:
        return {2: multiple * Dim("hb", min=1, max=4096 // multiple), 3: multiple * Dim("wb", min=1, max=4096 // multiple)}
    return {2: Dim("h", min=2, max=4096), 3: Dim("w", min=2, max=4096)}


def write_form(model: nn.Module, form: str, folder: Path, multiple: int) -> Path:
    """Write ``model`` (float32, eval) in ``form`` under ``folder``; returns the file."""
    example = torch.rand(1, 3, *CALIB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if form == "state_dict":
            path = folder / "model.pth"
            torch.save(model.state_dict(), path)
        elif form == "torchscript":
            path = folder / "model.ts.pt"
            with torch.no_grad():
                torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))
        elif form == "pt2":
            path = folder / "model.pt2"
            with torch.no_grad():
                program = torch.export.export(model, (example,), dynamic_shapes=(_dims(multiple),))
            torch.export.save(program, str(path))
        elif form == "onnx_ts":
            path = folder / "model.ts.onnx"
            with torch.no_grad():
                torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17,
                                  input_names=["input"],
                                  dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"}})
        elif form == "onnx_dynamo":
            path = folder / "model.dynamo.onnx"
            with torch.no_grad():
                torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=18,
                                  input_names=["input"], dynamic_shapes=(_dims(multiple),), verbose=False)
        else:
            raise ValueError(form)
    return path


def convert_form(path: Path, folder: Path):
    """tlc-export on ``path`` at the calibration size; returns (ConversionResult, seconds, the
    warnings it gave: its own list and Python warnings)."""
    from tlc_export import convert

    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = convert(str(path), calib=CALIB, output=folder / "model.tlc.onnx")
    said = list(result.warnings) + [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    return result, time.perf_counter() - start, said


def run_graph(onnx_path: Path, image: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return session.run(None, {name: image.numpy()})[0]
