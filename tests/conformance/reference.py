"""An independent float64 TLC reference for any eager model (written for this suite; it shares no code
with ``tlc_export``).

Every global op of the model is intercepted during its forward: functional ones (adaptive average pool
to 1×1, mean over H and W, instance and group norm) through a ``TorchFunctionMode``, and the transposed
attentions and softmax context pools, which span several calls, by replacing the forward of their
modules. A calibration run records each op's input size (its window, in call order); later runs
replace each op by explicit window sums in float64 with the semantics of the TLC paper:

* k1 = min(h, kh), k2 = min(w, kw); mean over every k1×k2 window at stride 1, replicate-padded back to
  h×w with top/left pad ⌊(k−1)/2⌋ (the rest bottom/right);
* instance norm: local mean μ, local E[x²] − μ², then the affine; group norm averages both statistics
  over the group's channels;
* transposed attention: attention on the official overlapping k1×k2 grid of windows of the qkv map
  (megvii-research/TLC ``LocalAttention.grids``), overlapping outputs averaged.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode


# ---------------------------------------------------------------- window arithmetic, brute force
def window_sum(x: torch.Tensor, k1: int, k2: int) -> torch.Tensor:
    """Sum over every k1×k2 window at stride 1, as k1 + k2 explicit shifted-slice additions."""
    h, w = x.shape[-2:]
    oh, ow = h - k1 + 1, w - k2 + 1
    rows = sum(x[..., i:i + oh, :] for i in range(k1))
    return sum(rows[..., :, j:j + ow] for j in range(k2))


def pad_back(y: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Replicate-pad a valid-window map back to h×w: top/left ⌊(h − oh)/2⌋, the rest bottom/right."""
    dh, dw = h - y.shape[-2], w - y.shape[-1]
    shape = y.shape
    y4 = y.reshape(-1, 1, shape[-2], shape[-1])
    y4 = F.pad(y4, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2), mode="replicate")
    return y4.reshape(*shape[:-2], h, w)


def clamp(window: tuple[int, int], h: int, w: int) -> tuple[int, int]:
    return min(h, window[0]), min(w, window[1])


def local_mean(x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    h, w = x.shape[-2:]
    k1, k2 = clamp(window, h, w)
    return pad_back(window_sum(x, k1, k2) / (k1 * k2), h, w)


def local_instance_norm(x, window, weight, bias, eps):
    mu = local_mean(x, window)
    var = local_mean(x * x, window) - mu * mu
    y = (x - mu) / torch.sqrt(var + eps)
    shape = (1, -1, 1, 1)
    if weight is not None:
        y = y * weight.reshape(shape)
    if bias is not None:
        y = y + bias.reshape(shape)
    return y


def local_group_norm(x, groups, window, weight, bias, eps):
    n, c, h, w = x.shape
    mu = local_mean(x, window).reshape(n, groups, c // groups, h, w).mean(2, keepdim=True)
    sq = local_mean(x * x, window).reshape(n, groups, c // groups, h, w).mean(2, keepdim=True)
    xg = x.reshape(n, groups, c // groups, h, w)
    y = ((xg - mu) / torch.sqrt(sq - mu * mu + eps)).reshape(n, c, h, w)
    if weight is not None:
        y = y * weight.reshape(1, -1, 1, 1)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return y


def grid_starts(n: int, k: int) -> list[int]:
    """Window starts along one axis, laid out as the official ``LocalAttention.grids``: ⌈n/k⌉ windows,
    evenly stepped, the last one flush with the end."""
    count = (n - 1) // k + 1
    step = k if count == 1 else math.ceil((n - k) / (count - 1) - 1e-8)
    starts, i = [], 0
    while True:
        if i + k >= n:
            starts.append(n - k)
            return starts
        starts.append(i)
        i += step


def windowed(qkv: torch.Tensor, window: tuple[int, int], core) -> torch.Tensor:
    """Run ``core`` (a map → map function that is global over its input) on each grid window of
    ``qkv`` and average the overlapping outputs."""
    b, _, h, w = qkv.shape
    k1, k2 = clamp(window, h, w)
    total = count = None
    for i in grid_starts(h, k1):
        for j in grid_starts(w, k2):
            out = core(qkv[:, :, i:i + k1, j:j + k2])
            if total is None:
                total = out.new_zeros(b, out.shape[1], h, w)
                count = out.new_zeros(1, 1, h, w)
            total[:, :, i:i + k1, j:j + k2] += out
            count[:, :, i:i + k1, j:j + k2] += 1
    return total / count


def transposed_attention(qkv: torch.Tensor, heads: int, scale: torch.Tensor, kq: bool = False):
    """Restormer's MDTA core on a (B, 3C, h, w) map: q, k normalised over pixels, softmax(q·kᵀ·scale)·v
    (k·qᵀ for RetinexFormer), back to (B, C, h, w)."""
    b, c3, h, w = qkv.shape
    q, k, v = (t.reshape(b, heads, c3 // 3 // heads, h * w) for t in qkv.chunk(3, dim=1))
    q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    attn = (k @ q.transpose(-2, -1)) if kq else (q @ k.transpose(-2, -1))
    attn = (attn * scale).softmax(dim=-1)
    return (attn @ v).reshape(b, c3 // 3, h, w)


# ---------------------------------------------------------------- the interception machinery
@dataclass
class Op:
    kind: str
    size: tuple[int, int]     # input H, W at calibration: the window
    site: str                 # module path of the innermost module running it
    kept: str | None = None   # reason when this op is expected to stay global


def _spatial_dims(x: torch.Tensor, dim) -> bool:
    if dim is None or x.dim() != 4:
        return False
    dims = {d % 4 for d in ((dim,) if isinstance(dim, int) else dim)}
    return dims == {2, 3}


def _is_one(size) -> bool:
    return size == 1 or (isinstance(size, (tuple, list)) and tuple(size) == (1, 1))


class _Mode(TorchFunctionMode):
    def __init__(self, ref: "TLCReference"):
        super().__init__()
        self.ref = ref

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        x = args[0] if args else None
        if name == "adaptive_avg_pool2d" and _is_one(args[1] if len(args) > 1 else kwargs.get("output_size")):
            return self.ref.op("pool", x, lambda: func(*args, **kwargs), lambda win: local_mean(x, win))
        if name == "adaptive_max_pool2d" and _is_one(args[1] if len(args) > 1 else kwargs.get("output_size")):
            return self.ref.op("maxpool", x, lambda: func(*args, **kwargs), None)
        if name == "mean" and isinstance(x, torch.Tensor):
            dim = args[1] if len(args) > 1 else kwargs.get("dim")
            keep = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            if _spatial_dims(x, dim):
                return self.ref.op("mean", x, lambda: func(*args, **kwargs),
                                   (lambda win: local_mean(x, win)) if keep else None)
        if name == "instance_norm":
            return self.ref.op("instance_norm", x, lambda: func(*args, **kwargs), lambda win: local_instance_norm(
                x, win, _arg(args, kwargs, 3, "weight"), _arg(args, kwargs, 4, "bias"), _arg(args, kwargs, 7, "eps", 1e-5)))
        if name == "group_norm":
            return self.ref.op("group_norm", x, lambda: func(*args, **kwargs), lambda win: local_group_norm(
                x, _arg(args, kwargs, 1, "num_groups"), win, _arg(args, kwargs, 2, "weight"),
                _arg(args, kwargs, 3, "bias"), _arg(args, kwargs, 4, "eps", 1e-5)))
        if name == "layer_norm" and x is not None and x.dim() == 4:
            shape = _arg(args, kwargs, 1, "normalized_shape")
            if len(shape) >= 2:
                raise NotImplementedError("layer norm over spatial axes: not in any configured architecture")
        return func(*args, **kwargs)


def _arg(args, kwargs, i, key, default=None):
    return args[i] if len(args) > i else kwargs.get(key, default)


class TLCReference:
    """``ref = TLCReference(model, arch.kept, calib=(64, 64))``; ``ref(x)`` is the float64 TLC output,
    ``ref(x, local=False)`` the float64 global one. ``ref.ops`` lists every global op found."""

    def __init__(self, model: nn.Module, kept: tuple = (), calib: tuple[int, int] = (64, 64),
                 in_channels: int = 3):
        self.model = copy.deepcopy(model).double().eval()
        self.kept = dict(kept)
        self.ops: list[Op] = []
        self._stack: list[tuple[str, str]] = []
        self._calibrating = False
        self._local = True
        self._index = 0
        for path, m in self.model.named_modules():
            m.register_forward_pre_hook(self._enter(path))
            m.register_forward_hook(self._leave)
            adapter = adapter_for(m)
            if adapter is not None:
                m.forward = adapter.__get__(m)
                m._tlc_ref = self
        self._calibrating = True
        self._run(torch.zeros(1, in_channels, *calib, dtype=torch.float64) + 0.5)
        self._calibrating = False

    def _enter(self, path: str):
        def hook(module, inputs) -> None:
            self._stack.append((path, type(module).__name__))
        return hook

    def _leave(self, module, inputs, output) -> None:
        self._stack.pop()

    # called from the mode and the adapters
    def op(self, kind: str, x: torch.Tensor, global_fn, local_fn, size=None):
        size = tuple(size or x.shape[-2:])
        if self._calibrating:
            site = self._stack[-1][0] if self._stack else ""
            top = self._stack[-1] if self._stack else ("", "")
            reason = next((r for name, r in self.kept.items()
                           if any(name == cls or name in path.split(".") for path, cls in self._stack)
                           or name in (top[1] + "!", top[0].rsplit(".", 1)[-1] + "!")), None)
            if local_fn is None and reason is None:
                reason = f"{kind} not localisable as a drop-in"
            self.ops.append(Op(kind, size, site, reason))
            return global_fn()
        op = self.ops[self._index]
        self._index += 1
        assert op.kind == kind, f"op {self._index - 1} is {kind}, was {op.kind} at calibration"
        if not self._local or op.kept is not None:
            return global_fn()
        return local_fn(op.size)

    def _run(self, x: torch.Tensor):
        self._index = 0
        with torch.no_grad(), _Mode(self):
            out = self.model(x)
        assert self._calibrating or self._index == len(self.ops), "a different number of global ops ran"
        return out

    def __call__(self, x: torch.Tensor, local: bool = True):
        self._local = local
        out = self._run(x.detach().clone().double())   # some models (RCAN) scale their input in place
        return out[0] if isinstance(out, (tuple, list)) else out

    @property
    def rewritable(self) -> list[Op]:
        return [o for o in self.ops if o.kept is None]

    @property
    def kept_ops(self) -> list[Op]:
        return [o for o in self.ops if o.kept is not None]


# ---------------------------------------------------------------- module adapters (multi-call global ops)
def _attention_op(self, qkv: torch.Tensor, core) -> torch.Tensor:
    """One transposed attention on the (B, 3C, H, W) map ``qkv``: global, or on TLC windows."""
    return self._tlc_ref.op("attention", qkv, lambda: core(qkv), lambda win: windowed(qkv, win, core))


def _mdta_forward(self, x):
    """Restormer ``Attention``, KBNet_l ``TransAttention``, M3SNet ``Attention``."""
    qkv = self.qkv_dwconv(self.qkv(x))
    heads = getattr(self, "num_heads", None) or self.heads
    out = _attention_op(self, qkv, lambda t: transposed_attention(t, heads, self.temperature))
    return self.project_out(out)


def _omnisr_grid_forward(self, x):
    """OmniSR ``Channel_Attention_grid``: attention over the dilated grid of pixels ``ps`` apart; TLC
    windows that grid (each of the ps² phase maps is an (h/ps)×(w/ps) map)."""
    b, c, h, w = x.shape
    ps = self.ps
    qkv = self.qkv_dwconv(self.qkv(x))
    phases = qkv.reshape(b, 3 * c, h // ps, ps, w // ps, ps).permute(0, 3, 5, 1, 2, 4)
    phases = phases.reshape(b * ps * ps, 3 * c, h // ps, w // ps)
    out = _attention_op(self, phases, lambda t: transposed_attention(t, self.heads, self.temperature))
    out = out.reshape(b, ps, ps, c, h // ps, w // ps).permute(0, 3, 4, 1, 5, 2).reshape(b, c, h, w)
    return self.project_out(out)


def _ig_msa_forward(self, x_in, illu_fea_trans):
    """RetinexFormer ``IG_MSA``: per-pixel q, k, v (v times the illumination feature), attention
    k·qᵀ over pixels, per-pixel projection plus a positional conv of v on the full map."""
    b, h, w, c = x_in.shape
    x = x_in.reshape(b, h * w, c)
    v_inp = self.to_v(x)
    maps = [t.reshape(b, h, w, -1).permute(0, 3, 1, 2)
            for t in (self.to_q(x), self.to_k(x), v_inp * illu_fea_trans.reshape(b, h * w, -1))]
    qkv = torch.cat(maps, dim=1)
    out = _attention_op(self, qkv, lambda t: transposed_attention(t, self.num_heads, self.rescale, kq=True))
    out_c = self.proj(out.permute(0, 2, 3, 1).reshape(b, h * w, -1)).view(b, h, w, c)
    out_p = self.pos_emb(v_inp.reshape(b, h, w, c).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
    return out_c + out_p


def _dat_aca_forward(self, x, H, W):
    """DAT ``Adaptive_Channel_Attention``: XCiT attention over all tokens plus a conv branch on v and
    the channel/spatial interactions (its pool is intercepted by the mode)."""
    B, N, C = x.shape
    qkv = self.qkv(x).transpose(1, 2).reshape(B, 3 * C, H, W)
    att = _attention_op(self, qkv, lambda t: transposed_attention(t, self.num_heads, self.temperature))
    attened_x = att.reshape(B, C, N).transpose(1, 2)
    conv_x = self.dwconv(qkv[:, 2 * C:])
    channel_map = self.channel_interaction(att)
    spatial_map = self.spatial_interaction(conv_x).permute(0, 2, 3, 1).reshape(B, N, 1)
    attened_x = attened_x * torch.sigmoid(spatial_map)
    conv_x = (conv_x * torch.sigmoid(channel_map)).permute(0, 2, 3, 1).reshape(B, N, C)
    return self.proj_drop(self.proj(attened_x + conv_x))


def _context_block_forward(self, x):
    """MIRNet-v2 ``ContextBlock``: softmax-weighted pool over all pixels; locally
    Σ_window e^m·x / Σ_window e^m (a global shift of m keeps it finite and cancels exactly)."""
    mask = self.conv_mask(x)

    def global_pool():
        b, c, h, w = x.shape
        weights = mask.reshape(b, 1, h * w).softmax(dim=2)
        return (x.reshape(b, c, h * w) * weights).sum(-1).reshape(b, c, 1, 1)

    def local_pool(win):
        e = torch.exp(mask - mask.amax(dim=(2, 3), keepdim=True))
        return local_mean(x * e, win) / local_mean(e, win)

    context = self._tlc_ref.op("softmax_pool", x, global_pool, local_pool)
    return x + self.channel_add_conv(context)


def _selective_kernel_forward(self, inp_feats):
    """MIRNet-v2 ``SKFF`` / MixDehazeNet ``SKFusion``: pool the summed branches, MLP, softmax over the
    branches. Locally the MLP and the softmax run per pixel on the local-mean map (the eager code's
    ``view(B, height, C, 1, 1)`` becomes ``view(B, height, C, h, w)``)."""
    b, c = inp_feats[0].shape[:2]
    feats = torch.cat(inp_feats, dim=1).view(b, self.height, c, *inp_feats[0].shape[2:])
    pooled = self.avg_pool(feats.sum(dim=1))
    if hasattr(self, "mlp"):
        attn = self.mlp(pooled)
    else:
        z = self.conv_du(pooled)
        attn = torch.cat([fc(z) for fc in self.fcs], dim=1)
    attn = self.softmax(attn.view(b, self.height, c, *attn.shape[2:]))
    return (feats * attn).sum(dim=1)


def _squeeze_excitation_forward(self, x):
    """OmniSR ``SqueezeExcitation`` (einops Reduce to (N, C), Linear–SiLU–Linear–Sigmoid, back to
    (N, C, 1, 1)): locally the Linear layers run per pixel on the local-mean map."""
    pooled = x.mean(dim=(2, 3), keepdim=True)
    gate = pooled.permute(0, 2, 3, 1)
    for layer in list(self.gate)[1:-1]:
        gate = layer(gate)
    return x * gate.permute(0, 3, 1, 2)


ADAPTERS = {
    "SKFF": _selective_kernel_forward,
    "SKFusion": _selective_kernel_forward,
    "SqueezeExcitation": _squeeze_excitation_forward,
    "Attention": _mdta_forward,          # Restormer, M3SNet (OmniSR's Attention is windowed: not here)
    "TransAttention": _mdta_forward,
    "Channel_Attention_grid": _omnisr_grid_forward,
    "IG_MSA": _ig_msa_forward,
    "Adaptive_Channel_Attention": _dat_aca_forward,
    "ContextBlock": _context_block_forward,
}


def adapter_for(module: nn.Module):
    """The adapter for a module whose global op spans several calls, or None. Class names repeat across
    architectures (OmniSR's windowed ``Attention``), so MDTA-style ones must also have a qkv dwconv."""
    name = type(module).__name__
    if name in ("Attention", "TransAttention") and not hasattr(module, "qkv_dwconv"):
        return None
    if name == "SqueezeExcitation" and not hasattr(module, "gate"):
        return None    # SAFMN's (unused) one is conv-based
    return ADAPTERS.get(name)
