"""The main job on the shipped samples: convert blind restorers to TLC ONNX graphs, prove each graph equals
the eager reference, and show where TLC helps and where it does not (held-out photos, full resolution).

    python samples/demo.py [CHECKPOINT ...]     # (``make demo`` sets up the environment first)

Each model runs, as a global graph and as a TLC graph at the recommended calibration (1.5 x its training
crop, the official NAFNet/TLC rule), on the pair folders of ``samples/pairs/`` made for its task
(``samples/pairs/README.md``): degradations that vary across the image and uniform ones. It prints one
table row per degradation (input, global and TLC PSNR, the difference and its spread over the photos),
the TLC graph's max abs difference from the eager PyTorch TLC reference, and the latency of both graphs.
For one image where TLC helps and one where it does not, it writes the picture ``tlc-export compare``
makes (degraded | global | TLC | clean, and a |TLC - global| heat map). Outputs go to ``out/demo/``.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tlc_export.api import convert  # noqa: E402
from tlc_export.compare import change_map, compose, eager_run, picture_panels, pick_crop  # noqa: E402
from tlc_export.fileio import atomic_write_bytes  # noqa: E402
from tlc_export.load import load_model  # noqa: E402
from tlc_export.reference import to_local  # noqa: E402
from tlc_export.restore import GraphRunner, encode_png, match_channels, quantize  # noqa: E402
from tlc_export.sweep import find_pairs, image_metrics, load_pairs  # noqa: E402

MODELS = ROOT / "samples" / "models"
PAIRS = ROOT / "samples" / "pairs"
OUT = ROOT / "out" / "demo"
DEFAULT_MODELS = ("nafnet_deblur.pth", "nafnet_denoise_blind.pth")
# Pair folders per task: (label, folder, does the degradation vary across the image?)
CASES = {
    "deblur": [("blur-quadrants", "blur-quadrants", True), ("blur-ramp", "blur-ramp", True),
               ("blur-uniform1", "blur-uniform1", False), ("blur-uniform2", "blur-uniform2", False)],
    "denoise": [("noise-quadrants", "noise-quadrants", True), ("noise-halves", "noise-halves", True),
                ("noise-uniform25", ".", False)],
}
PICTURES = {"deblur": [("blur-quadrants", "chelsea"), ("blur-uniform2", "chelsea")]}
SAME_DB = 0.05        # |mean TLC - global| below this: no difference worth a word
PARITY_ATOL = 1e-5    # float32 graph against the eager reference (the project's standard)

INTRO = """\
When should TLC help? TLC replaces each global average (channel attention's pooling, instance norm)
by an average over a window the size of the training crop. That matters when the degradation VARIES
ACROSS THE IMAGE while every training crop was degraded uniformly (these blind models saw one blur std
or noise level per 64x64 crop): pooled over the whole image, the statistics mix regions that need
different treatment, and TLC gives each region its own. When the degradation is UNIFORM, the
whole-image statistics already describe every crop, and TLC is not expected to help (it can cost a
little). PSNR in dB on the held-out photos (chelsea, coins, rocket) at full resolution."""


def recommended_calib(provenance: dict) -> tuple[int, int]:
    """1.5 x the training crop (NAFNet's TLC rule: base_size = 1.5 x train_size), rounded to 8."""
    side = int(round(provenance.get("patch", 64) * 1.5 / 8)) * 8
    return side, side


def run_pair(glob_run: GraphRunner, tlc_run: GraphRunner, eager, item):
    """Both graphs on one pair: (input, global, TLC PSNR, max|TLC graph - eager| or 0 when ``eager`` is
    None, the float images)."""
    x = match_channels(item.degraded.as_float(), 3)
    clean = match_channels(item.clean.as_float(), 3)
    glob, tlc = glob_run(x), tlc_run(x)
    err = 0.0 if eager is None else float(np.abs(tlc - eager(x)).max())
    glob_q, tlc_q = (quantize(y, 8).astype(np.float32) / 255.0 for y in (glob, tlc))
    psnrs = [image_metrics(a, clean)[0] for a in (x, glob_q, tlc_q)]
    return psnrs, err, (x, glob_q, tlc_q, clean)


def write_picture(path: Path, images, calib, psnrs) -> None:
    degraded, glob, tlc, clean = images
    change = change_map(tlc, glob)
    psnr = {"degraded": psnrs[0], "global": psnrs[1], "tlc": psnrs[2]}
    panels = picture_panels(degraded, glob, tlc, clean, change, pick_crop(change), calib, psnr)
    atomic_write_bytes(path, encode_png(compose(panels)))


def verdict(gain: float) -> str:
    return "no difference" if abs(gain) < SAME_DB else ("TLC better" if gain > 0 else "TLC worse")


def median_ms(fn, runs: int = 3) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return 1000 * float(np.median(times))


def convert_both(ckpt: Path, calib, arch, kwargs, out: Path):
    out.mkdir(parents=True, exist_ok=True)   # the converter never creates missing parent directories
    t = time.perf_counter()
    tlc = convert(ckpt, calib, arch=arch, arch_kwargs=kwargs, output=out / "model.tlc.onnx")
    glob = convert(ckpt, calib, arch=arch, arch_kwargs=kwargs, output=out / "model.global.onnx", tlc=False)
    print(f"converted in {time.perf_counter() - t:.1f}s: {len(tlc.report['rewritten'])} global ops made local "
          f"-> {tlc.onnx_path.relative_to(ROOT)}")
    return tlc, glob


@dataclass
class Runs:
    """What one model runs with: both graphs, the eager TLC reference, its calibration and output folder."""
    glob: GraphRunner
    tlc: GraphRunner
    eager: object
    calib: tuple[int, int]
    out: Path
    worst_err: float = 0.0
    checked: int = 0
    pictures: list = field(default_factory=list)
    last: np.ndarray | None = None


def run_case(runs: Runs, task: str, label: str, folder: str) -> list[list[float]]:
    """[input, global, TLC] PSNR per photo of one pair folder; parity and pictures recorded in ``runs``."""
    results = []
    for i, item in enumerate(load_pairs(find_pairs(PAIRS / folder), max_pixels=64_000_000)):
        # Parity on the first photo of each folder keeps the demo short; the tests check it everywhere.
        psnrs, err, images = run_pair(runs.glob, runs.tlc, runs.eager if i == 0 else None, item)
        runs.checked += i == 0
        runs.worst_err, runs.last = max(runs.worst_err, err), images[0]
        results.append(psnrs)
        if (label, item.pair.name) in PICTURES.get(task, []):
            path = runs.out / f"compare_{label}_{item.pair.name}.png"
            write_picture(path, images, runs.calib, psnrs)
            runs.pictures.append(f"picture: {path.relative_to(ROOT)} ({item.pair.name}, {label}: TLC "
                                 f"{psnrs[2] - psnrs[1]:+.2f} dB; degraded | global | TLC | clean | |TLC-global|)")
    return results


def prepare(ckpt: Path, provenance: dict, calib: tuple[int, int]) -> Runs:
    arch, kwargs = provenance["arch"], provenance["arch_kwargs"]
    out = OUT / ckpt.stem
    tlc, glob = convert_both(ckpt, calib, arch, kwargs, out)
    loaded = load_model(ckpt, arch=arch, arch_kwargs=kwargs)
    local, _ = to_local(loaded.module, calib)
    eager = eager_run(local, loaded.input_multiple, loaded.family == "hinet")
    tlc_run, glob_run = (GraphRunner(r.onnx_path, multiple=loaded.input_multiple, threads=2) for r in (tlc, glob))
    return Runs(glob_run, tlc_run, eager, calib, out)


def demo_model(ckpt: Path) -> tuple[list[tuple[str, bool, float]], bool]:
    """Convert, check parity, print the table; returns (degradation, varies, mean gain) per row and
    whether the TLC graph matched the eager reference."""
    provenance = json.loads(ckpt.with_suffix(".json").read_text())
    deg = provenance["degradation"]
    task, calib = deg["task"], recommended_calib(provenance)
    train = deg.get("blur_sigma_train") if task == "deblur" else deg.get("sigma_255_train", deg["sigma_255"])
    print(f"\n== {ckpt.relative_to(ROOT)}: {provenance['arch']}, {task}, trained on {provenance['patch']}x"
          f"{provenance['patch']} crops ({'blur std' if task == 'deblur' else 'noise sigma'}: {train}); "
          f"TLC at {calib[0]}x{calib[1]}")
    runs = prepare(ckpt, provenance, calib)
    print(f"{'degradation':16s} {'varies':>6s} {'input':>6s} {'global':>7s} {'TLC':>7s} {'TLC-global':>10s}  "
          f"{'min .. max over photos':>22s}  verdict")
    rows = []
    for label, folder, varies in CASES[task]:
        results = run_case(runs, task, label, folder)
        inp, g, t = np.mean(results, axis=0)
        gains = [r[2] - r[1] for r in results]
        print(f"{label:16s} {'yes' if varies else 'no':>6s} {inp:6.2f} {g:7.2f} {t:7.2f} {t - g:+10.2f}  "
              f"{min(gains):+10.2f} .. {max(gains):+.2f}  {verdict(t - g)}")
        rows.append((label, varies, t - g))
    ok = runs.worst_err <= PARITY_ATOL
    print(f"parity: max|TLC graph - eager TLC reference| = {runs.worst_err:.1e} on {runs.checked} full-size "
          f"photos ({'OK' if ok else 'MISMATCH'}, tolerance {PARITY_ATOL:g})")
    for line in runs.pictures:
        print(line)
    g_ms, t_ms = median_ms(lambda: runs.glob(runs.last)), median_ms(lambda: runs.tlc(runs.last))
    print(f"latency (ONNX Runtime CPU, 2 threads, {runs.last.shape[1]}x{runs.last.shape[0]}): global {g_ms:.0f} ms, "
          f"TLC {t_ms:.0f} ms, ratio {t_ms / g_ms:.2f}")
    return rows, ok


def summary(rows: list[tuple[str, bool, float]]) -> None:
    varying = [r for r in rows if r[1]]
    uniform = [r for r in rows if not r[1]]
    print("\nSummary:")
    if varying:
        each = ", ".join(f"{name} {gain:+.2f}" for name, _, gain in varying)
        print(f"  degradation varying across the image: TLC {min(r[2] for r in varying):+.2f} .. "
              f"{max(r[2] for r in varying):+.2f} dB ({each})")
    if uniform:
        print(f"  uniform degradation: TLC {min(r[2] for r in uniform):+.2f} .. {max(r[2] for r in uniform):+.2f} dB "
              f"-- use the global model there (tlc-export --no-tlc), or check with tlc-export sweep")
    print("  Look before deploying: tlc-export compare MODEL IMAGE --calib 96x96 [--clean CLEAN.png] -o OUT.png")


def main() -> int:
    torch.set_num_threads(2)
    start = time.perf_counter()
    names = [Path(a).resolve() for a in sys.argv[1:]] or [MODELS / n for n in DEFAULT_MODELS]
    checkpoints = [p for p in names if p.is_file()]
    for missing in sorted(set(names) - set(checkpoints)):
        print(f"note: {missing} is not there; skipped", file=sys.stderr)
    if not checkpoints:
        print(f"no sample model found in {MODELS}", file=sys.stderr)
        return 1
    OUT.mkdir(parents=True, exist_ok=True)
    print(INTRO)
    rows, all_ok = [], True
    for ckpt in checkpoints:
        model_rows, ok = demo_model(ckpt)
        rows, all_ok = rows + model_rows, all_ok and ok
    summary(rows)
    print(f"(demo took {time.perf_counter() - start:.0f}s)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
