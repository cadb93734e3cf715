"""Compare: what TLC changes on one image, as a picture a person looks at before deploying.

The model runs on the image twice at full resolution -- with its global ops as trained ("global") and
with TLC at the calibration size -- and one PNG is written: ``degraded | global | TLC | clean`` side by
side (clean only when a reference is given; PSNRs in the panel titles then), and a heat map of
``|TLC - global|`` over the whole image, so one sees where TLC changed the output.

A checkpoint (or TorchScript / ``.pt2`` / pickled module) runs in eager PyTorch: the model as loaded
against ``tlc_export.reference.to_local`` of it, the reference every converted graph is tested against.
An ``.onnx`` model must be the global graph: it runs in ONNX Runtime as is and after the rewrite stage
of ``convert`` (``localize_graph``), i.e. exactly the graph ``tlc-export MODEL --calib HxW`` writes.

Layout (pixels): every panel is ``ph x pw``, the whole image when both sides are at most
:data:`MAX_PANEL`, else the ``MAX_PANEL``-square crop where TLC changed the output most (outlined on the
heat map, which always shows the whole image scaled into its panel). Panels sit in one row,
:data:`MARGIN` pixels apart and from the border, under a :data:`TITLE_HEIGHT`-pixel title strip, so the
picture is ``n * pw + (n + 1) * MARGIN`` wide and ``ph + TITLE_HEIGHT + 2 * MARGIN`` high.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import UserError
from .fileio import atomic_write_bytes, refuse_overwriting_input
from .restore import (DEFAULT_MAX_PIXELS, GraphRunner, back_to_image_channels, encode_png, match_channels,
                      pad_to_multiple, quantize, read_image, resolve_multiple)

MAX_PANEL = 512
MARGIN = 8
TITLE_HEIGHT = 22
LARGE_PIXELS = 4_000_000       # from here on, say what is running even off a terminal
HEAT_PERCENTILE = 99.9         # heat-map white point: one outlier pixel should not wash the map out
BACKGROUND = (255, 255, 255)
OUTLINE = (0, 200, 255)

Run = Callable[[np.ndarray], np.ndarray]     # H×W×C float32 image -> H×W×C float32 restored image


@dataclass
class CompareResult:
    output: Path
    panels: list[str]                         # panel titles, left to right
    calib: tuple[int, int]
    rewritten: int                            # global ops made local
    psnr: dict[str, float] | None             # degraded / global / tlc against the clean image
    mean_change: float                        # mean |TLC - global| over pixels and channels, 0..1 scale
    max_change: float
    crop: tuple[int, int, int, int]           # top, left, height, width of the panels in the image
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def gain_db(self) -> float | None:
        return None if self.psnr is None else self.psnr["tlc"] - self.psnr["global"]


# ----------------------------------------------------------------------------------------- the two runs

def _final_output(out, hinet: bool):
    """The restored image among a network's outputs (HINet lists its stages last-is-final)."""
    if isinstance(out, (list, tuple)):
        return out[-1] if hinet else out[0]
    return out


def eager_run(module, multiple: int, hinet: bool) -> Run:
    """An eager module as a :data:`Run`: edge-padded bottom/right to ``multiple`` like GraphRunner."""
    import torch

    def run(image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = pad_to_multiple(np.ascontiguousarray(image.transpose(2, 0, 1)[None]), multiple)
        try:
            with torch.no_grad():
                y = _final_output(module(torch.from_numpy(x)), hinet)
        except (RuntimeError, ValueError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"the model failed on a {x.shape[2]}x{x.shape[3]} input ({first}); does it need "
                            f"another size multiple? (--multiple N)") from None
        if y.dim() != 4 or tuple(y.shape[2:]) != tuple(x.shape[2:]):
            raise UserError(f"the model's output has shape {list(y.shape)} for input {list(x.shape)}; compare "
                            f"handles same-size restoration models only")
        return np.ascontiguousarray(y[0, :, :h, :w].numpy().transpose(1, 2, 0)).astype(np.float32)

    return run


def eager_pair(loaded, calib: tuple[int, int], multiple: int | None = None) -> tuple[Run, Run, int, int]:
    """(global run, TLC run, input channels, ops made local) for a loaded PyTorch model."""
    from .api import check_multiple, input_channels_of
    from .reference import to_local

    check_multiple(loaded, calib, "--calib")
    if multiple is not None and multiple < 1:
        raise UserError(f"--multiple {multiple} must be a positive integer")
    local, records = to_local(copy.deepcopy(loaded.module), calib)
    if not records:
        raise UserError(f"no global op in {loaded.path}: TLC changes nothing on this model")
    m, hinet = multiple or loaded.input_multiple, loaded.family == "hinet"
    channels = input_channels_of(loaded, calib)
    return eager_run(loaded.module, m, hinet), eager_run(local, m, hinet), channels, len(records)


def graph_pair(loaded, model_path: Path, calib: tuple[int, int], multiple: int | None,
               threads: int | None) -> tuple[Run, Run, int | None, int]:
    """(global run, TLC run, input channels, ops made local) for a global ONNX graph."""
    from .api import localize_graph

    tlc_model, records = localize_graph(loaded.onnx_model, calib)
    if not records:
        raise UserError(f"no global op in {model_path}: TLC changes nothing (is it already converted? compare "
                        f"needs the original global model)")
    m, _ = resolve_multiple(model_path, multiple)
    glob, tlc = GraphRunner(loaded.onnx_model, m, threads), GraphRunner(tlc_model, m, threads)
    return glob, tlc, glob.channels, len(records)


def model_pair(model: Path, calib: tuple[int, int], *, arch, arch_kwargs, multiple, threads,
               trust_pickle) -> tuple[Run, Run, int | None, int]:
    from .load import load_model

    loaded = load_model(model, arch=arch, arch_kwargs=arch_kwargs, trust_pickle=trust_pickle)
    if loaded.module is None:
        return graph_pair(loaded, model, calib, multiple, threads)
    if threads:
        import torch

        torch.set_num_threads(threads)
    return eager_pair(loaded, calib, multiple)


# ----------------------------------------------------------------------------------------- the picture

def change_map(tlc: np.ndarray, glob: np.ndarray) -> np.ndarray:
    """Per-pixel |TLC - global|, the mean over channels (H×W float64)."""
    return np.abs(tlc.astype(np.float64) - glob.astype(np.float64)).mean(axis=2)


def pick_crop(change: np.ndarray, limit: int = MAX_PANEL) -> tuple[int, int, int, int]:
    """(top, left, h, w): the whole image if it fits ``limit``, else the window where TLC changed most."""
    H, W = change.shape
    h, w = min(H, limit), min(W, limit)
    if (h, w) == (H, W):
        return 0, 0, H, W
    integral = np.pad(change, ((1, 0), (1, 0))).cumsum(0).cumsum(1)
    sums = integral[h:, w:] - integral[:-h, w:] - integral[h:, :-w] + integral[:-h, :-w]
    top, left = np.unravel_index(int(np.argmax(sums)), sums.shape)
    return int(top), int(left), h, w


def heat_panel(change: np.ndarray, size: tuple[int, int], crop, white: float) -> np.ndarray:
    """The whole change map, magma-coloured (black 0, white ``white``), scaled into a ``size`` panel."""
    import matplotlib
    from PIL import Image, ImageDraw

    ph, pw = size
    H, W = change.shape
    scale = min(ph / H, pw / W)
    sh, sw = max(1, round(H * scale)), max(1, round(W * scale))
    scaled = np.asarray(Image.fromarray(change.astype(np.float32), mode="F").resize((sw, sh), Image.BOX))
    rgb = matplotlib.colormaps["magma"](np.clip(scaled / max(white, 1e-12), 0.0, 1.0))[..., :3]
    panel = Image.new("RGB", (pw, ph), BACKGROUND)
    panel.paste(Image.fromarray(np.round(rgb * 255).astype(np.uint8)), ((pw - sw) // 2, (ph - sh) // 2))
    top, left, h, w = crop
    if (h, w) != (H, W):
        x0, y0 = (pw - sw) // 2 + left * scale, (ph - sh) // 2 + top * scale
        ImageDraw.Draw(panel).rectangle([x0, y0, x0 + w * scale - 1, y0 + h * scale - 1], outline=OUTLINE, width=2)
    return np.asarray(panel)


def to_rgb8(image: np.ndarray) -> np.ndarray:
    """An H×W×C float image in [0, 1] (C = 1 or 3) as 8-bit RGB for display."""
    rgb = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image
    return quantize(rgb, 8)


def compose(panels: list[tuple[str, np.ndarray]]) -> np.ndarray:
    """One row of equally sized RGB panels with titles above them (see the module doc for the layout)."""
    from PIL import Image, ImageDraw, ImageFont

    ph, pw = panels[0][1].shape[:2]
    n = len(panels)
    canvas = Image.new("RGB", (n * pw + (n + 1) * MARGIN, ph + TITLE_HEIGHT + 2 * MARGIN), BACKGROUND)
    font = ImageFont.load_default(size=13)
    for i, (title, pixels) in enumerate(panels):
        x = MARGIN + i * (pw + MARGIN)
        canvas.paste(Image.fromarray(pixels), (x, MARGIN + TITLE_HEIGHT))
        strip = Image.new("RGB", (pw, TITLE_HEIGHT), BACKGROUND)   # a title never runs into the next panel
        ImageDraw.Draw(strip).text((2, 3), title, fill=(0, 0, 0), font=font)
        canvas.paste(strip, (x, MARGIN))
    return np.asarray(canvas)


# ----------------------------------------------------------------------------------------- compare

def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    from skimage.metrics import peak_signal_noise_ratio

    with np.errstate(divide="ignore"):
        return float(peak_signal_noise_ratio(b.astype(np.float64), a.astype(np.float64), data_range=1.0))


def _check_paths(model: Path, image: Path, clean: Path | None, output: Path) -> None:
    if not model.is_file():
        raise UserError(f"model file not found: {model}")
    if output.suffix.lower() != ".png":
        raise UserError(f"-o {output} must end in .png")
    if output.exists() and output.is_dir():
        raise UserError(f"-o {output} is a directory; give a .png file path")
    refuse_overwriting_input(output, [model, image] + ([clean] if clean else []))


def default_output(image: Path) -> Path:
    return image.with_name(f"{image.stem}.tlc-compare.png")


def _restore_both(glob_run: Run, tlc_run: Run, x: np.ndarray, image, say) -> tuple[np.ndarray, np.ndarray, dict]:
    """Both outputs, rounded to the image's bit depth and back to [0, 1] floats like ``restore`` writes."""
    peak = np.float32(2 ** image.bit_depth - 1)
    outputs, seconds = [], {}
    for label, run in (("global", glob_run), ("TLC", tlc_run)):
        say(f"running the {label} model on {x.shape[1]}x{x.shape[0]} ({x.shape[0] * x.shape[1] / 1e6:.1f} MP)")
        t = time.perf_counter()
        y = back_to_image_channels(run(x), image.channels)
        seconds[label.lower()] = round(time.perf_counter() - t, 2)
        outputs.append(quantize(y, image.bit_depth).astype(np.float32) / peak)
    return outputs[0], outputs[1], seconds


def compare(model: str | Path, image: str | Path, calib: tuple[int, int] | str, *, clean: str | Path | None = None,
            output: str | Path | None = None, arch: str | None = None, arch_kwargs: dict | None = None,
            multiple: int | None = None, threads: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
            trust_pickle: bool = False, progress: Callable[[str], None] | None = None) -> CompareResult:
    """Run ``model`` on ``image`` globally and with TLC at ``calib``; write the comparison PNG."""
    from .api import parse_size, stderr_progress

    calib = parse_size(calib) if isinstance(calib, str) else tuple(calib)
    model, image_path = Path(model), Path(image)
    clean_path = Path(clean) if clean is not None else None
    out = Path(output) if output is not None else default_output(image_path)
    _check_paths(model, image_path, clean_path, out)
    img = read_image(image_path, max_pixels)
    ref = read_image(clean_path, max_pixels) if clean_path is not None else None
    if ref is not None and ref.pixels.shape[:2] != img.pixels.shape[:2]:
        raise UserError(f"--clean {clean_path} is {ref.pixels.shape[1]}x{ref.pixels.shape[0]} but {image_path} is "
                        f"{img.pixels.shape[1]}x{img.pixels.shape[0]}: they must be the same size")
    h, w = img.pixels.shape[:2]
    say = progress or (stderr_progress if h * w >= LARGE_PIXELS else (lambda message: None))

    say(f"loading {model} and localising it at {calib[0]}x{calib[1]}")
    glob_run, tlc_run, channels, rewritten = model_pair(model, calib, arch=arch, arch_kwargs=arch_kwargs,
                                                        multiple=multiple, threads=threads, trust_pickle=trust_pickle)
    glob, tlc, seconds = _restore_both(glob_run, tlc_run, match_channels(img.as_float(), channels), img, say)
    change = change_map(tlc, glob)
    crop = pick_crop(change)
    psnr = None
    if ref is not None:
        target = match_channels(ref.as_float(), glob.shape[2])
        psnr = {"degraded": _psnr(match_channels(img.as_float(), glob.shape[2]), target),
                "global": _psnr(glob, target), "tlc": _psnr(tlc, target)}
    say(f"writing {out}")
    panels = picture_panels(img.as_float(), glob, tlc, ref.as_float() if ref is not None else None,
                            change, crop, calib, psnr)
    atomic_write_bytes(out, encode_png(compose(panels)))
    return CompareResult(out, [t for t, _ in panels], calib, rewritten, psnr, float(change.mean()),
                         float(change.max()), crop, seconds)


def picture_panels(degraded, glob, tlc, clean, change, crop, calib, psnr) -> list[tuple[str, np.ndarray]]:
    """The titled panels, left to right: degraded, global, TLC, [clean], |TLC - global|."""
    top, left, h, w = crop

    def cut(x: np.ndarray) -> np.ndarray:
        return to_rgb8(x[top:top + h, left:left + w])

    db = (lambda key: f" {psnr[key]:.2f} dB") if psnr else (lambda key: "")
    gain = f" ({psnr['tlc'] - psnr['global']:+.2f})" if psnr else ""
    panels = [(f"degraded{db('degraded')}", cut(degraded)), (f"global{db('global')}", cut(glob)),
              (f"TLC {calib[0]}x{calib[1]}{db('tlc')}{gain}", cut(tlc))]
    if clean is not None:
        panels.append(("clean", cut(clean)))
    white = float(np.percentile(change, HEAT_PERCENTILE))
    panels.append((f"|TLC-global|, white={white:.3f}", heat_panel(change, (h, w), crop, white)))
    return panels
