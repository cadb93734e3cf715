"""The main job on a shipped sample: convert a restorer to a TLC ONNX graph, prove it equals the eager
reference, and show what TLC changes (PSNR on held-out photos, latency against the global graph).

Run with ``make demo`` (it sets up the environment first). Outputs go to ``out/demo/``.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlc_export.api import convert, stderr_progress  # noqa: E402
from tlc_export.load import load_model  # noqa: E402
from tlc_export.reference import to_local  # noqa: E402

MODELS = ROOT / "samples" / "models"
PAIRS = ROOT / "samples" / "pairs"
CALIB = (128, 128)   # 2x the 64x64 training crops
OUT = ROOT / "out" / "demo"


def held_out_pairs():
    """The held-out degraded/clean photo pairs shipped in samples/pairs (never seen in training)."""
    from tlc_export.sweep import find_pairs, load_pairs

    for item in load_pairs(find_pairs(PAIRS), max_pixels=64_000_000):
        noisy = item.degraded.pixels.astype(np.float32) / 255.0
        clean = item.clean.pixels.astype(np.float32) / 255.0
        yield item.pair.name, noisy, clean


def median_ms(fn, runs: int = 5) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def demo_model(ckpt: Path) -> None:
    from tlc_export.restore import GraphRunner
    from tlc_export.sweep import image_metrics

    provenance = json.loads(ckpt.with_suffix(".json").read_text())
    arch, kwargs = provenance["arch"], provenance["arch_kwargs"]
    print(f"\n== {ckpt.relative_to(ROOT)}: {arch} {json.dumps(kwargs)}, calibration {CALIB[0]}x{CALIB[1]}")
    t = time.perf_counter()
    out = OUT / ckpt.stem
    tlc = convert(ckpt, CALIB, arch=arch, arch_kwargs=kwargs, output=out / "model.tlc.onnx", progress=stderr_progress)
    glob = convert(ckpt, CALIB, arch=arch, arch_kwargs=kwargs, output=out / "model.global.onnx", tlc=False)
    print(f"converted in {time.perf_counter() - t:.1f}s: {len(tlc.report['rewritten'])} global ops rewritten "
          f"-> {tlc.onnx_path.relative_to(ROOT)}")

    loaded = load_model(ckpt, arch=arch, arch_kwargs=kwargs)
    local, _ = to_local(loaded.module, CALIB)
    multiple = loaded.input_multiple
    tlc_run = GraphRunner(tlc.onnx_path, multiple=multiple, threads=2)
    glob_run = GraphRunner(glob.onnx_path, multiple=multiple, threads=2)

    print(f"{'held-out':10s} {'size':>9s} {'noisy':>7s} {'global':>7s} {'TLC':>7s} {'max|ORT-eager|':>15s}")
    for name, noisy, clean in held_out_pairs():
        tlc_out, glob_out = tlc_run(noisy), glob_run(noisy)
        # The eager reference on the same padded input the graph saw.
        h, w = noisy.shape[:2]
        x = np.pad(noisy, [(0, -h % multiple), (0, -w % multiple), (0, 0)], mode="edge")
        with torch.no_grad():
            eager = local(torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])))
        eager = eager[-1] if arch == "hinet" else eager
        eager = eager[0].numpy().transpose(1, 2, 0)[:h, :w]
        err = float(np.abs(tlc_out - eager).max())
        p_noisy, p_glob, p_tlc = (image_metrics(np.clip(a, 0, 1), clean)[0] for a in (noisy, glob_out, tlc_out))
        print(f"{name:10s} {f'{w}x{h}':>9s} {p_noisy:7.2f} {p_glob:7.2f} {p_tlc:7.2f} {err:15.2e}")
        last = noisy
    g_ms = median_ms(lambda: glob_run(last))
    t_ms = median_ms(lambda: tlc_run(last))
    print(f"ONNX Runtime CPU, 2 threads, {last.shape[1]}x{last.shape[0]}: global {g_ms:.1f} ms, "
          f"TLC {t_ms:.1f} ms, ratio {t_ms / g_ms:.3f}")


def main() -> int:
    torch.set_num_threads(2)
    # The shipped denoisers match the shipped noisy/clean pairs (nafnet_deblur has its own degradation).
    checkpoints = [Path(a).resolve() for a in sys.argv[1:]] or [MODELS / "nafnet_denoise.pth", MODELS / "hinet_denoise.pth"]
    if not checkpoints:
        print(f"no sample model in {MODELS}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    print("PSNR (dB) on held-out photos at full resolution: the noisy input, the global model, the TLC graph;\n"
          "max|ORT-eager| is the TLC graph against the eager PyTorch TLC reference.")
    for ckpt in checkpoints:
        demo_model(ckpt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
