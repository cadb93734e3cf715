"""Training crops of the released configurations, and the calibration size they suggest.

The TLC paper (Sec. 4.2, Fig. 3b) finds the best local window about 1.5× the training crop: MPRNet
trained on 256×256 GoPro crops peaks at 384×384; the official ``*Local`` wrappers convert with
``base_size = 1.5 × train_size`` (megvii-research/NAFNet basicsr/models/archs/NAFNet_arch.py). So
``--calib auto`` is ``CALIB_PER_CROP`` × the crop each preset was trained on, read from the official
training configuration cited next to it (repository and path; the crop key is ``gt_size`` in the
BasicSR configs and ``TRAIN_PS`` in MPRNet's).

Restormer trains progressively on crops of 128, 160, 192, 256, 320 and 384 (``gt_sizes``, 300k
iterations in all, the last 24k at 384). We take the largest, 384: it is the configuration's own
``gt_size`` ("Max patch size for progressive training", the key the other families' crops come from)
and the crop the released weights were last trained on, so auto gives 576. Note that the TLC authors
evaluated Restormer-Local with a 384 window (megvii-research/TLC
options/test/GoPro/RestormerLocal-GoPro.yml, ``base_size: 384``): pass ``--calib 384`` to reproduce
the paper's Restormer numbers.
"""
from __future__ import annotations

from dataclasses import dataclass

CALIB_PER_CROP = 1.5

# The Restormer configs live in swz30/Restormer; the stored copies read were those of the unmodified
# fork lack9921/Restormer (same paths).
_RESTORMER_PROGRESSIVE = "progressive 128-384, largest taken (see module docstring)"


@dataclass(frozen=True)
class TrainingCrop:
    crop: int              # side of the square training crop (ground-truth patch size)
    source: str            # repository and path of the official training configuration
    note: str = ""

    @property
    def calib(self) -> tuple[int, int]:
        side = int(round(self.crop * CALIB_PER_CROP))
        return side, side


TRAINING_CROPS: dict[str, TrainingCrop] = {
    "HINet-GoPro": TrainingCrop(256, "megvii-model/HINet options/train/GoPro/HINet.yml"),
    "HINet-REDS": TrainingCrop(256, "megvii-model/HINet options/train/REDS/HINet.yml"),
    "HINet-Rain13k": TrainingCrop(256, "megvii-model/HINet options/train/Rain13k/HINet.yml"),
    "HINet-SIDD-1x": TrainingCrop(256, "megvii-model/HINet options/train/SIDD/HINet.yml"),
    "HINet-SIDD-0.5x": TrainingCrop(256, "megvii-model/HINet options/train/SIDD/HINet_0.5x.yml"),
    "MPRNet-Deblurring": TrainingCrop(256, "swz30/MPRNet Deblurring/training.yml"),
    "MPRNet-Denoising": TrainingCrop(128, "swz30/MPRNet Denoising/training.yml"),
    "MPRNet-Deraining": TrainingCrop(256, "swz30/MPRNet Deraining/training.yml"),
    "Restormer-motion_deblurring": TrainingCrop(
        384, "swz30/Restormer Motion_Deblurring/Options/Deblurring_Restormer.yml", _RESTORMER_PROGRESSIVE),
    "Restormer-single_image_defocus_deblurring": TrainingCrop(
        384, "swz30/Restormer Defocus_Deblurring/Options/DefocusDeblur_Single_8bit_Restormer.yml",
        _RESTORMER_PROGRESSIVE),
    "Restormer-dual_pixel_defocus_deblurring": TrainingCrop(
        384, "swz30/Restormer Defocus_Deblurring/Options/DefocusDeblur_DualPixel_16bit_Restormer.yml",
        _RESTORMER_PROGRESSIVE),
    "Restormer-deraining": TrainingCrop(
        384, "swz30/Restormer Deraining/Options/Deraining_Restormer.yml", _RESTORMER_PROGRESSIVE),
    "Restormer-real_denoising": TrainingCrop(
        384, "swz30/Restormer Denoising/Options/RealDenoising_Restormer.yml", _RESTORMER_PROGRESSIVE),
    "Restormer-gaussian_color_denoising": TrainingCrop(
        384, "swz30/Restormer Denoising/Options/GaussianColorDenoising_Restormer.yml", _RESTORMER_PROGRESSIVE),
    "Restormer-gaussian_gray_denoising": TrainingCrop(
        384, "swz30/Restormer Denoising/Options/GaussianGrayDenoising_Restormer.yml", _RESTORMER_PROGRESSIVE),
    "NAFNet-GoPro-width64": TrainingCrop(256, "megvii-research/NAFNet options/train/GoPro/NAFNet-width64.yml"),
    "NAFNet-GoPro-width32": TrainingCrop(256, "megvii-research/NAFNet options/train/GoPro/NAFNet-width32.yml"),
    "NAFNet-SIDD-width64": TrainingCrop(256, "megvii-research/NAFNet options/train/SIDD/NAFNet-width64.yml"),
    "NAFNet-SIDD-width32": TrainingCrop(256, "megvii-research/NAFNet options/train/SIDD/NAFNet-width32.yml"),
    "NAFNet-REDS-width64": TrainingCrop(256, "megvii-research/NAFNet options/train/REDS/NAFNet-width64.yml"),
}


def training_crop(preset: str | None) -> TrainingCrop | None:
    """The recorded training crop of a zoo preset (None for anything else)."""
    return TRAINING_CROPS.get(preset) if preset else None
