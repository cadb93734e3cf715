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
from tlc_export.runtime import ort_session  # noqa: E402

MODELS = ROOT / "samples" / "models"
OUT = ROOT / "out" / "demo"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.clip(a, 0, 1) - b) ** 2))
    return 10 * np.log10(1.0 / mse) if mse > 0 else float("inf")


def held_out_pairs(seed: int = 0, sigma: float = 25 / 255):
    """Noisy/clean pairs of photos that ship with scikit-image, at full resolution."""
    from skimage import data

    rng = np.random.default_rng(seed)
    for name in ("chelsea", "coffee"):
        clean = getattr(data, name)().astype(np.float32) / 255.0
        clean = clean[: clean.shape[0] // 16 * 16, : clean.shape[1] // 16 * 16]
        noisy = clean + rng.normal(0, sigma, clean.shape).astype(np.float32)
        yield name, noisy.transpose(2, 0, 1)[None], clean.transpose(2, 0, 1)[None]


def median_ms(fn, runs: int = 5) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def main() -> int:
    torch.set_num_threads(2)
    checkpoints = [Path(a) for a in sys.argv[1:]] or sorted(MODELS.glob("*.pth"))
    if not checkpoints:
        print(f"no sample model in {MODELS}", file=sys.stderr)
        return 1
    ckpt = checkpoints[0]
    provenance = json.loads(ckpt.with_suffix(".json").read_text())
    arch, kwargs = provenance["arch"], provenance["arch_kwargs"]
    calib = tuple(provenance.get("recommended_calib", [128, 128]))
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"== {ckpt.name}: {arch} {kwargs}, calibration {calib[0]}x{calib[1]}")

    t = time.perf_counter()
    tlc = convert(ckpt, calib, arch=arch, arch_kwargs=kwargs, output=OUT / "model.tlc.onnx", progress=stderr_progress)
    glob = convert(ckpt, calib, arch=arch, arch_kwargs=kwargs, output=OUT / "model.global.onnx", tlc=False)
    print(f"converted in {time.perf_counter() - t:.1f}s: {len(tlc.report['rewritten'])} global ops rewritten "
          f"-> {tlc.onnx_path.relative_to(ROOT)}")

    model = load_model(ckpt, arch=arch, arch_kwargs=kwargs).module
    local, _ = to_local(load_model(ckpt, arch=arch, arch_kwargs=kwargs).module, calib)
    tlc_sess, glob_sess = ort_session(tlc.onnx_path, threads=2), ort_session(glob.onnx_path, threads=2)

    print(f"{'photo':10s} {'size':>9s} {'noisy':>7s} {'global':>7s} {'TLC':>7s} {'max|ORT-eager|':>15s}")
    for name, noisy, clean in held_out_pairs():
        tlc_out = tlc_sess.run(None, {"input": noisy})[0]
        glob_out = glob_sess.run(None, {"input": noisy})[0]
        with torch.no_grad():
            eager = local(torch.from_numpy(noisy))
            eager = (eager[-1] if isinstance(eager, (list, tuple)) and arch == "hinet" else
                     eager[0] if isinstance(eager, (list, tuple)) else eager).numpy()
        err = float(np.abs(tlc_out - eager).max())
        size = f"{noisy.shape[2]}x{noisy.shape[3]}"
        print(f"{name:10s} {size:>9s} {psnr(noisy, clean):7.2f} {psnr(glob_out, clean):7.2f} "
              f"{psnr(tlc_out, clean):7.2f} {err:15.2e}")
        last = noisy
    g_ms = median_ms(lambda: glob_sess.run(None, {"input": last}))
    t_ms = median_ms(lambda: tlc_sess.run(None, {"input": last}))
    print(f"ONNX Runtime CPU, 2 threads, {last.shape[2]}x{last.shape[3]}: global {g_ms:.1f} ms, TLC {t_ms:.1f} ms, "
          f"ratio {t_ms / g_ms:.3f}")
    del model
    return 0


if __name__ == "__main__":
    sys.exit(main())
