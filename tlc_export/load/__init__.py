"""Load: a model file becomes an ``nn.Module`` (plus its ``ExportedProgram`` for ``.pt2``) or an ONNX graph.

One loader per input form, chosen here from the file's content and suffix:
- state dicts (``checkpoint``): ``.pth``/``.ckpt``/``.safetensors``, wrapped as released (``params``,
  ``state_dict``, …; ``module.`` prefixes): a zoo preset by keys and shapes first, else spandrel;
- ``torch.export`` archives (``program``) and TorchScript archives (``archives`` audits both);
- ``.onnx`` files (``onnx_file``);
- pickled ``nn.Module`` objects only behind ``trust_pickle`` (unpickling runs code).
Nothing is unpickled, and no code from the file runs, without ``trust_pickle``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import zoo
from ..errors import UserError, first_line
from .archives import is_pt2, is_torchscript, refuse_unsafe, torchscript_risky_code, zip_names
from .checkpoint import (WRAPPER_KEYS, detect, from_arch, preset_signature, rank_presets, read_tensors,
                         unwrap_state_dict)
from .onnx_file import load_onnx
from .program import input_multiple as program_input_multiple, load_program


@dataclass
class LoadedModel:
    """What ``load_model`` found: a module (with its preset or architecture) or an ONNX graph."""

    path: Path
    format: str              # checkpoint | torchscript | torch.export | onnx | pickle | module
    module: nn.Module | None = None
    onnx_model: Any = None   # onnx.ModelProto for .onnx inputs
    program: Any = None      # torch.export.ExportedProgram for .pt2 inputs (exported as it is)
    preset: str | None = None
    family: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    architecture: str | None = None   # zoo preset/family, or "spandrel:<id>"
    loader: str | None = None         # zoo | spandrel
    multiple: int = 1                 # input size multiple of non-zoo networks (spandrel's size requirements)
    channels: int | None = None       # input channels, where the loader knows them

    @property
    def input_multiple(self) -> int:
        """H and W must be multiples of this for the network to run (1: any size)."""
        if self.family is None:
            return self.multiple
        return zoo.input_multiple(self.family, self.module)


def _load_torchscript(path: Path, trust_pickle: bool) -> LoadedModel:
    refuse_unsafe(path, "TorchScript archive", torchscript_risky_code(path), trust_pickle)
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        raise UserError(f"cannot read {path} as TorchScript ({first_line(exc)})") from None
    return LoadedModel(path, "torchscript", module=module.eval())


def _load_pt2(path: Path, trust_pickle: bool) -> LoadedModel:
    program = load_program(path, trust_pickle)
    # An exported program's module is already in inference form (it refuses .eval()).
    return LoadedModel(path, "torch.export", module=program.module(), program=program,
                       multiple=program_input_multiple(program))


def _load_checkpoint(path: Path, arch, arch_kwargs, trust_pickle: bool) -> LoadedModel:
    obj = read_tensors(path, trust_pickle)
    if isinstance(obj, nn.Module):  # only with trust_pickle
        return LoadedModel(path, "pickle", module=obj.eval())
    loaded, state = LoadedModel(path, "checkpoint"), unwrap_state_dict(obj)
    loaded = from_arch(loaded, state, arch, arch_kwargs) if arch is not None else detect(loaded, state)
    loaded.module.eval()
    return loaded


def load_model(path: str | Path, arch: str | None = None, arch_kwargs: dict | None = None,
               trust_pickle: bool = False) -> LoadedModel:
    """Load ``path`` (see module docstring). Raises ``UserError`` with one line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    if path.suffix.lower() == ".onnx":
        return LoadedModel(path, "onnx", onnx_model=load_onnx(path))
    names = zip_names(path)
    if path.suffix.lower() == ".pt2" or is_pt2(names):
        return _load_pt2(path, trust_pickle)
    if is_torchscript(names):
        return _load_torchscript(path, trust_pickle)
    return _load_checkpoint(path, arch, arch_kwargs, trust_pickle)


__all__ = ["LoadedModel", "WRAPPER_KEYS", "load_model", "preset_signature", "rank_presets", "unwrap_state_dict"]
