"""The official approximate TLC (``fast_imp=True`` in megvii-research/TLC and NAFNet ``local_arch.py``).

Per op, besides the window (kh, kw) of exact TLC, calibration records ``max_r`` per axis: the op's
downsampling factor, ``max(1, 5·map_at_calib // calib_size)`` (``max_factor``). At run time on an h×w
map (``fast_layout``):

- when the window covers the map in both axes (kh ≥ h and kw ≥ w): the plain global mean;
- otherwise r = the first of 5, 4, 3, 2, 1 dividing h (resp. w), capped at max_r; the map is subsampled
  at stride r (top-left sample of each cell, h' = ⌈h/r⌉ samples), k = min(h' − 1, kh // r), and output
  row j (j < h' − k) averages samples j+1 … j+k — one sample after exact TLC's window, because the
  official prefix sums have no leading zero. Those (h' − k1)×(w' − k2) means are upsampled by nearest
  neighbour (each repeated r times) and replicate-padded to h×w with exact TLC's floor/ceil split.

Averaging samples j+1 … j+k of the subsampled map is the exact stride-1 box mean of the subsampled map
without its first sample, which is how it is computed here (``boxes.valid_box_mean``), in float64.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..fast_rules import FACTORS, max_factor, subsampling_factor
from .boxes import Window, replicate_pad_to, valid_box_mean

__all__ = ["FACTORS", "FastLayout", "fast_layout", "fast_local_mean", "fast_valid_mean", "max_factor",
           "subsampling_factor", "upsample_and_pad"]


@dataclass(frozen=True)
class FastLayout:
    """How one h×w map is pooled in fast mode; ``is_global`` when the window covers the map."""

    is_global: bool
    r: tuple[int, int] = (1, 1)
    k: tuple[int, int] = (0, 0)
    samples: tuple[int, int] = (0, 0)     # h', w': samples of the subsampled map

    @property
    def valid(self) -> tuple[int, int]:
        """Size of the map of window means before upsampling: (h' − k1, w' − k2)."""
        return self.samples[0] - self.k[0], self.samples[1] - self.k[1]


def fast_layout(size: tuple[int, int], window: Window, max_r: tuple[int, int]) -> FastLayout:
    """The fast-mode factors and windows on an ``size`` = (h, w) map. Raises ``ValueError`` where the
    official code breaks (an empty window: a map of one sample, or a window shorter than r)."""
    h, w = size
    if window[0] >= h and window[1] >= w:
        return FastLayout(True)
    r = subsampling_factor(h, max_r[0]), subsampling_factor(w, max_r[1])
    samples = -(-h // r[0]), -(-w // r[1])
    k = min(samples[0] - 1, window[0] // r[0]), min(samples[1] - 1, window[1] // r[1])
    if k[0] < 1 or k[1] < 1:
        raise ValueError(f"fast TLC is undefined on a {h}x{w} map with window {tuple(window)} and max_r "
                         f"{tuple(max_r)}: subsampling by {r} leaves an empty window (the official code "
                         f"fails here too); use exact TLC or another input size")
    return FastLayout(False, r, k, samples)


def fast_valid_mean(x: torch.Tensor, layout: FastLayout) -> torch.Tensor:
    """The (h' − k1)×(w' − k2) window means of ``x`` (…, h, w) before upsampling, in float64."""
    r1, r2 = layout.r
    # Samples 1 … h'−1 of the subsampled map: its window starting at j+1 is a stride-1 box from j.
    tail = x.to(torch.float64)[..., r1::r1, r2::r2]
    return valid_box_mean(tail, *layout.k)


def upsample_and_pad(valid: torch.Tensor, layout: FastLayout, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour upsampling by (r1, r2), then replicate padding to ``size`` (floor/ceil split)."""
    up = valid.repeat_interleave(layout.r[0], dim=-2).repeat_interleave(layout.r[1], dim=-1)
    return replicate_pad_to(up, size)


def fast_local_mean(x: torch.Tensor, window: Window, max_r: tuple[int, int]) -> torch.Tensor:
    """Official fast TLC local mean of ``x`` (…, h, w); same shape and dtype as ``x``."""
    size = tuple(x.shape[-2:])
    layout = fast_layout(size, window, max_r)
    if layout.is_global:
        mean = x.to(torch.float64).mean((-2, -1), keepdim=True)
        return mean.expand(x.shape).to(x.dtype)
    return upsample_and_pad(fast_valid_mean(x, layout), layout, size).to(x.dtype)
