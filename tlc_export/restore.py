"""Restore image files through a converted graph, and the image I/O that ``restore`` and ``sweep`` share.

Images: PNG and JPEG (the format is read from the file's content, not its name), 8- or 16-bit, grey or
RGB; an alpha channel is dropped (with a note), palette/bilevel/CMYK images are expanded to 8-bit grey
or RGB. 16-bit colour PNGs are read and written with ``pypng`` (Pillow has no 16-bit RGB mode and would
silently truncate them to 8 bits); everything else goes through Pillow.

Channels follow the graph's input: a grey image is replicated to RGB for a 3-channel graph, an RGB
image becomes luma (ITU-R BT.601, as Pillow's ``convert("L")``) for a 1-channel graph. The output keeps
the input's bit depth; it is grey when the input was grey (the mean of the graph's RGB output) or when
the graph is single-channel, RGB otherwise.

Sizes: the image is padded on the bottom/right by edge replication to the graph's size multiple, run at
full resolution (batch 1, no tiling), cropped back to its own size and clipped to [0, 1]. The multiple
comes from ``--multiple N``, else from the conversion report ``convert`` writes beside the graph
(``<graph>.json``: its ``input_multiple`` if present, else the zoo rule for its family/preset/kwargs),
else :data:`DEFAULT_MULTIPLE` (16 covers every zoo preset; a network that needs no padding only sees
a few replicated border pixels).
"""
from __future__ import annotations

import io
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import UserError, first_line as _first_line
from .fileio import OutputSet, is_tlc_png, read_onnx, tag_png

SUPPORTED_FORMATS = {"PNG": "PNG", "JPEG": "JPEG", "MPO": "JPEG"}   # MPO: multi-picture camera JPEGs
DEFAULT_MAX_PIXELS = 64_000_000
DEFAULT_MULTIPLE = 16
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LUMA_BT601 = np.array([0.299, 0.587, 0.114], dtype=np.float32)


# ----------------------------------------------------------------------------------------- image I/O

@dataclass
class ImageHeader:
    path: Path
    format: str           # PNG | JPEG
    height: int
    width: int


@dataclass
class ImageData:
    """Pixels as read: ``H×W×C`` (C = 1 or 3) uint8 or uint16, and what was changed on the way."""

    path: Path
    pixels: np.ndarray
    notes: list[str] = field(default_factory=list)

    @property
    def bit_depth(self) -> int:
        return 16 if self.pixels.dtype == np.uint16 else 8

    @property
    def channels(self) -> int:
        return int(self.pixels.shape[2])

    def as_float(self) -> np.ndarray:
        """``H×W×C`` float32 in [0, 1]."""
        return self.pixels.astype(np.float32) / np.float32(2 ** self.bit_depth - 1)


def _png_ihdr(path: Path) -> tuple[int, int] | None:
    """(bit depth, colour type) of a PNG file, or None if it is not one."""
    with open(path, "rb") as f:
        head = f.read(33)
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        return None
    return head[24], head[25]


def _needs_pypng(path: Path) -> bool:
    ihdr = _png_ihdr(path)
    return ihdr is not None and ihdr[0] == 16 and ihdr[1] in (2, 4, 6)   # 16-bit RGB, grey+alpha, RGBA


class _PillowLimit:
    """Let Pillow open images up to ``max_pixels`` (its own bomb check stops at 2× its limit)."""

    def __init__(self, max_pixels: int):
        self.max_pixels = max_pixels

    def __enter__(self):
        from PIL import Image

        from PIL import ImageFile

        self._old = Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES
        Image.MAX_IMAGE_PIXELS = max(int(self.max_pixels), 1)
        ImageFile.LOAD_TRUNCATED_IMAGES = False     # a truncated file is an error, never grey pixels
        self._warnings = warnings.catch_warnings()
        self._warnings.__enter__()
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return self

    def __exit__(self, *exc):
        from PIL import Image

        from PIL import ImageFile

        self._warnings.__exit__(*exc)
        Image.MAX_IMAGE_PIXELS, ImageFile.LOAD_TRUNCATED_IMAGES = self._old
        return False


def _too_big(path: Path, h: int | None, w: int | None, max_pixels: int) -> UserError:
    size = f"{w}x{h} = {w * h / 1e6:.1f} megapixels" if h and w else "too many pixels"
    return UserError(f"{path} is {size}, over --max-pixels {max_pixels}; "
                     f"raise --max-pixels if you have the memory")


def probe_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Check a file is a readable PNG/JPEG within ``max_pixels`` from its header alone (no decoding)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise UserError(f"input not found: {path}")
    if not path.is_file():
        raise UserError(f"input is not a file: {path}")
    try:
        with _PillowLimit(max_pixels), Image.open(path) as im:
            fmt, (w, h) = im.format, im.size
    except Image.DecompressionBombError:
        raise _too_big(path, None, None, max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"cannot read {path}: not a PNG or JPEG image ({_first_line(exc)})") from None
    if fmt not in SUPPORTED_FORMATS:
        raise UserError(f"{path} is a {fmt} image; restore reads PNG and JPEG only (convert it first)")
    if w * h > max_pixels:
        raise _too_big(path, h, w, max_pixels)
    return ImageHeader(path, SUPPORTED_FORMATS[fmt], h, w)


def _read_pypng(path: Path) -> ImageData:
    import png

    try:
        width, height, rows, info = png.Reader(filename=str(path)).read()
        flat = np.vstack([np.asarray(row, dtype=np.uint16) for row in rows])
    except Exception as exc:  # pypng raises its own FormatError/ChunkError and zlib errors
        raise UserError(f"cannot decode {path} ({_first_line(exc)}); is the file complete?") from None
    pixels = flat.reshape(height, width, info["planes"])
    notes = []
    if info["alpha"]:
        pixels = pixels[..., :-1]
        notes.append("alpha channel dropped")
    return ImageData(path, np.ascontiguousarray(pixels), notes)


def _from_pillow(path: Path, im) -> ImageData:
    notes = []
    mode = im.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im)
        if mode == "I" and (arr.min() < 0 or arr.max() > 65535):
            raise UserError(f"{path}: 32-bit integer pixels are not supported (8- or 16-bit only)")
        return ImageData(path, arr.astype(np.uint16)[..., None], notes)
    if mode == "P":
        mode_to = "RGBA" if "transparency" in im.info else "RGB"
        im, mode = im.convert(mode_to), mode_to
    elif mode == "PA":
        im, mode = im.convert("RGBA"), "RGBA"
    if mode in ("RGBA", "RGBa", "LA", "La"):
        notes.append("alpha channel dropped")
        im = im.convert("L" if mode.startswith("L") else "RGB")
    elif mode == "1":
        im = im.convert("L")
    elif mode in ("CMYK", "YCbCr", "RGBX", "LAB", "HSV"):
        im = im.convert("RGB")
    elif mode not in ("L", "RGB"):
        raise UserError(f"{path}: pixel mode {mode} is not supported (8- or 16-bit grey or RGB)")
    arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[..., None]
    return ImageData(path, np.ascontiguousarray(arr.astype(np.uint8)), notes)


def _png_complete(data: bytes) -> bool:
    """Every chunk fits in the file and the last is IEND (decoders stop at the image data's end)."""
    pos = 8
    while pos + 12 <= len(data):
        length, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        pos += 12 + length
        if pos > len(data):
            return False
        if kind == b"IEND":
            return True
    return False


def _jpeg_complete(data: bytes) -> bool:
    """An end-of-image marker after the last start-of-scan (0xFF 0xDA/0xD9 never occur inside
    entropy-coded data, where 0xFF is always followed by 0x00 or a restart marker)."""
    return data.rfind(b"\xff\xd9") > data.rfind(b"\xff\xda") > 0


def check_complete(header: ImageHeader) -> None:
    """Refuse a truncated PNG/JPEG: decoders accept some truncations (a PNG cut after its image data,
    or any file when Pillow's LOAD_TRUNCATED_IMAGES is set) and return silently wrong pixels."""
    data = header.path.read_bytes()
    ok = _png_complete(data) if header.format == "PNG" else _jpeg_complete(data)
    if not ok:
        end = "IEND chunk" if header.format == "PNG" else "end-of-image marker"
        raise UserError(f"{header.path} is truncated: the {header.format} file ends before its {end} "
                        f"({len(data)} bytes); re-copy or re-export the image")


def read_image(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageData:
    """Decode a PNG/JPEG (checked with :func:`probe_image` first). Refusals are ``UserError``s."""
    from PIL import Image

    header = probe_image(path, max_pixels)
    check_complete(header)
    path = header.path
    if header.format == "PNG" and _needs_pypng(path):
        return _read_pypng(path)
    try:
        with _PillowLimit(max_pixels), Image.open(path) as im:
            im.load()
            return _from_pillow(path, im)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot decode {path} ({_first_line(exc)}); is the file complete?") from None


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of ``H×W×C`` (C = 1 or 3) uint8 or uint16 pixels, bit depth kept, tagged as tlc-export's."""
    from PIL import Image

    h, w, c = pixels.shape
    buf = io.BytesIO()
    if pixels.dtype == np.uint16 and c == 3:
        import png

        writer = png.Writer(w, h, greyscale=False, bitdepth=16)
        writer.write_packed(buf, [row.astype(">u2").tobytes() for row in pixels.reshape(h, w * c)])
    else:
        Image.fromarray(np.ascontiguousarray(pixels[..., 0] if c == 1 else pixels)).save(buf, format="PNG")
    return tag_png(buf.getvalue())


def quantize(image: np.ndarray, bit_depth: int) -> np.ndarray:
    """Float image → clipped to [0, 1] and rounded onto the ``bit_depth`` grid (uint8/uint16)."""
    peak = 2 ** bit_depth - 1
    dtype = np.uint16 if bit_depth == 16 else np.uint8
    return np.round(np.clip(image, 0.0, 1.0) * peak).astype(dtype)


def match_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    """``H×W×C`` float image → the graph's channel count (grey→RGB replicate, RGB→grey BT.601 luma)."""
    have = image.shape[2]
    if channels is None or channels == have:
        return image
    if have == 1 and channels == 3:
        return np.repeat(image, 3, axis=2)
    if have == 3 and channels == 1:
        return (image @ LUMA_BT601)[..., None].astype(np.float32)
    raise UserError(f"the graph takes {channels}-channel images; cannot map a {have}-channel image to that")


def back_to_image_channels(output: np.ndarray, image_channels: int) -> np.ndarray:
    """Graph output → the channels to write: grey input stays grey (mean of an RGB output)."""
    if image_channels == 1 and output.shape[2] == 3:
        return output.mean(axis=2, keepdims=True)
    return output


# ----------------------------------------------------------------------------------------- running

def pad_to_multiple(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pad the last two axes of ``x`` on the bottom/right by edge replication to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, [(0, 0)] * (x.ndim - 2) + [(0, ph), (0, pw)], mode="edge")


def _is_out_of_memory(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(k in text for k in ("failed to allocate", "bad_alloc", "out of memory", "cannot allocate"))


def _out_of_memory(shape, detail: str) -> UserError:
    why = f" ({detail})" if detail else ""
    return UserError(f"out of memory running the graph on a {shape[2]}x{shape[3]} image{why}: the whole image "
                     f"runs at once, so restore a smaller (downscaled or cropped) image, close other programs, "
                     f"or use a machine with more memory")


class GraphRunner:
    """A converted graph on ONNX Runtime that takes and returns ``H×W×C`` float images of any size.

    The image is padded bottom/right (edge replication) to ``multiple``, run as a batch of one, and the
    first output (the final restored image) is cropped back. Not clipped.
    """

    def __init__(self, graph, multiple: int = 1, threads: int | None = None):
        from .rewrite.plugin_nodes import DOMAIN
        from .runtime import ort_session

        what = graph if isinstance(graph, (str, Path)) else "the graph"
        if isinstance(graph, (str, Path)) and not Path(graph).is_file():
            raise UserError(f"graph not found: {graph}")
        try:
            try:
                self.session = ort_session(graph, threads=threads)
            except Exception as exc:
                if DOMAIN not in str(exc):
                    raise
                # The plugin form (--impl plugin): its custom-op domain needs the plugin package.
                self.session = ort_session(graph, impl="plugin", threads=threads)
        except UserError:
            raise
        except Exception as exc:
            raise UserError(f"ONNX Runtime cannot load {what} ({_first_line(exc)})") from None
        inp = self.session.get_inputs()[0]
        if len(inp.shape) != 4:
            raise UserError(f"the graph input {inp.name!r} has rank {len(inp.shape)}; expected N×C×H×W")
        self.input_name = inp.name
        self.output_name = self.session.get_outputs()[0].name
        self.channels = inp.shape[1] if isinstance(inp.shape[1], int) and inp.shape[1] > 0 else None
        static = [d if isinstance(d, int) and d > 0 else None for d in inp.shape[2:]]
        self.static_hw = tuple(static) if all(static) else None
        self.dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
        self.multiple = max(int(multiple), 1)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        x = pad_to_multiple(np.ascontiguousarray(image.transpose(2, 0, 1)[None]), self.multiple)
        if self.static_hw is not None and tuple(x.shape[2:]) != self.static_hw:
            raise UserError(f"the graph has a static input size {self.static_hw[0]}x{self.static_hw[1]} and the "
                            f"image is {h}x{w} (padded {x.shape[2]}x{x.shape[3]}); convert without --static")
        try:
            y = self.session.run([self.output_name], {self.input_name: x.astype(self.dtype)})[0]
        except MemoryError:
            raise _out_of_memory(x.shape, "") from None
        except Exception as exc:
            if _is_out_of_memory(exc):
                raise _out_of_memory(x.shape, _first_line(exc)) from None
            raise UserError(f"the graph failed on a {x.shape[2]}x{x.shape[3]} input ({_first_line(exc)}); "
                            f"does it need another size multiple? (--multiple N)") from None
        if y.ndim != 4 or tuple(y.shape[2:]) != tuple(x.shape[2:]):
            raise UserError(f"the graph's first output has shape {list(y.shape)} for input {list(x.shape)}; "
                            f"restore handles same-size restoration graphs only")
        return np.ascontiguousarray(y[0, :, :h, :w].transpose(1, 2, 0)).astype(np.float32)


def multiple_from_report(report: dict) -> int | None:
    """The size multiple a conversion report implies (``input_multiple``, else the zoo rule), or None."""
    if "input_multiple" in report:
        return int(report["input_multiple"])
    family = report.get("family")
    if not family:
        return None
    import torch

    from . import zoo

    try:
        with torch.device("meta"):
            module = zoo.build(report.get("preset") or family, **(report.get("arch_kwargs") or {}))
        return zoo.input_multiple(family, module)
    except Exception:
        return None


def resolve_multiple(graph: str | Path, override: int | None = None) -> tuple[int, str]:
    """(multiple, where it came from): ``--multiple``, the report beside the graph, or the default."""
    if override is not None:
        if override < 1:
            raise UserError(f"--multiple {override} must be a positive integer")
        return int(override), "--multiple"
    report_path = Path(graph).with_suffix(".json")
    if report_path.is_file():
        try:
            report = json.loads(report_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            report = None
        if isinstance(report, dict) and report.get("tool") == "tlc-export":
            m = multiple_from_report(report)
            if m is not None:
                return m, f"the conversion report {report_path.name}"
    return DEFAULT_MULTIPLE, ("the default (no conversion report naming the architecture beside the graph; "
                              "pass --multiple N)")


# ----------------------------------------------------------------------------------------- restore files

@dataclass
class RestoredFile:
    source: Path
    output: Path
    height: int
    width: int
    bit_depth: int
    channels: int
    notes: list[str] = field(default_factory=list)


def restore_image(runner: GraphRunner, image: ImageData) -> tuple[np.ndarray, list[str]]:
    """One decoded image through the graph → pixels to write (same size and bit depth) and notes."""
    notes = list(image.notes)
    x = image.as_float()
    if runner.channels is not None and runner.channels != image.channels:
        notes.append(f"{'grey' if image.channels == 1 else 'RGB'} image "
                     f"{'replicated to RGB' if runner.channels == 3 else 'converted to luma'} "
                     f"for the {runner.channels}-channel graph")
    y = runner(match_channels(x, runner.channels))
    y = back_to_image_channels(y, image.channels)
    return quantize(y, image.bit_depth), notes


def output_paths(inputs: list[Path], out_dir: Path) -> list[Path]:
    """``<out_dir>/<stem>.png`` for each input; refuses two inputs with one output name."""
    outputs = [out_dir / f"{p.stem}.png" for p in inputs]
    seen: dict[str, Path] = {}
    for inp, out in zip(inputs, outputs):
        key = out.name
        if key in seen:
            raise UserError(f"{seen[key]} and {inp} would both be written to {out}; restore them separately")
        seen[key] = inp
    return outputs


def restore_files(graph: str | Path, inputs: list[str | Path], out_dir: str | Path, *, multiple: int | None = None,
                  max_pixels: int = DEFAULT_MAX_PIXELS, threads: int | None = None,
                  progress: bool | None = None, note=None) -> list[RestoredFile]:
    """Restore ``inputs`` with ``graph`` into ``out_dir``. Every input's header and every output path is
    checked before any image is processed; the outputs are renamed into place together at the end (a
    failure on any image leaves the directory as it was). ``progress``: tqdm bar (None: on a TTY)."""
    from tqdm import tqdm

    from .guards import check_threads

    if max_pixels < 1:
        raise UserError(f"--max-pixels {max_pixels} must be positive")
    check_threads(threads)
    graph = Path(graph)
    read_onnx(graph)                  # missing, empty or corrupt: one line before any image is read
    inputs = [Path(p) for p in inputs]
    headers = [probe_image(p, max_pixels) for p in inputs]
    for header in headers:
        check_complete(header)
    m, source = resolve_multiple(graph, multiple)
    with OutputSet([graph, *inputs], note=note) as written:
        out_dir = written.output_dir(out_dir, "-o")
        outputs = output_paths(inputs, out_dir)
        for inp, out in zip(inputs, outputs):
            written.claim(out, "the restored image", explicit=False, recognise=is_tlc_png)
        runner = GraphRunner(graph, m, threads)
        if note is not None and source.startswith("the default"):
            note(f"padding to multiples of {m}, {source}")
        done = []
        for header, out in tqdm(list(zip(headers, outputs)), desc="restore", unit="image",
                                disable=None if progress is None else not progress, leave=False):
            image = read_image(header.path, max_pixels)
            pixels, notes = restore_image(runner, image)
            written.write_bytes(out, encode_png(pixels))
            done.append(RestoredFile(header.path, out, pixels.shape[0], pixels.shape[1], image.bit_depth,
                                     pixels.shape[2], notes))
        written.commit()
    return done
