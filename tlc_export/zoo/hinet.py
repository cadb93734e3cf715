"""HINet (Chen et al., CVPRW 2021): two-stage UNet with Half Instance Normalization.

Re-implementation of megvii-model/HINet ``basicsr/models/archs/hinet_arch.py`` (class ``HINet``). The
constructor keywords, defaults, submodule names and therefore ``state_dict()`` keys are those of the
official class, so official checkpoints load strictly. The forward pass computes the same thing.

Structure (depth ``d``, base width ``wf``):

* stage 1: ``conv_01`` -> encoder ``down_path_1`` (d blocks, all but the last downsample by a strided
  4x4 conv) -> decoder ``up_path_1`` (d-1 blocks; each skip goes through ``skip_conv_1``) -> ``sam12``
  (supervised attention) which yields the stage-1 image and the feature passed on;
* stage 2: ``conv_02`` fused with the SAM feature by ``cat12`` -> encoder ``down_path_2`` whose
  downsampling blocks add cross-stage feature fusion (``csff_enc`` / ``csff_dec``) of the stage-1
  encoder and decoder features -> decoder ``up_path_2`` -> ``last`` + input.

Encoder blocks ``i`` with ``hin_position_left <= i <= hin_position_right`` normalise the first half of
their channels with ``nn.InstanceNorm2d(C // 2, affine=True)`` (the module TLC converts).

The network has no padding: H and W must be multiples of ``2 ** (depth - 1)``.
"""
from __future__ import annotations

import torch
from torch import nn

__all__ = ["HINet", "PRESETS", "FAMILY_CLASS"]


class SAM(nn.Module):
    """Supervised attention module between the two stages (3-channel image head, as in the official code)."""

    def __init__(self, n_feat: int, kernel_size: int = 3, bias: bool = True):
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv2d(n_feat, n_feat, kernel_size, padding=pad, bias=bias)
        # The official SAM predicts exactly 3 image channels, whatever ``in_chn`` is.
        self.conv2 = nn.Conv2d(n_feat, 3, kernel_size, padding=pad, bias=bias)
        self.conv3 = nn.Conv2d(3, n_feat, kernel_size, padding=pad, bias=bias)

    def forward(self, x: torch.Tensor, x_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.conv2(x) + x_img
        attention = torch.sigmoid(self.conv3(img))
        feature = self.conv1(x) * attention + x
        return feature, img


class UNetConvBlock(nn.Module):
    """Residual 3x3-conv block, optional half instance norm, CSFF and strided-conv downsampling.

    Returns ``(downsampled, full_resolution)`` when it downsamples, otherwise the feature alone.
    """

    def __init__(self, in_size: int, out_size: int, downsample: bool, relu_slope: float,
                 use_csff: bool = False, use_HIN: bool = False):
        super().__init__()
        self.identity = nn.Conv2d(in_size, out_size, 1, 1, 0)
        self.use_csff = use_csff
        self.conv_1 = nn.Conv2d(in_size, out_size, kernel_size=3, padding=1, bias=True)
        self.relu_1 = nn.LeakyReLU(relu_slope, inplace=False)
        self.conv_2 = nn.Conv2d(out_size, out_size, kernel_size=3, padding=1, bias=True)
        self.relu_2 = nn.LeakyReLU(relu_slope, inplace=False)
        if downsample and use_csff:
            self.csff_enc = nn.Conv2d(out_size, out_size, 3, 1, 1)
            self.csff_dec = nn.Conv2d(out_size, out_size, 3, 1, 1)
        self.use_HIN = use_HIN
        if use_HIN:
            self.norm = nn.InstanceNorm2d(out_size // 2, affine=True)
        # The official class keeps a bool ``downsample`` attribute and overwrites it by the conv module
        # when downsampling; here the flag and the module are kept apart (same state-dict keys).
        self.has_downsample = bool(downsample)
        if downsample:
            self.downsample = nn.Conv2d(out_size, out_size, kernel_size=4, stride=2, padding=1, bias=False)

    def forward(self, x: torch.Tensor, enc: torch.Tensor | None = None, dec: torch.Tensor | None = None):
        out = self.conv_1(x)
        if self.use_HIN:
            normed_half, kept_half = torch.chunk(out, 2, dim=1)
            out = torch.cat([self.norm(normed_half), kept_half], dim=1)
        out = self.relu_1(out)
        out = self.relu_2(self.conv_2(out))
        out = out + self.identity(x)
        if enc is not None and dec is not None:
            if not self.use_csff:
                raise RuntimeError("cross-stage features given to a block built without CSFF")
            out = out + self.csff_enc(enc) + self.csff_dec(dec)
        if self.has_downsample:
            return self.downsample(out), out
        return out


class UNetUpBlock(nn.Module):
    """2x transposed-conv upsampling, concatenation with the skip, then a plain conv block."""

    def __init__(self, in_size: int, out_size: int, relu_slope: float):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_size, out_size, kernel_size=2, stride=2, bias=True)
        self.conv_block = UNetConvBlock(in_size, out_size, False, relu_slope)

    def forward(self, x: torch.Tensor, bridge: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat([self.up(x), bridge], dim=1))


class HINet(nn.Module):
    """HINet; ``forward`` returns ``[stage1_image, stage2_image]`` like the official network."""

    def __init__(self, in_chn: int = 3, wf: int = 64, depth: int = 5, relu_slope: float = 0.2,
                 hin_position_left: int = 0, hin_position_right: int = 4):
        super().__init__()
        self.depth = depth
        self.down_path_1 = nn.ModuleList()
        self.down_path_2 = nn.ModuleList()
        self.conv_01 = nn.Conv2d(in_chn, wf, 3, 1, 1)
        self.conv_02 = nn.Conv2d(in_chn, wf, 3, 1, 1)

        channels = wf
        for level in range(depth):
            width = wf * 2 ** level
            use_hin = hin_position_left <= level <= hin_position_right
            downsample = level + 1 < depth
            self.down_path_1.append(
                UNetConvBlock(channels, width, downsample, relu_slope, use_HIN=use_hin))
            self.down_path_2.append(
                UNetConvBlock(channels, width, downsample, relu_slope, use_csff=downsample, use_HIN=use_hin))
            channels = width

        self.up_path_1 = nn.ModuleList()
        self.up_path_2 = nn.ModuleList()
        self.skip_conv_1 = nn.ModuleList()
        self.skip_conv_2 = nn.ModuleList()
        for level in range(depth - 2, -1, -1):
            width = wf * 2 ** level
            self.up_path_1.append(UNetUpBlock(channels, width, relu_slope))
            self.up_path_2.append(UNetUpBlock(channels, width, relu_slope))
            self.skip_conv_1.append(nn.Conv2d(width, width, 3, 1, 1))
            self.skip_conv_2.append(nn.Conv2d(width, width, 3, 1, 1))
            channels = width
        self.sam12 = SAM(channels)
        self.cat12 = nn.Conv2d(channels * 2, channels, 1, 1, 0)
        self.last = nn.Conv2d(channels, in_chn, kernel_size=3, stride=1, padding=1, bias=True)

    @staticmethod
    def _run_encoder(blocks: nn.ModuleList, x: torch.Tensor, enc_feats=None, dec_feats=None):
        """Runs an encoder; returns the bottleneck and the full-resolution features of the down blocks."""
        skips = []
        last = len(blocks) - 1
        for level, block in enumerate(blocks):
            if level == last:
                x = block(x)
            elif enc_feats is None:
                x, skip = block(x)
                skips.append(skip)
            else:
                # Stage-1 decoder outputs run coarse to fine; level ``i`` pairs with the ``i``-th from the end.
                x, skip = block(x, enc_feats[level], dec_feats[-1 - level])
                skips.append(skip)
        return x, skips

    @staticmethod
    def _run_decoder(ups: nn.ModuleList, skip_convs: nn.ModuleList, x: torch.Tensor, skips):
        outputs = []
        for step, (up, skip_conv) in enumerate(zip(ups, skip_convs)):
            x = up(x, skip_conv(skips[-1 - step]))
            outputs.append(x)
        return x, outputs

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        image = x
        # Stage 1.
        feat, encs = self._run_encoder(self.down_path_1, self.conv_01(image))
        feat, decs = self._run_decoder(self.up_path_1, self.skip_conv_1, feat, encs)
        sam_feature, out_1 = self.sam12(feat, image)
        # Stage 2.
        feat = self.cat12(torch.cat([self.conv_02(image), sam_feature], dim=1))
        feat, blocks = self._run_encoder(self.down_path_2, feat, encs, decs)
        feat, _ = self._run_decoder(self.up_path_2, self.skip_conv_2, feat, blocks)
        out_2 = self.last(feat) + image
        return [out_1, out_2]


def _preset(wf: int, left: int, right: int = 4) -> tuple[type[nn.Module], dict]:
    return HINet, dict(in_chn=3, wf=wf, depth=5, relu_slope=0.2,
                       hin_position_left=left, hin_position_right=right)


# Configurations of the official test options (see the manifests in shared/reference/checkpoints).
PRESETS = {
    "HINet-GoPro": _preset(64, 3),
    "HINet-REDS": _preset(64, 3),
    "HINet-Rain13k": _preset(64, 0),
    "HINet-SIDD-1x": _preset(64, 0),
    "HINet-SIDD-0.5x": _preset(32, 0),
}

FAMILY_CLASS = HINet


def input_multiple(model: HINet) -> int:
    """H and W must be multiples of this: the encoder halves the map depth − 1 times and never pads."""
    return 2 ** (model.depth - 1)
