"""Restormer zoo family: checkpoint keys of the released configurations, tiny forward, TLC conversion."""
from __future__ import annotations

import copy
import importlib
import json

import pytest
import torch

from tlc_export.zoo import restormer
from tlc_export.zoo.restormer import INPUT_MULTIPLE, PRESETS, Restormer
from conftest import MANIFEST_DIR, load_manifest as _manifest

torch.set_num_threads(1)

MANIFESTS = MANIFEST_DIR

TINY = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])


def test_presets_cover_all_restormer_manifests():
    if not MANIFESTS.is_dir():
        pytest.skip(f"checkpoint manifests not found at {MANIFESTS}")
    names = {p.stem for p in MANIFESTS.glob("*.json") if json.loads(p.read_text()).get("arch") == "restormer"}
    assert names == set(PRESETS)
    assert restormer.FAMILY_CLASS is Restormer


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_state_dict_matches_manifest(name):
    manifest = _manifest(name)
    cls, kwargs = PRESETS[name]
    assert kwargs == manifest["config"], "preset kwargs differ from the manifest's constructor config"
    with torch.device("meta"):
        model = cls(**kwargs)
    ours = {(k, tuple(v.shape)) for k, v in model.state_dict().items()}
    ref = {(k, tuple(shape)) for k, shape, _ in manifest["keys"]}
    missing, unexpected = sorted(ref - ours), sorted(ours - ref)
    assert not missing and not unexpected, f"missing {missing[:20]} unexpected {unexpected[:20]}"
    assert len(model.state_dict()) == len(manifest["keys"])
    assert "shared_tensors" not in manifest


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Make every norm/temperature/bias non-trivial so no path is an identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g, dtype=p.dtype)
            if name.endswith("temperature"):
                p.copy_(0.5 + 2.0 * torch.rand(p.shape, generator=g, dtype=p.dtype))
            elif ".norm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
    return model


def _tiny(seed: int = 0, **overrides) -> Restormer:
    torch.manual_seed(seed)
    return _randomise(Restormer(**{**TINY, **overrides}), seed).eval()


@pytest.mark.parametrize("overrides,cin,cout", [
    ({}, 3, 3),
    ({"LayerNorm_type": "BiasFree", "bias": True}, 3, 3),
    ({"inp_channels": 6, "dual_pixel_task": True}, 6, 3),
    ({"inp_channels": 1, "out_channels": 1, "LayerNorm_type": "BiasFree"}, 1, 1),
])
def test_tiny_forward(overrides, cin, cout):
    model = _tiny(1, **overrides)
    # Restormer needs multiples of 8; 40x56 are not multiples of 16 (odd maps at the lowest level).
    h, w = 5 * INPUT_MULTIPLE, 7 * INPUT_MULTIPLE
    x = torch.randn(2, cin, h, w, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        y = model(x)
    assert y.shape == (2, cout, h, w)
    assert torch.isfinite(y).all()


def test_tiny_attention_is_restormer_style():
    model = _tiny(2)
    attn = [m for m in model.modules() if isinstance(m, restormer.Attention)]
    assert len(attn) == 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1  # enc1-3, latent, dec3-1, refinement
    for m in attn:
        for name in ("num_heads", "temperature", "qkv", "qkv_dwconv", "project_out"):
            assert hasattr(m, name)
        assert m.temperature.shape == (m.num_heads, 1, 1)


def _to_local():
    try:
        ref = importlib.import_module("tlc_export.reference")
    except ImportError:
        return None
    return getattr(ref, "to_local", None)


def _convert(to_local, model, calib):
    result = to_local(model, calib=calib)
    return result[0] if isinstance(result, tuple) else result


# Spatial scale of each attention stage relative to the input.
_STAGE_SCALE = {"encoder_level1": 1, "encoder_level2": 2, "encoder_level3": 4, "latent": 8,
                "decoder_level3": 4, "decoder_level2": 2, "decoder_level1": 1, "refinement": 1}


def test_tiny_to_local():
    to_local = _to_local()
    if to_local is None:
        pytest.skip("tlc_export.reference.to_local is not available yet")
    model = _tiny(3).double()
    h, w = 48, 64
    x = torch.randn(2, 3, h, w, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    with torch.no_grad():
        glob = model(x)

        for calib in [(h, w), (2 * h, 3 * w)]:
            local = _convert(to_local, copy.deepcopy(model), calib)
            assert not any(isinstance(m, restormer.Attention) for m in local.modules()), \
                "to_local left a global Restormer attention in place"
            out = local(x)
            assert (out - glob).abs().max().item() <= 1e-6, calib

        local, records = to_local(copy.deepcopy(model), calib=(h // 2, w // 2))
        attn_records = [r for r in records if r.kind == "attention"]
        assert len(attn_records) == len(_STAGE_SCALE)
        for r in attn_records:
            scale = _STAGE_SCALE[r.path.split(".")[0]]
            assert tuple(r.window) == (h // 2 // scale, w // 2 // scale), r
        out = local(x)
        assert torch.isfinite(out).all()
        assert (out - glob).abs().max().item() > 1e-4
