"""samples/train.py trains (a few steps, tiny models) and saves checkpoints that load strictly; the shipped
sample models load with the arch_kwargs recorded in their provenance and reproduce its held-out PSNR."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tlc_export.load import load_model

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
sys.path.insert(0, str(SAMPLES))

import photo_data  # noqa: E402
import train as sample_train  # noqa: E402

TINY = {
    "nafnet": dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1], dec_blk_nums=[1]),
    "hinet": dict(in_chn=3, wf=4, depth=2, relu_slope=0.2, hin_position_left=0, hin_position_right=1),
}
SHIPPED = sorted((SAMPLES / "models").glob("*.json"))


@pytest.mark.parametrize("arch", sorted(TINY))
def test_train_few_steps_saves_loadable_checkpoint(arch, tmp_path):
    logged = []
    model, summary = sample_train.train(arch, TINY[arch], steps=3, patch=32, batch=2, seed=0,
                                        photos=("camera", "coffee"), log_every=1, log=logged.append)
    assert len(logged) == 3
    assert math.isfinite(summary["final_train_loss"])
    path = sample_train.save_checkpoint(model, tmp_path / f"{arch}.pth")
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert set(raw) == {"params"}
    loaded = load_model(path, arch=arch, arch_kwargs=TINY[arch])
    assert loaded.family == arch
    x = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = sample_train.final_output(model(x))
        got = sample_train.final_output(loaded.module(x))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)


def test_training_is_seeded():
    a, sa = sample_train.train("nafnet", TINY["nafnet"], steps=2, patch=32, batch=2, seed=3,
                               photos=("camera",), log=None)
    b, sb = sample_train.train("nafnet", TINY["nafnet"], steps=2, patch=32, batch=2, seed=3,
                               photos=("camera",), log=None)
    assert sa["final_train_loss"] == sb["final_train_loss"]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_sample_models_are_shipped():
    names = {p.stem for p in SHIPPED}
    assert {"nafnet_denoise", "hinet_denoise"} <= names


@pytest.mark.parametrize("json_path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_model_loads_with_its_provenance(json_path):
    meta = json.loads(json_path.read_text())
    pth = json_path.with_suffix(".pth")
    assert pth.stat().st_size <= 5_000_000
    loaded = load_model(pth, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"])
    assert sum(p.numel() for p in loaded.module.parameters()) == meta["params"]
    # The global model reproduces the recorded held-out PSNR on one held-out photo (rebuilt from the
    # recorded degradation; for the shipped denoising pairs, the PNGs hold exactly that input).
    name = meta["data"]["heldout"][0]
    deg = meta["degradation"]
    _, degraded, clean = photo_data.heldout_pairs(deg["task"], deg["sigma_255"], deg.get("blur_sigma_heldout", 2.0),
                                                  names=(name,))[0]
    tag = "noisy" if deg["task"] == "denoise" else "blurry"
    pair_png = SAMPLES / "pairs" / f"{name}_{tag}.png"
    if deg["task"] == "denoise" and deg["sigma_255"] == 25.0:
        read = lambda p: torch.from_numpy(np.array(Image.open(p))).permute(2, 0, 1).float() / 255.0  # noqa: E731
        assert torch.equal(read(pair_png), degraded)
        assert torch.equal(read(SAMPLES / "pairs" / f"{name}_clean.png"), clean)
    restored = sample_train.restore(loaded.module, degraded, loaded.input_multiple)
    psnr = sample_train.psnr_8bit(restored, clean)
    assert abs(psnr - meta["heldout_psnr"]["global"][name]) < 0.01
    assert psnr > meta["heldout_psnr"]["input"][name] + 0.5  # the model restores something
