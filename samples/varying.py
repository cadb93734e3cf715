"""Spatially varying (and, for contrast, uniform) degradations of the held-out photos (issue 14).

TLC repairs the mismatch between statistics pooled over a small training crop and over a whole image.
It should pay off when the degradation **varies across the image** while every training crop was
degraded uniformly (blind models: one blur std or noise level per crop), and do nothing useful when the
degradation is uniform. The cases below make both kinds of held-out input from the photos
``photo_data.HELDOUT_PHOTOS`` (never trained on), at full resolution:

* blur cases (for the blind deblurrer, trained with std ~ U[0.5, 3] per crop, noise sigma 2):
  ``blur-quadrants`` std 0.5 in the top-left and bottom-right quadrants, 3 in the other two;
  ``blur-ramp`` std rising linearly from 0.5 at the left edge to 3 at the right edge;
  ``blur-uniform1`` / ``blur-uniform2``: std 1 / 2 everywhere. All with Gaussian noise sigma 2 on top.
* noise cases (for the blind denoiser, trained with sigma ~ U[5, 50] per crop):
  ``noise-quadrants`` sigma 5 in the top-left and bottom-right quadrants, 50 in the other two;
  ``noise-halves`` sigma 10 on the left half, 45 on the right half. (The uniform case is sigma 25
  everywhere: ``samples/pairs/`` itself, ``photo_data.heldout_pairs``.)

A spatially varying blur gives every output pixel its own Gaussian kernel: pixel p is
``sum_q k_{s(p)}(p - q) x(q)`` for the std map ``s``. It is computed by blurring the whole image at a
few stds and taking each pixel from the blur at its own std -- exact for the two-level quadrant maps;
for the ramp, each pixel blends linearly between the two nearest of 11 stds 0.25 apart. Noise is
``randn * sigma(p) / 255`` per pixel and channel. The result is clipped and rounded to 8 bits. Photo
``i`` draws its noise from ``torch.Generator().manual_seed(photo_data.HELDOUT_SEED + i)``, so every run
writes the same pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

import photo_data

RAMP_LEVELS = 11


@dataclass(frozen=True)
class LevelMap:
    """A per-pixel level (blur std in px, or noise sigma on the 0..255 scale) over an image."""

    layout: str          # uniform | quadrants | halves | ramp
    a: float             # uniform value; top-left/bottom-right quadrants; left half; left edge
    b: float | None = None   # the other quadrants; right half; right edge

    def __call__(self, h: int, w: int) -> torch.Tensor:
        """The (h, w) float32 map."""
        if self.layout == "uniform":
            return torch.full((h, w), float(self.a))
        rows = (torch.arange(h) >= h // 2)[:, None]
        cols = (torch.arange(w) >= w // 2)[None, :]
        if self.layout == "quadrants":
            return torch.where(rows == cols, self.a, self.b).float()
        if self.layout == "halves":
            return torch.where(cols, self.b, self.a).expand(h, w).float()
        if self.layout == "ramp":
            t = torch.arange(w, dtype=torch.float32) / max(w - 1, 1)
            return (self.a + (self.b - self.a) * t)[None, :].expand(h, w).clone()
        raise ValueError(f"unknown layout {self.layout!r}")

    def describe(self, unit: str) -> str:
        if self.layout == "uniform":
            return f"{self.a:g}{unit} everywhere"
        if self.layout == "quadrants":
            return f"{self.a:g}{unit} top-left and bottom-right quadrants, {self.b:g}{unit} the other two"
        if self.layout == "halves":
            return f"{self.a:g}{unit} left half, {self.b:g}{unit} right half"
        return f"{self.a:g}{unit} at the left edge rising linearly to {self.b:g}{unit} at the right edge"


@dataclass(frozen=True)
class Case:
    name: str
    task: str            # deblur | denoise: which blind model it is meant for
    blur: LevelMap | None
    noise: LevelMap

    @property
    def varies(self) -> bool:
        return any(m is not None and m.layout != "uniform" for m in (self.blur, self.noise))

    def describe(self) -> str:
        parts = [f"blur std {self.blur.describe(' px')}"] if self.blur is not None else []
        return "; ".join(parts + [f"noise sigma {self.noise.describe('')}"])


SIGMA_DEBLUR = 2.0     # the shipped deblurrer's training noise
CASES = {c.name: c for c in (
    Case("blur-quadrants", "deblur", LevelMap("quadrants", 0.5, 3.0), LevelMap("uniform", SIGMA_DEBLUR)),
    Case("blur-ramp", "deblur", LevelMap("ramp", 0.5, 3.0), LevelMap("uniform", SIGMA_DEBLUR)),
    Case("blur-uniform1", "deblur", LevelMap("uniform", 1.0), LevelMap("uniform", SIGMA_DEBLUR)),
    Case("blur-uniform2", "deblur", LevelMap("uniform", 2.0), LevelMap("uniform", SIGMA_DEBLUR)),
    Case("noise-quadrants", "denoise", None, LevelMap("quadrants", 5.0, 50.0)),
    Case("noise-halves", "denoise", None, LevelMap("halves", 10.0, 45.0)),
)}


def varying_blur(image: torch.Tensor, stds: torch.Tensor) -> torch.Tensor:
    """Blur a (3, H, W) image with a per-pixel Gaussian std map ``stds`` (H, W) (see the module doc)."""
    values = torch.unique(stds)
    if values.numel() == 1:
        return photo_data.gaussian_blur(image, float(values[0]))
    if values.numel() > 4:       # a smooth map: blend between neighbouring levels of a fine grid
        values = torch.linspace(float(stds.min()), float(stds.max()), RAMP_LEVELS)
    blurred = torch.stack([photo_data.gaussian_blur(image, float(s)) for s in values])   # (L, 3, H, W)
    pos = torch.searchsorted(values, stds.contiguous(), right=True).clamp(1, len(values) - 1)
    lo, hi = values[pos - 1], values[pos]
    frac = ((stds - lo) / (hi - lo)).clamp(0.0, 1.0)
    below = blurred.gather(0, (pos - 1).expand(1, 3, *stds.shape))[0]
    above = blurred.gather(0, pos.expand(1, 3, *stds.shape))[0]
    return below + frac * (above - below)


def degrade_case(clean: torch.Tensor, case: Case, generator: torch.Generator) -> torch.Tensor:
    """The 8-bit-valued degraded version of one clean (3, H, W) photo."""
    h, w = clean.shape[-2:]
    x = clean if case.blur is None else varying_blur(clean, case.blur(h, w))
    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype) * (case.noise(h, w) / 255.0)
    return photo_data.quantize(x + noise)


def case_pairs(case: Case | str, names=photo_data.HELDOUT_PHOTOS) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    """``[(photo, degraded, clean)]`` for one case, each (3, H, W) in [0, 1], full resolution."""
    case = CASES[case] if isinstance(case, str) else case
    pairs = []
    for i, name in enumerate(names):
        clean = photo_data.load_photo(name)
        gen = torch.Generator().manual_seed(photo_data.HELDOUT_SEED + photo_data.HELDOUT_PHOTOS.index(name))
        pairs.append((name, degrade_case(clean, case, gen), clean))
    return pairs
