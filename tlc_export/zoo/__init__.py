"""Model zoo: our own implementations of the four networks TLC was published on.

Each family module (``hinet``, ``mprnet``, ``restormer``, ``nafnet``) defines its network classes with the
official constructor keyword names and a ``PRESETS`` dict ``{preset name: (class, constructor kwargs)}``
naming one entry per released official configuration. This package only collects them.
"""
from __future__ import annotations

import importlib
from typing import Any

from torch import nn

FAMILY_MODULES = ("hinet", "mprnet", "restormer", "nafnet")


def _family_module(family: str):
    return importlib.import_module(f"{__name__}.{family}")


def presets() -> dict[str, tuple[str, type[nn.Module], dict[str, Any]]]:
    """All presets: ``{name: (family, class, kwargs)}`` in a stable order."""
    table = {}
    for family in FAMILY_MODULES:
        for name, (cls, kwargs) in _family_module(family).PRESETS.items():
            table[name] = (family, cls, dict(kwargs))
    return table


def find_preset(name: str) -> str | None:
    """The canonical preset name matching ``name`` case-insensitively, or None."""
    for known in presets():
        if known.lower() == name.lower():
            return known
    return None


def family_class(family: str) -> type[nn.Module]:
    """The default network class of a family (the first preset's class)."""
    module = _family_module(family.lower())
    return module.FAMILY_CLASS


def build(name: str, **overrides: Any) -> nn.Module:
    """Instantiate a preset (``HINet-GoPro``) or a family (``hinet``) with optional keyword overrides."""
    preset = find_preset(name)
    if preset is not None:
        _, cls, kwargs = presets()[preset]
        kwargs.update(overrides)
        return cls(**kwargs)
    if name.lower() in FAMILY_MODULES:
        return family_class(name)(**overrides)
    raise KeyError(name)


def input_multiple(family: str, model: nn.Module | None = None) -> int:
    """H and W of the network input must be multiples of this (1: the network pads by itself)."""
    module = _family_module(family.lower())
    rule = getattr(module, "input_multiple", None)
    if rule is not None and model is not None:
        return int(rule(model))
    return int(getattr(module, "INPUT_MULTIPLE", 1))


def preset_names() -> list[str]:
    return list(presets())


# The official constructor keyword that sets each family's input channels.
_CHANNEL_KWARG = {"hinet": "in_chn", "mprnet": "in_c", "restormer": "inp_channels", "nafnet": "img_channel"}


def input_channels(family: str, preset: str | None = None, overrides: dict | None = None) -> int:
    """Input channels of a zoo network built from ``preset`` (or the family defaults) plus ``overrides``."""
    import inspect

    key = _CHANNEL_KWARG[family.lower()]
    kwargs = dict(presets()[preset][2]) if preset else {}
    kwargs.update(overrides or {})
    if key in kwargs:
        return int(kwargs[key])
    return int(inspect.signature(family_class(family).__init__).parameters[key].default)
