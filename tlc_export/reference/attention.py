"""Local transposed attention: the TLC replacement of Restormer's MDTA attention.

Restormer's attention computes a C×C map per head from *all* pixels of the qkv map. TLC splits the
qkv map into k1×k2 windows (k = min(size, window) per axis), runs the attention independently in
each window and averages the outputs where windows overlap. The window positions are those of
megvii-research/TLC ``LocalAttention.grids()``: see :func:`window_starts`.

This is the eager reference that exported graphs are checked against. It runs in the input's dtype
(not float64) on purpose: when one window covers the map it must give the global module's output
bit for bit.
"""
from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import nn

from ..zoo.restormer import transposed_attention

Window = tuple[int, int]


def window_starts(size: int, k: int) -> list[int]:
    """Start offsets of the windows along one axis of length ``size`` for a window of ``k``.

    Same layout as TLC's ``grids()``: ``n = ceil(size / k)`` windows (k clamped to ``size``),
    starts spaced by ``step = ceil((size - k) / (n - 1))`` from 0, and the first window that would
    reach the border is moved flush to it (start ``size - k``) and ends the walk.
    """
    if size < 1 or k < 1:
        raise ValueError(f"size ({size}) and window ({k}) must be positive")
    k = min(size, k)
    count = (size - 1) // k + 1
    # The 1e-8 guard mirrors upstream: an exact integer ratio must not round up.
    step = k if count == 1 else math.ceil((size - k) / (count - 1) - 1e-8)
    starts = []
    pos = 0
    while pos < size:
        if pos + k >= size:
            starts.append(size - k)
            break
        starts.append(pos)
        pos += step
    return starts


def window_grid(size: tuple[int, int], window: Window) -> tuple[int, int, list[tuple[int, int]]]:
    """(k1, k2, [(row start, column start), ...]) for an (h, w) map, in TLC's row-major order."""
    h, w = size
    k1, k2 = min(h, window[0]), min(w, window[1])
    return k1, k2, list(itertools.product(window_starts(h, k1), window_starts(w, k2)))


class LocalTransposedAttention(nn.Module):
    """Replaces a Restormer-style attention module (``num_heads``, ``temperature``, ``qkv``,
    ``qkv_dwconv``, ``project_out``), sharing its parameters under the same names.

    ``window`` None means "not calibrated": the next pass records the qkv map's (h, w) as the window
    and computes global attention (the calibration pass). Batches are processed image by image
    (windows of all images are stacked along the batch axis), unlike upstream which needs batch 1.
    """

    kind = "attention"
    #: Marks the module as already converted (it has the attributes of a global attention module).
    is_local = True

    def __init__(self, attn: nn.Module, window: Window | None = None):
        super().__init__()
        self.num_heads = attn.num_heads
        self.temperature = attn.temperature
        self.qkv = attn.qkv
        self.qkv_dwconv = attn.qkv_dwconv
        self.project_out = attn.project_out
        self.window = tuple(int(s) for s in window) if window is not None else None

    @classmethod
    def from_module(cls, attn: nn.Module, window: Window | None = None) -> "LocalTransposedAttention":
        return cls(attn, window)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, window={self.window}"

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Global transposed attention of one qkv map (or a batch of windows)."""
        return transposed_attention(qkv, self.num_heads, self.temperature)

    def local_attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Windowed attention of a qkv map [B, 3C, h, w] -> [B, C, h, w] with ``self.window``."""
        b, _, h, w = qkv.shape
        k1, k2, starts = window_grid((h, w), self.window)
        if len(starts) == 1:  # one window covers the map: exactly the global attention
            return self.attend(qkv)
        windows = torch.cat([qkv[:, :, i:i + k1, j:j + k2] for i, j in starts], dim=0)
        outs = self.attend(windows).split(b, dim=0)
        total = None
        count = torch.zeros(1, 1, h, w, dtype=qkv.dtype, device=qkv.device)
        for (i, j), out in zip(starts, outs):
            pad = (j, w - k2 - j, i, h - k1 - i)
            placed = F.pad(out, pad)
            total = placed if total is None else total + placed
            count[:, :, i:i + k1, j:j + k2] += 1
        return total / count

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv_dwconv(self.qkv(x))
        if self.window is None:
            self.window = (int(qkv.shape[-2]), int(qkv.shape[-1]))
            out = self.attend(qkv)
        else:
            out = self.local_attend(qkv)
        return self.project_out(out)
