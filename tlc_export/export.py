"""Export: an ``nn.Module`` (or a loaded ``ExportedProgram``) becomes an ONNX graph with dynamic N, H, W.

Two exporters (``EXPORTERS``):
- ``dynamo``: ``torch.export`` (non-strict, ``Dim.DYNAMIC`` batch/height/width) then
  ``torch.onnx.export(program, dynamo=True)``. A ``.pt2`` archive's program is exported as it is, with
  the dynamic shapes it was saved with (never retraced). Nodes are renamed ``/scope/…/name`` from the
  exporter's ``name_scopes`` metadata so the rewrite can cite module paths as for the other exporter.
- ``torchscript``: PyTorch's legacy tracer-based exporter (deprecated in torch 2.13); node names carry
  the module path (``/a/b/Op``). It bakes Python ints computed from sizes (``int(H / 2)``), which is why
  ``faithful`` checks every export at a second size.
The first graph output is always the final restored image.
"""
from __future__ import annotations

import ast
import contextlib
import io
import logging
import warnings

import onnx
import torch
from torch import nn

from .errors import UserError, first_line

INPUT_NAME = "input"
OUTPUT_NAME = "output"
EXPORTERS = ("dynamo", "torchscript")
# The dynamo exporter has no implementations below opset 18 (it converts down, and fails on Reduce axes).
MIN_OPSET = {"dynamo": 18, "torchscript": 17}

# Families whose forward returns the stages earliest first: the final stage must lead the outputs.
_FINAL_STAGE_LAST = {"hinet"}


class ExporterFailed(UserError):
    """An exporter could not translate the model (the other one may)."""


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


def output_names(n_out: int) -> list[str]:
    return [OUTPUT_NAME] + [f"{OUTPUT_NAME}_{i}" for i in range(1, n_out)]


@contextlib.contextmanager
def _quiet():
    """The exporters' deprecation notes and progress logs are noise here; failures still raise."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)
        try:
            yield
        finally:
            logging.disable(previous)


def _run_once(wrapped: nn.Module, example: torch.Tensor, shape) -> int:
    with torch.no_grad():
        try:
            out = wrapped(example)
        except Exception as exc:
            raise UserError(f"the model cannot run on a {'x'.join(map(str, shape))} input "
                            f"({first_line(exc)})") from None
    return len(out) if isinstance(out, tuple) else 1


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int, int], opset: int = 17,
                dynamic: bool = True, family: str | None = None, exporter: str = "torchscript",
                program=None) -> onnx.ModelProto:
    """Export ``model`` at ``input_shape`` (N, C, H, W); H, W and N stay dynamic unless ``dynamic`` is
    False. ``program``: a loaded ``ExportedProgram`` to export as it is (dynamo only)."""
    if exporter not in EXPORTERS:
        raise UserError(f"--exporter {exporter!r} is not one of {', '.join(EXPORTERS)}")
    if program is not None:
        try:
            return export_program(program, opset)
        except UserError as direct:
            return _reexport_program(program, input_shape, opset, direct)
    reverse = family in _FINAL_STAGE_LAST
    # A TorchScript module cannot be called from inside another module's trace: export it as it is.
    wrapped = model if isinstance(model, torch.jit.ScriptModule) else FinalOutputFirst(model, reverse)
    wrapped.eval()
    example = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    n_out = _run_once(wrapped, example, input_shape)
    if exporter == "dynamo":
        return _export_dynamo(wrapped, example, opset, dynamic, n_out)
    return _export_torchscript(wrapped, example, opset, dynamic, n_out)


def _export_torchscript(wrapped, example, opset: int, dynamic: bool, n_out: int) -> onnx.ModelProto:
    outputs = output_names(n_out)
    dynamic_axes = None
    if dynamic:
        dynamic_axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}}
        dynamic_axes.update({name: {0: "batch", 2: "out_height", 3: "out_width"} for name in outputs})
    buffer = io.BytesIO()
    # no_grad: otherwise the trace records autograd state and keeps every activation alive (full
    # Restormer at 192x192: 8.0 GB peak against 1.6 GB; at a 576 calibration it exhausts 23 GB).
    with _quiet(), torch.no_grad():
        try:
            torch.onnx.export(wrapped, (example,), buffer, dynamo=False, opset_version=opset,
                              input_names=[INPUT_NAME], output_names=outputs, dynamic_axes=dynamic_axes,
                              do_constant_folding=True)
        except Exception as exc:
            raise ExporterFailed(f"the TorchScript exporter fails on the model ({first_line(exc)})") from None
    return onnx.load_from_string(buffer.getvalue())


def _export_dynamo(wrapped, example, opset: int, dynamic: bool, n_out: int) -> onnx.ModelProto:
    if isinstance(wrapped, torch.jit.ScriptModule):
        raise UserError("the dynamo exporter cannot read TorchScript; use --exporter torchscript")
    if dynamic and example.shape[0] == 1:
        # torch.export specialises size-1 dimensions: trace at batch 2 so the batch stays dynamic.
        example = example.expand(2, *example.shape[1:]).contiguous()
    shapes = ({0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC},) \
        if dynamic else None
    with _quiet():
        try:
            program = torch.export.export(wrapped, (example,), dynamic_shapes=shapes, strict=False)
        except Exception as exc:
            raise UserError(f"torch.export cannot export the model with dynamic batch/height/width "
                            f"({first_line(exc)}); try --exporter torchscript") from None
    return export_program(program, opset, n_out)


def _reexport_program(program, input_shape, opset: int, direct: UserError) -> onnx.ModelProto:
    """A deserialised program keeps no size hints, so a guard that needs one (MPRNet's ``int(H / 2)``)
    cannot be decided while the ONNX exporter decomposes it. Its module is exported again through
    torch.export with the same dimensions dynamic (symbolic, not baked at the calibration size)."""
    from .load.program import input_dims

    dims = input_dims(program) or []
    dynamic = {i: torch.export.Dim.DYNAMIC for i, d in enumerate(dims) if isinstance(d, str)}
    example = torch.rand(*input_shape, generator=torch.Generator().manual_seed(0))
    if 0 in dynamic and example.shape[0] == 1:
        example = example.expand(2, *example.shape[1:]).contiguous()   # size-1 dims would specialise
    module = program.module()
    with _quiet():
        try:
            n_out = _run_once(module, example, tuple(example.shape))
            again = torch.export.export(module, (example,), dynamic_shapes=(dynamic or None,), strict=False)
        except Exception as exc:
            raise UserError(f"{direct}; exporting its module again fails too ({first_line(exc)})") from None
    return export_program(again, opset, n_out)


def export_program(program, opset: int, n_out: int | None = None) -> onnx.ModelProto:
    """An ``ExportedProgram`` through the dynamo ONNX exporter, shapes as the program has them."""
    if n_out is None:
        n_out = len(program.graph_signature.user_outputs)
    with _quiet():
        try:
            onnx_program = torch.onnx.export(program, dynamo=True, opset_version=max(opset, MIN_OPSET["dynamo"]),
                                             input_names=[INPUT_NAME], output_names=output_names(n_out),
                                             optimize=True, verify=False)
        except Exception as exc:
            raise UserError(f"the dynamo ONNX exporter fails on the program ({first_line(exc)})") from None
    model = onnx_program.model_proto
    scope_node_names(model)
    name_input_dims(model)
    return model


def name_input_dims(model: onnx.ModelProto) -> None:
    """torch.export names dynamic sizes s0, s53…; call the image input's batch/height/width, everywhere
    those symbols appear (inputs, outputs, intermediate shapes), as the TorchScript exporter does."""
    dims = model.graph.input[0].type.tensor_type.shape.dim
    names = {d.dim_param: new for d, new in zip(dims, ("batch", None, "height", "width"))
             if new and d.dim_param}
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in names:
                d.dim_param = names[d.dim_param]


def _scopes(node: onnx.NodeProto) -> list[str] | None:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return [str(s) for s in scopes] if isinstance(scopes, list) else None
    return None


def scope_node_names(model: onnx.ModelProto) -> None:
    """Rename dynamo-exported nodes ``/scope/…/<old name>`` from their ``name_scopes`` metadata (the
    module path, as the TorchScript exporter names nodes), so the report can cite module paths."""
    graphs = [model.graph]
    while graphs:
        graph = graphs.pop()
        for node in graph.node:
            scopes = _scopes(node)
            if scopes and not node.name.startswith("/"):
                path = [s for s in scopes[:-1] if s]
                node.name = "/" + "/".join(path + [node.name or node.op_type])
            graphs += [a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH]
