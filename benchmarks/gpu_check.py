"""One-command GPU check of the plugin's Triton kernels and of eager TLC on CUDA (no network, no TensorRT).

    python benchmarks/gpu_check.py [--out gpu_check.json] [--size 720x1280] [--calib 384] [--runs 5]

Needs PyTorch with CUDA and Triton; uses only this repository's files (random weights). Three parts:

a. correctness: ``tlc_trt_plugin.kernels`` local mean / local instance norm on CUDA against the float64
   eager reference (``tlc_export.reference``) at several sizes, batch 2, windows past the map, fp16 inputs;
b. kernel speed: the Triton local mean against ``torch.mean`` over H, W of the same tensor (the global
   pool it replaces; goal ≤ 3×), on NAFNet's map shapes at ``--size`` with its calibrated windows;
c. models: eager PyTorch global vs TLC reference vs TLC with the Triton kernels (and the fast reference)
   for NAFNet-GoPro-width64 and Restormer-motion_deblurring at ``--size`` (CUDA events, warm-up, medians).

Writes one JSON (``--out``) and exits 0 (1 when a correctness check fails). Without CUDA it prints the
reason and exits 0. ``--cpu-smoke`` (with ``TRITON_INTERPRET=1``) runs part a at tiny sizes on CPU and
parts b/c on tiny models, so the default tests exercise every code path (timings then mean nothing).
Budget: well under 8 minutes on one GPU; parts stop early (recorded) past ``--budget-s``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "plugins")]

# (shape, window): odd sizes, batch 2, windows past the map in one or both axes, several column chunks.
GPU_CASES = [
    ((2, 16, 180, 320), (96, 96)),
    ((2, 8, 37, 53), (16, 24)),
    ((2, 4, 45, 80), (96, 48)),       # window taller than the map
    ((1, 4, 64, 33), (8, 96)),        # window wider than the map
    ((2, 3, 90, 160), (96, 192)),     # window covers the map: the global op
    ((1, 8, 720, 1280), (384, 384)),
    ((2, 32, 361, 641), (192, 200)),
]
# The Triton interpreter takes ~0.5 s per program (plane) even on tiny maps: a few planes only.
SMOKE_CASES = [((2, 1, 7, 9), (3, 4)), ((2, 1, 5, 6), (9, 3))]
# Tolerances against the float64 reference: inputs in [0, 1), fp32 accumulation (fp16: output rounding).
ATOL = {"float32": {"mean": 1e-5, "norm": 1e-4}, "float16": {"mean": 2e-3, "norm": 1e-2}}
MODELS = ["NAFNet-GoPro-width64", "Restormer-motion_deblurring"]
SMOKE_MODELS = {"NAFNet-GoPro-width64": dict(width=2, middle_blk_num=0, enc_blk_nums=[1], dec_blk_nums=[1]),
                "Restormer-motion_deblurring": dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1,
                                                    heads=[1, 1, 1, 1])}


class Timer:
    """Median milliseconds of ``fn()`` over ``runs`` after ``warmup`` calls: CUDA events on a GPU,
    the wall clock otherwise."""

    def __init__(self, device, warmup: int, runs: int):
        self.device, self.warmup, self.runs = device, warmup, runs

    def median_ms(self, fn) -> float:
        import torch

        for _ in range(self.warmup):
            fn()
        times = []
        for _ in range(self.runs):
            if self.device.type == "cuda":
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)


# ---------------------------------------------------------------------------------------------------
# a. correctness

def _reference_norm(x, window, scale, bias, eps=1e-5):
    import torch

    from tlc_export.reference import LocalInstanceNorm2d

    norm = LocalInstanceNorm2d(x.shape[1], eps=eps, affine=True, window=window).to(x.device).double()
    with torch.no_grad():
        norm.weight.copy_(scale)
        norm.bias.copy_(bias)
        return norm(x.double())


def check_case(shape, window, dtype, device) -> dict:
    """Max abs errors of both kernels against the float64 reference on one random tensor."""
    import torch
    from tlc_trt_plugin import kernels

    from tlc_export.reference import local_mean

    gen = torch.Generator(device=device).manual_seed(sum(shape) + sum(window))
    x = torch.rand(shape, generator=gen, device=device).to(dtype)
    scale = torch.randn(shape[1], generator=gen, device=device, dtype=torch.float64)
    bias = torch.randn(shape[1], generator=gen, device=device, dtype=torch.float64)
    mean = kernels.local_mean(x, window)
    norm = kernels.local_instance_norm(x, scale.float(), bias.float(), window, 1e-5)
    err_mean = (mean.double() - local_mean(x.double(), window)).abs().max().item()
    err_norm = (norm.double() - _reference_norm(x, window, scale, bias)).abs().max().item()
    tol = ATOL[str(dtype).removeprefix("torch.")]
    return {"shape": list(shape), "window": list(window), "dtype": str(dtype).removeprefix("torch."),
            "mean_max_abs": err_mean, "norm_max_abs": err_norm, "atol": tol,
            "ok": bool(err_mean <= tol["mean"] and err_norm <= tol["norm"]
                       and mean.dtype == x.dtype and norm.dtype == x.dtype)}


def part_correctness(cases, device) -> list[dict]:
    import torch

    return [check_case(s, w, dtype, device) for s, w in cases for dtype in (torch.float32, torch.float16)]


# ---------------------------------------------------------------------------------------------------
# b. kernel speed against the global pool

def nafnet_map_shapes(size, calib, width=64, levels=4):
    """NAFNet-width64's map shapes at ``size`` per level and their windows at ``calib``."""
    return [((1, width * 2 ** i, size[0] // 2 ** i, size[1] // 2 ** i), (calib[0] // 2 ** i, calib[1] // 2 ** i))
            for i in range(levels + 1)]


def part_kernel_speed(shapes, device, timer) -> list[dict]:
    import torch
    from tlc_trt_plugin import kernels

    rows = []
    for shape, window in shapes:
        for dtype in (torch.float32, torch.float16):
            x = torch.rand(shape, device=device).to(dtype)
            out = torch.empty_like(x)
            local = timer.median_ms(lambda: kernels.local_mean(x, window, out=out))
            pool = timer.median_ms(lambda: torch.mean(x, (2, 3), keepdim=True))
            rows.append({"shape": list(shape), "window": list(window), "dtype": str(dtype).removeprefix("torch."),
                         "local_mean_ms": local, "global_mean_ms": pool, "ratio": local / pool,
                         "goal_ratio": 3.0, "meets_goal": bool(local / pool <= 3.0)})
    return rows


# ---------------------------------------------------------------------------------------------------
# c. models

def with_triton_kernels(model):
    """``model`` (converted by to_local, exact mode) with its local means / instance norms served by the
    Triton kernels; returns (model, number of ops swapped)."""
    from tlc_trt_plugin import kernels

    from tlc_export.reference import LocalAvgPool2d, LocalInstanceNorm2d

    swapped = 0
    for m in model.modules():
        if isinstance(m, LocalAvgPool2d) and m.max_r is None:
            m.forward = (lambda mod: lambda x: kernels.local_mean(x, mod.window))(m)
            swapped += 1
        elif isinstance(m, LocalInstanceNorm2d) and m.max_r is None:
            m.forward = (lambda mod: lambda x: kernels.local_instance_norm(
                x, mod.weight, mod.bias, mod.window, mod.eps))(m)
            swapped += 1
    return model, swapped


def model_contenders(name, overrides, calib, device):
    """(contender name, module) for one preset: global, TLC reference, TLC fast reference, TLC + Triton."""
    import torch

    from tlc_export import zoo
    from tlc_export.reference import to_local

    torch.manual_seed(0)
    model = zoo.build(name, **overrides).eval().to(device)
    example = torch.rand(1, 3, *calib, device=device)
    local, _ = to_local(copy.deepcopy(model), calib, example_input=example)
    fast, _ = to_local(copy.deepcopy(model), calib, example_input=example, fast=True)
    triton_model, swapped = with_triton_kernels(copy.deepcopy(local))
    out = [("eager global", model), ("TLC reference", local), ("TLC fast reference", fast)]
    label = "TLC + Triton kernels" if swapped else "TLC + Triton kernels (no op served by them)"
    return out + [(label, triton_model)], swapped


def part_models(models, size, calib, device, timer) -> list[dict]:
    import torch

    rows = []
    for name, overrides in models.items():
        contenders, swapped = model_contenders(name, overrides, calib, device)
        x = torch.rand(1, 3, *size, device=device)
        with torch.no_grad():
            ref = contenders[1][1](x)
            triton_out = contenders[3][1](x)
            err = (triton_out - ref).abs().max().item()
            times = {label: timer.median_ms(lambda m=m: m(x)) for label, m in contenders}
        base = times["eager global"]
        rows.append({"model": name, "size": list(size), "calib": list(calib), "ops_on_triton": swapped,
                     "triton_vs_reference_max_abs": err,
                     "contenders": [{"name": k, "median_ms": v, "ratio_to_global": v / base} for k, v in times.items()]})
        if device.type == "cuda":       # the next preset's models need the memory
            contenders.clear()
            torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------------------------------------------

def environment(device) -> dict:
    import torch
    import triton

    info = {"python": platform.python_version(), "torch": torch.__version__, "triton": triton.__version__,
            "device": str(device), "triton_interpret": os.environ.get("TRITON_INTERPRET", "")}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def no_gpu_reason(cpu_smoke: bool) -> str | None:
    """Why the check cannot run here (None when it can)."""
    try:
        import torch
        import triton  # noqa: F401
    except ImportError as exc:
        return f"missing {exc.name}: the GPU check needs PyTorch and Triton"
    if cpu_smoke:
        return None if os.environ.get("TRITON_INTERPRET") == "1" else "--cpu-smoke needs TRITON_INTERPRET=1"
    if not torch.cuda.is_available():
        return "no CUDA device (torch.cuda.is_available() is False): nothing to check on this machine"
    return None


def run(args) -> dict:
    import torch

    from tlc_export.api import parse_size

    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    start = time.perf_counter()
    timer = Timer(device, warmup=0 if args.cpu_smoke else 3, runs=1 if args.cpu_smoke else args.runs)
    size, calib = parse_size(args.size, "--size"), parse_size(args.calib)
    result = {"environment": environment(device), "skipped_parts": []}
    torch.backends.cuda.matmul.allow_tf32 = False       # fp32 timings of fp32 models
    torch.backends.cudnn.allow_tf32 = False
    result["correctness"] = part_correctness(SMOKE_CASES if args.cpu_smoke else GPU_CASES, device)
    parts = [("kernel_speed", lambda: part_kernel_speed(
                 nafnet_map_shapes((4, 6), (2, 2), width=1, levels=0) if args.cpu_smoke
                 else nafnet_map_shapes(size, calib), device, timer)),
             ("models", lambda: part_models(
                 SMOKE_MODELS if args.cpu_smoke else {m: {} for m in MODELS},
                 (8, 16) if args.cpu_smoke else size, (8, 8) if args.cpu_smoke else calib, device, timer))]
    for name, part in parts:
        if time.perf_counter() - start > args.budget_s:
            result["skipped_parts"].append(f"{name}: past the {args.budget_s:.0f} s budget")
            continue
        result[name] = part()
    result["ok"] = all(c["ok"] for c in result["correctness"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    return result


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="gpu_check.json")
    ap.add_argument("--size", default="720x1280")
    ap.add_argument("--calib", default="384")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--budget-s", type=float, default=360.0, help="skip the remaining parts after this")
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny CPU run under TRITON_INTERPRET=1 (tests)")
    args = ap.parse_args(argv)
    reason = no_gpu_reason(args.cpu_smoke)
    if reason is not None:
        print(f"gpu_check: skipped: {reason}")
        return 0
    result = run(args)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    bad = [c for c in result["correctness"] if not c["ok"]]
    print(f"gpu_check: {len(result['correctness']) - len(bad)}/{len(result['correctness'])} correctness checks "
          f"passed; {result['seconds']} s; wrote {args.out}")
    for row in result.get("kernel_speed", []):
        print(f"  local mean {row['shape']} {row['dtype']}: {row['local_mean_ms']:.3f} ms, "
              f"{row['ratio']:.2f}x torch.mean (goal <= 3)")
    for row in result.get("models", []):
        print(f"  {row['model']} {row['size']}: " + ", ".join(
            f"{c['name']} {c['median_ms']:.1f} ms ({c['ratio_to_global']:.3f})" for c in row["contenders"]))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
