"""Restormer (Zamir et al., CVPR 2022), written for this package.

Same architecture, parameter names and forward pass as swz30/Restormer
``basicsr/models/archs/restormer_arch.py``: a four-level U-shaped stack of transformer blocks, each a
channel LayerNorm, a multi-Dconv head *transposed* attention (MDTA: the attention map is C×C per
head, computed over all pixels, which is the global operation TLC localises) and a gated-Dconv
feed-forward network (GDFN).

Notes on fidelity:
* The swz30 network does not pad: the three ``PixelUnshuffle(2)`` downsamplings need H and W to be
  multiples of :data:`INPUT_MULTIPLE`. (megvii-research/TLC's copy adds a ``padder_size`` argument
  that pads and crops; that is not part of the released configurations' constructor.)
* The encoder/decoder level-1 blocks and the refinement blocks run at ``2*dim`` channels but with
  ``heads[0]`` heads, as in the official code.
* The stem, down- and up-sampling convolutions never have a bias, whatever ``bias`` says.
* No einops: the layouts are rebuilt with permute/flatten/reshape so the graph traces with dynamic
  H/W.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

#: H and W of the network input must be multiples of this (three 2× pixel-unshuffles).
INPUT_MULTIPLE = 8


class BiasFree_LayerNorm(nn.Module):
    """LayerNorm over the last axis without mean subtraction and without bias."""

    def __init__(self, normalized_shape: int):
        super().__init__()
        self.normalized_shape = torch.Size((int(normalized_shape),))
        self.weight = nn.Parameter(torch.ones(self.normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        var = x.var(-1, keepdim=True, unbiased=False)
        return x / torch.sqrt(var + 1e-5) * self.weight


class WithBias_LayerNorm(nn.Module):
    """Plain LayerNorm over the last axis (biased variance, eps 1e-5) with weight and bias."""

    def __init__(self, normalized_shape: int):
        super().__init__()
        self.normalized_shape = torch.Size((int(normalized_shape),))
        self.weight = nn.Parameter(torch.ones(self.normalized_shape))
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(-1, keepdim=True)
        var = x.var(-1, keepdim=True, unbiased=False)
        return (x - mean) / torch.sqrt(var + 1e-5) * self.weight + self.bias


class LayerNorm(nn.Module):
    """Per-pixel normalisation over channels of a [B, C, H, W] map (``body`` holds the parameters)."""

    def __init__(self, dim: int, LayerNorm_type: str):
        super().__init__()
        # Anything but 'BiasFree' gives the biased variant, as upstream.
        self.body = BiasFree_LayerNorm(dim) if LayerNorm_type == "BiasFree" else WithBias_LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Channels last, normalise over the last axis, back to channels first.
        return self.body(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class FeedForward(nn.Module):
    """GDFN: 1×1 expand to two branches, depthwise 3×3, GELU gate, 1×1 project back."""

    def __init__(self, dim: int, ffn_expansion_factor: float, bias: bool):
        super().__init__()
        hidden = int(dim * ffn_expansion_factor)
        self.project_in = nn.Conv2d(dim, 2 * hidden, kernel_size=1, bias=bias)
        self.dwconv = nn.Conv2d(2 * hidden, 2 * hidden, kernel_size=3, stride=1, padding=1,
                                groups=2 * hidden, bias=bias)
        self.project_out = nn.Conv2d(hidden, dim, kernel_size=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.dwconv(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(gate) * value)


def transposed_attention(qkv: torch.Tensor, num_heads: int, temperature: torch.Tensor) -> torch.Tensor:
    """MDTA core on a qkv map [B, 3C, h, w] -> [B, C, h, w].

    Per head, q and k are [c, h·w] matrices L2-normalised along the pixel axis; the c×c map
    softmax((q kᵀ)·temperature) mixes the channels of v.
    """
    q, k, v = qkv.chunk(3, dim=1)
    # [B, C, h, w] -> [B, heads, C/heads, h*w]  (channel index = head * C/heads + c, as upstream)
    q = F.normalize(q.flatten(2).unflatten(1, (num_heads, -1)), dim=-1)
    k = F.normalize(k.flatten(2).unflatten(1, (num_heads, -1)), dim=-1)
    vh = v.flatten(2).unflatten(1, (num_heads, -1))
    attn = ((q @ k.transpose(-2, -1)) * temperature).softmax(dim=-1)
    return (attn @ vh).reshape_as(v)


class Attention(nn.Module):
    """Multi-Dconv head transposed self-attention (MDTA)."""

    def __init__(self, dim: int, num_heads: int, bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = nn.Conv2d(dim, 3 * dim, kernel_size=1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(3 * dim, 3 * dim, kernel_size=3, stride=1, padding=1,
                                    groups=3 * dim, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, kernel_size=1, bias=bias)

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """Global transposed attention of a qkv map [B, 3C, h, w] -> [B, C, h, w]."""
        return transposed_attention(qkv, self.num_heads, self.temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project_out(self.attend(self.qkv_dwconv(self.qkv(x))))


class TransformerBlock(nn.Module):
    """Pre-norm residual block: x + MDTA(LN(x)), then x + GDFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion_factor: float, bias: bool,
                 LayerNorm_type: str):
        super().__init__()
        self.norm1 = LayerNorm(dim, LayerNorm_type)
        self.attn = Attention(dim, num_heads, bias)
        self.norm2 = LayerNorm(dim, LayerNorm_type)
        self.ffn = FeedForward(dim, ffn_expansion_factor, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


class OverlapPatchEmbed(nn.Module):
    """3×3 convolution stem."""

    def __init__(self, in_c: int = 3, embed_dim: int = 48, bias: bool = False):
        super().__init__()
        self.proj = nn.Conv2d(in_c, embed_dim, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class Downsample(nn.Module):
    """Halve the channels with a 3×3 conv, then PixelUnshuffle(2): C -> 2C, H/2 × W/2."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat // 2, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PixelUnshuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Upsample(nn.Module):
    """Double the channels with a 3×3 conv, then PixelShuffle(2): C -> C/2, 2H × 2W."""

    def __init__(self, n_feat: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(n_feat, n_feat * 2, kernel_size=3, stride=1, padding=1, bias=False),
            nn.PixelShuffle(2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _stage(n: int, dim: int, heads: int, ffn_expansion_factor: float, bias: bool,
           LayerNorm_type: str) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(dim, heads, ffn_expansion_factor, bias, LayerNorm_type)
                           for _ in range(n)))


class Restormer(nn.Module):
    """Restormer with the official constructor keywords and defaults.

    Input H and W must be multiples of :data:`INPUT_MULTIPLE`. With ``dual_pixel_task`` the network
    adds a 1×1 skip from the stem features and does not add the input image to the output.
    """

    def __init__(self,
                 inp_channels: int = 3,
                 out_channels: int = 3,
                 dim: int = 48,
                 num_blocks: Sequence[int] = (4, 6, 6, 8),
                 num_refinement_blocks: int = 4,
                 heads: Sequence[int] = (1, 2, 4, 8),
                 ffn_expansion_factor: float = 2.66,
                 bias: bool = False,
                 LayerNorm_type: str = "WithBias",
                 dual_pixel_task: bool = False):
        super().__init__()
        d1, d2, d3, d4 = dim, int(dim * 2), int(dim * 4), int(dim * 8)
        stage = dict(ffn_expansion_factor=ffn_expansion_factor, bias=bias, LayerNorm_type=LayerNorm_type)

        # The stem conv ignores ``bias`` upstream (OverlapPatchEmbed is built with its default).
        self.patch_embed = OverlapPatchEmbed(inp_channels, dim)

        self.encoder_level1 = _stage(num_blocks[0], d1, heads[0], **stage)
        self.down1_2 = Downsample(d1)
        self.encoder_level2 = _stage(num_blocks[1], d2, heads[1], **stage)
        self.down2_3 = Downsample(d2)
        self.encoder_level3 = _stage(num_blocks[2], d3, heads[2], **stage)
        self.down3_4 = Downsample(d3)
        self.latent = _stage(num_blocks[3], d4, heads[3], **stage)

        self.up4_3 = Upsample(d4)
        self.reduce_chan_level3 = nn.Conv2d(d4, d3, kernel_size=1, bias=bias)
        self.decoder_level3 = _stage(num_blocks[2], d3, heads[2], **stage)
        self.up3_2 = Upsample(d3)
        self.reduce_chan_level2 = nn.Conv2d(d3, d2, kernel_size=1, bias=bias)
        self.decoder_level2 = _stage(num_blocks[1], d2, heads[1], **stage)
        # Level 1 of the decoder keeps the concatenated 2*dim channels (no reducing 1×1 conv)
        # and, like the refinement stage, uses heads[0].
        self.up2_1 = Upsample(d2)
        self.decoder_level1 = _stage(num_blocks[0], d2, heads[0], **stage)
        self.refinement = _stage(num_refinement_blocks, d2, heads[0], **stage)

        self.dual_pixel_task = dual_pixel_task
        if dual_pixel_task:
            self.skip_conv = nn.Conv2d(d1, d2, kernel_size=1, bias=bias)
        self.output = nn.Conv2d(d2, out_channels, kernel_size=3, stride=1, padding=1, bias=bias)

    def forward(self, inp_img: torch.Tensor) -> torch.Tensor:
        stem = self.patch_embed(inp_img)
        enc1 = self.encoder_level1(stem)
        enc2 = self.encoder_level2(self.down1_2(enc1))
        enc3 = self.encoder_level3(self.down2_3(enc2))
        latent = self.latent(self.down3_4(enc3))

        dec3 = self.decoder_level3(self.reduce_chan_level3(torch.cat([self.up4_3(latent), enc3], 1)))
        dec2 = self.decoder_level2(self.reduce_chan_level2(torch.cat([self.up3_2(dec3), enc2], 1)))
        dec1 = self.decoder_level1(torch.cat([self.up2_1(dec2), enc1], 1))
        dec1 = self.refinement(dec1)

        if self.dual_pixel_task:
            return self.output(dec1 + self.skip_conv(stem))
        return self.output(dec1) + inp_img


def _released(**overrides: Any) -> dict[str, Any]:
    """Constructor kwargs of a released configuration: the official defaults with ``overrides``."""
    cfg: dict[str, Any] = dict(
        inp_channels=3, out_channels=3, dim=48, num_blocks=[4, 6, 6, 8], num_refinement_blocks=4,
        heads=[1, 2, 4, 8], ffn_expansion_factor=2.66, bias=False, LayerNorm_type="WithBias",
        dual_pixel_task=False,
    )
    cfg.update(overrides)
    return cfg


# One entry per manifest in shared/reference/checkpoints (the options files' network_g settings).
PRESETS: dict[str, tuple[type[nn.Module], dict[str, Any]]] = {
    "Restormer-motion_deblurring": (Restormer, _released()),
    "Restormer-single_image_defocus_deblurring": (Restormer, _released()),
    "Restormer-dual_pixel_defocus_deblurring": (Restormer, _released(inp_channels=6, dual_pixel_task=True)),
    "Restormer-deraining": (Restormer, _released()),
    "Restormer-real_denoising": (Restormer, _released(LayerNorm_type="BiasFree")),
    "Restormer-gaussian_color_denoising": (Restormer, _released(LayerNorm_type="BiasFree")),
    "Restormer-gaussian_gray_denoising": (Restormer, _released(inp_channels=1, out_channels=1,
                                                                LayerNorm_type="BiasFree")),
}

FAMILY_CLASS = Restormer
