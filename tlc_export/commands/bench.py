"""``tlc-export bench MODEL --calib HxW --size HxW``: latency of global vs TLC graphs, the eager
reference and overlapping-patch inference, with ratios to the global graph."""
from __future__ import annotations

import json
import sys


def add_arguments(parser) -> None:
    parser.add_argument("model", help="checkpoint / TorchScript / .pt2 (as for conversion)")
    parser.add_argument("--calib", required=True, help="calibration size HxW, or auto (a zoo preset's training crop x 1.5)")
    parser.add_argument("--size", default="512x512", help="benchmark input HxW (default 512x512)")
    parser.add_argument("--arch", help="preset or family")
    parser.add_argument("--arch-kwargs", help="JSON constructor keyword arguments")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads for ORT and PyTorch (default 2)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per contender (default 5, min 5)")
    parser.add_argument("--no-eager", action="store_true", help="skip the eager PyTorch contenders")
    parser.add_argument("--no-patches", action="store_true", help="skip overlapping-patch inference")
    parser.add_argument("--out", help="directory for the graphs and bench.json (default: a temp dir)")
    parser.add_argument("--fast", action="store_true", help="also time the graph converted with --fast")
    parser.add_argument("--trust-pickle", action="store_true")


def run(args) -> int:
    import tempfile
    from pathlib import Path

    import numpy as np

    from .. import __version__, guards
    from ..api import convert, parse_arch_kwargs, parse_calib, parse_size
    from ..bench import bench_model
    from ..cli import progress_printer
    from ..errors import UserError
    from ..fileio import OutputSet, is_tlc_graph, is_tlc_report

    calib, size = parse_calib(args.calib), parse_size(args.size, "--size")
    if args.runs < 5:
        raise UserError("--runs must be at least 5 (medians of fewer runs are noise)")
    guards.check_threads(args.threads)
    kwargs = parse_arch_kwargs(args.arch_kwargs)
    guards.check_arch_kwargs(args.arch, kwargs)
    guards.check_run_size(None, (1, 1, *size), f"--size {size[0]}x{size[1]}")
    progress = progress_printer()
    with OutputSet([args.model], note=lambda m: print(f"tlc-export: note: {m}", file=sys.stderr)) as outputs:
        out = outputs.output_dir(args.out, "--out", create_now=True) if args.out else Path(tempfile.mkdtemp(prefix="tlc-bench-"))
        # The graphs are written by convert; claimed here too so an unrelated file is never replaced.
        for name in ("model.tlc.onnx", "model.global.onnx", "model.fast.onnx"):
            outputs.claim(out / name, f"the graph {name}", explicit=False, recognise=is_tlc_graph)
        outputs.claim(out / "bench.json", "bench.json", explicit=False, recognise=is_tlc_report)
        common = dict(arch=args.arch, arch_kwargs=kwargs, trust_pickle=args.trust_pickle, progress=progress)
        tlc = convert(args.model, calib, output=out / "model.tlc.onnx", **common)
        glob = convert(args.model, calib, output=out / "model.global.onnx", tlc=False, **common)
        fast = (convert(args.model, calib, output=out / "model.fast.onnx", fast=True, **common)
                if args.fast else None)
        loaded = tlc.loaded
        m = loaded.input_multiple
        if size[0] % m or size[1] % m:
            raise UserError(f"--size {size[0]}x{size[1]} is not a multiple of {m}, which the model needs")
        channels = tlc.report["inputs"][0]["shape"][1]
        x = np.random.default_rng(0).random((1, channels, *size), dtype=np.float32)
        report = bench_model(loaded.module, tlc.onnx_path, glob.onnx_path, x, tuple(tlc.report["calib"]),
                             threads=args.threads,
                             runs=args.runs, final_stage_last=loaded.family == "hinet", multiple=m,
                             name=loaded.preset or Path(args.model).name, eager=not args.no_eager,
                             patches=not args.no_patches, progress=progress,
                             fast_onnx=fast.onnx_path if fast is not None else None)
        print(report.table())
        data = {"tool": "tlc-export", "version": __version__, "command": "bench", **report.as_dict()}
        outputs.write_text(out / "bench.json", json.dumps(data, indent=2) + "\n")
        outputs.commit()
    print(f"saved {out / 'bench.json'}")
    return 0
