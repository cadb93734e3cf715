"""Local average pooling: the TLC replacement of global average pooling.

Exact TLC (``boxes.local_mean``) by default; the official approximate TLC (``fast.fast_local_mean``)
when the module's ``max_r`` is set (``to_local(..., fast=True)`` sets it after calibration).
"""
from __future__ import annotations

import torch
from torch import nn

from .boxes import Window, clamp_window, local_mean, replicate_pad_to, valid_box_mean
from .fast import fast_local_mean


def window_mean(x: torch.Tensor, window: Window, max_r: tuple[int, int] | None) -> torch.Tensor:
    """Exact TLC local mean, or the fast (official ``fast_imp``) one when ``max_r`` is given."""
    if max_r is None:
        return local_mean(x, window)
    return fast_local_mean(x, window, max_r)


class LocalAvgPool2d(nn.Module):
    """Replaces ``nn.AdaptiveAvgPool2d(1)``; output has the input's h×w (broadcasts like the 1×1 map).

    ``window`` None means "not calibrated": the pass records the input's spatial size as the window
    and returns the global mean, which is what the calibration forward pass does. ``max_r`` (per axis)
    selects fast mode.
    """

    kind = "avgpool"

    def __init__(self, window: Window | None = None, max_r: tuple[int, int] | None = None):
        super().__init__()
        self.window = tuple(window) if window is not None else None
        self.max_r = tuple(max_r) if max_r is not None else None

    def extra_repr(self) -> str:
        fast = f", max_r={self.max_r}" if self.max_r is not None else ""
        return f"window={self.window}{fast}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            self.window = tuple(x.shape[-2:])
            return x.mean((-2, -1), keepdim=True)
        return window_mean(x, self.window, self.max_r)


__all__ = ["LocalAvgPool2d", "Window", "clamp_window", "local_mean", "replicate_pad_to", "valid_box_mean",
           "window_mean"]
