"""Photos bundled with scikit-image, the train / held-out split and the seeded degradations.

Shared by ``samples/train.py`` (training crops and held-out evaluation) and ``samples/make_pairs.py``
(the 8-bit PNG pairs in ``samples/pairs/``), so both see exactly the same held-out inputs.

Split (decided once, never tuned):

* train -- RGB: astronaut (512x512), coffee (400x600), immunohistochemistry (512x512);
  greyscale, replicated to 3 channels: camera, moon, brick, grass, gravel (512x512), clock (300x400),
  page (191x384), text (172x448).
* held-out -- chelsea (300x451, RGB; ``skimage.data.cat`` is the same photo, so it is never trained on),
  rocket (427x640, RGB), coins (303x384, greyscale replicated to 3 channels). Evaluated at full
  resolution; none of the sizes is a multiple of 4 or 8, so the padding paths are exercised.

All photos ship inside the scikit-image wheel (no download). Greyscale photos become RGB by
replicating the channel; the noise is drawn independently per channel, so a noisy "grey" photo is a
noisy 3-channel image like every other input.

Degradations (``--task``):

* ``denoise``: additive white Gaussian noise, standard deviation ``sigma/255`` on [0, 1] images, then
  clipped to [0, 1] and rounded to 8 bits -- what a noisy PNG holds. Training and evaluation use the
  same model of an 8-bit noisy photo.
* ``deblur``: isotropic Gaussian blur (std ``blur_sigma`` px, 'reflect' borders) plus Gaussian noise of
  std ``sigma/255``, clipped and rounded to 8 bits (the variation tried in issue 5). ``blur_sigma`` may be
  a range ``(lo, hi)``: each image of the batch then gets its own std drawn uniformly from it (blind
  deblurring: the network has to estimate the blur from the image, which is what global statistics
  are good for).

``sigma`` may be a range ``(lo, hi)`` too (blind denoising): each image of the batch gets its own noise
std drawn uniformly from it, constant over the image.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

TRAIN_PHOTOS = ("astronaut", "coffee", "immunohistochemistry",
                "camera", "moon", "brick", "grass", "gravel", "clock", "page", "text")
HELDOUT_PHOTOS = ("chelsea", "rocket", "coins")

# Fixed seed of the held-out noise: every model and make_pairs.py see the same noisy held-out inputs,
# whatever --seed the training used.
HELDOUT_SEED = 20220723


def load_photo(name: str) -> torch.Tensor:
    """A scikit-image photo as a float32 (3, H, W) tensor in [0, 1] (greyscale replicated to RGB)."""
    import skimage.data

    image = np.asarray(getattr(skimage.data, name)())
    if image.dtype != np.uint8:
        raise ValueError(f"skimage.data.{name} is {image.dtype}, expected uint8")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = image[:, :, :3]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def quantize(x: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] and round to the 8-bit grid (values stay float in [0, 1])."""
    return torch.round(x.clamp(0.0, 1.0) * 255.0) / 255.0


def gaussian_kernel1d(std: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(3.0 * std)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t / std) ** 2)
    return k / k.sum()


def gaussian_blur(x: torch.Tensor, std: float) -> torch.Tensor:
    """Separable Gaussian blur of an (N, C, H, W) or (C, H, W) tensor with reflect borders."""
    squeeze = x.dim() == 3
    if squeeze:
        x = x[None]
    k = gaussian_kernel1d(std).to(x)
    r = (k.numel() - 1) // 2
    c = x.shape[1]
    x = F.pad(x, (r, r, r, r), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    x = F.conv2d(x, k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)
    return x[0] if squeeze else x


def degrade(clean: torch.Tensor, generator: torch.Generator, task: str = "denoise",
            sigma: float | tuple[float, float] = 25.0,
            blur_sigma: float | tuple[float, float] = 2.0) -> torch.Tensor:
    """The degraded 8-bit-valued version of ``clean`` ([0, 1] floats), randomness drawn from ``generator``."""
    x = clean
    if task == "deblur":
        if isinstance(blur_sigma, (tuple, list)):
            lo, hi = float(blur_sigma[0]), float(blur_sigma[1])
            batch = x if x.dim() == 4 else x[None]
            stds = lo + (hi - lo) * torch.rand(batch.shape[0], generator=generator, dtype=torch.float64)
            x = torch.stack([gaussian_blur(img, float(s)) for img, s in zip(batch, stds)])
            x = x if clean.dim() == 4 else x[0]
        else:
            x = gaussian_blur(x, blur_sigma)
    elif task != "denoise":
        raise ValueError(f"unknown task {task!r} (denoise or deblur)")
    std = per_image_uniform(sigma, x, generator) / 255.0 if isinstance(sigma, (tuple, list)) else sigma / 255.0
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * std
    return quantize(x + noise)


def per_image_uniform(value_range: tuple[float, float], x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One value per image of ``x`` drawn uniformly from ``value_range``, shaped to broadcast over ``x``
    (blind training: each crop gets its own, spatially constant, degradation level)."""
    lo, hi = float(value_range[0]), float(value_range[1])
    n = x.shape[0] if x.dim() == 4 else 1
    values = (lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)).to(x.dtype)
    return values.view(-1, 1, 1, 1) if x.dim() == 4 else values.view(1, 1, 1)


def heldout_pairs(task: str = "denoise", sigma: float = 25.0, blur_sigma: float = 2.0,
                  names=HELDOUT_PHOTOS) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(name, degraded, clean)]`` for the held-out photos, each (3, H, W) in [0, 1], full resolution.

    Noise of photo ``i`` comes from ``torch.Generator().manual_seed(HELDOUT_SEED + i)``.
    """
    pairs = []
    for i, name in enumerate(names):
        clean = load_photo(name)
        gen = torch.Generator().manual_seed(HELDOUT_SEED + i)
        pairs.append((name, degrade(clean, gen, task, sigma, blur_sigma), clean))
    return pairs


class PatchSampler:
    """Seeded random crops (with the 8 flips / 90-degree rotations) from the training photos.

    A photo is picked with probability proportional to its pixel count, then a uniform crop position.
    """

    def __init__(self, names=TRAIN_PHOTOS, patch: int = 64, seed: int = 0):
        self.images = [load_photo(n) for n in names]
        self.patch = patch
        for name, img in zip(names, self.images):
            if min(img.shape[-2:]) < patch:
                raise ValueError(f"photo {name} ({tuple(img.shape[-2:])}) is smaller than the patch {patch}")
        areas = torch.tensor([img.shape[-2] * img.shape[-1] for img in self.images], dtype=torch.float64)
        self.weights = areas / areas.sum()
        self.generator = torch.Generator().manual_seed(seed)

    def _int(self, high: int) -> int:
        return int(torch.randint(high, (1,), generator=self.generator))

    def sample(self, batch: int) -> torch.Tensor:
        """A (batch, 3, patch, patch) tensor of clean crops."""
        idx = torch.multinomial(self.weights, batch, replacement=True, generator=self.generator)
        crops = []
        p = self.patch
        for i in idx.tolist():
            img = self.images[i]
            top = self._int(img.shape[-2] - p + 1)
            left = self._int(img.shape[-1] - p + 1)
            crop = img[:, top:top + p, left:left + p]
            if self._int(2):
                crop = crop.flip(-1)
            crop = torch.rot90(crop, self._int(4), dims=(-2, -1))
            crops.append(crop)
        return torch.stack(crops).contiguous()
