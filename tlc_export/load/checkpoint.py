"""State dicts (``.pth``/``.ckpt``/``.safetensors``) → a module: a zoo preset first, else spandrel.

Read with ``torch.load(weights_only=True)`` or safetensors, never a full unpickler (spandrel's own
``ModelLoader`` is not used: its restricted unpickler is still an unpickler). The four TLC families
load strictly into their official-key presets; any other state dict goes to spandrel's architecture
detection (``spandrel_arches``).
"""
from __future__ import annotations

import functools
import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import zoo
from ..errors import UserError, first_line
from .spandrel_arches import spandrel_registry

WRAPPER_KEYS = ("params", "params_ema", "params-ema", "state_dict", "model", "net", "model_state_dict")


def read_tensors(path: Path, trust_pickle: bool) -> Any:
    """The object in a checkpoint file, read without running code from it."""
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as exc:
            raise UserError(f"cannot read {path} as safetensors ({first_line(exc)})") from None
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not _names_python_objects(exc):    # not a pickle of objects: random bytes, another format
            raise UserError(f"{path} is not a PyTorch checkpoint, TorchScript, .pt2 or ONNX file "
                            f"({_unpickler_detail(exc)}); is it the right file, and complete?") from None
        if not trust_pickle:
            raise UserError(f"{path} holds pickled Python objects (e.g. a full nn.Module); loading it runs "
                            f"code from the file: re-run with --trust-pickle only if you trust its source") from None
        return _unpickle(path)
    except Exception as exc:
        raise UserError(f"cannot read {path} as a PyTorch checkpoint ({first_line(exc)}); "
                        f"is the file complete?") from None


def _unpickle(path: Path) -> nn.Module:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise UserError(f"cannot unpickle {path} ({first_line(exc)})") from None
    if not isinstance(obj, nn.Module):
        raise UserError(f"{path} unpickles to {type(obj).__name__}, not an nn.Module or a state dict")
    return obj


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


def key_diff(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shape = [k for k in want if k in state and tuple(state[k].shape) != want[k]]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shape)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {', '.join(keys[:3])})")
    return "; ".join(parts) or "keys match"


def _names_python_objects(exc: BaseException) -> bool:
    """torch's weights-only unpickler refused a *global* (a class or function the pickle would import),
    as opposed to bytes that are no pickle at all."""
    return "global" in str(exc).lower().replace("weights_only", "")


def _unpickler_detail(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if "error:" in line.lower()]
    detail = lines[-1].split("error:", 1)[-1].strip() if lines else ""
    return f"unpickler: {detail[:120]}" if detail else "unrecognised content"


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    diff = key_diff(model, state)
    if diff != "keys match":
        score, best = rank_presets(state)[0]
        # Only a preset that mostly agrees is worth naming; a far one (an unrelated family) misleads.
        hint = (f"; best-fitting preset is {best} ({score:.0%} of keys and shapes agree)" if score >= 0.5
                else "; no preset is close (check --arch and --arch-kwargs)")
        raise UserError(f"checkpoint does not fit {what}: {diff}{hint}")
    model.load_state_dict(state, strict=True)


def from_arch(loaded, state: dict[str, torch.Tensor], arch: str, arch_kwargs: dict | None):
    """``--arch``: a zoo preset or family (official constructor kwargs), loaded strictly."""
    arch_kwargs = dict(arch_kwargs or {})
    preset = zoo.find_preset(arch)
    family = zoo.presets()[preset][0] if preset else arch.lower()
    if preset is None and family not in zoo.FAMILY_MODULES:
        raise UserError(f"unknown --arch {arch!r}; run 'tlc-export presets' for the names "
                        f"(or a family: {', '.join(zoo.FAMILY_MODULES)})")
    try:
        model = zoo.build(preset or family, **arch_kwargs)
    except TypeError as exc:
        raise UserError(f"--arch-kwargs do not fit {preset or family}: {first_line(exc)}") from None
    _load_strict(model, state, preset or family)
    loaded.module, loaded.preset, loaded.family, loaded.arch_kwargs = model, preset, family, arch_kwargs
    loaded.architecture, loaded.loader = preset or family, "zoo"
    return loaded


def detect(loaded, state: dict[str, torch.Tensor]):
    """No ``--arch``: the zoo preset whose keys and shapes match exactly, else spandrel's detection."""
    ranked = rank_presets(state)
    score, best = ranked[0]
    if score == 1.0:
        return _from_preset(loaded, state, best, [name for s, name in ranked[1:] if s == 1.0])
    if _from_spandrel(loaded, state):
        return loaded
    with torch.device("meta"):
        diff = key_diff(zoo.build(best), state)
    raise UserError(f"checkpoint of an unknown architecture: no zoo preset matches its keys and shapes "
                    f"(closest {best}, {score:.0%} agree: {diff}) and {spandrel_registry().describe()} "
                    f"detects none; pass --arch FAMILY --arch-kwargs JSON for a zoo family")


def _from_preset(loaded, state, preset: str, twins: list[str]):
    family, _, _ = zoo.presets()[preset]
    model = zoo.build(preset)
    model.load_state_dict(state, strict=True)
    loaded.module, loaded.preset, loaded.family = model, preset, family
    loaded.architecture, loaded.loader = preset, "zoo"
    if twins:
        loaded.notes.append(f"same network as {', '.join(twins)}")
    return loaded


# spandrel architectures the zoo implements with the official keys. The zoo's modules export faithfully:
# spandrel's MPRNet computes int(H / 2) in Python, which both exporters bake as a constant.
_ZOO_FAMILY_OF = {"MPRNet": "mprnet", "Restormer": "restormer", "NAFNet": "nafnet"}


def _as_zoo_family(loaded, state: dict[str, torch.Tensor], arch_id: str, spandrel_model) -> bool:
    """Build the zoo family with spandrel's hyper-parameters when the state dict loads strictly and the
    two modules agree on a probe input; False (spandrel's module is used) otherwise."""
    family = _ZOO_FAMILY_OF.get(arch_id)
    kwargs = dict(getattr(spandrel_model, "hyperparameters", None) or {})
    if family is None or not kwargs:
        return False
    try:
        model = zoo.build(family, **kwargs).eval()
        model.load_state_dict(spandrel_model.state_dict(), strict=True)
        probe = torch.rand(1, zoo.input_channels(family, overrides=kwargs), 32, 32,
                           generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            ours, theirs = model(probe), spandrel_model.eval()(probe)
        ours = ours[0] if isinstance(ours, (list, tuple)) else ours
        theirs = theirs[0] if isinstance(theirs, (list, tuple)) else theirs
        if ours.shape != theirs.shape or float((ours - theirs).abs().max()) > 1e-5:
            return False
    except Exception:  # noqa: BLE001 - any mismatch: spandrel's own module
        return False
    loaded.module, loaded.family, loaded.arch_kwargs = model, family, kwargs
    loaded.architecture, loaded.loader = f"spandrel:{arch_id}", "spandrel"   # detected by spandrel
    loaded.channels = int(probe.shape[1])
    return True


def _rcan_rgb_range(model, state: dict[str, torch.Tensor], notes: list[str]) -> None:
    """spandrel builds RCAN with rgb_range 255 ("undetectable"), but the stored ``sub_mean`` bias is
    −rgb_range·mean/std, so the checkpoint does say it; the forward multiplies the input by it."""
    bias, weight = state.get("sub_mean.bias"), state.get("sub_mean.weight")
    if bias is None or weight is None or not hasattr(model, "rgb_range"):
        return
    mean_r = 0.4488                                       # RCAN's rgb_mean[0]; weight = 1/std on the diagonal
    found = float(-bias[0] / (mean_r * weight[0, 0, 0, 0]))
    if found > 0 and abs(found - round(found)) < 1e-3 and round(found) != model.rgb_range:
        model.rgb_range = round(found)
        notes.append(f"RCAN rgb_range {model.rgb_range} read from sub_mean.bias (spandrel assumes 255)")


_SPANDREL_FIXUPS = {"RCAN": _rcan_rgb_range}


def _from_spandrel(loaded, state: dict[str, torch.Tensor]) -> bool:
    """Load through spandrel's detection; False when spandrel is missing or detects nothing."""
    found = spandrel_registry()
    if found.registry is None:
        return False
    from spandrel import canonicalize_state_dict  # importable once spandrel_registry() succeeded

    state = canonicalize_state_dict(state)
    arch = next((a for a in found.registry.architectures("detection") if a.detect(state)), None)
    if arch is None:
        return False
    try:
        descriptor = arch.architecture.load(state)
    except Exception as exc:
        raise UserError(f"spandrel detects {arch.architecture.name} but cannot load the checkpoint "
                        f"({first_line(exc)})") from None
    if _as_zoo_family(loaded, state, arch.architecture.id, descriptor.model):
        loaded.notes.append(f"architecture {arch.architecture.name} detected by spandrel ({found.versions}); "
                            f"built as the zoo's {loaded.family} with its hyper-parameters")
        return True
    fixup = _SPANDREL_FIXUPS.get(arch.architecture.id)
    if fixup is not None:
        fixup(descriptor.model, state, loaded.notes)
    loaded.module = descriptor.model
    loaded.architecture, loaded.loader = f"spandrel:{arch.architecture.id}", "spandrel"
    loaded.multiple = int(descriptor.size_requirements.multiple_of)
    loaded.channels = int(descriptor.input_channels)
    loaded.notes.append(f"architecture {arch.architecture.name} detected by spandrel "
                        f"({found.versions}; scale {descriptor.scale}, purpose {descriptor.purpose})")
    return True
