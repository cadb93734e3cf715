#!/usr/bin/env python
"""Write the held-out photos as 8-bit PNG pairs: ``samples/pairs/<name>_noisy.png`` and ``<name>_clean.png``.

    python samples/make_pairs.py [--out samples/pairs] [--task denoise] [--sigma 25]

The pairs are exactly the held-out inputs ``samples/train.py`` evaluates on (same photos, same seeded
noise: ``photo_data.heldout_pairs``), at full resolution -- no crop or resize: chelsea 300x451,
rocket 427x640, coins 303x384 (greyscale, stored as RGB like the model sees it; the noise differs per
channel). Together about 2 MB. With ``--task deblur`` the degraded file is ``<name>_blurry.png``.
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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(HERE / "pairs"))
    p.add_argument("--task", choices=("denoise", "deblur"), default="denoise")
    p.add_argument("--sigma", type=float, default=25.0)
    p.add_argument("--blur-sigma", type=float, default=2.0)
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "noisy" if args.task == "denoise" else "blurry"
    total = 0
    for name, degraded, clean in photo_data.heldout_pairs(args.task, args.sigma, args.blur_sigma):
        for tag, img in ((suffix, degraded), ("clean", clean)):
            path = out / f"{name}_{tag}.png"
            Image.fromarray(to_uint8(img)).save(path, optimize=True)
            size = path.stat().st_size
            total += size
            print(f"{path}  {img.shape[-2]}x{img.shape[-1]}  {size / 1e3:.0f} kB")
    print(f"total {total / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
