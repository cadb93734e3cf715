#!/usr/bin/env python
"""Which converted op makes TLC help or hurt? Held-out PSNR with TLC on one op at a time.

    python samples/tlc_per_op.py samples/models/hinet_denoise.pth [--calib 64]

Loads a sample model with the arch_kwargs of its provenance (``<model>.json``), converts it with
``tlc_export.reference.to_local(model, calib)``, then for each converted op keeps only that op local
(the others get a window larger than any map, i.e. they are global again) and prints the mean held-out
PSNR next to the all-global and all-local numbers.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import photo_data  # noqa: E402
import train as sample_train  # noqa: E402
from tlc_export.load import load_model  # noqa: E402
from tlc_export.reference import to_local  # noqa: E402

HUGE = (1 << 30, 1 << 30)


def mean_psnr(model, pairs, multiple) -> float:
    values = [sample_train.psnr_8bit(sample_train.restore(model, d, multiple), c) for _, d, c in pairs]
    return sum(values) / len(values)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.model)
    meta = json.loads(path.with_suffix(".json").read_text())
    loaded = load_model(path, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"])
    deg = meta["degradation"]
    pairs = photo_data.heldout_pairs(deg["task"], deg["sigma_255"], deg.get("blur_sigma_heldout", 2.0))
    multiple = loaded.input_multiple
    local, records = to_local(copy.deepcopy(loaded.module), calib=(args.calib, args.calib))
    print(f"{path.name}: all global {mean_psnr(loaded.module, pairs, multiple):.3f} dB, "
          f"all local (calib {args.calib}) {mean_psnr(local, pairs, multiple):.3f} dB")
    modules = dict(local.named_modules())
    for record in records:
        single = copy.deepcopy(local)
        for name, module in single.named_modules():
            if name != record.path and getattr(module, "window", None) is not None and name in modules:
                module.window = HUGE
        print(f"  only {record.path:28s} {record.kind:12s} window {record.window[0]:4d}x{record.window[1]:<4d}"
              f" {mean_psnr(single, pairs, multiple):.3f} dB", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
