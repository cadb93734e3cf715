"""Box filters of exact TLC: stride-1 window means (prefix sums in float64) and TLC's replicate padding.

For a window (kh, kw) and an h×w map, k1 = min(h, kh) and k2 = min(w, kw). The mean over every k1×k2
window at stride 1 gives an (h−k1+1)×(w−k2+1) map, which is replicate-padded back to h×w with
⌊(k−1)/2⌋ on the top/left and the rest on the bottom/right. Pixel i therefore averages the window
starting at clamp(i − ⌊(k1−1)/2⌋, 0, h−k1).

The box sums come from prefix sums along each axis (separable), so the cost is O(h·w) whatever the
window. The prefix sums run in float64: this is the reference the exported graphs are checked
against, so it favours exactness over speed.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

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


def valid_box_mean(x: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Means of every k1×k2 window of ``x`` (…, h, w) at stride 1: an (h−k1+1)×(w−k2+1) map, float64."""
    acc = x.to(torch.float64)
    return _box_sum_valid(_box_sum_valid(acc, k2, -1), k1, -2) / (k1 * k2)


def local_mean(x: torch.Tensor, window: Window) -> torch.Tensor:
    """TLC local mean of ``x`` (…, h, w) over ``window`` (kh, kw); same shape and dtype as ``x``."""
    h, w = x.shape[-2:]
    k1, k2 = clamp_window((h, w), window)
    if k1 < 1 or k2 < 1:
        raise ValueError(f"window {tuple(window)} must be at least 1x1")
    valid = valid_box_mean(x, k1, k2)
    return replicate_pad_to(valid, (h, w)).to(x.dtype)
