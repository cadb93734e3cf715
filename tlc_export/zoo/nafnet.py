"""NAFNet (Chen et al., ECCV 2022): nonlinear-activation-free UNet.

Re-implementation of megvii-research/NAFNet ``basicsr/models/archs/NAFNet_arch.py`` (class ``NAFNet``) and
its ``LayerNorm2d`` (``basicsr/models/archs/arch_util.py``). Constructor keywords, defaults, submodule
names and ``state_dict()`` keys are the official ones; the forward pass computes the same thing.

Each ``NAFBlock`` has a simplified channel attention ``sca = nn.Sequential(nn.AdaptiveAvgPool2d(1),
nn.Conv2d(...))`` -- the global pooling that TLC replaces by a local one.

The input is zero-padded on the bottom/right to a multiple of ``padder_size = 2 ** len(enc_blk_nums)``
and the output cropped back; both are written with shape arithmetic that traces symbolically.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["LayerNorm2d", "SimpleGate", "NAFBlock", "NAFNet", "PRESETS", "FAMILY_CLASS"]


class LayerNorm2d(nn.Module):
    """Layer norm over the channel axis of an NCHW map (biased variance, eps inside the square root).

    The official version wraps this computation in a custom autograd Function (for a hand-written
    backward); the forward values are identical.
    """

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - x.mean(dim=1, keepdim=True)
        var = centred.pow(2).mean(dim=1, keepdim=True)
        normed = centred / (var + self.eps).sqrt()
        return self.weight.view(1, -1, 1, 1) * normed + self.bias.view(1, -1, 1, 1)


class SimpleGate(nn.Module):
    """Splits the channels in two halves and multiplies them."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first, second = x.chunk(2, dim=1)
        return first * second


class NAFBlock(nn.Module):
    def __init__(self, c: int, DW_Expand: int = 2, FFN_Expand: int = 2, drop_out_rate: float = 0.0):
        super().__init__()
        dw_channel = c * DW_Expand
        gated = dw_channel // 2
        self.conv1 = nn.Conv2d(c, dw_channel, kernel_size=1, padding=0, stride=1, groups=1, bias=True)
        self.conv2 = nn.Conv2d(dw_channel, dw_channel, kernel_size=3, padding=1, stride=1,
                               groups=dw_channel, bias=True)
        self.conv3 = nn.Conv2d(gated, c, kernel_size=1, padding=0, stride=1, groups=1, bias=True)
        # Simplified channel attention: global average pooling then a 1x1 conv (no activation).
        self.sca = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(gated, gated, kernel_size=1, padding=0, stride=1, groups=1, bias=True),
        )
        self.sg = SimpleGate()

        ffn_channel = FFN_Expand * c
        self.conv4 = nn.Conv2d(c, ffn_channel, kernel_size=1, padding=0, stride=1, groups=1, bias=True)
        self.conv5 = nn.Conv2d(ffn_channel // 2, c, kernel_size=1, padding=0, stride=1, groups=1, bias=True)

        self.norm1 = LayerNorm2d(c)
        self.norm2 = LayerNorm2d(c)
        self.dropout1 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()
        self.dropout2 = nn.Dropout(drop_out_rate) if drop_out_rate > 0.0 else nn.Identity()

        # Residual scales, zero at initialisation (each block starts as the identity).
        self.beta = nn.Parameter(torch.zeros((1, c, 1, 1)))
        self.gamma = nn.Parameter(torch.zeros((1, c, 1, 1)))

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        # Spatial mixing branch.
        x = self.sg(self.conv2(self.conv1(self.norm1(inp))))
        x = self.conv3(x * self.sca(x))
        y = inp + self.dropout1(x) * self.beta
        # Channel mixing (feed-forward) branch.
        x = self.conv5(self.sg(self.conv4(self.norm2(y))))
        return y + self.dropout2(x) * self.gamma


class NAFNet(nn.Module):
    def __init__(self, img_channel: int = 3, width: int = 16, middle_blk_num: int = 1,
                 enc_blk_nums=(), dec_blk_nums=()):
        # The official defaults are ``[]`` (mutable); tuples behave the same here.
        super().__init__()
        self.intro = nn.Conv2d(img_channel, width, kernel_size=3, padding=1, stride=1, groups=1, bias=True)
        self.ending = nn.Conv2d(width, img_channel, kernel_size=3, padding=1, stride=1, groups=1, bias=True)

        self.encoders = nn.ModuleList()
        self.decoders = nn.ModuleList()
        self.middle_blks = nn.ModuleList()
        self.ups = nn.ModuleList()
        self.downs = nn.ModuleList()

        chan = width
        for count in enc_blk_nums:
            self.encoders.append(nn.Sequential(*(NAFBlock(chan) for _ in range(count))))
            self.downs.append(nn.Conv2d(chan, 2 * chan, 2, 2))
            chan *= 2

        self.middle_blks = nn.Sequential(*(NAFBlock(chan) for _ in range(middle_blk_num)))

        for count in dec_blk_nums:
            # 1x1 conv to twice the channels, then pixel shuffle: 2x resolution, half the channels.
            self.ups.append(nn.Sequential(nn.Conv2d(chan, chan * 2, 1, bias=False), nn.PixelShuffle(2)))
            chan //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(chan) for _ in range(count))))

        self.padder_size = 2 ** len(self.encoders)

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        height, width = inp.shape[-2], inp.shape[-1]
        inp = self.check_image_size(inp)

        x = self.intro(inp)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            x = encoder(x)
            skips.append(x)
            x = down(x)

        x = self.middle_blks(x)

        for decoder, up, skip in zip(self.decoders, self.ups, reversed(skips)):
            x = decoder(up(x) + skip)

        x = self.ending(x) + inp
        return self._crop(x, height, width)

    @staticmethod
    def _crop(x: torch.Tensor, height, width) -> torch.Tensor:
        """``x[:, :, :height, :width]`` (the official crop) as a gather of the first rows and columns.

        A slice would return a view whose contiguity depends on whether padding happened; torch.export
        records that as a shape guard (the exported program then rejects inputs of the other kind).
        ``index_select`` always yields a fresh contiguous tensor, and traces to Range + Gather in ONNX.
        """
        rows = torch.arange(height, device=x.device)
        cols = torch.arange(width, device=x.device)
        return x.index_select(2, rows).index_select(3, cols)

    def check_image_size(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pads bottom/right to the next multiple of ``padder_size`` (no-op when already aligned)."""
        h, w = x.shape[-2], x.shape[-1]
        size = self.padder_size
        # ceil(h / size) * size - h: equals the official ``(size - h % size) % size`` for h >= 0, and is
        # visibly a multiple of ``size`` to symbolic shape tracers (no guards on h % size).
        pad_h = (h + size - 1) // size * size - h
        pad_w = (w + size - 1) // size * size - w
        return F.pad(x, (0, pad_w, 0, pad_h))


def _preset(width: int, middle: int, enc: list[int], dec: list[int]) -> tuple[type[nn.Module], dict]:
    return NAFNet, dict(img_channel=3, width=width, middle_blk_num=middle,
                        enc_blk_nums=list(enc), dec_blk_nums=list(dec))


# Configurations of the official test options (see the manifests in shared/reference/checkpoints).
PRESETS = {
    "NAFNet-GoPro-width64": _preset(64, 1, [1, 1, 1, 28], [1, 1, 1, 1]),
    "NAFNet-GoPro-width32": _preset(32, 1, [1, 1, 1, 28], [1, 1, 1, 1]),
    "NAFNet-SIDD-width64": _preset(64, 12, [2, 2, 4, 8], [2, 2, 2, 2]),
    "NAFNet-SIDD-width32": _preset(32, 12, [2, 2, 4, 8], [2, 2, 2, 2]),
    "NAFNet-REDS-width64": _preset(64, 1, [1, 1, 1, 28], [1, 1, 1, 1]),
}

FAMILY_CLASS = NAFNet
