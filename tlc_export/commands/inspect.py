"""``tlc-export inspect MODEL [--calib HxW|auto]``: what TLC will do to a model, before converting it."""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("model", help="checkpoint / TorchScript / .pt2 / .onnx (as for conversion)")
    parser.add_argument("--calib", help="calibration size HxW, or auto (a zoo preset's training crop x 1.5); "
                                        "without it the ops are listed and a calibration suggested")
    parser.add_argument("--size", default="720x1280", help="run-time size for the cost and effect (default 720x1280)")
    parser.add_argument("--arch", help="preset or family (as for conversion)")
    parser.add_argument("--arch-kwargs", help="JSON constructor keyword arguments (as for conversion)")
    parser.add_argument("--no-effect", action="store_true",
                        help="skip the TLC effect (two eager passes at --size: slow on CPU for large models)")
    parser.add_argument("--json", help="also write the inspection as JSON to this path")
    parser.add_argument("--trust-pickle", action="store_true")


def run(args) -> int:
    import warnings
    from pathlib import Path

    from ..api import parse_arch_kwargs
    from ..cli import progress_printer
    from ..fileio import atomic_write_text
    from ..inspect import inspect_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter/tracer notes are noise here, as in convert
        result = inspect_model(args.model, args.calib, size=args.size, arch=args.arch,
                               arch_kwargs=parse_arch_kwargs(args.arch_kwargs), trust_pickle=args.trust_pickle,
                               effect=not args.no_effect, progress=progress_printer())
    print(result.table())
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(result.as_dict(), indent=2) + "\n")
    return 0
