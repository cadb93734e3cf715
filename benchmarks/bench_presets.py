"""Latency of the TLC graph against the global graph, the eager PyTorch reference and overlapping-patch
inference, for full-size presets with random weights (timing does not depend on the weights).

    .venv/bin/python benchmarks/bench_presets.py [--size 256x384] [--calib 128] [--runs 5] [--threads 2]

Writes benchmarks/RESULTS.md (markdown table, machine stated) and benchmarks/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlc_export import zoo  # noqa: E402
from tlc_export.api import convert, parse_size, stderr_progress  # noqa: E402
from tlc_export.bench import bench_model, machine_description  # noqa: E402

PRESETS = ["HINet-GoPro", "NAFNet-GoPro-width64", "MPRNet-Deblurring"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256x384")
    ap.add_argument("--calib", default="128")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--no-eager", action="store_true")
    args = ap.parse_args()
    size, calib = parse_size(args.size, "--size"), parse_size(args.calib)
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            torch.manual_seed(0)
            model = zoo.build(name).eval()
            stderr_progress(f"{name}: converting")
            tlc = convert(model, calib, arch=name, output=Path(tmp) / f"{name}.tlc.onnx")
            glob = convert(model, calib, arch=name, output=Path(tmp) / f"{name}.global.onnx", tlc=False)
            x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
            report = bench_model(model, tlc.onnx_path, glob.onnx_path, x, calib, threads=args.threads,
                                 runs=args.runs, final_stage_last=name.startswith("HINet"),
                                 multiple=tlc.loaded.input_multiple, name=name, eager=not args.no_eager,
                                 progress=stderr_progress)
            print(report.table(), flush=True)
            reports.append(report)
    lines = ["# TLC latency benchmark", "",
             f"Machine: {machine_description()}; ONNX Runtime CPU and PyTorch CPU, {args.threads} threads; "
             f"median of {args.runs} interleaved runs; input {size[0]}x{size[1]}, calibration "
             f"{calib[0]}x{calib[1]}; random weights.", "",
             f"Command: `.venv/bin/python benchmarks/bench_presets.py --size {args.size} --calib {args.calib} "
             f"--runs {args.runs} --threads {args.threads}`", "",
             "| preset | " + " | ".join(r.name for r in reports[0].rows) + " |",
             "|---|" + "---|" * len(reports[0].rows)]
    for rep in reports:
        cells = [f"{r.median_ms:.0f} ms ({r.ratio_to_global_graph:.2f}x)" for r in rep.rows]
        lines.append(f"| {rep.model} | " + " | ".join(cells) + " |")
    (ROOT / "benchmarks" / "RESULTS.md").write_text("\n".join(lines) + "\n")
    (ROOT / "benchmarks" / "results.json").write_text(json.dumps([r.as_dict() for r in reports], indent=2) + "\n")
    print(f"wrote {ROOT / 'benchmarks' / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
