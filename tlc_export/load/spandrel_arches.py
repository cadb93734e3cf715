"""spandrel's architecture registry, importable without torchvision.

``import spandrel`` imports every architecture eagerly; two of them (LaMa, RestoreFormer) import
torchvision, and a torchvision wheel that does not match the installed torch (or none at all, as in
this project's CI, which installs spandrel with ``--no-deps`` so pip cannot pull torchvision and a
second torch) makes the whole import fail. Here an architecture module whose own imports fail is
replaced by a placeholder that never detects anything, and spandrel's real ``__init__`` then runs
unchanged: the registry is spandrel's own (its order and ``before`` rules), minus those architectures,
which are listed with the reason.
"""
from __future__ import annotations

import functools
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path

# At most this many architecture modules may be replaced (each retry replaces one).
_MAX_SKIPPED = 8


@dataclass
class SpandrelRegistry:
    registry: object | None                       # spandrel.ArchRegistry (main + extra arches), None: no spandrel
    versions: str = ""                            # e.g. "spandrel 0.4.2 + spandrel-extra-arches 0.2.0"
    skipped: dict[str, str] = field(default_factory=dict)   # architecture id -> why it is not available
    missing: str = ""                             # why spandrel itself is unavailable

    def describe(self) -> str:
        """What was tried, for the one-line message on an unrecognised checkpoint."""
        if self.registry is None:
            return f"spandrel is not installed ({self.missing})"
        text = f"{self.versions} ({len(self.registry)} architectures)"
        if self.skipped:
            text += "; not available here: " + ", ".join(f"{k} ({v})" for k, v in self.skipped.items())
        return text


class _PlaceholderArch:
    """Stands in for an architecture whose module cannot be imported: detects nothing."""

    def __init__(self, arch_id: str, reason: str):
        self.id = arch_id
        self.name = arch_id
        self.reason = reason

    def detect(self, state_dict) -> bool:
        return False

    def load(self, state_dict):  # pragma: no cover - detect() is always False
        raise RuntimeError(f"{self.id} is not available: {self.reason}")


def _placeholder_module(qualified: str, arch_id: str, reason: str) -> types.ModuleType:
    module = types.ModuleType(qualified, f"placeholder: {reason}")
    setattr(module, f"{arch_id}Arch", lambda: _PlaceholderArch(arch_id, reason))
    module.TLC_EXPORT_PLACEHOLDER = reason
    return module


def _failing_arch_module(exc: BaseException, package: str, arch_root: Path) -> str | None:
    """The architecture sub-package (e.g. ``LaMa``) whose import raised ``exc``, from the traceback."""
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        try:
            rel = Path(frame.filename).resolve().relative_to(arch_root)
        except ValueError:
            continue
        if rel.parts and not rel.parts[0].startswith("__"):
            return rel.parts[0]
    return None


def _forget(package: str) -> None:
    """Drop a half-imported package from sys.modules so the next import runs its __init__ afresh
    (placeholders stay)."""
    for name in [n for n in sys.modules if n == package or n.startswith(package + ".")]:
        if not getattr(sys.modules[name], "TLC_EXPORT_PLACEHOLDER", None):
            del sys.modules[name]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return f"needs {exc.name.split('.')[0]}, not installed"
    text = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
    return f"its imports fail: {text}"


def _import_tolerant(package: str, skipped: dict[str, str]) -> types.ModuleType:
    """``import package``, replacing each architecture module that fails to import by a placeholder."""
    import importlib
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {package!r}", name=package)
    arch_root = Path(next(iter(spec.submodule_search_locations))).resolve() / "architectures"
    for _ in range(_MAX_SKIPPED + 1):
        try:
            return importlib.import_module(package)
        except Exception as exc:  # ImportError, or RuntimeError from a torchvision built for another torch
            arch = _failing_arch_module(exc, package, arch_root)
            if arch is None or len(skipped) >= _MAX_SKIPPED:
                raise
            _forget(package)
            skipped[arch] = _reason(exc)
            qualified = f"{package}.architectures.{arch}"
            sys.modules[qualified] = _placeholder_module(qualified, arch, skipped[arch])
    raise ImportError(f"{package}: too many architectures fail to import")  # pragma: no cover


@functools.lru_cache(maxsize=1)
def spandrel_registry() -> SpandrelRegistry:
    """spandrel's main registry plus spandrel-extra-arches (when installed), loaded once."""
    skipped: dict[str, str] = {}
    try:
        spandrel = _import_tolerant("spandrel", skipped)
    except Exception as exc:
        return SpandrelRegistry(None, missing=_reason(exc).removeprefix("needs "))
    registry = spandrel.MAIN_REGISTRY.copy()
    versions = f"spandrel {spandrel.__version__}"
    try:
        extra = _import_tolerant("spandrel_extra_arches", skipped)
    except ModuleNotFoundError:
        versions += " (spandrel-extra-arches not installed: no Restormer, MPRNet, MIRNet-v2, M3SNet)"
    else:
        registry.add(*extra.EXTRA_REGISTRY, ignore_duplicates=True)
        versions += f" + spandrel-extra-arches {extra.__version__}"
    return SpandrelRegistry(registry, versions, skipped)
