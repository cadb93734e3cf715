#!/usr/bin/env python
"""TLC on photos outside the train/held-out split, with blur layouts the shipped pairs do not use.

    python samples/tlc_unseen.py [--calib 96] [--threads 1]

The shipped blind deblurrer (``samples/models/nafnet_deblur.pth``) runs on the top-left 480x640 crop of
four scikit-image images it never saw -- the Middlebury motorcycle (``stereo_motorcycle()[0]``), the
Hubble deep field, a retina fundus photo and a fluorescence-microscopy ``cell`` image (greyscale,
replicated to RGB) -- blurred with a radial std map (0.5 px at the centre to 3 px in the corners, like
a lens falloff), a vertical ramp (0.5 px at the top to 3 px at the bottom, like a depth gradient), and
uniformly (std 1.5), each plus Gaussian noise sigma 2 (seeded, 8-bit). It prints the PSNR gain of the
eager TLC reference at ``--calib`` over the global model per image and layout. A check that the
held-out results are not an artefact of the shipped layouts or photos: the degradations and photos are
different, the model and calibration rule are the same.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

import photo_data  # noqa: E402
import train  # noqa: E402
import varying  # noqa: E402
from tlc_export.load import load_model  # noqa: E402
from tlc_export.reference import to_local  # noqa: E402

PHOTOS = ("motorcycle", "hubble_deep_field", "retina", "cell")
CROP = (480, 640)
SEED = 7


def load_unseen(name: str) -> torch.Tensor:
    import skimage.data

    image = np.asarray(skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)())
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    image = image[:CROP[0], :CROP[1], :3]
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0


def radial(h: int, w: int) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return 0.5 + 2.5 * (x ** 2 + y ** 2).sqrt() / 2 ** 0.5


def vertical_ramp(h: int, w: int) -> torch.Tensor:
    return (0.5 + 2.5 * torch.linspace(0, 1, h))[:, None].expand(h, w).clone()


LAYOUTS = {"radial 0.5->3": radial, "vertical ramp 0.5->3": vertical_ramp,
           "uniform 1.5": lambda h, w: torch.full((h, w), 1.5)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calib", type=int, default=96)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    ckpt = HERE / "models" / "nafnet_deblur.pth"
    meta = json.loads(ckpt.with_suffix(".json").read_text())
    loaded = load_model(ckpt, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"])
    glob = loaded.module.eval()
    local, _ = to_local(copy.deepcopy(glob), (args.calib, args.calib))
    photos = {name: load_unseen(name) for name in PHOTOS}
    print(f"TLC {args.calib}x{args.calib} minus global, PSNR dB ({ckpt.name}, {CROP[0]}x{CROP[1]} crops, "
          f"noise sigma 2)")
    print(f"{'layout':22s} " + " ".join(f"{n[:12]:>12s}" for n in PHOTOS) + f" {'mean':>7s}")
    for layout, stds in LAYOUTS.items():
        gains = []
        for i, (name, clean) in enumerate(photos.items()):
            blurred = varying.varying_blur(clean, stds(*clean.shape[-2:]))
            noise = torch.randn(blurred.shape, generator=torch.Generator().manual_seed(SEED + i)) * (2.0 / 255.0)
            degraded = photo_data.quantize(blurred + noise)
            psnr = [train.psnr_8bit(train.restore(m, degraded, loaded.input_multiple), clean) for m in (glob, local)]
            gains.append(psnr[1] - psnr[0])
        print(f"{layout:22s} " + " ".join(f"{g:+12.2f}" for g in gains) + f" {np.mean(gains):+7.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
