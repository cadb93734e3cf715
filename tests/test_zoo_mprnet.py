"""Tests of the MPRNet family (tlc_export/zoo/mprnet.py) against the official key manifests."""
from __future__ import annotations

import copy
import importlib
import importlib.util
import inspect

import pytest
import torch
from torch import nn

from tlc_export.zoo import mprnet
from conftest import MANIFEST_DIR, load_manifest as _manifest

torch.set_num_threads(1)


PRESET_NAMES = ["MPRNet-Deblurring", "MPRNet-Denoising", "MPRNet-Deraining"]

# Tiny network for the numerical tests (all widths divisible by the reduction 4).
TINY = dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1, reduction=4)
# Multiples of INPUT_MULTIPLE (8) that are not multiples of 16 nor of the calibration sizes below.
INPUT_HW = (40, 56)
CALIB_LARGE = (48, 64)   # >= the input on both axes: local == global
CALIB_SMALL = (24, 32)   # about half the input: local != global


def _randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Non-trivial weights: every parameter (incl. the shared PReLU slope and the biases) redrawn."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and p.numel() == 1:        # the shared PReLU slope
                p.fill_(0.1 + 0.4 * torch.rand((), generator=gen).item())
            else:
                fan_in = p[0].numel() if p.dim() > 1 else 1
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * (1.0 / fan_in) ** 0.5)
    return model


# ----------------------------------------------------------------------------------------------
# 1. state-dict keys and shapes, shared tensors, parameter counts
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", PRESET_NAMES)
def test_state_dict_matches_manifest(name):
    manifest = _manifest(name)
    cls, kwargs = mprnet.PRESETS[name]
    assert kwargs == manifest["config"], f"preset kwargs {kwargs} != manifest config {manifest['config']}"
    with torch.device("meta"):
        model = cls(**kwargs)

    sd = model.state_dict()
    ours = {(k, tuple(v.shape)) for k, v in sd.items()}
    ref = {(k, tuple(shape)) for k, shape, _ in manifest["keys"]}
    missing = sorted(ref - ours)
    unexpected = sorted(ours - ref)
    assert not missing and not unexpected, f"missing: {missing[:20]}\nunexpected: {unexpected[:20]}"
    assert len(sd) == manifest["num_state_dict_tensors"]
    assert sum(v.numel() for v in sd.values()) == manifest["num_state_dict_elements"]
    # parameters() yields each shared tensor once.
    assert sum(p.numel() for p in model.parameters()) == manifest["num_params"]


@pytest.mark.parametrize("name", PRESET_NAMES)
def test_shared_prelu_tensors(name):
    manifest = _manifest(name)
    groups = manifest.get("shared_tensors", {}).get("groups", [])
    assert groups, "MPRNet manifests are expected to list shared tensors"
    cls, kwargs = mprnet.PRESETS[name]
    with torch.device("meta"):
        model = cls(**kwargs)
    params = dict(model.named_parameters(remove_duplicate=False))
    buffers = dict(model.named_buffers(remove_duplicate=False))
    tensors = {**params, **buffers}

    grouped = set()
    group_owners = []
    for group in groups:
        absent = [k for k in group if k not in tensors]
        assert not absent, f"shared keys not in the model: {absent[:10]}"
        first = tensors[group[0]]
        not_shared = [k for k in group if tensors[k] is not first]
        assert not not_shared, f"keys not sharing {group[0]}'s tensor: {not_shared[:10]}"
        group_owners.append(first)
        grouped.update(group)
    # Distinct groups are distinct tensors, and no other key aliases a shared tensor.
    assert len({id(t) for t in group_owners}) == len(group_owners)
    owner_ids = {id(t) for t in group_owners}
    extra = [k for k, t in tensors.items() if id(t) in owner_ids and k not in grouped]
    assert not extra, f"keys aliasing a shared tensor but not listed: {extra[:10]}"
    # The official network has exactly one activation object: one nn.PReLU module overall.
    prelus = [m for m in model.modules() if isinstance(m, nn.PReLU)]  # modules() de-duplicates
    assert len(prelus) == 1


def test_classes_defaults_and_zoo_registration():
    assert mprnet.FAMILY_CLASS is mprnet.MPRNetDeblurring
    assert mprnet.MPRNet is mprnet.MPRNetDeblurring
    for name, (cls, kwargs) in mprnet.PRESETS.items():
        params = inspect.signature(cls.__init__).parameters
        defaults = {k: p.default for k, p in params.items() if k != "self"}
        # Each task class's defaults are that task file's defaults (the preset config).
        assert defaults == kwargs, (name, defaults, kwargs)
        if MANIFEST_DIR.is_dir():
            assert kwargs == _manifest(name)["config"]



def test_zoo_registration():
    zoo = importlib.import_module("tlc_export.zoo")
    assert zoo.family_class("mprnet") is mprnet.MPRNetDeblurring
    try:
        table = zoo.presets()  # imports every family module
    except ModuleNotFoundError as exc:
        pytest.skip(f"another zoo family module is not written yet: {exc}")
    assert set(PRESET_NAMES) <= set(table)
    with torch.device("meta"):
        net = zoo.build("mprnet-deraining")
    assert isinstance(net, mprnet.MPRNetDeraining)


# ----------------------------------------------------------------------------------------------
# 2. tiny forward: shapes, finiteness, return order, accepted sizes
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [mprnet.MPRNetDeblurring, mprnet.MPRNetDenoising, mprnet.MPRNetDeraining])
def test_tiny_forward(cls):
    torch.manual_seed(0)
    model = _randomize(cls(**TINY)).eval()
    x = torch.randn(2, 3, *INPUT_HW)
    with torch.no_grad():
        outs = model(x)
    assert isinstance(outs, list) and len(outs) == 3
    for out in outs:
        assert out.shape == x.shape
        assert torch.isfinite(out).all()


def test_return_order_stage3_stage2_stage1():
    """Zeroing the conv that produces one stage's residual makes exactly that output equal the input."""
    model = _randomize(mprnet.MPRNet(**TINY)).eval()
    x = torch.randn(1, 3, *INPUT_HW)
    producers = {0: "tail", 1: "sam23.conv2", 2: "sam12.conv2"}
    for index, path in producers.items():
        m = copy.deepcopy(model)
        with torch.no_grad():
            m.get_submodule(path).weight.zero_()
            outs = m(x)
        for j, out in enumerate(outs):
            same = torch.equal(out, x)
            assert same == (j == index), f"zeroing {path}: output {j} equal to the input is {same}"


def test_size_multiple():
    assert mprnet.INPUT_MULTIPLE == 8
    model = mprnet.MPRNet(**TINY).eval()
    with torch.no_grad():
        for hw in [(8, 8), (24, 40), (16, 72)]:
            assert model(torch.randn(1, 3, *hw))[0].shape[-2:] == hw
        # Even sizes that are not multiples of 8 break the stage-1 U-Net (as in the official code).
        for hw in [(36, 40), (40, 44), (20, 20)]:
            with pytest.raises(RuntimeError):
                model(torch.randn(1, 3, *hw))


def test_in_out_channels():
    model = mprnet.MPRNet(in_c=3, out_c=3, **TINY)
    assert model.shallow_feat1[0].in_channels == 3 and model.tail.out_channels == 3
    # in_c / out_c are used by the shallow convs and the tail (SAM stays at 3 image channels, official).
    other = mprnet.MPRNetDenoising(in_c=1, out_c=1, **TINY)
    assert other.shallow_feat3[0].in_channels == 1 and other.tail.out_channels == 1
    assert other.sam12.conv2.out_channels == 3


# ----------------------------------------------------------------------------------------------
# 3. TLC conversion (tlc_export.reference.to_local)
# ----------------------------------------------------------------------------------------------
def _to_local():
    try:
        spec = importlib.util.find_spec("tlc_export.reference")
    except ModuleNotFoundError:
        spec = None
    if spec is None:
        pytest.skip("tlc_export.reference is not available yet")
    ref = importlib.import_module("tlc_export.reference")
    if not hasattr(ref, "to_local"):
        pytest.skip("tlc_export.reference.to_local is not available yet")
    return ref.to_local


def _convert(model: nn.Module, calib):
    to_local = _to_local()
    n_attention = sum(isinstance(m, mprnet.CALayer) for m in model.modules())
    local, records = to_local(copy.deepcopy(model), calib=calib)
    assert not any(isinstance(m, nn.AdaptiveAvgPool2d) for m in local.modules()), \
        "an nn.AdaptiveAvgPool2d survived the conversion"
    # One record per channel attention (every CALayer.avg_pool), nothing else to convert in MPRNet.
    paths = sorted(getattr(r, "path", None) or r[0] for r in records)
    expected = sorted(f"{name}.avg_pool" for name, m in model.named_modules() if isinstance(m, mprnet.CALayer))
    assert len(paths) == n_attention and paths == expected
    return local.eval()


def _global_and_local_outputs(calib):
    """(x, global outputs, TLC outputs) of the tiny float64 MPRNet converted at ``calib``."""
    _to_local()  # skips early when the reference is missing
    model = _randomize(mprnet.MPRNet(bias=True, **TINY), seed=1).double().eval()
    x = torch.randn(1, 3, *INPUT_HW, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(x)
        out = _convert(model, calib)(x)
    return x, ref, out


def test_to_local_large_calib_equals_global():
    _, ref, out = _global_and_local_outputs(CALIB_LARGE)
    for r, o in zip(ref, out):
        assert (r - o).abs().max().item() <= 1e-6


def test_to_local_small_calib_differs():
    x, ref, out = _global_and_local_outputs(CALIB_SMALL)
    for o in out:
        assert o.shape == x.shape and torch.isfinite(o).all()
    assert (ref[0] - out[0]).abs().max().item() > 1e-4
