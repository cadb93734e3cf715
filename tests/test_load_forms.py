"""Every input form of one model gives the same exact TLC graph; spandrel loads foreign state dicts.

Forms: the in-memory module, its state dict (spandrel architectures), a TorchScript trace, a dynamic
``.pt2``, and ONNX files from both PyTorch exporters. Each converted graph is checked against the eager
TLC reference (``to_local``) at two sizes other than the calibration size, and against the others.
"""
import copy
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import perturb_identity_params
from tlc_export.api import convert
from tlc_export.errors import UserError
from tlc_export.load.spandrel_arches import spandrel_registry
from tlc_export.reference import to_local
from tlc_export.runtime import ort_session

CALIB = (32, 32)
SIZES = [(1, 3, 40, 56), (2, 3, 48, 36)]   # neither is the calibration size; windows past and inside maps


class SEInstanceNet(nn.Module):
    """NAFNet-like: a simplified channel attention (pool → 1×1 conv → scale), an SE block with
    reduction, an instance norm and a functional spatial mean, in a two-level U."""

    def __init__(self, c=8):
        super().__init__()
        self.intro = nn.Conv2d(3, c, 3, padding=1)
        self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
        self.down = nn.Conv2d(c, 2 * c, 2, stride=2)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(2 * c, c // 2, 1), nn.ReLU(),
                                nn.Conv2d(c // 2, 2 * c, 1), nn.Sigmoid())
        self.norm = nn.InstanceNorm2d(2 * c, affine=True)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.ending = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        y = self.intro(x)
        y = y * self.sca(y)
        z = self.down(y)
        z = self.norm(z * self.se(z))
        z = z - z.mean((2, 3), keepdim=True)
        return x + self.ending(self.up(z) + y)


def _model():
    torch.manual_seed(0)
    return perturb_identity_params(SEInstanceNet()).eval()


def _onnx_file(model, path, dynamo):
    x = torch.rand(1, 3, 24, 24)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            d = torch.export.Dim.DYNAMIC
            torch.onnx.export(model, (torch.rand(2, 3, 24, 24),), str(path), dynamo=True,
                              dynamic_shapes=({0: d, 2: d, 3: d},), input_names=["x"], output_names=["y"])
        else:
            torch.onnx.export(model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "n", 2: "h", 3: "w"},
                                                                "y": {0: "n", 2: "h", 3: "w"}})


def _pt2(model, path):
    d = torch.export.Dim.DYNAMIC
    torch.export.save(torch.export.export(model, (torch.rand(2, 3, 24, 24),),
                                          dynamic_shapes=({0: d, 2: d, 3: d},)), path)


def save_form(model, form, tmp_path):
    """The file for ``form`` (or the module itself for "module")."""
    if form in ("module", "module_dynamo"):
        return model
    if form == "state_dict":
        path = tmp_path / "m.pth"
        torch.save({"params": model.state_dict()}, path)
    elif form == "torchscript":
        path = tmp_path / "m.pt"
        torch.jit.save(torch.jit.trace(model, torch.rand(1, 3, 24, 24)), path)
    elif form == "pt2":
        path = tmp_path / "m.pt2"
        _pt2(model, path)
    else:
        path = tmp_path / f"m.{form}.onnx"
        _onnx_file(model, path, dynamo=form == "onnx_dynamo")
    return path


def _run(onnx_path, x):
    session = ort_session(onnx_path)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def check_forms(model, forms, tmp_path, effect=True):
    """Convert every form; each graph within 1e-5 of the eager reference at SIZES, and of each other."""
    local, _ = to_local(copy.deepcopy(model), CALIB)
    inputs = [torch.rand(s, generator=torch.Generator().manual_seed(s[2])) for s in SIZES]
    with torch.no_grad():
        # On copies: spandrel's RCAN scales its input in place.
        want = [local(x.clone()).numpy() for x in inputs]
        glob = [model(x.clone()).numpy() for x in inputs]
    outs, counts = {}, {}
    for form in forms:
        src = save_form(model, form, tmp_path)
        kwargs = {"output": tmp_path / f"{form}.tlc.onnx"}
        if form == "module_dynamo":
            kwargs["exporter"] = "dynamo"
        result = convert(src, CALIB, **kwargs)
        counts[form] = len(result.report["rewritten"])
        outs[form] = [_run(result.onnx_path, x) for x in inputs]
        for got, ref, g in zip(outs[form], want, glob):
            assert np.abs(got - ref).max() <= 1e-5, form
            assert not effect or np.abs(got - g).max() > 1e-4, f"{form}: the conversion changed nothing"
    first = forms[0]
    for form in forms[1:]:
        for a, b in zip(outs[first], outs[form]):
            assert np.abs(a - b).max() <= 1e-5, (first, form)
    assert len(set(counts.values())) == 1, counts
    return counts


def test_every_form_of_one_model_gives_the_same_exact_graph(tmp_path):
    counts = check_forms(_model(), ["module", "module_dynamo", "torchscript", "pt2", "onnx_torchscript",
                                       "onnx_dynamo"], tmp_path)
    assert counts["module"] == 4   # the two pools, the instance norm, the functional mean


@pytest.fixture(scope="module")
def spandrel_or_skip():
    found = spandrel_registry()
    if found.registry is None:
        pytest.skip(f"spandrel is not installed ({found.missing})")
    return found


def _spandrel_class(arch_id):
    import importlib

    spandrel_registry()  # imports spandrel without the architectures that need torchvision
    return importlib.import_module(f"spandrel.architectures.{arch_id}")


def _spandrel_nafnet():
    torch.manual_seed(1)
    net = _spandrel_class("NAFNet").NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])
    return perturb_identity_params(net).eval()


def _spandrel_rcan():
    torch.manual_seed(2)
    net = _spandrel_class("RCAN").RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4)
    return perturb_identity_params(net).eval()


# NAFNet's LayerNorm autograd Function cannot be saved as TorchScript. RCAN (spandrel assumes rgb_range
# 255, an input scaled by 255 saturates its small channel attention) is checked for exactness only.
@pytest.mark.parametrize("make, arch_id, forms, effect", [
    (_spandrel_nafnet, "NAFNet", ["state_dict", "pt2"], True),
    (_spandrel_rcan, "RCAN", ["state_dict", "onnx_dynamo"], False),
])
def test_spandrel_state_dict_is_detected_and_every_form_agrees(spandrel_or_skip, tmp_path, make, arch_id, forms,
                                                               effect):
    model = make()
    counts = check_forms(model, forms, tmp_path, effect)
    assert counts["state_dict"] > 0
    result = convert(tmp_path / "m.pth", CALIB, output=tmp_path / "again.onnx")
    assert result.report["architecture"] == f"spandrel:{arch_id}" and result.report["loader"] == "spandrel"


def test_safetensors_state_dict_loads_through_spandrel(spandrel_or_skip, tmp_path):
    from safetensors.torch import save_file

    model = _spandrel_nafnet()
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    from tlc_export.load import load_model

    loaded = load_model(path)
    assert loaded.architecture == "spandrel:NAFNet"
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), model(x))


def test_unrecognised_state_dict_names_what_was_tried(spandrel_or_skip, tmp_path, capsys):
    from tlc_export.cli import main

    path = tmp_path / "odd.pth"
    torch.save({"body.0.weight": torch.rand(4, 3, 3, 3), "body.0.bias": torch.rand(4)}, path)
    assert main([str(path), "--calib", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "closest" in err[0] and "spandrel 0.4.2" in err[0], err


def test_architectures_that_need_torchvision_are_skipped_with_the_reason(spandrel_or_skip):
    try:
        import torchvision  # noqa: F401
    except Exception:
        assert {"LaMa", "RestoreFormer"} <= set(spandrel_or_skip.skipped)
        assert all("torchvision" in why for why in spandrel_or_skip.skipped.values())
        assert "NAFNet" in spandrel_or_skip.registry and "Restormer" in spandrel_or_skip.registry
    else:
        assert not spandrel_or_skip.skipped


class _HalvesNet(nn.Module):
    """Splits the map at int(H / 2), as spandrel's MPRNet does: the TorchScript tracer bakes that
    Python int, so its graph is only right at the export height."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        h = int(x.shape[2] / 2)
        top, bottom = x[:, :, :h], x[:, :, h:]
        y = torch.cat([self.conv(top), self.conv(bottom) * 2], 2)
        return y * y.mean((2, 3), keepdim=True)


def test_export_wrong_at_another_size_is_refused_with_the_numbers(tmp_path):
    """int(H / 2) is baked by both exporters (torch.export specialises the float round trip): the
    second-size check refuses, naming both errors, and writes nothing."""
    torch.manual_seed(0)
    with pytest.raises(UserError) as info:
        convert(_HalvesNet().eval(), CALIB, output=tmp_path / "h.onnx", exporter="torchscript")
    message = str(info.value)
    assert "torchscript-exported graph is" in message and "dynamo-exported one is" in message
    assert "not faithful" in message and not (tmp_path / "h.onnx").exists()


def test_static_pt2_is_refused_with_one_line(tmp_path, capsys):
    from tlc_export.cli import main

    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(_model(), (torch.rand(1, 3, 24, 24),)), path)
    assert main([str(path), "--calib", "32"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "static height and width" in err[0]


class _RuntimePoolNet(nn.Module):
    """An adaptive pool whose output size depends on the input: the TorchScript exporter cannot
    translate it (SAFMN's form), torch.export can."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        p = F.adaptive_max_pool2d(y, (x.shape[2] // 8, x.shape[3] // 8))
        return y * y.mean((2, 3), keepdim=True) + F.interpolate(p, size=y.shape[2:])


def test_model_the_torchscript_exporter_cannot_translate_goes_through_dynamo(tmp_path):
    torch.manual_seed(0)
    model = _RuntimePoolNet().eval()
    result = convert(model, CALIB, output=tmp_path / "p.onnx", exporter="torchscript")
    assert result.report["exporter"] == "dynamo" and "TorchScript exporter fails" in result.report["notes"][0]
    local, _ = to_local(copy.deepcopy(model), CALIB)
    x = torch.rand(1, 3, 48, 40)
    with torch.no_grad():
        want = local(x).numpy()
    assert np.abs(_run(result.onnx_path, x) - want).max() <= 1e-5


@pytest.mark.parametrize("rgb_range", [1, 255])
def test_spandrel_rcan_rgb_range_is_read_from_the_checkpoint(spandrel_or_skip, tmp_path, rgb_range):
    """spandrel builds RCAN with rgb_range 255; the stored sub_mean bias (−rgb_range·mean) says otherwise."""
    from tlc_export.load import load_model

    torch.manual_seed(3)
    net = _spandrel_class("RCAN").RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=8, reduction=4,
                                       rgb_range=rgb_range).eval()
    torch.save(net.state_dict(), tmp_path / "rcan.pth")
    loaded = load_model(tmp_path / "rcan.pth")
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.allclose(loaded.module(x.clone()), net(x.clone()), atol=1e-5)
    assert loaded.module.rgb_range == rgb_range
