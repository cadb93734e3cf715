"""Local average pooling: the TLC replacement of global average pooling.

For a window (kh, kw) and an h×w map, k1 = min(h, kh) and k2 = min(w, kw). The mean over every k1×k2
window at stride 1 gives an (h−k1+1)×(w−k2+1) map, which is replicate-padded back to h×w with
⌊(k−1)/2⌋ on the top/left and the rest on the bottom/right. Pixel i therefore averages the window
starting at clamp(i − ⌊(k1−1)/2⌋, 0, h−k1).

The box sums come from prefix sums along each axis (separable), so the cost is O(h·w) whatever the
window. The prefix sums run in float64: this module is the reference the exported graphs are checked
against, so it favours exactness over speed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

Window = tuple[int, int]


def _box_sum_valid(x: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Sums of every length-k run along ``dim`` (n−k+1 of them), via a zero-led prefix sum."""
    n = x.shape[dim]
    prefix = x.cumsum(dim)
    zero = torch.zeros_like(prefix.narrow(dim, 0, 1))
    prefix = torch.cat([zero, prefix], dim)
    return prefix.narrow(dim, k, n - k + 1) - prefix.narrow(dim, 0, n - k + 1)


def clamp_window(size: tuple[int, int], window: Window) -> Window:
    """The window actually used on an ``size`` = (h, w) map: clamped to the map."""
    return min(size[0], window[0]), min(size[1], window[1])


def replicate_pad_to(valid: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Replicate-pad a stride-1 window map back to ``size`` with TLC's split (top/left get the floor)."""
    h, w = size
    dh, dw = h - valid.shape[-2], w - valid.shape[-1]
    if dh == 0 and dw == 0:
        return valid
    pad = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
    # F.pad's replicate mode wants a batch and channel axis: fold any leading axes into them.
    shape = valid.shape
    flat = valid.reshape(-1, 1, *shape[-2:])
    return F.pad(flat, pad, mode="replicate").reshape(*shape[:-2], h, w)


def local_mean(x: torch.Tensor, window: Window) -> torch.Tensor:
    """TLC local mean of ``x`` (…, h, w) over ``window`` (kh, kw); same shape and dtype as ``x``."""
    h, w = x.shape[-2:]
    k1, k2 = clamp_window((h, w), window)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"window {tuple(window)} must be at least 1x1")
    acc = x.to(torch.float64)
    valid = _box_sum_valid(_box_sum_valid(acc, k2, -1), k1, -2) / (k1 * k2)
    return replicate_pad_to(valid, (h, w)).to(x.dtype)


class LocalAvgPool2d(nn.Module):
    """Replaces ``nn.AdaptiveAvgPool2d(1)``; output has the input's h×w (broadcasts like the 1×1 map).

    ``window`` None means "not calibrated": the pass records the input's spatial size as the window
    and returns the global mean, which is what the calibration forward pass does.
    """

    kind = "avgpool"

    def __init__(self, window: Window | None = None):
        super().__init__()
        self.window = tuple(window) if window is not None else None

    def extra_repr(self) -> str:
        return f"window={self.window}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            self.window = tuple(x.shape[-2:])
            return x.mean((-2, -1), keepdim=True)
        return local_mean(x, self.window)
