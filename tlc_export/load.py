"""Load: a model file becomes either an ``nn.Module`` or an ONNX graph.

Accepted: official or user checkpoints (state dicts, wrapped as released: ``params``, ``params_ema``,
``state_dict``, ``model``, ``net``; ``module.`` prefixes), TorchScript archives, ``torch.export``
archives (``.pt2``), ``.onnx`` files, and pickled ``nn.Module`` objects only behind ``trust_pickle``
(unpickling runs code). Checkpoints load strictly into a zoo preset, given or auto-detected by keys
and shapes.
"""
from __future__ import annotations

import functools
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import zoo
from .errors import UserError

WRAPPER_KEYS = ("params", "params_ema", "state_dict", "model", "net", "model_state_dict")


@dataclass
class LoadedModel:
    """What ``load_model`` found: a module (with its preset, if any) or an ONNX graph."""

    path: Path
    format: str                                   # checkpoint | torchscript | torch.export | onnx | pickle
    module: nn.Module | None = None
    onnx_model: Any = None                        # onnx.ModelProto for .onnx inputs
    preset: str | None = None
    family: str | None = None
    arch_kwargs: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def input_multiple(self) -> int:
        """H and W must be multiples of this for the network to run (1: any size)."""
        if self.family is None:
            return 1
        return zoo.input_multiple(self.family, self.module)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


def _is_torchscript(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def _names_python_objects(exc: BaseException) -> bool:
    """torch's weights-only unpickler refused a *global* (a class or function the pickle would import),
    as opposed to bytes that are no pickle at all."""
    return "global" in str(exc).lower().replace("weights_only", "")


def _unpickler_detail(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if "error:" in line.lower()]
    detail = lines[-1].split("error:", 1)[-1].strip() if lines else ""
    return f"unpickler: {detail[:120]}" if detail else "unrecognised content"


def unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor]:
    """The tensor dict inside a released checkpoint, without a leading ``module.`` on its keys."""
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError("the file is not a state dict (expected tensors, possibly under 'params' or "
                        "'state_dict'); pass a checkpoint, a TorchScript/.pt2/.onnx file, or a pickled "
                        "module with --trust-pickle")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


@functools.lru_cache(maxsize=None)
def preset_signature(name: str) -> frozenset[tuple[str, tuple[int, ...]]]:
    """(key, shape) pairs of a preset's state dict, built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        model = zoo.build(name)
    return frozenset((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _signature(state: dict[str, torch.Tensor]) -> frozenset[tuple[str, tuple[int, ...]]]:
    return frozenset((k, tuple(v.shape)) for k, v in state.items())


def rank_presets(state: dict[str, torch.Tensor]) -> list[tuple[float, str]]:
    """Presets by how well their (key, shape) sets match ``state`` (Jaccard index), best first."""
    sig = _signature(state)
    scores = []
    for name in zoo.presets():
        ref = preset_signature(name)
        scores.append((len(sig & ref) / len(sig | ref), name))
    return sorted(scores, key=lambda s: -s[0])


def _key_diff(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shape = [k for k in want if k in state and tuple(state[k].shape) != want[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    return "; ".join(parts) or "keys match"


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    diff = _key_diff(model, state)
    if diff != "keys match":
        score, best = rank_presets(state)[0]
        # Only a preset that mostly agrees is worth naming; a far one (an unrelated family) misleads.
        hint = (f"; best-fitting preset is {best} ({score:.0%} of keys and shapes agree)" if score >= 0.5
                else "; no preset is close (check --arch and --arch-kwargs)")
        raise UserError(f"checkpoint does not fit {what}: {diff}{hint}")
    model.load_state_dict(state, strict=True)


def _from_state_dict(loaded: LoadedModel, state: dict[str, torch.Tensor], arch: str | None,
                     arch_kwargs: dict | None) -> LoadedModel:
    arch_kwargs = dict(arch_kwargs or {})
    if arch is not None:
        preset = zoo.find_preset(arch)
        family = zoo.presets()[preset][0] if preset else arch.lower()
        if preset is None and family not in zoo.FAMILY_MODULES:
            raise UserError(f"unknown --arch {arch!r}; run 'tlc-export presets' for the names "
                            f"(or a family: {', '.join(zoo.FAMILY_MODULES)})")
        try:
            model = zoo.build(preset or family, **arch_kwargs)
        except TypeError as exc:
            raise UserError(f"--arch-kwargs do not fit {preset or family}: {_first_line(exc)}") from None
        _load_strict(model, state, preset or family)
        loaded.module, loaded.preset, loaded.family, loaded.arch_kwargs = model, preset, family, arch_kwargs
        return loaded
    ranked = rank_presets(state)
    score, best = ranked[0]
    if score < 1.0:
        with torch.device("meta"):
            diff = _key_diff(zoo.build(best), state)
        raise UserError(f"checkpoint of an unknown architecture: no preset matches its keys and shapes "
                        f"(closest {best}: {diff}); pass --arch FAMILY --arch-kwargs JSON")
    twins = [name for s, name in ranked[1:] if s == 1.0]
    family, _, _ = zoo.presets()[best]
    model = zoo.build(best)
    model.load_state_dict(state, strict=True)
    loaded.module, loaded.preset, loaded.family = model, best, family
    if twins:
        loaded.notes.append(f"same network as {', '.join(twins)}")
    return loaded


def load_model(path: str | Path, arch: str | None = None, arch_kwargs: dict | None = None,
               trust_pickle: bool = False) -> LoadedModel:
    """Load ``path`` (see module docstring). Raises ``UserError`` with one line on bad input."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"model file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        import onnx

        try:
            model = onnx.load(str(path))
        except Exception as exc:
            raise UserError(f"cannot read {path} as ONNX ({_first_line(exc)}); is the file complete?") from None
        return LoadedModel(path, "onnx", onnx_model=model)
    if suffix == ".pt2":
        try:
            program = torch.export.load(str(path))
        except Exception as exc:
            raise UserError(f"cannot read {path} as a torch.export archive ({_first_line(exc)})") from None
        # An exported program's module is already in inference form (it refuses .eval()).
        return LoadedModel(path, "torch.export", module=program.module())
    if _is_torchscript(path):
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise UserError(f"cannot read {path} as TorchScript ({_first_line(exc)})") from None
        return LoadedModel(path, "torchscript", module=module.eval())
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _names_python_objects(exc):    # not a pickle of objects: random bytes, another format
            raise UserError(f"{path} is not a PyTorch checkpoint, TorchScript, .pt2 or ONNX file "
                            f"({_unpickler_detail(exc)}); is it the right file, and complete?") from None
        if not trust_pickle:
            raise UserError(f"{path} holds pickled Python objects (e.g. a full nn.Module); loading it runs "
                            f"code from the file: re-run with --trust-pickle only if you trust its source") from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise UserError(f"cannot unpickle {path} ({_first_line(exc2)})") from None
        if not isinstance(obj, nn.Module):
            raise UserError(f"{path} unpickles to {type(obj).__name__}, not an nn.Module or a state dict") from None
        return LoadedModel(path, "pickle", module=obj.eval())
    except Exception as exc:
        raise UserError(f"cannot read {path} as a PyTorch checkpoint ({_first_line(exc)}); "
                        f"is the file complete?") from None
    if isinstance(obj, nn.Module):  # only reachable for weights_only-safe modules, which torch refuses anyway
        return LoadedModel(path, "pickle", module=obj.eval())
    loaded = _from_state_dict(LoadedModel(path, "checkpoint"), unwrap_state_dict(obj), arch, arch_kwargs)
    loaded.module.eval()
    return loaded
