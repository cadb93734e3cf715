"""The held-out pairs with spatially varying degradations (samples/varying.py, samples/make_pairs.py): seeded,
reproducible from the script (the shipped PNGs), and the degradations they claim (per-pixel blur against a
brute-force float64 kernel sum, noise levels per region, per-crop levels for blind training)."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
sys.path.insert(0, str(SAMPLES))

import make_pairs  # noqa: E402
import photo_data  # noqa: E402
import varying  # noqa: E402


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def test_cases_are_seeded():
    for case in ("blur-ramp", "noise-halves"):
        a = varying.case_pairs(case, names=("coins",))[0][1]
        b = varying.case_pairs(case, names=("coins",))[0][1]
        assert torch.equal(a, b)
    # The uniform std-2 case is exactly the deblurrer's held-out input (same seed, same draws).
    _, uniform2, _ = varying.case_pairs("blur-uniform2", names=("coins",))[0]
    heldout = {n: d for n, d, _ in photo_data.heldout_pairs("deblur", 2.0, 2.0)}["coins"]
    assert torch.equal(uniform2, heldout)


def test_shipped_pairs_are_what_the_script_writes(tmp_path):
    cases = ["blur-quadrants", "noise-quadrants"]
    make_pairs.write_varying(tmp_path, cases=cases)
    for case in cases:
        shipped = sorted(p.name for p in (SAMPLES / "pairs" / case).glob("*.png"))
        assert shipped == sorted(p.name for p in (tmp_path / case).glob("*.png")) and len(shipped) == 6
        for name in shipped:
            assert np.array_equal(_read(SAMPLES / "pairs" / case / name), _read(tmp_path / case / name)), name
    for name in photo_data.HELDOUT_PHOTOS:      # the clean links resolve to the clean photo
        clean = (photo_data.load_photo(name) * 255).round().byte().permute(1, 2, 0).numpy()
        assert np.array_equal(_read(SAMPLES / "pairs" / "blur-ramp" / f"{name}_clean.png"), clean)


def _brute_blur(image: np.ndarray, r: int, c: int, std: float) -> np.ndarray:
    """One output pixel of a Gaussian blur (truncated at ceil(3 std), normalised, reflect borders), float64."""
    radius = max(1, math.ceil(3 * std))
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / std) ** 2)
    k /= k.sum()
    padded = np.pad(image.astype(np.float64), ((0, 0), (radius, radius), (radius, radius)), mode="reflect")
    window = padded[:, r:r + 2 * radius + 1, c:c + 2 * radius + 1]
    return np.einsum("chw,h,w->c", window, k, k)


@pytest.mark.parametrize("layout, tol", [(varying.LevelMap("quadrants", 0.5, 3.0), 1e-5),
                                         (varying.LevelMap("ramp", 0.5, 3.0), 2e-3)])
def test_varying_blur_gives_each_pixel_its_own_kernel(layout, tol):
    clean = photo_data.load_photo("coins")[:, :120, :160]
    stds = layout(120, 160)
    got = varying.varying_blur(clean, stds).numpy()
    rng = np.random.default_rng(0)
    points = [(0, 0), (59, 79), (60, 80), (119, 159), (5, 150)]     # corners, the quadrant seams
    points += [tuple(p) for p in rng.integers(0, (120, 160), (15, 2))]
    for r, c in points:
        want = _brute_blur(clean.numpy(), r, c, float(stds[r, c]))
        assert np.abs(got[:, r, c] - want).max() <= tol, (r, c, float(stds[r, c]))


def test_noise_levels_per_region():
    _, noisy, clean = varying.case_pairs("noise-quadrants", names=("coins",))[0]
    residual = ((noisy - clean) * 255).numpy()
    h, w = residual.shape[1:]
    quads = {"top-left": residual[:, :h // 2, :w // 2], "top-right": residual[:, :h // 2, w // 2:],
             "bottom-left": residual[:, h // 2:, :w // 2], "bottom-right": residual[:, h // 2:, w // 2:]}
    stds = {k: float(v.std()) for k, v in quads.items()}
    assert 4.5 < stds["top-left"] < 5.5 and 4.5 < stds["bottom-right"] < 5.5, stds
    assert 42 < stds["top-right"] < 52 and 42 < stds["bottom-left"] < 52, stds   # clipping trims sigma 50 a little


def test_blind_training_draws_one_noise_level_per_crop():
    clean = torch.full((6, 3, 32, 32), 0.5)
    noisy = photo_data.degrade(clean, torch.Generator().manual_seed(0), "denoise", (5.0, 50.0))
    stds = ((noisy - clean) * 255).std(dim=(1, 2, 3))
    assert ((stds > 4) & (stds < 52)).all() and float(stds.max() - stds.min()) > 10, stds
    same = photo_data.degrade(clean, torch.Generator().manual_seed(0), "denoise", (5.0, 50.0))
    assert torch.equal(noisy, same)
