"""Arithmetic floor of a TLC mode: multiply-adds of TLC over those of the global model (one image).

TLC adds work beyond the global model in two places (the local statistics themselves are O(h·w·c)
additions, memory-bound and not counted):

- channel attention: the MLP after a pool runs per pixel on the map of local means instead of once on
  1×1 — exact TLC on (h−k1+1)×(w−k2+1) pixels, fast TLC on (h'−k1)×(w'−k2) samples (none when the
  window covers the map);
- Restormer's attention: q·kᵀ and attn·v on overlapping windows cover n·k1·k2 pixels instead of h·w.

Counted with forward hooks on the global model (Conv2d, AdaptiveAvgPool2d, attention modules) on the
meta device (shapes only), windows from a pass at the calibration size. No graph or runtime can beat this ratio without changing the math.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from tlc_export.fast_rules import max_factors, subsampling_factor
from tlc_export.reference.attention import window_grid


def _events(model: nn.Module, size: tuple[int, int]) -> list[tuple]:
    """In call order: ("conv", MACs per output pixel, in (h, w), out pixels), ("pool", (h, w)),
    ("attn", channels, heads, (h, w))."""
    events, hooks = [], []

    def on_conv(m, inp, out):
        per_pixel = m.in_channels // m.groups * m.out_channels * m.kernel_size[0] * m.kernel_size[1]
        events.append(("conv", per_pixel, tuple(inp[0].shape[-2:]), out.shape[-2] * out.shape[-1]))

    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            hooks.append(m.register_forward_hook(lambda m, i, o: events.append(("pool", tuple(i[0].shape[-2:])))))
        elif hasattr(m, "num_heads") and hasattr(m, "qkv"):
            hooks.append(m.register_forward_hook(
                lambda m, i, o: events.append(("attn", i[0].shape[1], m.num_heads, tuple(i[0].shape[-2:])))))
    try:
        with torch.no_grad():     # shapes only: the meta device computes nothing
            model(torch.empty(1, 3, *size, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return events


def _mlp_pixels(size, window, calib, fast: bool) -> int:
    """Pixels the channel-attention MLP runs on for one pool (1 when the op is global)."""
    h, w = size
    if fast:
        if window[0] >= h and window[1] >= w:
            return 1
        max_r = max_factors(window, calib)
        r = subsampling_factor(h, max_r[0]), subsampling_factor(w, max_r[1])
        samples = -(-h // r[0]), -(-w // r[1])
        k = min(samples[0] - 1, window[0] // r[0]), min(samples[1] - 1, window[1] // r[1])
        return (samples[0] - k[0]) * (samples[1] - k[1])
    return (h - min(h, window[0]) + 1) * (w - min(w, window[1]) + 1)


def floor_ratio(model: nn.Module, size: tuple[int, int], calib: tuple[int, int], fast: bool = False) -> float:
    """(global MACs + TLC's extra MACs) / global MACs at ``size`` for a model calibrated at ``calib``."""
    model = copy.deepcopy(model).to("meta")
    windows = [e[-1] for e in _events(model, calib) if e[0] in ("pool", "attn")]
    total = extra = 0
    current = None        # (map size, window) of the last pool: its MLP follows on 1×1 inputs
    index = 0
    for e in _events(model, size):
        if e[0] == "conv":
            total += e[1] * e[3]
            if current is not None and e[2] == (1, 1):
                extra += e[1] * (_mlp_pixels(current[0], current[1], calib, fast) - 1)
            continue
        window = windows[index]
        index += 1
        if e[0] == "pool":
            current = (e[1], window)
            continue
        _, channels, heads, (h, w) = e
        macs = 2 * channels * channels // heads          # q·kᵀ and attn·v per pixel
        k1, k2, starts = window_grid((h, w), window)
        total += macs * h * w
        extra += macs * (len(starts) * k1 * k2 - h * w)
    return (total + extra) / total
