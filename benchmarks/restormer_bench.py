"""Global vs TLC Restormer graphs in ONNX Runtime (CPU): latency, node count, peak memory.

    .venv/bin/python benchmarks/restormer_bench.py                      # small model, 64x64, calib 32
    .venv/bin/python benchmarks/restormer_bench.py --preset Restormer-motion_deblurring --size 256 --calib 128

Random (seeded) weights: the figures do not depend on them. Latency is the median of ``--runs`` runs
after one warm-up, one intra-op thread, global and TLC interleaved (the machine is shared, so
alternating keeps slow spells from landing on one graph only). Peak memory is the peak resident set
(``VmHWM``) of a fresh process that loads ONNX Runtime, creates the session and runs the graph once
(``peak_rss_mb``), and that minus the peak before the session was created (``model_rss_mb``: what the
model costs). ``session_create_s`` is the InferenceSession construction time.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _maxrss_mb() -> float:
    """Peak resident memory of this process so far (MB). Linux's VmHWM restarts at exec; ru_maxrss
    would carry the parent's peak over into a freshly started child."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_memory(path: str, shape: list[int], threads: int) -> dict:
    """Run in a fresh process: peak RSS before and after creating the session and running once."""
    import numpy as np
    import onnxruntime as ort

    before = _maxrss_mb()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    session.run(None, {session.get_inputs()[0].name: x})
    return {"baseline_mb": before, "peak_mb": _maxrss_mb(), "model_mb": _maxrss_mb() - before}


def _memory_in_subprocess(path: Path, shape: list[int], threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--memory-of", str(path), "--shape", json.dumps(shape),
                          "--threads", str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def build_graphs(args, workdir: Path) -> tuple[Path, Path, list]:
    import torch

    from tlc_export import zoo
    from tlc_export.api import localize_graph
    from tlc_export.export import export_onnx

    torch.manual_seed(0)
    if args.preset:
        model = zoo.build(args.preset)
    else:
        model = zoo.build("restormer", dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial temperatures and norms, as a trained model has
        for name, p in model.named_parameters():
            if name.endswith("temperature") or "norm" in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.3)
    model.eval()
    channels = model.patch_embed.proj.in_channels
    calib = (args.calib, args.calib)
    glob = export_onnx(model, (1, channels, *calib), family="restormer")
    t0 = time.perf_counter()
    tlc, records = localize_graph(glob, calib, (1, channels, *calib), module_prefix="model.")
    print(f"rewrite: {len(records)} attention ops in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    import onnx

    paths = workdir / "global.onnx", workdir / "tlc.onnx"
    for model_proto, path in zip((glob, tlc), paths):
        onnx.save(model_proto, str(path))
    return paths[0], paths[1], records


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default=None, help="a zoo preset (default: a small Restormer)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shape", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, json.loads(args.shape), args.threads)))
        return 0

    import numpy as np
    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        glob_path, tlc_path, records = build_graphs(args, Path(tmp))
        channels = onnx.load(str(glob_path)).graph.input[0].type.tensor_type.shape.dim[1].dim_value
        shape = [args.batch, channels, args.size, args.size]
        x = np.random.default_rng(0).random(shape, dtype=np.float32)
        sessions, created = {}, {}
        for name, path in (("global", glob_path), ("tlc", tlc_path)):
            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            t0 = time.perf_counter()
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            created[name] = time.perf_counter() - t0
        times = {"global": [], "tlc": []}
        outs = {}
        for name, s in sessions.items():       # warm-up
            outs[name] = s.run(None, {"input": x})[0]
        for _ in range(args.runs):
            for name, s in sessions.items():
                t0 = time.perf_counter()
                s.run(None, {"input": x})
                times[name].append(time.perf_counter() - t0)
        del sessions
        report = {"model": args.preset or "small Restormer (dim 8, blocks 1,1,1,1, refinement 1, heads 1,2,2,4)",
                  "input": shape, "calib": [args.calib, args.calib], "threads": args.threads, "runs": args.runs,
                  "attention_windows": sorted({tuple(r.window) for r in records}, reverse=True),
                  "tlc_vs_global_max_abs": float(np.abs(outs["tlc"] - outs["global"]).max())}
        for name, path in (("global", glob_path), ("tlc", tlc_path)):
            mem = _memory_in_subprocess(path, shape, args.threads)
            report[name] = {"nodes": len(onnx.load(str(path)).graph.node),
                            "session_create_s": round(created[name], 2),
                            "median_ms": round(1000 * statistics.median(times[name]), 1),
                            "runs_ms": [round(1000 * t, 1) for t in times[name]],
                            "peak_rss_mb": round(mem["peak_mb"], 1), "model_rss_mb": round(mem["model_mb"], 1)}
        g, t = report["global"], report["tlc"]
        report["ratios"] = {"nodes": round(t["nodes"] / g["nodes"], 2),
                            "latency": round(t["median_ms"] / g["median_ms"], 2),
                            "peak_rss": round(t["peak_rss_mb"] / g["peak_rss_mb"], 2),
                            "model_rss": round(t["model_rss_mb"] / g["model_rss_mb"], 2) if g["model_rss_mb"] > 0 else None}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
