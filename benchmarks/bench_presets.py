"""Latency of the TLC graph against the global graph, the eager PyTorch reference and overlapping-patch
inference, for full-size presets with random weights (timing does not depend on the weights).

    .venv/bin/python benchmarks/bench_presets.py [--size 256x384] [--calib 128] [--runs 5] [--threads 2]
        [--fast] [--no-eager] [--no-patches]

``--fast`` adds the graph converted with --fast (and the eager fast reference). Each entry also states
the arithmetic floor of exact and fast TLC (``floors.py``: multiply-adds over the global model's).

Writes benchmarks/RESULTS.md (markdown table, machine stated) and benchmarks/results.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from tlc_export import zoo  # noqa: E402
from tlc_export.api import convert, parse_size, stderr_progress  # noqa: E402
from tlc_export.bench import bench_model, machine_description  # noqa: E402
from floors import floor_ratio  # noqa: E402

PRESETS = ["HINet-GoPro", "NAFNet-GoPro-width64", "MPRNet-Deblurring"]


def render(entries: list[dict]) -> None:
    """RESULTS.md from the accumulated results.json entries."""
    lines = ["# TLC latency benchmark", "",
             f"Machine: {machine_description()}. ONNX Runtime CPU and PyTorch CPU; medians of interleaved runs "
             "(one run of each contender per round); random weights (timing does not depend on them). "
             "Ratios are to the global ONNX graph of the same preset at the same size. "
             "Where the TLC graph's extra time goes, and the floor for exact TLC: [ANALYSIS.md](ANALYSIS.md).", ""]
    for entry in entries:
        lines += [f"## {entry['model']} at {entry['input_shape'][2]}x{entry['input_shape'][3]}, "
                  f"calibration {entry['calib'][0]}", "",
                  f"Input {'x'.join(map(str, entry['input_shape']))}, calibration {entry['calib'][0]}x{entry['calib'][1]}, "
                  f"{entry['threads']} threads, {entry['runs']} runs, {entry.get('clock', 'wall clock')}. "
                  f"Command: `{entry['command']}`", "",
                  *_floor_lines(entry),
                  *([entry["note"], ""] if entry.get("note") else []),
                  "| contender | median | x global graph |", "|---|---|---|"]
        lines += [f"| {r['name']} | {r['median_ms']:.0f} ms | {r['ratio_to_global_graph']:.3f} |" for r in entry["rows"]]
        lines.append("")
    (ROOT / "benchmarks" / "RESULTS.md").write_text("\n".join(lines) + "\n")


def _key(entry: dict) -> str:
    """Entries accumulate per (preset, input, calibration, with or without the fast graph): measuring one
    again replaces its table."""
    fast = any(r["name"].startswith("fast") for r in entry["rows"])
    return f"{entry['model']} {entry['input_shape']} {entry['calib']}" + (" fast" if fast else "")


def _floor_lines(entry: dict) -> list[str]:
    floors = entry.get("floors")
    if not floors:
        return []
    return [f"Arithmetic floor (multiply-adds / global, `benchmarks/floors.py`): exact TLC {floors['exact']:.3f}, "
            f"fast TLC {floors['fast']:.3f}.", ""]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", default="256x384")
    ap.add_argument("--calib", default="128")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default=",".join(PRESETS))
    ap.add_argument("--no-eager", action="store_true")
    ap.add_argument("--no-patches", action="store_true")
    ap.add_argument("--fast", action="store_true", help="also the --fast graph (and eager fast reference)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                    help="cpu: the calling thread's CPU time with 1 thread (robust when other jobs load the machine)")
    ap.add_argument("--note", help="a remark printed under the table (e.g. the machine was loaded)")
    ap.add_argument("--render-only", action="store_true", help="rewrite RESULTS.md from results.json")
    args = ap.parse_args()
    if args.render_only:
        render(json.loads((ROOT / "benchmarks" / "results.json").read_text()))
        return 0
    size, calib = parse_size(args.size, "--size"), parse_size(args.calib)
    if args.clock == "cpu":
        args.threads = 1
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            torch.manual_seed(0)
            model = zoo.build(name).eval()
            stderr_progress(f"{name}: converting")
            tlc = convert(model, calib, arch=name, output=Path(tmp) / f"{name}.tlc.onnx")
            glob = convert(model, calib, arch=name, output=Path(tmp) / f"{name}.global.onnx", tlc=False)
            fast = convert(model, calib, arch=name, output=Path(tmp) / f"{name}.fast.onnx", fast=True) \
                if args.fast else None
            x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
            report = bench_model(model, tlc.onnx_path, glob.onnx_path, x, calib, threads=args.threads,
                                 runs=args.runs, final_stage_last=name.startswith("HINet"),
                                 multiple=tlc.loaded.input_multiple, name=name, eager=not args.no_eager,
                                 progress=stderr_progress, patches=not args.no_patches,
                                 fast_onnx=fast.onnx_path if fast else None, clock=clock)
            print(report.table(), flush=True)
            floors = {mode: round(floor_ratio(model, size, calib, fast=mode == "fast"), 4) for mode in ("exact", "fast")}
            reports.append((report, floors))
    results_path = ROOT / "benchmarks" / "results.json"
    entries = {_key(e): e for e in (json.loads(results_path.read_text()) if results_path.exists() else [])}
    for rep, floors in reports:
        entry = rep.as_dict()
        entry["floors"] = floors
        entry["clock"] = "thread CPU time, 1 thread" if args.clock == "cpu" else "wall clock"
        if args.note:
            entry["note"] = args.note
        entry["command"] = (f".venv/bin/python benchmarks/bench_presets.py --presets {rep.model} --size {args.size} "
                            f"--calib {args.calib} --runs {args.runs} --threads {args.threads}"
                            + "".join(f" --{flag.replace('_', '-')}" for flag in ("no_eager", "no_patches", "fast")
                                      if getattr(args, flag)) + (" --clock cpu" if args.clock == "cpu" else ""))
        entries[_key(entry)] = entry
    results_path.write_text(json.dumps(list(entries.values()), indent=2) + "\n")
    render(list(entries.values()))
    print(f"wrote {ROOT / 'benchmarks' / 'RESULTS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
