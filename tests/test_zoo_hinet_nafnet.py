"""HINet and NAFNet zoo implementations: official state-dict layout, forward shapes, TLC conversion, tracing."""
from __future__ import annotations

import copy
import importlib
import io
import warnings

import pytest
import torch
from torch import nn

from tlc_export.zoo import hinet, nafnet
from tlc_export.zoo.hinet import HINet
from tlc_export.zoo.nafnet import NAFNet
from conftest import MANIFEST_DIR, load_manifest as _manifest

torch.set_num_threads(1)



FAMILY_PRESETS = [(name, cls, kwargs) for module in (hinet, nafnet)
                  for name, (cls, kwargs) in module.PRESETS.items()]

TINY_HINET = dict(in_chn=3, wf=8, depth=3, relu_slope=0.2, hin_position_left=0, hin_position_right=4)
TINY_HINET_PARTIAL_HIN = dict(in_chn=3, wf=8, depth=3, relu_slope=0.2, hin_position_left=1, hin_position_right=1)
TINY_NAFNET = dict(img_channel=3, width=8, middle_blk_num=1, enc_blk_nums=[1, 2], dec_blk_nums=[1, 1])


def _build_seeded(cls, kwargs, seed: int = 0) -> nn.Module:
    """Builds a model with seeded default init, then perturbs every parameter (norm affines, NAFNet's
    zero-initialised beta/gamma included) so that no path is an identity."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = cls(**kwargs)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=param.dtype)
            if name.endswith(("beta", "gamma")) or ".norm" in name:
                param.copy_(noise * 0.5 + (1.0 if name.endswith("weight") else 0.0))
            else:
                param.add_(noise * 0.02)
    return model.eval()


def _final(output):
    return output[-1] if isinstance(output, (list, tuple)) else output


# 1. State-dict keys and shapes equal the official manifests.

def test_presets_cover_the_manifests():
    names = {name for name, _, _ in FAMILY_PRESETS}
    assert set(hinet.PRESETS) == {"HINet-GoPro", "HINet-REDS", "HINet-Rain13k", "HINet-SIDD-1x", "HINet-SIDD-0.5x"}
    assert set(nafnet.PRESETS) == {"NAFNet-GoPro-width64", "NAFNet-GoPro-width32", "NAFNet-SIDD-width64",
                                   "NAFNet-SIDD-width32", "NAFNet-REDS-width64"}
    assert hinet.FAMILY_CLASS is HINet and nafnet.FAMILY_CLASS is NAFNet
    if MANIFEST_DIR.is_dir():
        on_disk = {p.stem for p in MANIFEST_DIR.glob("*.json") if p.stem.split("-")[0] in ("HINet", "NAFNet")}
        assert names == on_disk


@pytest.mark.parametrize("name,cls,kwargs", FAMILY_PRESETS, ids=[n for n, _, _ in FAMILY_PRESETS])
def test_preset_state_dict_matches_manifest(name, cls, kwargs):
    manifest = _manifest(name)
    assert manifest["config"] == kwargs, "preset kwargs differ from the manifest config"
    with torch.device("meta"):
        model = cls(**kwargs)
    ours = {(key, tuple(t.shape)) for key, t in model.state_dict().items()}
    theirs = {(key, tuple(shape)) for key, shape, _ in manifest["keys"]}
    missing = sorted(theirs - ours)
    unexpected = sorted(ours - theirs)
    assert not missing and not unexpected, f"missing {missing[:10]} ... unexpected {unexpected[:10]} ..."
    assert len(model.state_dict()) == manifest["num_state_dict_tensors"]
    for group in manifest.get("shared_tensors", []):
        state = model.state_dict()
        first = state[group[0]]
        assert all(state[key] is first for key in group[1:]), f"not one tensor: {group}"


def test_build_by_preset_name():
    from tlc_export import zoo

    with torch.device("meta"):
        model = zoo.build("hinet-sidd-0.5x")
        assert isinstance(model, HINet) and model.conv_01.out_channels == 32
        model = zoo.build("NAFNet-SIDD-width32")
        assert isinstance(model, NAFNet) and len(model.middle_blks) == 12


def test_global_ops_are_the_official_module_types():
    model = HINet(**TINY_HINET_PARTIAL_HIN)
    norms = {name: m for name, m in model.named_modules() if isinstance(m, nn.InstanceNorm2d)}
    # Only encoder level 1 of each stage has half instance norm: 16 channels, half normalised.
    assert sorted(norms) == ["down_path_1.1.norm", "down_path_2.1.norm"]
    assert all(m.affine and m.num_features == 8 and not m.track_running_stats for m in norms.values())

    model = NAFNet(**TINY_NAFNET)
    pools = [name for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    assert len(pools) == 1 + 2 + 1 + 1 + 1  # every NAFBlock's sca.0
    assert all(name.endswith("sca.0") for name in pools)
    assert all(model.get_submodule(name).output_size == 1 for name in pools)


# 2. Tiny models run at sizes that are not multiples of 8.

@pytest.mark.parametrize("kwargs", [TINY_HINET, TINY_HINET_PARTIAL_HIN])
def test_hinet_tiny_forward(kwargs):
    model = _build_seeded(HINet, kwargs)
    # HINet has no padding: H, W must be multiples of 2 ** (depth - 1) = 4; 20 x 28 are not multiples of 8.
    x = torch.randn(2, 3, 20, 28, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, list) and len(out) == 2
    for y in out:
        assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(out[0], out[1])


@pytest.mark.parametrize("size", [(21, 27), (16, 24), (5, 3)])
def test_nafnet_tiny_forward_pads_and_crops(size):
    model = _build_seeded(NAFNet, TINY_NAFNET)
    assert model.padder_size == 4
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    # The crop keeps the top-left corner: an input padded by hand to a multiple of 4 gives the same values.
    h, w = size
    ph, pw = -(-h // 4) * 4, -(-w // 4) * 4
    padded = torch.zeros(1, 3, ph, pw)
    padded[:, :, :h, :w] = x
    with torch.no_grad():
        y_padded = model(padded)
    torch.testing.assert_close(y, y_padded[:, :, :h, :w], rtol=0, atol=1e-5)


def test_layernorm2d_matches_channel_layer_norm():
    norm = nafnet.LayerNorm2d(6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64)
    norm = norm.double()
    expected = nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,), norm.weight, norm.bias, eps=1e-6)
    torch.testing.assert_close(norm(x), expected.permute(0, 3, 1, 2))
    assert [name for name, _ in norm.named_parameters()] == ["weight", "bias"]


# 3. TLC conversion (tlc_export.reference.to_local).

def _to_local():
    try:
        module = importlib.import_module("tlc_export.reference")
    except ImportError:
        module = None
    if module is None or not hasattr(module, "to_local"):
        pytest.skip("tlc_export.reference.to_local is not available yet")
    return module.to_local


TLC_CASES = [
    # (class, kwargs, input size, global-equivalent calib, smaller calib, converted module type);
    # HINet does not pad, so its calibration sizes are multiples of 2 ** (depth - 1) = 4 too.
    (HINet, TINY_HINET, (20, 28), (20, 28), (8, 12), nn.InstanceNorm2d),
    (HINet, TINY_HINET_PARTIAL_HIN, (20, 28), (24, 32), (12, 16), nn.InstanceNorm2d),
    (NAFNet, TINY_NAFNET, (21, 27), (21, 27), (10, 13), nn.AdaptiveAvgPool2d),
    (NAFNet, TINY_NAFNET, (21, 27), (32, 40), (11, 14), nn.AdaptiveAvgPool2d),
]


@pytest.mark.parametrize("cls,kwargs,size,calib_big,calib_small,global_type", TLC_CASES,
                         ids=["hinet-calib=input", "hinet-partial-calib>input",
                              "nafnet-calib=input", "nafnet-calib>input"])
def test_to_local_global_equivalence_and_locality(cls, kwargs, size, calib_big, calib_small, global_type):
    to_local = _to_local()
    model = _build_seeded(cls, kwargs).double()
    n_global = sum(isinstance(m, global_type) for m in model.modules())
    assert n_global > 0
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    with torch.no_grad():
        reference = model(x)

    # The calibration input is passed explicitly: to_local's own guess of the input channels (the first
    # Conv2d in module order) would read HINet's ``down_path_1.0.identity`` (wf channels), not ``conv_01``.
    def calib_input(calib):
        return torch.rand(1, 3, *calib, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    local_big, records = to_local(copy.deepcopy(model), calib=calib_big, example_input=calib_input(calib_big))
    assert len(records) == n_global
    assert not any(isinstance(m, global_type) for m in local_big.modules())
    with torch.no_grad():
        out_big = local_big(x)
    for ref, got in zip(reference if isinstance(reference, list) else [reference],
                        out_big if isinstance(out_big, list) else [out_big]):
        assert got.shape == ref.shape
        assert (got - ref).abs().max().item() <= 1e-6

    local_small, _ = to_local(copy.deepcopy(model), calib=calib_small, example_input=calib_input(calib_small))
    with torch.no_grad():
        out_small = _final(local_small(x))
    assert out_small.shape == _final(reference).shape
    assert torch.isfinite(out_small).all()
    assert (out_small - _final(reference)).abs().max().item() > 1e-4


# 4. Tracing: NAFNet's pad/crop stays symbolic in H and W.

def test_nafnet_traces_with_dynamic_hw():
    model = _build_seeded(NAFNet, TINY_NAFNET)
    example = torch.randn(1, 3, 21, 27)
    others = [torch.randn(1, 3, 16, 24), torch.randn(1, 3, 13, 30)]
    with torch.no_grad():
        gm = torch.fx.symbolic_trace(model)
        for x in [example, *others]:
            torch.testing.assert_close(gm(x), model(x), rtol=0, atol=0)

        dims = ({2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC},)
        program = torch.export.export(model, (example,), dynamic_shapes=dims).module()
        for x in others:
            torch.testing.assert_close(program(x), model(x), rtol=1e-6, atol=1e-6)


def test_nafnet_onnx_export_with_dynamic_hw():
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = _build_seeded(NAFNet, TINY_NAFNET)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(1, 3, 21, 27),), buffer, dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {2: "h", 3: "w"}, "y": {2: "h", 3: "w"}})
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    for size in [(21, 27), (16, 24), (13, 30)]:
        x = torch.randn(1, 3, *size)
        (y,) = session.run(None, {"x": x.numpy()})
        with torch.no_grad():
            expected = model(x).numpy()
        assert y.shape == expected.shape
        assert abs(y - expected).max() < 1e-4
