"""MPRNet (Zamir et al., CVPR 2021, "Multi-Stage Progressive Image Restoration"): our implementation.

Layout, parameter names and forward semantics follow swz30/MPRNet at commit
43feb2aed45f5e0b9082c78c8c455160e30a3a82 (``Deblurring/MPRNet.py``, ``Denoising/MPRNet.py``,
``Deraining/MPRNet.py``), so the official checkpoints load strictly (after removing the ``module.``
prefix the official training script leaves on the keys).

The three task folders hold the same network; only the constructor defaults differ:

=============  ======  ===============  =================
task           n_feat  scale_unetfeats  scale_orsnetfeats
=============  ======  ===============  =================
Deblurring     96      48               32
Denoising      80      48               32
Deraining      40      20               16
=============  ======  ===============  =================

(all three: ``in_c=3, out_c=3, num_cab=8, kernel_size=3, reduction=4, bias=False``). Early revisions of
``Deblurring/MPRNet.py`` ignored ``in_c``/``out_c`` (hard-coded 3, swz30/MPRNet issue #39); the later
revision, like the other two folders, uses them. With the default 3/3 the two are identical.

Official details that are reproduced on purpose:

* ONE ``nn.PReLU()`` object is created by the top-level constructor and shared by every CAB of the
  network (it sits at ``body.1`` of each CAB), so the state dict carries the same one-element weight under
  many keys and ``parameters()`` yields it once.
* ``SAM`` maps features to / from exactly 3 image channels whatever ``in_c``/``out_c`` are.
* The last conv of every ``ORB`` never has a bias, even with ``bias=True``; the 1×1 convs of the
  resampling blocks never have a bias either.
* The forward returns ``[stage3_img, stage2_img, stage1_img]`` (final output first).

Differences from the official code, all value-preserving: the image is split with ``h // 2`` (the
official ``int(H / 2)``, equal for positive sizes) so that exports keep H/W dynamic; residual additions
are out of place; no ``torch.cuda`` calls (the TLC copy of this file calls ``torch.cuda.empty_cache()``
and returns only the final image).
"""
from __future__ import annotations

import torch
from torch import nn

# Accepted input sizes: H and W must both be multiples of INPUT_MULTIPLE. Stage 1 works on the four
# (H/2)×(W/2) quarters and its U-Net halves them twice with floor rounding before adding skip
# connections at 2× upsampling, so each quarter side must be a multiple of 4, i.e. H and W multiples
# of 8 (other sizes fail with a shape mismatch, exactly as in the official code).
INPUT_MULTIPLE = 8

# Number of colour channels the supervised attention modules predict (hard-coded in the official code).
SAM_IMAGE_CHANNELS = 3


def _same_conv(cin: int, cout: int, k: int, bias: bool = False) -> nn.Conv2d:
    """Stride-1 convolution with 'same' zero padding for odd ``k``."""
    return nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias)


class CALayer(nn.Module):
    """Squeeze-and-excitation channel attention: ``x * sigmoid(W2 relu(W1 mean(x)))``.

    ``avg_pool`` is an ``nn.AdaptiveAvgPool2d(1)`` submodule (the global op TLC replaces); the product
    broadcasts, so a same-size local pool can be swapped in without any other change.
    """

    def __init__(self, channel: int, reduction: int = 16, bias: bool = False):
        super().__init__()
        squeezed = channel // reduction
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.conv_du = nn.Sequential(
            nn.Conv2d(channel, squeezed, 1, padding=0, bias=bias),
            nn.ReLU(),
            nn.Conv2d(squeezed, channel, 1, padding=0, bias=bias),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.avg_pool(x))


class CAB(nn.Module):
    """Channel attention block: conv → act → conv → channel attention, plus the input."""

    def __init__(self, n_feat: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module):
        super().__init__()
        # Registration order (CA before body) matches the official state-dict order.
        self.CA = CALayer(n_feat, reduction, bias=bias)
        # ``act`` is the network-wide shared PReLU: it is deliberately not copied.
        self.body = nn.Sequential(
            _same_conv(n_feat, n_feat, kernel_size, bias),
            act,
            _same_conv(n_feat, n_feat, kernel_size, bias),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.CA(self.body(x)) + x


class SAM(nn.Module):
    """Supervised attention module: predicts a restored image and re-weights the features with it."""

    def __init__(self, n_feat: int, kernel_size: int, bias: bool):
        super().__init__()
        self.conv1 = _same_conv(n_feat, n_feat, kernel_size, bias)
        self.conv2 = _same_conv(n_feat, SAM_IMAGE_CHANNELS, kernel_size, bias)
        self.conv3 = _same_conv(SAM_IMAGE_CHANNELS, n_feat, kernel_size, bias)

    def forward(self, x: torch.Tensor, x_img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.conv2(x) + x_img
        gate = torch.sigmoid(self.conv3(img))
        return self.conv1(x) * gate + x, img


def _bilinear(scale: float) -> nn.Upsample:
    return nn.Upsample(scale_factor=scale, mode="bilinear", align_corners=False)


class DownSample(nn.Module):
    """Bilinear ×0.5 then a 1×1 conv widening ``in_channels`` by ``s_factor``."""

    def __init__(self, in_channels: int, s_factor: int):
        super().__init__()
        self.down = nn.Sequential(_bilinear(0.5), nn.Conv2d(in_channels, in_channels + s_factor, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(x)


class UpSample(nn.Module):
    """Bilinear ×2 then a 1×1 conv narrowing ``in_channels + s_factor`` to ``in_channels``."""

    def __init__(self, in_channels: int, s_factor: int):
        super().__init__()
        self.up = nn.Sequential(_bilinear(2.0), nn.Conv2d(in_channels + s_factor, in_channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class SkipUpSample(UpSample):
    """``UpSample`` followed by the addition of a skip connection."""

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.up(x) + skip


def _cab_stack(count: int, width: int, kernel_size: int, reduction: int, bias: bool, act: nn.Module):
    return [CAB(width, kernel_size, reduction, bias=bias, act=act) for _ in range(count)]


class Encoder(nn.Module):
    """Three-level U-Net encoder (two CABs per level). With ``csff`` it also fuses, at each level, the
    previous stage's encoder and decoder features through 1×1 convs (cross-stage feature fusion)."""

    def __init__(self, n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff):
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        for level, width in enumerate(widths, start=1):
            setattr(self, f"encoder_level{level}",
                    nn.Sequential(*_cab_stack(2, width, kernel_size, reduction, bias, act)))
        self.down12 = DownSample(widths[0], scale_unetfeats)
        self.down23 = DownSample(widths[1], scale_unetfeats)
        self.csff = bool(csff)
        if self.csff:
            for source in ("enc", "dec"):
                for level, width in enumerate(widths, start=1):
                    setattr(self, f"csff_{source}{level}", nn.Conv2d(width, width, kernel_size=1, bias=bias))

    def _fuse(self, level: int, feat, encoder_outs, decoder_outs):
        if encoder_outs is None or decoder_outs is None:
            return feat
        enc_conv = getattr(self, f"csff_enc{level}")
        dec_conv = getattr(self, f"csff_dec{level}")
        return feat + enc_conv(encoder_outs[level - 1]) + dec_conv(decoder_outs[level - 1])

    def forward(self, x, encoder_outs=None, decoder_outs=None):
        enc1 = self._fuse(1, self.encoder_level1(x), encoder_outs, decoder_outs)
        enc2 = self._fuse(2, self.encoder_level2(self.down12(enc1)), encoder_outs, decoder_outs)
        enc3 = self._fuse(3, self.encoder_level3(self.down23(enc2)), encoder_outs, decoder_outs)
        return [enc1, enc2, enc3]


class Decoder(nn.Module):
    """Three-level U-Net decoder; skip connections pass through a CAB before being added."""

    def __init__(self, n_feat, kernel_size, reduction, act, bias, scale_unetfeats):
        super().__init__()
        widths = [n_feat + i * scale_unetfeats for i in range(3)]
        for level, width in enumerate(widths, start=1):
            setattr(self, f"decoder_level{level}",
                    nn.Sequential(*_cab_stack(2, width, kernel_size, reduction, bias, act)))
        self.skip_attn1 = CAB(widths[0], kernel_size, reduction, bias=bias, act=act)
        self.skip_attn2 = CAB(widths[1], kernel_size, reduction, bias=bias, act=act)
        self.up21 = SkipUpSample(widths[0], scale_unetfeats)
        self.up32 = SkipUpSample(widths[1], scale_unetfeats)

    def forward(self, outs):
        enc1, enc2, enc3 = outs
        dec3 = self.decoder_level3(enc3)
        dec2 = self.decoder_level2(self.up32(dec3, self.skip_attn2(enc2)))
        dec1 = self.decoder_level1(self.up21(dec2, self.skip_attn1(enc1)))
        return [dec1, dec2, dec3]


class ORB(nn.Module):
    """Original-resolution block: ``num_cab`` CABs and a bias-free conv, plus the input."""

    def __init__(self, n_feat, kernel_size, reduction, act, bias, num_cab):
        super().__init__()
        layers = _cab_stack(num_cab, n_feat, kernel_size, reduction, bias, act)
        layers.append(_same_conv(n_feat, n_feat, kernel_size))  # no bias, whatever ``bias`` is (official)
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class ORSNet(nn.Module):
    """Stage-3 original-resolution subnetwork: three ORBs, each followed by the fusion of the stage-2
    encoder/decoder features of one U-Net level, upsampled to full resolution."""

    def __init__(self, n_feat, scale_orsnetfeats, kernel_size, reduction, act, bias, scale_unetfeats, num_cab):
        super().__init__()
        width = n_feat + scale_orsnetfeats
        for i in (1, 2, 3):
            setattr(self, f"orb{i}", ORB(width, kernel_size, reduction, act, bias, num_cab))

        self.up_enc1 = UpSample(n_feat, scale_unetfeats)
        self.up_dec1 = UpSample(n_feat, scale_unetfeats)
        self.up_enc2 = nn.Sequential(UpSample(n_feat + scale_unetfeats, scale_unetfeats),
                                     UpSample(n_feat, scale_unetfeats))
        self.up_dec2 = nn.Sequential(UpSample(n_feat + scale_unetfeats, scale_unetfeats),
                                     UpSample(n_feat, scale_unetfeats))
        for source in ("enc", "dec"):
            for i in (1, 2, 3):
                setattr(self, f"conv_{source}{i}", nn.Conv2d(n_feat, width, kernel_size=1, bias=bias))

    def forward(self, x, encoder_outs, decoder_outs):
        x = self.orb1(x)
        x = x + self.conv_enc1(encoder_outs[0]) + self.conv_dec1(decoder_outs[0])
        x = self.orb2(x)
        x = x + self.conv_enc2(self.up_enc1(encoder_outs[1])) + self.conv_dec2(self.up_dec1(decoder_outs[1]))
        x = self.orb3(x)
        x = x + self.conv_enc3(self.up_enc2(encoder_outs[2])) + self.conv_dec3(self.up_dec2(decoder_outs[2]))
        return x


class _MPRNetBase(nn.Module):
    """The three-stage MPRNet; the task classes below differ only in their constructor defaults.

    Input: (N, in_c, H, W) with H, W multiples of ``INPUT_MULTIPLE``. Output: the list
    ``[stage3_img, stage2_img, stage1_img]``, each (N, 3, H, W) (stage 3 has ``out_c`` channels); the
    final restored image is the first entry.
    """

    def __init__(self, in_c, out_c, n_feat, scale_unetfeats, scale_orsnetfeats, num_cab, kernel_size,
                 reduction, bias):
        super().__init__()
        # One activation object for the whole network (official): every CAB shares its weight.
        act = nn.PReLU()

        def shallow():
            return nn.Sequential(_same_conv(in_c, n_feat, kernel_size, bias),
                                 CAB(n_feat, kernel_size, reduction, bias=bias, act=act))

        self.shallow_feat1 = shallow()
        self.shallow_feat2 = shallow()
        self.shallow_feat3 = shallow()

        self.stage1_encoder = Encoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff=False)
        self.stage1_decoder = Decoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats)
        self.stage2_encoder = Encoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats, csff=True)
        self.stage2_decoder = Decoder(n_feat, kernel_size, reduction, act, bias, scale_unetfeats)
        self.stage3_orsnet = ORSNet(n_feat, scale_orsnetfeats, kernel_size, reduction, act, bias,
                                    scale_unetfeats, num_cab)

        self.sam12 = SAM(n_feat, kernel_size=1, bias=bias)
        self.sam23 = SAM(n_feat, kernel_size=1, bias=bias)

        self.concat12 = _same_conv(2 * n_feat, n_feat, kernel_size, bias)
        self.concat23 = _same_conv(2 * n_feat, n_feat + scale_orsnetfeats, kernel_size, bias)
        self.tail = _same_conv(n_feat + scale_orsnetfeats, out_c, kernel_size, bias)

    def forward(self, x3_img: torch.Tensor) -> list[torch.Tensor]:
        # Official: int(H / 2), int(W / 2); floor division is the same for positive sizes and stays
        # symbolic under tracing/export.
        h2 = x3_img.shape[2] // 2
        w2 = x3_img.shape[3] // 2

        # Multi-patch hierarchy: two horizontal halves for stage 2, four quarters for stage 1.
        top_img, bot_img = x3_img[:, :, :h2, :], x3_img[:, :, h2:, :]
        quarters = (top_img[..., :w2], top_img[..., w2:], bot_img[..., :w2], bot_img[..., w2:])

        # ---- Stage 1: encode each quarter, join left/right, decode each half.
        q_feats = [self.stage1_encoder(self.shallow_feat1(q)) for q in quarters]

        def join_lr(left, right):
            return [torch.cat((a, b), dim=3) for a, b in zip(left, right)]

        feat1_top = join_lr(q_feats[0], q_feats[1])
        feat1_bot = join_lr(q_feats[2], q_feats[3])
        res1_top = self.stage1_decoder(feat1_top)
        res1_bot = self.stage1_decoder(feat1_bot)

        sam_top, img1_top = self.sam12(res1_top[0], top_img)
        sam_bot, img1_bot = self.sam12(res1_bot[0], bot_img)
        stage1_img = torch.cat([img1_top, img1_bot], dim=2)

        # ---- Stage 2: per half, shallow features fused with the stage-1 SAM features and CSFF.
        x2top_cat = self.concat12(torch.cat([self.shallow_feat2(top_img), sam_top], dim=1))
        x2bot_cat = self.concat12(torch.cat([self.shallow_feat2(bot_img), sam_bot], dim=1))
        feat2_top = self.stage2_encoder(x2top_cat, feat1_top, res1_top)
        feat2_bot = self.stage2_encoder(x2bot_cat, feat1_bot, res1_bot)
        feat2 = [torch.cat((a, b), dim=2) for a, b in zip(feat2_top, feat2_bot)]
        res2 = self.stage2_decoder(feat2)
        sam_full, stage2_img = self.sam23(res2[0], x3_img)

        # ---- Stage 3: full resolution.
        x3_cat = self.concat23(torch.cat([self.shallow_feat3(x3_img), sam_full], dim=1))
        x3_cat = self.stage3_orsnet(x3_cat, feat2, res2)
        stage3_img = self.tail(x3_cat) + x3_img
        return [stage3_img, stage2_img, stage1_img]


class MPRNetDeblurring(_MPRNetBase):
    """MPRNet with the defaults of ``Deblurring/MPRNet.py`` (GoPro / HIDE / RealBlur models)."""

    def __init__(self, in_c=3, out_c=3, n_feat=96, scale_unetfeats=48, scale_orsnetfeats=32, num_cab=8,
                 kernel_size=3, reduction=4, bias=False):
        super().__init__(in_c, out_c, n_feat, scale_unetfeats, scale_orsnetfeats, num_cab, kernel_size,
                         reduction, bias)


class MPRNetDenoising(_MPRNetBase):
    """MPRNet with the defaults of ``Denoising/MPRNet.py`` (SIDD / DND model)."""

    def __init__(self, in_c=3, out_c=3, n_feat=80, scale_unetfeats=48, scale_orsnetfeats=32, num_cab=8,
                 kernel_size=3, reduction=4, bias=False):
        super().__init__(in_c, out_c, n_feat, scale_unetfeats, scale_orsnetfeats, num_cab, kernel_size,
                         reduction, bias)


class MPRNetDeraining(_MPRNetBase):
    """MPRNet with the defaults of ``Deraining/MPRNet.py`` (Rain13k model)."""

    def __init__(self, in_c=3, out_c=3, n_feat=40, scale_unetfeats=20, scale_orsnetfeats=16, num_cab=8,
                 kernel_size=3, reduction=4, bias=False):
        super().__init__(in_c, out_c, n_feat, scale_unetfeats, scale_orsnetfeats, num_cab, kernel_size,
                         reduction, bias)


MPRNet = MPRNetDeblurring

_COMMON = dict(in_c=3, out_c=3, num_cab=8, kernel_size=3, reduction=4, bias=False)

PRESETS = {
    "MPRNet-Deblurring": (MPRNetDeblurring, dict(_COMMON, n_feat=96, scale_unetfeats=48, scale_orsnetfeats=32)),
    "MPRNet-Denoising": (MPRNetDenoising, dict(_COMMON, n_feat=80, scale_unetfeats=48, scale_orsnetfeats=32)),
    "MPRNet-Deraining": (MPRNetDeraining, dict(_COMMON, n_feat=40, scale_unetfeats=20, scale_orsnetfeats=16)),
}

FAMILY_CLASS = MPRNetDeblurring

__all__ = ["MPRNet", "MPRNetDeblurring", "MPRNetDenoising", "MPRNetDeraining", "PRESETS", "FAMILY_CLASS",
           "INPUT_MULTIPLE"]
