"""Where the TLC graph's extra time goes: ONNX Runtime's profiler on the global and the TLC graph of a
preset (random weights): kernel time per op type with the difference, and per module the time of the
nodes the converter added.

    .venv/bin/python benchmarks/profile_presets.py --preset NAFNet-GoPro-width64 [--size 256x384] [--calib 128] [--fast]

``--fast`` profiles the ``--fast`` graph in the TLC graph's place.

Nodes inside an If branch appear under their own op types and inside the If's time as well, so the If
row is left out of the totals. The first run is a warm-up and is not counted.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlc_export import zoo  # noqa: E402
from tlc_export.api import convert, parse_size, stderr_progress  # noqa: E402
from tlc_export.runtime import session_options  # noqa: E402


def kernel_times(path: Path, x: np.ndarray, threads: int, runs: int) -> dict[tuple[str, str], float]:
    """{(node name, op type): ms per run} from ONNX Runtime's profiler, warm-up run excluded."""
    import onnxruntime as ort

    options = session_options("standard", threads)
    options.enable_profiling = True
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: x}
    for _ in range(runs + 1):
        session.run(None, feed)
    trace_path = Path(session.end_profiling())
    trace = json.loads(trace_path.read_text())
    trace_path.unlink(missing_ok=True)
    model_runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in trace if e.get("name") == "model_run")
    warmup_end = model_runs[0][1]
    times = defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] > warmup_end:
            times[(e["name"][: -len("_kernel_time")], e["args"]["op_name"])] += e["dur"] / 1000 / runs
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="NAFNet-GoPro-width64")
    ap.add_argument("--size", default="256x384")
    ap.add_argument("--calib", default="128")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fast", action="store_true", help="profile the --fast graph instead of the exact one")
    args = ap.parse_args()
    size, calib = parse_size(args.size, "--size"), parse_size(args.calib)
    torch.manual_seed(0)
    model = zoo.build(args.preset).eval()
    x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        stderr_progress(f"{args.preset}: converting")
        tlc = convert(model, calib, arch=args.preset, output=Path(tmp) / "tlc.onnx", fast=args.fast)
        glob = convert(model, calib, arch=args.preset, output=Path(tmp) / "global.onnx", tlc=False)
        stderr_progress("profiling the global graph")
        before = kernel_times(glob.onnx_path, x, args.threads, args.runs)
        stderr_progress(f"profiling the {'fast ' if args.fast else ''}TLC graph")
        after = kernel_times(tlc.onnx_path, x, args.threads, args.runs)

    def by_op(times):
        out = defaultdict(float)
        for (_, op), ms in times.items():
            if op != "If":
                out[op] += ms
        return out

    ops_before, ops_after = by_op(before), by_op(after)
    total_before, total_after = sum(ops_before.values()), sum(ops_after.values())
    print(f"{args.preset}{' (--fast)' if args.fast else ''}, input {args.size}, calib {args.calib}, {args.threads} threads, "
          f"{args.runs} profiled runs: kernel time global {total_before:.0f} ms, TLC {total_after:.0f} ms "
          f"({total_after / total_before:.3f}x)")
    print(f"{'op type':<22}{'global ms':>11}{'TLC ms':>11}{'difference':>12}")
    rows = sorted(set(ops_before) | set(ops_after), key=lambda op: -(ops_after.get(op, 0) - ops_before.get(op, 0)))
    for op in rows[:15]:
        a, b = ops_before.get(op, 0.0), ops_after.get(op, 0.0)
        print(f"{op:<22}{a:>11.1f}{b:>11.1f}{b - a:>+12.1f}")
    modules = defaultdict(float)
    for (name, op), ms in after.items():
        if "/tlc" in name and op != "If":
            match = re.match(r"/[^/]+/([^/]+)", name)
            modules[match.group(1) if match else name] += ms
    print("\nnodes the converter added, by top-level module (ms per run):")
    for module, ms in sorted(modules.items(), key=lambda kv: -kv[1])[:12]:
        print(f"  {module:<40}{ms:>8.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
