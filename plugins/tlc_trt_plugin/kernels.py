"""Triton kernels for TLC's local mean and local instance norm on contiguous NCHW maps.

Semantics (as ``tlc_export.reference``): for a window (kh, kw) on an h×w map, k1 = min(h, kh),
k2 = min(w, kw); pixel i's window starts at clamp(i − ⌊(k1−1)/2⌋, 0, h−k1) (same along W) and the
local mean is the mean over that k1×k2 window. Local instance norm: μ = local mean of x,
σ² = local mean of x² − μ², y = (x − μ)/√(σ² + eps)·scale[c] + bias[c].

Scheme: one program per (n, c) plane, O(h·w) work whatever the window.

* Horizontal box sums of one row are running sums along W: the window of column j starts at
  s_j = clamp(j − b, 0, w − k2), so box(j) = box(j−1) + x[s_j + k2 − 1] − x[s_j − 1] whenever s_j
  moved, else box(j) = box(j−1); box(0) = Σ_{c<k2} x[c]. Columns are processed in chunks of BLOCK
  with a ``tl.cumsum`` per chunk and a scalar carry between chunks (2 loads per element).
* Vertical: the k1-row window sums V (one row of w floats per statistic) are kept in a scratch row
  and updated with V += box(row entering) − box(row leaving) when the window moves down, so each
  output row costs O(w). V is only ever read and written element-wise (same column, same thread), so
  it can live in the output itself: row h−1 (and h−2 for the second moment), which are emitted
  last. This is what the TensorRT plugin does (a QDP has no workspace); the torch launchers use a
  separate fp32 scratch buffer when the output is not fp32.
* Everything accumulates in fp32 on x − s, s the mean of every 8th row and column of the plane (a
  per-plane shift near the plane's mean: the running sums stay small and E[x'²] − E[x']² does not
  cancel; shifting by the first pixel instead lost digits wherever the plane's level differs from its
  corner, e.g. flat regions of real photos; a 1×1 window uses no shift); a clamped window of 1 along an
  axis skips the running sum there (exact, so a 1×1 instance norm gives exactly ``bias``). Where the
  local variance is ≲ eps (tiny windows), y = (x − μ)·rstd amplifies the float32 rounding of μ and σ² by
  up to 1/√eps, as for any float32 implementation.
* Per output row: two horizontal passes (row entering and row leaving the window) of O(w + k2) each;
  the first window costs O(k1·w) once. Parallelism is one CTA per plane (N·C programs).

Kernel argument order is inputs, int32 scalars, outputs: the layout TensorRT's AOT plugin launcher
uses (``extra_args`` sit between the tensor inputs and the tensor outputs). ``SCR`` (a separate
scratch buffer) and everything after it are compile-time only in the AOT build.
"""
from __future__ import annotations

import functools

import triton
import triton.language as tl

DEFAULT_BLOCK = 256


@triton.jit
def _row_head(row_ptr, n, shift, BLOCK: tl.constexpr, MOMENTS: tl.constexpr):
    """Σ_{c<n} (x[c] − shift) and Σ_{c<n} (x[c] − shift)² of one row (n may be 0: then 0, 0)."""
    s1 = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), 0)
    s2 = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), 0)
    for j0 in range(0, n, BLOCK):
        j = j0 + tl.arange(0, BLOCK)
        m = j < n
        v = tl.where(m, tl.load(row_ptr + j, mask=m, other=0.0).to(tl.float32) - shift, 0.0)
        s1 += tl.sum(v, 0)
        if MOMENTS == 2:
            s2 += tl.sum(v * v, 0)
    return s1, s2


@triton.jit
def _plane_shift(xp, H, W, BLOCK: tl.constexpr):
    """Mean of the plane's every 8th row and column (1/64 of the reads of one pass)."""
    total = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), 0)
    n_cols = (W + 7) // 8
    for r in range(0, H, 8):
        for j0 in range(0, n_cols, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            m = j < n_cols
            total += tl.sum(tl.load(xp + r * W + j * 8, mask=m, other=0.0).to(tl.float32), 0)
    return total / (((H + 7) // 8) * n_cols).to(tl.float32)


@triton.jit
def _row_chunk(row_ptr, j, active, w, k2, b, shift, c1, c2, MOMENTS: tl.constexpr):
    """Horizontal box sums of one row at columns ``j`` (one chunk), given the running carries.

    Returns (box1, box2, carry1, carry2); box2/carry2 are only meaningful when MOMENTS == 2.
    ``active`` (scalar bool) masks every load off when the row is not needed.
    """
    # Scalar conditions become bounds on j (mixing a scalar bool into a block mask with `&` gives a
    # non-bool mask under TRITON_INTERPRET).
    n_act = tl.where(active, w, 0)
    valid = j < n_act
    hi = tl.where(k2 > 1, w - k2 + b, -1)
    s = tl.minimum(tl.maximum(j - b, 0), w - k2)
    inc = valid & (j >= b + 1) & (j <= hi)
    xe = tl.load(row_ptr + s + k2 - 1, mask=inc, other=0.0).to(tl.float32) - shift
    xs = tl.load(row_ptr + s - 1, mask=inc, other=0.0).to(tl.float32) - shift
    d1 = tl.where(inc, xe - xs, 0.0)
    box1 = c1 + tl.cumsum(d1, 0)
    c1 = c1 + tl.sum(d1, 0)
    # A window of one column: the box sum is the element itself (no running-sum rounding).
    one = j < tl.where(k2 == 1, n_act, 0)
    xd = tl.load(row_ptr + j, mask=one, other=0.0).to(tl.float32) - shift
    box1 = tl.where(one, xd, box1)
    box2 = box1
    if MOMENTS == 2:
        d2 = tl.where(inc, xe * xe - xs * xs, 0.0)
        box2 = c2 + tl.cumsum(d2, 0)
        c2 = c2 + tl.sum(d2, 0)
        box2 = tl.where(one, xd * xd, box2)
    return box1, box2, c1, c2


@triton.jit
def _tlc_plane(X, SCALE, BIAS, Y, SCR, H, W, KH, KW, C,
               EPS: tl.constexpr, BLOCK: tl.constexpr, MOMENTS: tl.constexpr, SCRATCH_IN_Y: tl.constexpr):
    p = tl.program_id(0).to(tl.int64)
    hw = H.to(tl.int64) * W
    xp = X + p * hw
    yp = Y + p * hw
    k1 = tl.minimum(H, KH)
    k2 = tl.minimum(W, KW)
    a = (k1 - 1) // 2
    b = (k2 - 1) // 2
    inv_area = 1.0 / (k1 * k2).to(tl.float32)
    # A 1×1 window needs no shift, and without one its mean is x itself, bit for bit.
    shift = tl.where(k1 * k2 == 1, 0.0, _plane_shift(xp, H, W, BLOCK))
    if MOMENTS == 2:
        ch = p % C
        gamma = tl.load(SCALE + ch).to(tl.float32)
        beta = tl.load(BIAS + ch).to(tl.float32)
    if SCRATCH_IN_Y:
        v1p = yp + (H - 1) * W      # row h−1: emitted last
        v2p = yp + (H - 2) * W      # row h−2: emitted together with row h−1
    else:
        v1p = SCR + p * 2 * W
        v2p = v1p + W
    tall = k1 > 1                                # vertical running sums needed

    # Window sums of rows 0..k1−1 (the first window) into the scratch rows.
    n_init = tl.where(tall, k1, 0)
    for r in range(0, n_init):
        rowp = xp + r * W
        c1, c2 = _row_head(rowp, k2, shift, BLOCK, MOMENTS)
        for j0 in range(0, W, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            m = j < W
            bx1, bx2, c1, c2 = _row_chunk(rowp, j, tall, W, k2, b, shift, c1, c2, MOMENTS)
            prev1 = tl.load(v1p + j, mask=j < tl.where(r > 0, W, 0), other=0.0)
            tl.store(v1p + j, prev1 + bx1, mask=m)
            if MOMENTS == 2:
                prev2 = tl.load(v2p + j, mask=j < tl.where(r > 0, W, 0), other=0.0)
                tl.store(v2p + j, prev2 + bx2, mask=m)

    # Instance norm with k1 > 1 emits rows h−2 and h−1 together (they share the last window and
    # hold the scratch rows), so its loop stops one row early.
    n_emit = H
    if MOMENTS == 2:
        n_emit = H - tall.to(tl.int32)
    for i in range(0, n_emit):
        t = tl.minimum(tl.maximum(i - a, 0), H - k1)
        t_prev = tl.minimum(tl.maximum(i - 1 - a, 0), H - k1)
        step = tall & (i > 0) & (t != t_prev)        # the window moved down one row
        keep = step & (i < n_emit - 1)               # V is still needed after this row
        pair = (MOMENTS == 2) & tall & (i == H - 2)
        r_new = tl.where(tall, t + k1 - 1, i)
        r_old = tl.maximum(t - 1, 0)
        use_new = step | (k1 == 1)
        newp = xp + r_new * W
        oldp = xp + r_old * W
        cn1, cn2 = _row_head(newp, tl.where(use_new, k2, 0), shift, BLOCK, MOMENTS)
        co1, co2 = _row_head(oldp, tl.where(step, k2, 0), shift, BLOCK, MOMENTS)
        row_i = i * W
        # Scalar conditions as column bounds (see _row_chunk).
        w_tall = tl.where(tall, W, 0)
        w_keep = tl.where(keep, W, 0)
        w_pair = tl.where(pair, W, 0)
        for j0 in range(0, W, BLOCK):
            j = j0 + tl.arange(0, BLOCK)
            m = j < W
            bn1, bn2, cn1, cn2 = _row_chunk(newp, j, use_new, W, k2, b, shift, cn1, cn2, MOMENTS)
            bo1, bo2, co1, co2 = _row_chunk(oldp, j, step, W, k2, b, shift, co1, co2, MOMENTS)
            v1 = tl.load(v1p + j, mask=j < w_tall, other=0.0) + tl.where(step, bn1 - bo1, 0.0)
            s1 = tl.where(tall, v1, bn1)
            mean = s1 * inv_area
            if MOMENTS == 1:
                tl.store(v1p + j, v1, mask=j < w_keep)
                tl.store(yp + row_i + j, mean + shift, mask=m)
            else:
                v2 = tl.load(v2p + j, mask=j < w_tall, other=0.0) + tl.where(step, bn2 - bo2, 0.0)
                s2 = tl.where(tall, v2, bn2)
                var = tl.maximum(s2 * inv_area - mean * mean, 0.0)
                rstd = tl.div_rn(1.0, tl.sqrt_rn(var + EPS))
                tl.store(v1p + j, v1, mask=j < w_keep)
                tl.store(v2p + j, v2, mask=j < w_keep)
                xi = tl.load(xp + row_i + j, mask=m, other=0.0).to(tl.float32) - shift
                # Row h−1 (pair step only) shares row h−2's window. Every read of this chunk comes
                # before its stores, so scratch rows h−1/h−2 in Y are overwritten only after use.
                row_l = (H - 1) * W
                xl = tl.load(xp + row_l + j, mask=j < w_pair, other=0.0).to(tl.float32) - shift
                tl.store(yp + row_l + j, (xl - mean) * rstd * gamma + beta, mask=j < w_pair)
                tl.store(yp + row_i + j, (xi - mean) * rstd * gamma + beta, mask=m)


@triton.jit
def tlc_local_mean_kernel(X, H, W, KH, KW, Y, SCR, BLOCK: tl.constexpr, SCRATCH_IN_Y: tl.constexpr):
    """Grid (N·C,). X, Y: contiguous N×C×H×W; SCR: fp32 scratch of N·C·2·W (unused if SCRATCH_IN_Y)."""
    _tlc_plane(X, X, X, Y, SCR, H, W, KH, KW, 1, 0.0, BLOCK, 1, SCRATCH_IN_Y)


@triton.jit
def tlc_local_instance_norm_kernel(X, SCALE, BIAS, H, W, KH, KW, C, Y, SCR,
                                   EPS: tl.constexpr, BLOCK: tl.constexpr, SCRATCH_IN_Y: tl.constexpr):
    """Grid (N·C,). SCALE, BIAS: [C]. Both moments come from the same loads in one pass."""
    _tlc_plane(X, SCALE, BIAS, Y, SCR, H, W, KH, KW, C, EPS, BLOCK, 2, SCRATCH_IN_Y)


# ------------------------------------------------------------------------------------------------
# torch launchers

def _block_for(w: int) -> int:
    return max(16, min(DEFAULT_BLOCK, triton.next_power_of_2(int(w))))


def _prepare(x, window, out):
    import torch

    if x.dim() != 4:
        raise ValueError(f"expected an N×C×H×W tensor, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16):
        raise TypeError(f"unsupported dtype {x.dtype}: float32 or float16")
    kh, kw = (int(k) for k in window)
    if kh < 1 or kw < 1:
        raise ValueError(f"window {tuple(window)} must be at least 1x1")
    x = x.contiguous()
    n, c, h, w = x.shape
    if out is None:
        out = torch.empty_like(x)
    elif out.shape != x.shape or out.dtype != x.dtype or not out.is_contiguous():
        raise ValueError("out must be a contiguous tensor of the input's shape and dtype")
    in_y = out.dtype == torch.float32
    scr = out if in_y else torch.empty(max(1, n * c * 2 * w), dtype=torch.float32, device=x.device)
    return x, out, scr, in_y, (n, c, h, w), (kh, kw)


def local_mean(x, window, block: int | None = None, out=None):
    """TLC local mean of ``x`` (N, C, H, W) over ``window`` (kh, kw); same shape and dtype.

    ``out`` (optional) receives the result; the caller's stream/device context applies."""
    x, y, scr, in_y, (n, c, h, w), (kh, kw) = _prepare(x, window, out)
    if y.numel() == 0:
        return y
    tlc_local_mean_kernel[(n * c,)](x, h, w, kh, kw, y, scr,
                                    BLOCK=block or _block_for(w), SCRATCH_IN_Y=in_y)
    return y


def local_instance_norm(x, scale, bias, window, eps: float = 1e-5, block: int | None = None, out=None):
    """TLC local instance norm of ``x`` (N, C, H, W); ``scale``/``bias`` of shape [C] (None: 1 and 0)."""
    import torch

    x, y, scr, in_y, (n, c, h, w), (kh, kw) = _prepare(x, window, out)
    if y.numel() == 0:
        return y
    scale = torch.ones(c, device=x.device) if scale is None else scale
    bias = torch.zeros(c, device=x.device) if bias is None else bias
    scale = scale.reshape(-1).to(device=x.device, dtype=torch.float32).contiguous()
    bias = bias.reshape(-1).to(device=x.device, dtype=torch.float32).contiguous()
    if scale.numel() != c or bias.numel() != c:
        raise ValueError(f"scale/bias must have {c} elements, got {scale.numel()} and {bias.numel()}")
    tlc_local_instance_norm_kernel[(n * c,)](x, scale, bias, h, w, kh, kw, c, y, scr,
                                             EPS=float(eps), BLOCK=block or _block_for(w),
                                             SCRATCH_IN_Y=in_y)
    return y


# ------------------------------------------------------------------------------------------------
# Ahead-of-time compilation (TensorRT AOT plugins)

def compile_aot(kind: str, eps: float = 1e-5, block: int = DEFAULT_BLOCK, dtype: str = "fp32", target=None):
    """``triton.compile`` one kernel for an AOT plugin; the scratch lives in the output (fp32 only).

    Kernel parameters after compilation: (x[, scale, bias], H, W, KH, KW[, C], y), i.e. tensor
    inputs, int32 scalars, tensor output. Returns the compiled kernel (``.metadata.name``,
    ``.asm["ptx"]``, ``.metadata.num_warps``, ``.metadata.shared``).
    """
    if dtype != "fp32":
        raise ValueError("the AOT kernels keep their fp32 running sums in the output: fp32 only")
    if kind == "mean":
        fn = tlc_local_mean_kernel
        signature = {"X": "*fp32", "H": "i32", "W": "i32", "KH": "i32", "KW": "i32", "Y": "*fp32",
                     "SCR": "constexpr", "BLOCK": "constexpr", "SCRATCH_IN_Y": "constexpr"}
        constexprs = {"SCR": None, "BLOCK": block, "SCRATCH_IN_Y": True}
    elif kind == "instancenorm":
        fn = tlc_local_instance_norm_kernel
        signature = {"X": "*fp32", "SCALE": "*fp32", "BIAS": "*fp32", "H": "i32", "W": "i32", "KH": "i32",
                     "KW": "i32", "C": "i32", "Y": "*fp32", "SCR": "constexpr", "EPS": "constexpr",
                     "BLOCK": "constexpr", "SCRATCH_IN_Y": "constexpr"}
        constexprs = {"SCR": None, "EPS": float(eps), "BLOCK": block, "SCRATCH_IN_Y": True}
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")
    src = triton.compiler.ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    options = {"enable_fp_fusion": True}     # explicit: Triton 3.10 changes the default
    if target is not None:
        return triton.compile(src, target=target, options=options)
    return triton.compile(src, options=options)


def strip_hidden_params(ptx: str, kernel_name: str, n_params: int) -> str:
    """Drop the parameters Triton appends after the user's (global/profile scratch pointers).

    Triton ≥ 3.2 adds hidden pointer parameters at the end of every kernel; TensorRT's AOT launcher
    passes exactly inputs + extra_args + outputs. When the kernel body never reads the hidden
    parameters (scratch sizes 0, as here), removing them from the ``.entry`` declaration makes the
    PTX signature match what TensorRT passes. Raises if a dropped parameter is referenced.
    """
    import re

    m = re.search(r"(\.entry\s+" + re.escape(kernel_name) + r"\s*\()([^)]*)(\))", ptx)
    if m is None:
        raise ValueError(f"no .entry {kernel_name} in the PTX")
    params = [p.strip() for p in m.group(2).split(",") if p.strip()]
    if len(params) < n_params:
        raise ValueError(f"{kernel_name} has {len(params)} parameters, expected at least {n_params}")
    dropped = [p.split()[-1] for p in params[n_params:]]
    body = ptx[m.end():]
    used = [d for d in dropped if re.search(r"\b" + re.escape(d) + r"\b", body)]
    if used:
        raise ValueError(f"{kernel_name}: hidden parameters {used} are used by the kernel")
    if not dropped:
        return ptx
    decl = m.group(1) + "\n\t" + ",\n\t".join(params[:n_params]) + "\n" + m.group(3)
    return ptx[:m.start()] + decl + body


@functools.lru_cache(maxsize=None)
def aot_kernel(kind: str, eps: float = 1e-5, block: int = DEFAULT_BLOCK, target=None):
    """(kernel name, PTX with only the user parameters, num_warps, shared bytes) for an AOT plugin."""
    compiled = compile_aot(kind, eps=eps, block=block, target=target)
    n_params = 6 if kind == "mean" else 9
    name = compiled.metadata.name
    ptx = strip_hidden_params(compiled.asm["ptx"], name, n_params)
    return name, ptx, compiled.metadata.num_warps, compiled.metadata.shared
