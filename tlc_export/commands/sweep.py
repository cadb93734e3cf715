"""``tlc-export sweep MODEL --pairs DIR``: PSNR/SSIM of TLC at several calibration sizes against global.

Pairs in DIR: ``<name>_noisy|_degraded|_blur|_blurry|_lq.<png|jpg>`` with ``<name>_clean|_gt|_sharp|_hq``
(see ``tlc_export/sweep.py``). Writes ``sweep.json`` and ``sweep.png`` (PSNR against calibration size,
the global model as a horizontal line) into ``--out``, prints the table, whether TLC helps on these
pairs at all (mean gain and its spread over images) and a recommendation.
"""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    from ..restore import DEFAULT_MAX_PIXELS
    from ..sweep import DEFAULT_CALIB_SIZES

    parser.add_argument("model", help="checkpoint (.pth), TorchScript, .pt2 or global .onnx model")
    parser.add_argument("--pairs", required=True,
                        help="directory of <name>_noisy.png / <name>_clean.png pairs (also _degraded, _blur, "
                             "_blurry, _lq with _gt, _sharp, _hq; .png/.jpg)")
    parser.add_argument("--calib-sizes", default=DEFAULT_CALIB_SIZES,
                        help=f"comma-separated calibration sizes, N or HxW (default {DEFAULT_CALIB_SIZES})")
    parser.add_argument("--arch", help="preset or family for a checkpoint (default: detected from its keys)")
    parser.add_argument("--arch-kwargs", help="JSON of constructor keyword arguments (official names)")
    parser.add_argument("--out", help="directory for sweep.json and sweep.png (default: <model stem>-sweep)")
    parser.add_argument("--multiple", type=int,
                        help="pad images to multiples of N (default: the model's own requirement)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own)")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a pickled full nn.Module (unpickling runs code from the file)")
    parser.add_argument("--fast", action="store_true", help="convert in the official fast TLC mode")


def run(args) -> int:
    from pathlib import Path

    from ..errors import UserError
    from ..sweep import sweep

    from ..api import parse_arch_kwargs

    arch_kwargs = parse_arch_kwargs(args.arch_kwargs)
    if args.max_pixels < 1:
        raise UserError(f"--max-pixels {args.max_pixels} must be positive")
    model = Path(args.model)
    if not model.is_file():
        raise UserError(f"model file not found: {model}")
    out = Path(args.out) if args.out else Path(f"{model.stem}-sweep")
    result = sweep(model, args.pairs, args.calib_sizes, arch=args.arch, arch_kwargs=arch_kwargs, out_dir=out,
                   multiple=args.multiple, threads=args.threads, max_pixels=args.max_pixels,
                   trust_pickle=args.trust_pickle, fast=args.fast)
    for note in result.notes:
        print(f"tlc-export: note: {note}", file=sys.stderr)
    print(result.table())
    print(result.verdict_text())
    print(result.recommendation_text())
    print(f"wrote {result.json_path} and {result.plot_path}")
    return 0
