"""``tlc-export sweep`` and ``tlc-export restore`` end to end on a tiny NAFNet and tiny image pairs."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tlc_export import zoo
from tlc_export.cli import main
from tlc_export.restore import (DEFAULT_MULTIPLE, GraphRunner, encode_png, pad_to_multiple, quantize, read_image,
                                resolve_multiple)
from tlc_export.sweep import find_pairs, parse_calib_sizes

torch.set_num_threads(1)

TINY = dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
ARGS = ["--arch", "nafnet", "--arch-kwargs", json.dumps(TINY)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = zoo.build("nafnet", **TINY)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():   # NAFNet's beta/gamma start at zero: every block would be an identity
        for name, p in model.named_parameters():
            if name.rsplit(".", 1)[-1] in ("beta", "gamma"):
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    path = tmp_path_factory.mktemp("model") / "tiny_nafnet.pth"
    torch.save({"params": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def graph(checkpoint):
    """The TLC graph and its report, as ``tlc-export MODEL --calib 32x32`` writes them."""
    out = checkpoint.with_name("tiny.tlc.onnx")
    assert main([str(checkpoint), "--calib", "32x32", "-o", str(out), *ARGS]) == 0
    assert out.with_suffix(".json").is_file()
    return out


def _photo(h: int, w: int, top: int = 100, left: int = 180) -> np.ndarray:
    from skimage import data

    return data.astronaut()[top:top + h, left:left + w]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    root = tmp_path_factory.mktemp("pairs")
    rng = np.random.default_rng(0)
    for name, (top, left) in {"face": (60, 170), "flag": (300, 20)}.items():
        clean = _photo(40, 52, top, left)
        noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
        Image.fromarray(clean).save(root / f"{name}_clean.png")
        Image.fromarray(noisy).save(root / f"{name}_noisy.png")
    (root / "README.txt").write_text("not an image\n")
    return root


def _one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tlc-export: error:"), err
    return err


# ------------------------------------------------------------------------------------------- sweep

def test_find_pairs_convention(tmp_path):
    for name in ("a_noisy.png", "a_clean.png", "b_LQ.jpg", "b_gt.png", "c_blurry.png", "c_sharp.png", "x.png"):
        (tmp_path / name).write_bytes(b"")
    found = [(p.name, p.degraded.name, p.clean.name) for p in find_pairs(tmp_path)]
    assert found == [("a", "a_noisy.png", "a_clean.png"), ("b", "b_LQ.jpg", "b_gt.png"),
                     ("c", "c_blurry.png", "c_sharp.png")]
    (tmp_path / "d_degraded.png").write_bytes(b"")
    with pytest.raises(Exception, match="no clean image"):
        find_pairs(tmp_path)
    assert parse_calib_sizes("96,64,64x64,32x48") == [(32, 48), (64, 64), (96, 96)]


def test_sweep_end_to_end(checkpoint, pairs, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", str(checkpoint), "--pairs", str(pairs), "--calib-sizes", "16,32", "--out", str(out),
                 "--threads", "1", *ARGS]) == 0
    printed = capsys.readouterr().out
    assert "recommendation:" in printed and "global" in printed
    assert re.search(r"^TLC (helps|helps on average|does not help these pairs): [+-]\d+\.\d\d dB \(min ", printed, re.M)
    report = json.loads((out / "sweep.json").read_text())
    assert [r["label"] for r in report["rows"]] == ["global", "16x16", "32x32"]
    assert [im["name"] for im in report["images"]] == ["face", "flag"]
    for row in report["rows"]:
        assert len(row["psnr"]) == len(row["ssim"]) == 2
        assert all(np.isfinite(row["psnr"])) and all(0 < s <= 1 for s in row["ssim"])
        assert row["mean_psnr"] == pytest.approx(np.mean(row["psnr"]), abs=1e-3)
    assert report["rows"][1]["rewritten"] > 0 and report["rows"][1]["windows"][0] == [16, 16]
    # 16x16 windows on 40x52 images change the output; the global and TLC rows must differ.
    assert report["rows"][0]["psnr"] != report["rows"][1]["psnr"]
    rec = report["recommendation"]
    assert rec["calib"] in [r["calib"] for r in report["rows"][1:]]
    assert rec["mean_psnr"] == pytest.approx(max(r["mean_psnr"] for r in report["rows"][1:]), abs=1e-5)
    assert rec["beats_global"] == (rec["gain_db"] > 0)
    verdict = report["verdict"]     # per-image gains of the best calibration size over the global model
    best = next(r for r in report["rows"] if r["calib"] == rec["calib"])
    gains = [t - g for t, g in zip(best["psnr"], report["rows"][0]["psnr"])]
    assert verdict["gains_db"] == pytest.approx(gains, abs=1e-5)
    assert verdict["mean_gain_db"] == pytest.approx(np.mean(gains), abs=1e-5) and verdict["images"] == 2
    png = out / "sweep.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(png).size[0] > 100


def test_sweep_bad_inputs(checkpoint, tmp_path, capsys):
    _one_line_error(capsys, ["sweep", str(checkpoint), "--pairs", str(tmp_path / "nope"), *ARGS])
    (tmp_path / "only_noisy.png").write_bytes(b"")
    _one_line_error(capsys, ["sweep", str(checkpoint), "--pairs", str(tmp_path), *ARGS])


# ------------------------------------------------------------------------------------------- restore

def test_restore_formats_sizes_and_depths(graph, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    rgb8 = _photo(37, 45)                                               # odd size, 8-bit RGB
    grey16 = (_photo(30, 41).mean(axis=2) * 257).astype(np.uint16)       # 16-bit grey
    rgb16 = _photo(21, 26).astype(np.uint16) * 257                        # 16-bit RGB (pypng path)
    rgba = np.dstack([_photo(20, 24), np.full((20, 24), 200, np.uint8)])  # alpha is dropped
    Image.fromarray(rgb8).save(src / "rgb8.png")
    Image.fromarray(grey16).save(src / "grey16.png")
    (src / "rgb16.png").write_bytes(encode_png(rgb16))
    Image.fromarray(rgba).save(src / "rgba.png")
    Image.fromarray(_photo(33, 35)).save(src / "photo.jpg", quality=90)
    out = tmp_path / "out"
    names = ["rgb8.png", "grey16.png", "rgb16.png", "rgba.png", "photo.jpg"]
    assert main(["restore", str(graph), *(str(src / n) for n in names), "-o", str(out), "--threads", "1"]) == 0
    captured = capsys.readouterr()
    assert "alpha channel dropped" in captured.err
    expected = {"rgb8": ((37, 45, 3), np.uint8), "grey16": ((30, 41, 1), np.uint16),
                "rgb16": ((21, 26, 3), np.uint16), "rgba": ((20, 24, 3), np.uint8), "photo": ((33, 35, 3), np.uint8)}
    for stem, (shape, dtype) in expected.items():
        restored = read_image(out / f"{stem}.png")
        assert restored.pixels.shape == shape and restored.pixels.dtype == dtype, stem
    # A 16-bit output really uses 16 bits (not 8-bit values scaled by 257).
    assert np.any(read_image(out / "grey16.png").pixels % 257)
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{s}.png" for s in expected)


def test_restore_equals_padded_graph_run(graph, tmp_path):
    """restore = the graph on the replicate-padded array, cropped, clipped and rounded."""
    image = _photo(37, 45)
    Image.fromarray(image).save(tmp_path / "x.png")
    out = tmp_path / "out"
    assert main(["restore", str(graph), str(tmp_path / "x.png"), "-o", str(out), "--multiple", "8"]) == 0
    got = np.asarray(Image.open(out / "x.png"))

    x = image.astype(np.float32).transpose(2, 0, 1)[None] / 255
    padded = np.pad(x, [(0, 0), (0, 0), (0, 3), (0, 3)], mode="edge")         # 37x45 -> 40x48
    assert np.array_equal(pad_to_multiple(x, 8), padded)
    runner = GraphRunner(graph, 1)
    y = runner.session.run(None, {runner.input_name: padded})[0]
    want = quantize(y[0, :, :37, :45].transpose(1, 2, 0), 8)
    assert np.array_equal(got, want)
    # Padding changes the result near the border only through the network; the crop is exact.
    assert got.shape == image.shape


def test_restore_multiple_from_report(graph, tmp_path):
    assert resolve_multiple(graph) == (1, f"the conversion report {graph.with_suffix('.json').name}")  # NAFNet pads itself
    assert resolve_multiple(tmp_path / "elsewhere.onnx")[0] == DEFAULT_MULTIPLE
    assert resolve_multiple(graph, 4) == (4, "--multiple")
    hinet = tmp_path / "h.onnx"
    hinet.with_suffix(".json").write_text(json.dumps({"tool": "tlc-export", "family": "hinet", "preset": None,
                                                      "arch_kwargs": {"wf": 8, "depth": 3}}))
    assert resolve_multiple(hinet)[0] == 4


def test_restore_bad_inputs(graph, tmp_path, capsys):
    good = tmp_path / "good.png"
    Image.fromarray(_photo(20, 20)).save(good)
    text = tmp_path / "notes.png"
    text.write_text("this is not a PNG\n")
    bmp = tmp_path / "old.png"
    Image.fromarray(_photo(8, 8)).save(bmp, format="BMP")
    out = tmp_path / "out"
    base = ["restore", str(graph), "-o", str(out)]
    assert "not found" in _one_line_error(capsys, base[:2] + [str(good), str(tmp_path / "missing.png")] + base[2:])
    assert "not a PNG or JPEG" in _one_line_error(capsys, base + [str(good), str(text)])
    assert "BMP" in _one_line_error(capsys, base + [str(bmp)])
    assert "max-pixels" in _one_line_error(capsys, base + [str(good), "--max-pixels", "100"])
    assert "both be written" in _one_line_error(capsys, base + [str(good), str(good)])
    same_dir = ["restore", str(graph), str(good), "-o", str(tmp_path)]
    assert "is the input file" in _one_line_error(capsys, same_dir)
    assert not out.exists()     # every input is checked before anything is written


def test_verdict_wording_says_whether_tlc_helps():
    from tlc_export.sweep import SweepResult, SweepRow

    def result(global_psnrs, tlc_psnrs):
        images = [{"name": f"im{i}", "input_psnr": 20.0} for i in range(len(global_psnrs))]
        rows = [SweepRow("global", None, False, list(global_psnrs), [0.5] * len(global_psnrs)),
                SweepRow("64x64", [64, 64], True, list(tlc_psnrs), [0.5] * len(tlc_psnrs)),
                SweepRow("128x128", [128, 128], True, [p - 0.1 for p in global_psnrs], [0.5] * len(global_psnrs))]
        return SweepResult("m.pth", images, rows, 1)

    helps = result([30.0, 28.0, 25.0], [30.3, 28.6, 26.5])
    assert helps.verdict()["helps"] and helps.verdict()["images_worse"] == 0
    assert helps.verdict_text() == ("TLC helps: +0.80 dB (min +0.30, max +1.50 over 3 images, "
                                    "best of 2 calibration sizes: 64x64)")
    mixed = result([30.0, 28.0, 25.0], [29.8, 28.6, 26.5])
    assert mixed.verdict_text().startswith("TLC helps on average: +0.63 dB (min -0.20, max +1.50")
    assert mixed.verdict_text().endswith("but it is worse on 1 of 3 images")
    neutral = result([30.0, 28.0], [30.004, 27.999])
    assert not neutral.verdict()["helps"]
    assert neutral.verdict_text().startswith("TLC does not help these pairs: +0.00 dB (min -0.00, max +0.00 over 2")
    hurts = result([30.0], [29.5])
    assert hurts.verdict_text() == ("TLC does not help these pairs: -0.10 dB (min -0.10, max -0.10 over 1 image, "
                                    "best of 2 calibration sizes: 128x128)")


def test_recommendation_wording():
    from tlc_export.sweep import SweepResult, SweepRow

    def result(global_psnr, tlc_psnrs):
        rows = [SweepRow("global", None, False, [global_psnr], [0.5])]
        rows += [SweepRow(f"{s}x{s}", [s, s], True, [p], [0.5]) for s, p in zip((64, 128), tlc_psnrs)]
        return SweepResult("m.pth", [{"name": "a", "input_psnr": 20.0}], rows, 1, convert_args=["--arch", "hinet"])

    better = result(30.0, [30.5, 30.2])
    assert better.recommendation()["calib"] == [64, 64] and better.recommendation()["beats_global"]
    assert better.recommendation_text().endswith("tlc-export m.pth --calib 64x64 --arch hinet")
    tie = result(30.0, [30.004, 29.9])
    assert not tie.recommendation()["beats_global"] and "keep the global model" in tie.recommendation_text()
    assert "within" in tie.recommendation_text()
    worse = result(30.0, [29.5, 29.0])
    assert "-0.50 dB against" in worse.recommendation_text()
