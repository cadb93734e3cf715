"""TLC local mean / local instance norm in numpy (vectorised prefix sums), for the ONNX Runtime custom ops.

Same semantics as ``tlc_export.reference`` and the Triton kernels: window (kh, kw) clamped to the
map, k1 = min(h, kh), k2 = min(w, kw); pixel i averages the window starting at
clamp(i − ⌊(k1−1)/2⌋, 0, h−k1) (same along W). Cost O(h·w) whatever the window: one zero-led
cumsum per axis and a gather of the window ends. Accumulates in float64 by default (``acc=np.float32``
gives the float32 behaviour of the exported graphs).
"""
from __future__ import annotations

import numpy as np


def window_starts(n: int, k: int) -> np.ndarray:
    """Start of every pixel's window along an axis of length ``n`` for a clamped window ``k``."""
    return np.clip(np.arange(n) - (k - 1) // 2, 0, n - k)


def _box_mean(x: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Mean over each pixel's k1×k2 window of ``x`` (…, h, w), already in the accumulation dtype."""
    h, w = x.shape[-2:]
    prefix = np.zeros(x.shape[:-1] + (w + 1,), dtype=x.dtype)
    np.cumsum(x, axis=-1, out=prefix[..., 1:])
    sj = window_starts(w, k2)
    rows = prefix[..., sj + k2] - prefix[..., sj]                           # (…, h, w)
    prefix = np.zeros(x.shape[:-2] + (h + 1, w), dtype=x.dtype)
    np.cumsum(rows, axis=-2, out=prefix[..., 1:, :])
    si = window_starts(h, k1)
    return (prefix[..., si + k1, :] - prefix[..., si, :]) / (k1 * k2)


def _clamped(shape, window) -> tuple[int, int]:
    kh, kw = (int(k) for k in np.asarray(window).reshape(-1)[:2])
    if kh < 1 or kw < 1:
        raise ValueError(f"window {(kh, kw)} must be at least 1x1")
    return min(shape[-2], kh), min(shape[-1], kw)


def local_mean(x: np.ndarray, window, acc=np.float64) -> np.ndarray:
    """TLC local mean of ``x`` (…, h, w); same shape and dtype as ``x``."""
    x = np.asarray(x)
    k1, k2 = _clamped(x.shape, window)
    return _box_mean(x.astype(acc), k1, k2).astype(x.dtype)


def local_instance_norm(x: np.ndarray, scale, bias, window, eps: float = 1e-5, acc=np.float64) -> np.ndarray:
    """TLC local instance norm of ``x`` (N, C, h, w); ``scale``/``bias`` per channel (None: 1 and 0).

    The moments are taken on x − s, s the mean of every 8th row and column of each plane (the shift the
    kernels and the exported graphs use), which keeps E[x²] − E[x]² well conditioned in float32 and
    changes nothing in exact arithmetic.
    """
    x = np.asarray(x)
    k1, k2 = _clamped(x.shape, window)
    xs = x.astype(acc)
    xs = xs - xs[..., ::8, ::8].mean(axis=(-2, -1), keepdims=True)
    mean = _box_mean(xs, k1, k2)
    var = _box_mean(xs * xs, k1, k2) - mean * mean
    y = (xs - mean) / np.sqrt(np.maximum(var, 0) + eps)
    c = x.shape[1]
    if scale is not None:
        y = y * np.asarray(scale, dtype=acc).reshape(1, c, 1, 1)
    if bias is not None:
        y = y + np.asarray(bias, dtype=acc).reshape(1, c, 1, 1)
    return y.astype(x.dtype)
