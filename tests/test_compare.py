"""``tlc-export compare`` on real scikit-image photos with a tiny NAFNet: the picture's layout (panel count
from its width, white gutters), its panels against independent runs (the degraded crop itself, the
converted graphs in ONNX Runtime), the PSNRs it prints, the crop for large images, and bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tlc_export import zoo
from tlc_export.cli import main
from tlc_export.compare import MARGIN, MAX_PANEL, OUTLINE, TITLE_HEIGHT
from tlc_export.restore import GraphRunner

from conftest import SMALL, perturb_identity_params

KWARGS = SMALL["nafnet"]
ARGS = ["--arch", "nafnet", "--arch-kwargs", json.dumps(KWARGS)]
CALIB = "32x32"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = perturb_identity_params(zoo.build("nafnet", **KWARGS), scale=1.0)   # strong enough for TLC to show
    path = tmp_path_factory.mktemp("model") / "tiny_nafnet.pth"
    torch.save({"params": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def graphs(checkpoint):
    """The global and the TLC graph as ``tlc-export`` writes them: independent of compare's own runs."""
    out = {}
    for tag, extra in (("global", ["--no-tlc"]), ("tlc", [])):
        path = checkpoint.with_name(f"tiny.{tag}.onnx")
        assert main([str(checkpoint), "--calib", CALIB, "-o", str(path), *ARGS, *extra]) == 0
        out[tag] = path
    return out


def _save(path, pixels):
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """chelsea (300x451, fits one panel) and rocket (427x640, wider than MAX_PANEL), noisy, with clean."""
    from skimage import data

    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    files = {}
    for name in ("chelsea", "rocket"):
        clean = getattr(data, name)()
        noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
        files[name] = (_save(root / f"{name}_noisy.png", noisy), _save(root / f"{name}_clean.png", clean))
    return files


def _panels(png, n_expected, ph, pw):
    """The picture split into panels, after checking the layout in pixels."""
    pixels = np.asarray(Image.open(png).convert("RGB"))
    height, width = pixels.shape[:2]
    assert height == ph + TITLE_HEIGHT + 2 * MARGIN
    assert (width - MARGIN) % (pw + MARGIN) == 0 and (width - MARGIN) // (pw + MARGIN) == n_expected
    top = MARGIN + TITLE_HEIGHT
    panels = []
    for i in range(n_expected):
        x = MARGIN + i * (pw + MARGIN)
        assert (pixels[top:top + ph, x - MARGIN:x] == 255).all(), f"gutter before panel {i} is not white"
        panels.append(pixels[top:top + ph, x:x + pw])
    assert (pixels[top:top + ph, width - MARGIN:] == 255).all()
    return panels


def _graph_output(graph, image):
    runner = GraphRunner(graph, 1, threads=1)
    y = runner(image.astype(np.float32) / 255.0)
    return np.round(np.clip(y, 0, 1) * 255).astype(np.int16)


def _psnr(a, b):
    return 10 * np.log10(255.0 ** 2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def test_compare_with_clean_on_a_photo(checkpoint, graphs, photos, tmp_path, capsys):
    noisy, clean = photos["chelsea"]
    out = tmp_path / "chelsea.png"
    assert main(["compare", str(checkpoint), str(noisy), "--calib", CALIB, "--clean", str(clean), "-o", str(out),
                 "--threads", "1", *ARGS]) == 0
    printed = capsys.readouterr().out
    degraded, glob, tlc, ref, heat = _panels(out, 5, 300, 451)   # the whole image fits one panel
    x, c = np.asarray(Image.open(noisy)), np.asarray(Image.open(clean))
    assert np.array_equal(degraded, x) and np.array_equal(ref, c)
    # The eager panels against the converted graphs in ONNX Runtime (float rounding may flip one 8-bit level).
    want_glob, want_tlc = _graph_output(graphs["global"], x), _graph_output(graphs["tlc"], x)
    assert np.abs(glob - want_glob).max() <= 1 and np.abs(tlc - want_tlc).max() <= 1
    assert np.abs(want_tlc - want_glob).max() > 2       # TLC at 32x32 changes this output: a real comparison
    # The printed PSNRs are those of the graphs' outputs against the clean photo.
    found = dict(re.findall(r"(degraded|global|TLC 32x32) ([\d.]+) dB", printed))
    assert float(found["degraded"]) == pytest.approx(_psnr(x, c), abs=0.01)
    assert float(found["global"]) == pytest.approx(_psnr(want_glob, c), abs=0.02)
    assert float(found["TLC 32x32"]) == pytest.approx(_psnr(want_tlc, c), abs=0.02)
    # The heat map (at scale 1 here) is dark where the graphs agree and bright where they differ most.
    change = np.abs(want_tlc - want_glob).mean(axis=2)
    dark = (heat == np.array([0, 0, 4])).all(axis=2)
    assert dark[change == 0].mean() > 0.95 and not dark[change >= np.percentile(change, 99.9)].any()
    assert heat[change >= np.percentile(change, 99.9)].sum(axis=1).min() > 400


def test_compare_without_clean_crops_a_large_photo(checkpoint, graphs, photos, tmp_path, capsys):
    noisy, _ = photos["rocket"]
    out = tmp_path / "rocket.png"
    assert main(["compare", str(graphs["global"]), str(noisy), "--calib", CALIB, "-o", str(out),
                 "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "PSNR" not in printed
    left = int(re.search(r"left (\d+)", printed).group(1))
    assert re.search(rf"panels: {MAX_PANEL}x427 at top 0, left {left}", printed)
    degraded, glob, tlc, heat = _panels(out, 4, 427, MAX_PANEL)        # no clean panel
    x = np.asarray(Image.open(noisy))
    assert np.array_equal(degraded, x[:, left:left + MAX_PANEL])
    assert np.abs(tlc - _graph_output(graphs["tlc"], x)[:, left:left + MAX_PANEL]).max() <= 1
    assert (heat.reshape(-1, 3) == OUTLINE).all(axis=1).sum() > 100   # the crop is outlined on the whole-image map


def test_compare_default_output_beside_the_image(checkpoint, photos, capsys):
    noisy, _ = photos["chelsea"]
    before = noisy.read_bytes()
    assert main(["compare", str(checkpoint), str(noisy), "--calib", CALIB, "--threads", "1", *ARGS]) == 0
    assert noisy.with_name("chelsea_noisy.tlc-compare.png").is_file()
    assert noisy.read_bytes() == before
    capsys.readouterr()


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tlc-export: error:"), err
    return err


def test_compare_bad_input(checkpoint, graphs, photos, tmp_path, capsys):
    noisy, clean = photos["chelsea"]
    before = noisy.read_bytes()
    base = ["compare", str(checkpoint)]
    assert "not found" in _one_line_error(capsys, base + [str(tmp_path / "nope.png"), "--calib", CALIB, *ARGS])
    assert "is the input" in _one_line_error(capsys, base + [str(noisy), "--calib", CALIB, "-o", str(noisy), *ARGS])
    assert noisy.read_bytes() == before
    jpg = ["-o", str(tmp_path / "a.jpg")]
    assert ".png" in _one_line_error(capsys, base + [str(noisy), "--calib", CALIB, *jpg, *ARGS])
    small = _save(tmp_path / "small.png", np.asarray(Image.open(clean))[:40, :40])
    assert "same size" in _one_line_error(capsys, base + [str(noisy), "--calib", CALIB, "--clean", str(small), *ARGS])
    assert "--calib" in _one_line_error(capsys, base + [str(noisy), "--calib", "0x3", *ARGS])
    assert "already converted" in _one_line_error(capsys, ["compare", str(graphs["tlc"]), str(noisy), "--calib", CALIB])
    assert not (tmp_path / "a.jpg").exists() and not list(tmp_path.glob("*.tlc-compare.png"))
    plain = torch.jit.script(torch.nn.Conv2d(3, 3, 3, padding=1))          # no global op: nothing to compare
    plain.save(str(tmp_path / "plain.pt"))
    argv = ["compare", str(tmp_path / "plain.pt"), str(noisy), "--calib", CALIB]
    assert "no global op" in _one_line_error(capsys, argv)
