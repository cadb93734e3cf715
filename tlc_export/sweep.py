"""Sweep: restoration quality of a model's TLC conversions at several calibration sizes, against the
unchanged global model, on held-out degraded/clean pairs (the TLC paper's Fig. 3b for your model).

Pairs live in one directory and are found by name: a degraded image ``<name>_<d>.<ext>`` with ``d`` one of
:data:`DEGRADED_SUFFIXES` and its clean image ``<name>_<c>.<ext>`` with ``c`` one of
:data:`CLEAN_SUFFIXES` (case-insensitive; ``.png``, ``.jpg``, ``.jpeg``; e.g. ``chelsea_noisy.png`` +
``chelsea_clean.png``, ``0001_lq.png`` + ``0001_gt.png``). Other files are ignored; a degraded image
without its clean one, or with two, is an error.

The model is exported once without TLC (``convert(..., tlc=False)``); each calibration size is the
rewrite stage of ``convert`` (``localize_graph``) applied to that same exported graph in memory — the
graph ``convert --calib HxW`` would write, without re-exporting per size. Every degraded image runs at
full resolution through ONNX Runtime exactly as ``tlc-export restore`` runs it (same padding, channel
mapping, clipping and rounding to the input's bit depth: :class:`tlc_export.restore.GraphRunner`), and
PSNR and SSIM (``skimage.metrics``, data range 1, over channels) are taken against the clean image.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError
from .fileio import OutputSet, is_tlc_png, is_tlc_report, tag_png
from .restore import (DEFAULT_MAX_PIXELS, DEFAULT_MULTIPLE, GraphRunner, ImageData, back_to_image_channels,
                      match_channels, quantize, read_image, resolve_multiple)

DEGRADED_SUFFIXES = ("noisy", "degraded", "blur", "blurry", "lq")
CLEAN_SUFFIXES = ("clean", "gt", "sharp", "hq")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_CALIB_SIZES = "64,96,128,192,256,384"
TIE_DB = 0.01          # mean-PSNR differences below this are a tie: TLC is not worth it
JSON_NAME = "sweep.json"
PLOT_NAME = "sweep.png"


# ----------------------------------------------------------------------------------------- inputs

@dataclass
class Pair:
    name: str
    degraded: Path
    clean: Path


def _split_name(path: Path) -> tuple[str, str] | None:
    stem = path.stem
    if "_" not in stem:
        return None
    name, suffix = stem.rsplit("_", 1)
    return (name, suffix.lower()) if name else None


def find_pairs(directory: str | Path) -> list[Pair]:
    """Degraded/clean pairs in ``directory`` by the naming convention above, sorted by name."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"--pairs {directory} is not a directory")
    degraded: list[tuple[str, Path]] = []
    clean: dict[str, list[Path]] = {}
    for path in sorted(directory.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_EXTENSIONS:
            continue
        split = _split_name(path)
        if split is None:
            continue
        name, suffix = split
        if suffix in DEGRADED_SUFFIXES:
            degraded.append((name, path))
        elif suffix in CLEAN_SUFFIXES:
            clean.setdefault(name, []).append(path)
    if not degraded:
        raise UserError(f"no pairs in {directory}: name them <name>_{{{','.join(DEGRADED_SUFFIXES)}}}.png with "
                        f"<name>_{{{','.join(CLEAN_SUFFIXES)}}}.png (or .jpg)")
    names = [n for n, _ in degraded]
    pairs = []
    for name, path in degraded:
        found = clean.get(name, [])
        if not found:
            raise UserError(f"{path} has no clean image: expected {name}_clean.png or {name}_gt.png in {directory}")
        if len(found) > 1:
            raise UserError(f"{path} has {len(found)} clean images ({', '.join(p.name for p in found)}); keep one")
        pairs.append(Pair(name if names.count(name) == 1 else path.stem, path, found[0]))
    return pairs


def parse_calib_sizes(text: str) -> list[tuple[int, int]]:
    """``64,96,128x160`` → [(64, 64), (96, 96), (128, 160)], de-duplicated, sorted by area."""
    from .api import parse_size

    parts = [p for p in str(text).split(",") if p.strip()]
    if not parts:
        raise UserError("--calib-sizes is empty: give sizes like 64,96,128 or 96x128,192x256")
    sizes = {parse_size(p, "--calib-sizes") for p in parts}
    return sorted(sizes, key=lambda s: (s[0] * s[1], s))


@dataclass
class LoadedPair:
    pair: Pair
    degraded: ImageData
    clean: ImageData


def load_pairs(pairs: list[Pair], max_pixels: int) -> list[LoadedPair]:
    loaded = []
    for pair in pairs:
        deg, cln = read_image(pair.degraded, max_pixels), read_image(pair.clean, max_pixels)
        if deg.pixels.shape[:2] != cln.pixels.shape[:2]:
            raise UserError(f"{pair.degraded.name} is {deg.pixels.shape[1]}x{deg.pixels.shape[0]} but "
                            f"{pair.clean.name} is {cln.pixels.shape[1]}x{cln.pixels.shape[0]}: a pair must be one size")
        loaded.append(LoadedPair(pair, deg, cln))
    return loaded


# ----------------------------------------------------------------------------------------- metrics

def image_metrics(restored: np.ndarray, clean: np.ndarray) -> tuple[float, float]:
    """PSNR (dB) and SSIM of ``H×W×C`` float images in [0, 1] (data range 1, SSIM over channels)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    clean = clean.astype(np.float64)
    restored = restored.astype(np.float64)
    with np.errstate(divide="ignore"):
        psnr = float(peak_signal_noise_ratio(clean, restored, data_range=1.0))
    side = min(clean.shape[:2])
    win = min(7, side if side % 2 else side - 1)
    ssim = (float(structural_similarity(clean, restored, data_range=1.0, channel_axis=2, win_size=win))
            if win >= 3 else float("nan"))
    return psnr, ssim


def restored_for_metrics(runner: GraphRunner, item: LoadedPair) -> np.ndarray:
    """What ``restore`` would write for the degraded image, as float in [0, 1]."""
    image = item.degraded
    y = runner(match_channels(image.as_float(), runner.channels))
    y = back_to_image_channels(y, image.channels)
    return quantize(y, image.bit_depth).astype(np.float32) / np.float32(2 ** image.bit_depth - 1)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


@dataclass
class SweepRow:
    label: str                         # "global" or "HxW"
    calib: list[int] | None
    tlc: bool
    psnr: list[float]
    ssim: list[float]
    rewritten: int = 0
    windows: list[list[int]] = field(default_factory=list)   # distinct (kh, kw) windows of the rewrite

    @property
    def mean_psnr(self) -> float:
        return _mean(self.psnr)

    @property
    def mean_ssim(self) -> float:
        return _mean(self.ssim)


def _finite(x: float) -> float | None:
    return round(float(x), 6) if x is not None and math.isfinite(x) else None


def _size_label(calib: tuple[int, int]) -> str:
    return f"{calib[0]}x{calib[1]}"


@dataclass
class SweepResult:
    model: str
    images: list[dict]
    rows: list[SweepRow]                       # global first, then calibration sizes by area
    multiple: int
    json_path: Path | None = None
    plot_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    convert_args: list[str] = field(default_factory=list)     # --arch/--arch-kwargs for the suggested command

    @property
    def best(self) -> SweepRow:
        tlc_rows = [r for r in self.rows if r.tlc]
        return max(tlc_rows, key=lambda r: (r.mean_psnr if math.isfinite(r.mean_psnr) else -math.inf,
                                            -(r.calib[0] * r.calib[1])))

    @property
    def global_row(self) -> SweepRow:
        return self.rows[0]

    def recommendation(self) -> dict:
        best, glob = self.best, self.global_row
        gain = best.mean_psnr - glob.mean_psnr
        return {"calib": best.calib, "mean_psnr": _finite(best.mean_psnr), "mean_ssim": _finite(best.mean_ssim),
                "global_mean_psnr": _finite(glob.mean_psnr), "gain_db": _finite(gain),
                "beats_global": bool(math.isfinite(gain) and gain >= TIE_DB)}

    def verdict(self) -> dict:
        """Whether TLC helps on these pairs at all: the per-image PSNR gains of the best calibration size
        over the global model, their mean and spread."""
        best, glob = self.best, self.global_row
        gains = [t - g for t, g in zip(best.psnr, glob.psnr)]
        finite = [g for g in gains if math.isfinite(g)]
        mean = _mean(finite)
        return {"helps": bool(finite and mean >= TIE_DB), "calib": best.calib, "mean_gain_db": _finite(mean),
                "min_gain_db": _finite(min(finite)) if finite else None,
                "max_gain_db": _finite(max(finite)) if finite else None,
                "images": len(gains), "images_improved": sum(g >= TIE_DB for g in finite),
                "images_worse": sum(g <= -TIE_DB for g in finite), "gains_db": [_finite(g) for g in gains]}

    def verdict_text(self) -> str:
        v = self.verdict()
        if v["mean_gain_db"] is None:
            return "TLC: no finite PSNR on these pairs, no verdict"
        n = v["images"]
        spread = (f"min {v['min_gain_db']:+.2f}, max {v['max_gain_db']:+.2f} over {n} image{'s' * (n != 1)}, "
                  f"best of {len(self.rows) - 1} calibration size{'s' * (len(self.rows) != 2)}: "
                  f"{_size_label(v['calib'])}")
        if not v["helps"]:
            return f"TLC does not help these pairs: {v['mean_gain_db']:+.2f} dB ({spread})"
        if v["images_worse"]:
            return (f"TLC helps on average: {v['mean_gain_db']:+.2f} dB ({spread}), but it is worse on "
                    f"{v['images_worse']} of {n} images")
        return f"TLC helps: {v['mean_gain_db']:+.2f} dB ({spread})"

    def recommendation_text(self) -> str:
        rec, best = self.recommendation(), self.best
        import shlex

        label = _size_label(best.calib)
        glob = self.global_row.mean_psnr
        if rec["beats_global"]:
            command = shlex.join(["tlc-export", self.model, "--calib", label, *self.convert_args])
            return (f"recommendation: --calib {label} (mean PSNR {best.mean_psnr:.2f} dB, "
                    f"{best.mean_psnr - glob:+.2f} dB over the global model's {glob:.2f} dB): {command}")
        verdict = (f"within {TIE_DB} dB of" if math.isfinite(best.mean_psnr - glob) and best.mean_psnr - glob > -TIE_DB
                   else f"{best.mean_psnr - glob:+.2f} dB against")
        return (f"recommendation: keep the global model (--no-tlc): the best calibration size {label} gives "
                f"{best.mean_psnr:.2f} dB, {verdict} the global model's {glob:.2f} dB on these pairs")

    def table(self) -> str:
        names = [im["name"] for im in self.images]
        headers = ["model", "mean PSNR", "mean SSIM"] + [f"{n} PSNR" for n in names]
        lines = [[r.label, f"{r.mean_psnr:.2f}", f"{r.mean_ssim:.4f}"] + [f"{p:.2f}" for p in r.psnr]
                 for r in self.rows]
        widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]

        def fmt(cells):
            return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        out = [fmt(headers), fmt(["-" * w for w in widths])] + [fmt(line) for line in lines]
        inputs = [im["input_psnr"] for im in self.images]
        out.append(f"(degraded inputs: mean PSNR {_mean([p if p is not None else math.inf for p in inputs]):.2f} dB)")
        return "\n".join(out)

    def to_json(self) -> dict:
        from . import __version__

        return {
            "tool": "tlc-export", "version": __version__, "command": "sweep", "model": self.model,
            "multiple": self.multiple, "padding": "bottom/right, edge replication",
            "metrics": "PSNR and SSIM (skimage.metrics, data_range 1, channel_axis) of the output rounded to the "
                       "degraded image's bit depth, against the clean image",
            "images": self.images,
            "rows": [{"label": r.label, "calib": r.calib, "tlc": r.tlc, "mean_psnr": _finite(r.mean_psnr),
                      "mean_ssim": _finite(r.mean_ssim), "psnr": [_finite(p) for p in r.psnr],
                      "ssim": [_finite(s) for s in r.ssim], "rewritten": r.rewritten, "windows": r.windows}
                     for r in self.rows],
            "recommendation": self.recommendation(),
            "verdict": self.verdict(),
            "notes": self.notes,
        }


def plot_png(result: SweepResult) -> bytes:
    """PSNR against calibration size, the global model as a horizontal line (matplotlib, Agg canvas)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in result.rows if r.tlc]
    xs = [math.sqrt(r.calib[0] * r.calib[1]) for r in rows]
    ys = [r.mean_psnr for r in rows]
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(xs, ys, "o-", color="tab:blue", label="TLC (local ops)")
    if math.isfinite(result.global_row.mean_psnr):
        ax.axhline(result.global_row.mean_psnr, color="tab:red", linestyle="--", label="global (no TLC)")
    best = result.best
    if math.isfinite(best.mean_psnr):
        ax.plot([math.sqrt(best.calib[0] * best.calib[1])], [best.mean_psnr], "*", color="tab:orange",
                markersize=14, label=f"best: {_size_label(best.calib)}")
    ax.set_xticks(xs)
    ax.set_xticklabels([str(r.calib[0]) if r.calib[0] == r.calib[1] else _size_label(r.calib) for r in rows],
                       rotation=45 if len(rows) > 8 else 0)
    ax.set_xlabel("calibration size")
    ax.set_ylabel(f"mean PSNR (dB), {len(result.images)} image{'s' * (len(result.images) != 1)}")
    ax.set_title(f"TLC calibration sweep: {Path(result.model).name}")
    ax.ticklabel_format(axis="y", useOffset=False)
    values = [v for v in ys + [result.global_row.mean_psnr] if math.isfinite(v)]
    if values and max(values) - min(values) < 0.1:        # keep a flat sweep from zooming into rounding noise
        mid = (max(values) + min(values)) / 2
        ax.set_ylim(mid - 0.1, mid + 0.1)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return tag_png(buf.getvalue())


# ----------------------------------------------------------------------------------------- the sweep

def sweep(model: str | Path, pairs_dir: str | Path, calib_sizes: list[tuple[int, int]] | str | None = None, *,
          arch: str | None = None, arch_kwargs: dict | None = None, out_dir: str | Path | None = None,
          multiple: int | None = None, threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
          trust_pickle: bool = False, progress: bool | None = None, fast: bool = False) -> SweepResult:
    """Run the sweep; write ``sweep.json`` and ``sweep.png`` into ``out_dir`` (skipped when None).

    ``progress``: a tqdm bar over conversions and images (None: only on a terminal)."""
    from tqdm import tqdm

    from .api import convert, localize_graph

    if calib_sizes is None:
        calib_sizes = DEFAULT_CALIB_SIZES
    calibs = parse_calib_sizes(calib_sizes) if isinstance(calib_sizes, str) else list(calib_sizes)
    if not calibs:
        raise UserError("no calibration sizes given")
    from .guards import check_arch_kwargs, check_positive, check_threads

    check_threads(threads)
    check_positive(multiple, "--multiple")
    check_arch_kwargs(arch, arch_kwargs)
    model = Path(model)
    notes: list[str] = []
    pairs = find_pairs(pairs_dir)
    written = OutputSet([model, *(p.degraded for p in pairs), *(p.clean for p in pairs)], note=notes.append)
    if out_dir is not None:
        out_dir = written.output_dir(out_dir, "--out")
        written.claim(out_dir / JSON_NAME, JSON_NAME, explicit=False, recognise=is_tlc_report)
        written.claim(out_dir / PLOT_NAME, PLOT_NAME, explicit=False, recognise=is_tlc_png)
    items = load_pairs(pairs, max_pixels)

    bar = tqdm(total=(1 + len(calibs)) * (1 + len(items)), desc="sweep", unit="step", leave=False,
               disable=None if progress is None else not progress)
    try:
        bar.set_postfix_str("exporting the global model")
        with tempfile.TemporaryDirectory(prefix="tlc-sweep-") as tmp:
            converted = convert(model, calibs[0], arch=arch, arch_kwargs=arch_kwargs,
                                output=Path(tmp) / "global.onnx", tlc=False, trust_pickle=trust_pickle)
        global_model, loaded = converted.model, converted.loaded
        bar.update(1)
        required = loaded.input_multiple
        bad = [_size_label(c) for c in calibs if required > 1 and (c[0] % required or c[1] % required)]
        if bad:
            raise UserError(f"{loaded.preset or loaded.family} needs sizes that are multiples of {required}; "
                            f"--calib-sizes {','.join(bad)} are not")
        if multiple is not None:
            m, _ = resolve_multiple(model, multiple)
        elif loaded.family is not None:
            m = required
        elif loaded.format == "onnx":
            m, source = resolve_multiple(model)
            if source.startswith("the default"):
                notes.append(f"padding to multiples of {m}, {source}")
        else:
            m = DEFAULT_MULTIPLE
            notes.append(f"padding to multiples of {m}, the default for a {loaded.format} model "
                         f"(pass --multiple N)")

        rows = []
        images = []

        def evaluate(runner: GraphRunner, label: str) -> tuple[list[float], list[float]]:
            psnrs, ssims = [], []
            for item in items:
                bar.set_postfix_str(f"{label}: {item.pair.name}")
                out = restored_for_metrics(runner, item)
                clean = match_channels(item.clean.as_float(), out.shape[2])
                p, s = image_metrics(out, clean)
                psnrs.append(p)
                ssims.append(s)
                bar.update(1)
            return psnrs, ssims

        runner = GraphRunner(global_model, m, threads)
        psnrs, ssims = evaluate(runner, "global")
        del runner
        rows.append(SweepRow("global", None, False, psnrs, ssims))
        for item in items:
            deg = item.degraded.as_float()
            p, s = image_metrics(deg, match_channels(item.clean.as_float(), deg.shape[2]))
            images.append({"name": item.pair.name, "degraded": str(item.pair.degraded), "clean": str(item.pair.clean),
                           "height": int(deg.shape[0]), "width": int(deg.shape[1]), "channels": int(deg.shape[2]),
                           "bit_depth": item.degraded.bit_depth, "input_psnr": _finite(p), "input_ssim": _finite(s)})

        for calib in calibs:
            label = _size_label(calib)
            bar.set_postfix_str(f"converting at {label}")
            tlc_model, records = localize_graph(global_model, calib, fast=fast)
            if not records:
                raise UserError(f"no global op in {model}: TLC changes nothing (is it already converted? "
                                f"sweep needs the original model)")
            bar.update(1)
            runner = GraphRunner(tlc_model, m, threads)
            del tlc_model
            psnrs, ssims = evaluate(runner, label)
            del runner
            windows = sorted({tuple(r.window) for r in records}, key=lambda w: (-w[0] * w[1], w))
            rows.append(SweepRow(label, list(calib), True, psnrs, ssims, len(records), [list(w) for w in windows]))
    finally:
        bar.close()

    convert_args = ["--fast"] if fast else []
    if arch:
        convert_args += ["--arch", arch]
    if arch_kwargs:
        convert_args += ["--arch-kwargs", json.dumps(arch_kwargs, separators=(",", ":"))]
    result = SweepResult(str(model), images, rows, m, notes=notes, convert_args=convert_args)
    if out_dir is not None:
        result.json_path = out_dir / JSON_NAME
        result.plot_path = out_dir / PLOT_NAME
        with written:
            written.write_bytes(result.plot_path, plot_png(result))
            written.write_text(result.json_path, json.dumps(result.to_json(), indent=2) + "\n")
            written.commit()
    return result
