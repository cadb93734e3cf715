"""``tlc-export verify MODEL GRAPH.onnx --calib HxW``: the graph against the eager TLC reference."""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("model", help="the PyTorch model the graph was converted from")
    parser.add_argument("graph", help="the converted .onnx graph")
    parser.add_argument("--calib", required=True, help="the calibration size used for the conversion")
    parser.add_argument("--arch", help="preset or family (as for conversion)")
    parser.add_argument("--arch-kwargs", help="JSON constructor keyword arguments (as for conversion)")
    parser.add_argument("--sizes", help="comma-separated HxW sizes to test (default: two around --calib)")
    parser.add_argument("--atol", type=float, default=1e-4, help="max abs error allowed (default 1e-4)")
    parser.add_argument("--no-photo", action="store_true", help="skip the full-resolution real photo")
    parser.add_argument("--impl", default="standard", choices=["standard", "plugin"])
    parser.add_argument("--trust-pickle", action="store_true")
    parser.add_argument("--json", help="also write the report as JSON to this path")


def run(args) -> int:
    from dataclasses import asdict
    from pathlib import Path

    from .. import __version__, guards
    from ..api import parse_arch_kwargs, parse_size
    from ..fileio import OutputSet, read_onnx
    from ..verify import verify_checkpoint

    calib = parse_size(args.calib)
    sizes = [parse_size(s, "--sizes") for s in args.sizes.split(",")] if args.sizes else None
    atol = guards.check_atol(args.atol)
    kwargs = parse_arch_kwargs(args.arch_kwargs)
    guards.check_arch_kwargs(args.arch, kwargs)
    read_onnx(args.graph)
    with OutputSet([args.model, args.graph]) as outputs:
        if args.json:
            outputs.claim(args.json, "the --json report", explicit=True)
        report = verify_checkpoint(args.model, args.graph, calib, arch=args.arch, arch_kwargs=kwargs, sizes=sizes,
                                   atol=atol, photo=not args.no_photo, trust_pickle=args.trust_pickle,
                                   impl=args.impl)
        print(report.table())
        if args.json:
            data = {"tool": "tlc-export", "version": __version__, "command": "verify", **asdict(report)}
            outputs.write_text(args.json, json.dumps(data, indent=2) + "\n")
            outputs.commit()
    return 0 if report.passed else 1
