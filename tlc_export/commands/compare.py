"""``tlc-export compare MODEL IMAGE --calib HxW [--clean CLEAN] [-o OUT.png]``: see what TLC changes.

Writes ``degraded | global | TLC | [clean] | |TLC - global|`` as one PNG (see ``tlc_export/compare.py``)
and prints the PSNRs when a clean reference is given. The input files are never overwritten.
"""
from __future__ import annotations


def add_arguments(parser) -> None:
    from ..restore import DEFAULT_MAX_PIXELS

    parser.add_argument("model", help="checkpoint (.pth), TorchScript, .pt2 (eager) or global .onnx graph")
    parser.add_argument("image", help="degraded PNG or JPEG image (8/16-bit, grey or RGB)")
    parser.add_argument("--calib", required=True, help="TLC calibration size HxW (e.g. 96x96)")
    parser.add_argument("--clean", help="clean reference image of the same size (adds PSNRs and a clean panel)")
    parser.add_argument("-o", "--output", help="output PNG (default: <image stem>.tlc-compare.png beside it)")
    parser.add_argument("--arch", help="preset or family for a checkpoint (default: detected from its keys)")
    parser.add_argument("--arch-kwargs", help="JSON of constructor keyword arguments (official names)")
    parser.add_argument("--multiple", type=int,
                        help="pad the input to multiples of N (default: the zoo rule for a checkpoint, the "
                             "conversion report beside an .onnx graph)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--threads", type=int, help="CPU threads for PyTorch / ONNX Runtime")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow a pickled full nn.Module (unpickling runs code from the file)")


def run(args) -> int:
    import warnings

    from ..api import parse_arch_kwargs, parse_size
    from ..cli import progress_printer
    from ..compare import compare
    from ..errors import UserError

    if args.max_pixels < 1:
        raise UserError(f"--max-pixels {args.max_pixels} must be positive")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} must be positive")
    calib = parse_size(args.calib)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = compare(args.model, args.image, calib, clean=args.clean, output=args.output, arch=args.arch,
                         arch_kwargs=parse_arch_kwargs(args.arch_kwargs), multiple=args.multiple,
                         threads=args.threads, max_pixels=args.max_pixels, trust_pickle=args.trust_pickle,
                         progress=progress_printer())
    label = f"{calib[0]}x{calib[1]}"
    if result.psnr is not None:
        p = result.psnr
        print(f"PSNR: degraded {p['degraded']:.2f} dB, global {p['global']:.2f} dB, TLC {label} {p['tlc']:.2f} dB "
              f"-> TLC {result.gain_db:+.2f} dB on this image")
    print(f"|TLC - global| on the 0..1 scale: mean {result.mean_change:.4f}, max {result.max_change:.4f} "
          f"({result.rewritten} global ops made local; global {result.seconds['global']:.1f} s, "
          f"TLC {result.seconds['tlc']:.1f} s)")
    top, left, h, w = result.crop
    print(f"wrote {result.output}: {' | '.join(result.panels)} (panels: {w}x{h} at top {top}, left {left})")
    return 0
