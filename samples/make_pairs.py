#!/usr/bin/env python
"""Write the held-out photos as 8-bit PNG pairs: ``samples/pairs/<name>_noisy.png`` and ``<name>_clean.png``.

    python samples/make_pairs.py [--out samples/pairs] [--task denoise] [--sigma 25]
    python samples/make_pairs.py --varying [--out samples/pairs]

The pairs are exactly the held-out inputs ``samples/train.py`` evaluates on (same photos, same seeded
noise: ``photo_data.heldout_pairs``), at full resolution -- no crop or resize: chelsea 300x451,
rocket 427x640, coins 303x384 (greyscale, stored as RGB like the model sees it; the noise differs per
channel). Together about 2 MB. With ``--task deblur`` the degraded file is ``<name>_blurry.png``.

``--varying`` writes the spatially varying and uniform cases of ``samples/varying.py`` instead, one
folder per case: ``<out>/<case>/<name>_blurry.png`` (blur cases) or ``<name>_noisy.png`` (noise cases),
and ``<name>_clean.png`` as a relative symbolic link to ``<out>/<name>_clean.png`` (written too), so the
clean photos are stored once. Every folder is a ``tlc-export sweep --pairs`` folder. Seeded: the same
command writes the same pixels.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import photo_data  # noqa: E402


def to_uint8(x) -> np.ndarray:
    """(3, H, W) float tensor on the 8-bit grid -> (H, W, 3) uint8 (exact: values are k/255)."""
    return np.round(x.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0).astype(np.uint8)


def write_png(path: Path, image) -> int:
    """Write a (3, H, W) 8-bit-valued tensor as PNG; returns the file size."""
    Image.fromarray(to_uint8(image)).save(path, optimize=True)
    return path.stat().st_size


def link_clean(case_dir: Path, name: str) -> Path:
    """``<case>/<name>_clean.png`` -> ``../<name>_clean.png`` (replaced if it exists)."""
    link = case_dir / f"{name}_clean.png"
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(Path("..") / f"{name}_clean.png")
    return link


def write_varying(out: Path, cases=None) -> int:
    """Every case of ``varying.CASES`` (or the named ones) as a pairs folder under ``out``; total bytes."""
    import varying

    total = 0
    for name in photo_data.HELDOUT_PHOTOS:
        total += write_png(out / f"{name}_clean.png", photo_data.load_photo(name))
    for case in (cases or varying.CASES):
        spec = varying.CASES[case]
        case_dir = out / case
        case_dir.mkdir(parents=True, exist_ok=True)
        suffix = "blurry" if spec.blur is not None else "noisy"
        for name, degraded, _ in varying.case_pairs(spec):
            size = write_png(case_dir / f"{name}_{suffix}.png", degraded)
            link_clean(case_dir, name)
            total += size
            print(f"{case_dir / f'{name}_{suffix}.png'}  {degraded.shape[-2]}x{degraded.shape[-1]}  "
                  f"{size / 1e3:.0f} kB  ({spec.describe()})")
    return total


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE / "pairs"))
    p.add_argument("--task", choices=("denoise", "deblur"), default="denoise")
    p.add_argument("--sigma", type=float, default=25.0)
    p.add_argument("--blur-sigma", type=float, default=2.0)
    p.add_argument("--varying", action="store_true",
                   help="write the spatially varying / uniform cases of samples/varying.py, one folder each")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.varying:
        print(f"total {write_varying(out) / 1e6:.2f} MB")
        return 0
    suffix = "noisy" if args.task == "denoise" else "blurry"
    total = 0
    for name, degraded, clean in photo_data.heldout_pairs(args.task, args.sigma, args.blur_sigma):
        for tag, img in ((suffix, degraded), ("clean", clean)):
            path = out / f"{name}_{tag}.png"
            size = write_png(path, img)
            total += size
            print(f"{path}  {img.shape[-2]}x{img.shape[-1]}  {size / 1e3:.0f} kB")
    print(f"total {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
