"""``tlc-export inspect`` and ``--calib auto``: windows against real conversions, multiply-adds against
forward hooks on the eager model and against the converted graph itself, the zoo's training crops."""
import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from conftest import FAMILY_CALIB, SMALL, perturb_identity_params
from tlc_export import zoo
from tlc_export.api import convert, module_as_loaded, resolve_calib
from tlc_export.cli import main
from tlc_export.errors import UserError
from tlc_export.inspect import fast_grid, inspect_model
from tlc_export.load import LoadedModel, preset_signature
from tlc_export.runtime import ort_session
from tlc_export.zoo.crops import TRAINING_CROPS

SIZE = (72, 104)   # the run-time size: not the calibration size, windows overlap past 32 (Restormer)
RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])
FAMILIES = {**SMALL, "restormer": RESTORMER}


def hook_macs(model: nn.Module, x: torch.Tensor) -> int:
    """Multiply-adds of Conv2d / ConvTranspose2d / Linear layers in one eager forward pass."""
    total = 0

    def count(m, inputs, out):
        nonlocal total
        if isinstance(m, nn.Conv2d):
            total += out.numel() * m.in_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.ConvTranspose2d):
            total += inputs[0].numel() * m.out_channels // m.groups * m.kernel_size[0] * m.kernel_size[1]
        elif isinstance(m, nn.Linear):
            total += out.numel() * m.in_features

    handles = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return total


@pytest.fixture(scope="module")
def families(converted_families, tmp_path_factory):
    """{family: (eager model, checkpoint, conversion report, inspection)} for the four families."""
    out = {family: (model, ckpt, tlc.report) for family, (model, ckpt, tlc, _) in converted_families.items()}
    torch.manual_seed(0)
    model = zoo.build("restormer", **RESTORMER).eval()
    ckpt = tmp_path_factory.mktemp("restormer") / "restormer.pth"
    torch.save({"params": model.state_dict()}, ckpt)
    out["restormer"] = (model, ckpt, convert(ckpt, FAMILY_CALIB, arch="restormer", arch_kwargs=RESTORMER).report)
    return {family: (*entry, inspect_model(entry[1], FAMILY_CALIB, size=SIZE, arch=family,
                                           arch_kwargs=FAMILIES[family], effect=False))
            for family, entry in out.items()}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_windows_equal_the_report_of_a_real_conversion(families, family):
    _, _, report, result = families[family]
    got = [(o.onnx_name, o.module_path, o.kind, tuple(o.window)) for o in result.ops]
    want = [(r["onnx_name"], r["module_path"], r["op"], tuple(r["window"])) for r in report["rewritten"]]
    assert got == want and got
    for o in result.ops:   # the level's factor ties the window to the run-time map
        assert FAMILY_CALIB[0] / o.window[0] == o.factor == SIZE[0] / o.map_at_size[0]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_model_macs_match_forward_hooks(families, family):
    model, _, _, result = families[family]
    want = hook_macs(model, torch.rand(1, 3, *SIZE))
    assert not result.unknown_mac_nodes
    assert abs(result.model_macs - want) <= 0.01 * want


def _conv_macs_of_graph(path, size) -> int:
    """Conv multiply-adds of an ONNX graph as it runs: ONNX Runtime reports every Conv output's shape."""
    model = onnx.load(str(path))
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    weights = {i.name: list(i.dims) for i in model.graph.initializer}
    del model.graph.output[:]
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n.output[0]) for n in convs)
    outs = ort_session(model).run(None, {"input": np.random.rand(1, 3, *size).astype(np.float32)})
    return sum(o.size * int(np.prod(weights[n.input[1]][1:])) for n, o in zip(convs, outs))


@pytest.mark.parametrize("family", ["nafnet", "mprnet"])
def test_exact_extra_macs_are_what_the_converted_graph_computes(converted_families, families, family):
    """Conv multiply-adds of the real TLC graph minus the global model's = the inspected exact extra
    (NAFNet: the SCA conv on the valid map; MPRNet: the reducing conv on the full map, the rest valid)."""
    model, _, _, result = families[family]
    tlc_graph = converted_families[family][2].onnx_path
    extra = _conv_macs_of_graph(tlc_graph, SIZE) - hook_macs(model, torch.rand(1, 3, *SIZE))
    assert result.extra_exact == extra > 0


def test_attention_extra_is_the_overlap_of_the_windows(families):
    """Level 0 of the tiny Restormer: c = 8, 1 head, window 32 on a 72×104 map: 3×4 windows of 32×32
    (rows 0, 20, 40; columns 0, 24, 48, 72) instead of one 72×104 map; q·kᵀ and attn·v cost c²/heads
    per pixel each."""
    op = families["restormer"][3].ops[0]
    assert op.window == [32, 32] and op.map_at_size == [72, 104]
    per_pixel = 2 * 8 * 8
    assert op.extra_macs_exact == per_pixel * (3 * 32 * 4 * 32 - 72 * 104)


def _official_fast_length(n, k, map_at_calib, calib_side):
    """The official fast_imp (megvii-research/TLC local_arch.AvgPool2d) run on a tensor: output length."""
    rs = [5, 4, 3, 2, 1]
    r = min(max(1, rs[0] * map_at_calib // calib_side), [r for r in rs if n % r == 0][0])
    s = torch.zeros(1, 1, n, 1)[:, :, ::r].cumsum(dim=-2)
    k1 = min(s.shape[2] - 1, k // r)
    return s[:, :, :-k1].shape[2]


@pytest.mark.parametrize("n,k,calib_map,calib_side", [(64, 32, 32, 32), (96, 16, 16, 32), (45, 20, 20, 24),
                                                      (37, 8, 8, 32), (720, 96, 96, 384), (23, 22, 22, 22)])
def test_fast_grid_matches_the_official_fast_implementation(n, k, calib_map, calib_side):
    assert fast_grid(n, k, calib_map, calib_side)[1] == _official_fast_length(n, k, calib_map, calib_side)


# --------------------------------------------------------------------------- the table, the CLI, the effect

def test_cli_prints_the_table_and_writes_json(converted_families, tmp_path, capsys):
    _, ckpt, _, _ = converted_families["nafnet"]
    out = tmp_path / "i.json"
    code = main(["inspect", str(ckpt), "--arch", "nafnet", "--arch-kwargs", json.dumps(SMALL["nafnet"]),
                 "--calib", "32", "--size", "40x56", "--json", str(out)])
    text = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert code == 0 and "encoders.0.0.sca" in text and "exact TLC adds" in text and "TLC effect" in text
    assert data["calib"] == [32, 32] and data["effect"]["max_abs"] > 0 and len(data["ops"]) == 5


def test_effect_is_the_eager_difference(converted_families):
    from tlc_export.inspect import effect_image
    from tlc_export.reference import to_local
    import copy

    model = converted_families["hinet"][0]
    result = inspect_model(model, FAMILY_CALIB, size=(48, 40), arch="hinet")
    image = effect_image(3, (48, 40))
    with torch.no_grad():
        local, _ = to_local(copy.deepcopy(model), FAMILY_CALIB)
        diff = (local(image)[-1] - model(image)[-1]).abs()
    assert result.effect["max_abs"] == pytest.approx(float(diff.max()), rel=1e-6) and float(diff.max()) > 1e-4


def test_without_calib_lists_the_ops_and_suggests_one(converted_families):
    model = converted_families["nafnet"][0]
    result = inspect_model(model, None, size=(64, 64), arch="NAFNet-GoPro-width32")
    assert len(result.ops) == 5 and all(o.window is None for o in result.ops) and result.effect is None
    assert "384x384" in result.calib_note and "NAFNet-width32.yml" in result.calib_note
    assert "sweep" in inspect_model(model, None, size=(64, 64), arch="nafnet").calib_note


# --------------------------------------------------------------------------- --calib auto

# The crops of the official training configurations (gt_size / TRAIN_PS), read from the files the zoo cites.
CITED_CROPS = {"HINet": 256, "MPRNet-Deblurring": 256, "MPRNet-Denoising": 128, "MPRNet-Deraining": 256,
               "Restormer": 384, "NAFNet": 256}


@pytest.mark.parametrize("preset", zoo.preset_names())
def test_calib_auto_resolves_every_preset(preset):
    crop = next(v for k, v in CITED_CROPS.items() if preset.startswith(k))
    loaded = LoadedModel(None, "checkpoint", preset=preset, family=zoo.presets()[preset][0])
    assert resolve_calib("auto", loaded) == (crop * 3 // 2, crop * 3 // 2)
    assert TRAINING_CROPS[preset].source.split()[1].endswith(".yml")
    assert resolve_calib("auto", loaded)[0] % 16 == 0   # every family's input multiple divides 16


def test_presets_with_identical_keys_share_a_crop():
    """Key detection cannot tell twins apart, so auto must not depend on which twin is picked."""
    by_signature = {}
    for preset in zoo.preset_names():
        by_signature.setdefault(preset_signature(preset), set()).add(TRAINING_CROPS[preset].crop)
    assert all(len(crops) == 1 for crops in by_signature.values())


def test_calib_auto_converts_a_preset(tmp_path):
    model = perturb_identity_params(zoo.build("nafnet", **SMALL["nafnet"])).eval()
    result = convert(model, "auto", arch="NAFNet-GoPro-width32", output=tmp_path / "m.onnx")
    assert result.report["calib"] == [384, 384]


def test_calib_auto_refuses_a_foreign_model_in_one_line(converted_families, tmp_path, capsys):
    graph = converted_families["nafnet"][3].onnx_path   # an .onnx file: no preset behind it
    for args in ([str(graph), "--calib", "auto", "-o", str(tmp_path / "x.onnx")],
                 ["inspect", str(graph), "--calib", "auto"]):
        code = main(args)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and "sweep" in err[0]
    with pytest.raises(UserError):
        resolve_calib("auto", module_as_loaded(nn.Conv2d(3, 3, 1)))


def test_progress_bars_are_silent_off_a_terminal(capsys):
    """Under pytest stderr is not a terminal: bars print nothing and leave no hooks behind."""
    from tlc_export.progress import bar, module_calls, ticking

    model = nn.Sequential(nn.Conv2d(3, 3, 1), nn.ReLU())
    with ticking("exporting"), module_calls(model, "eager", 2) as b:
        model(torch.rand(1, 3, 4, 4))
    with bar(3, "x") as b3:
        b3.update(3)
    assert b.disable and capsys.readouterr().err == ""
    assert not any(m._forward_hooks for m in model.modules())


def test_onnx_input_is_inspected_without_pytorch(converted_families, families):
    """A global .onnx graph: the same ops and windows as from the checkpoint; no effect (no eager model)."""
    graph = converted_families["mprnet"][3].onnx_path
    result = inspect_model(graph, FAMILY_CALIB, size=SIZE)
    from_ckpt = families["mprnet"][3]
    assert [(o.onnx_name, o.window, o.extra_macs_exact) for o in result.ops] == \
        [(o.onnx_name, o.window, o.extra_macs_exact) for o in from_ckpt.ops]
    assert result.model_macs == from_ckpt.model_macs and "needs the PyTorch model" in result.table()


class MaxPooledAttention(nn.Module):
    """Channel attention on a global *max* pool and a flattened-then-Linear pooled vector: neither has an
    exact local form as a drop-in, so a conversion must keep them global and say why."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.max_pool = nn.AdaptiveMaxPool2d(1)
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 8)
        self.out = nn.Conv2d(8, 3, 1)

    def forward(self, x):
        y = self.conv(x)
        y = y * torch.sigmoid(self.max_pool(y))
        y = y * torch.sigmoid(self.fc(self.avg_pool(y).flatten(1)))[:, :, None, None]
        return self.out(y)


def test_kept_global_ops_are_listed_with_reasons():
    """The max pool is kept global with its reason; the pooled-then-Linear vector is localised and its
    Linear runs per pixel on the full map (8·8 multiply-adds per pixel, h·w − 1 more than once)."""
    result = inspect_model(MaxPooledAttention().eval(), FAMILY_CALIB, size=(40, 48), effect=False)
    kept = [o for o in result.ops if o.action == "kept global"]
    assert [o.module_path for o in kept] == ["max_pool"] and all(o.reason for o in kept)
    assert "kept global" in result.table()
    linear = next(o for o in result.ops if o.module_path == "avg_pool")
    assert linear.mlp_macs_per_pixel == 64 and linear.extra_macs_exact == 64 * (40 * 48 - 1)


def test_eca_conv_across_channels_counts_every_position():
    """ECA's 1-D conv (kernel 3) across the 8 channels of the pooled vector: 3 · 8 multiply-adds per
    pixel, on the full map once local (the vector is padded back before the conv runs)."""
    from test_rewrite_kinds import Pooled

    result = inspect_model(Pooled("eca").eval(), (16, 16), size=(40, 48), effect=False)
    [op] = result.ops
    assert op.action == "rewritten" and op.mlp_macs_per_pixel == 3 * 8
    assert op.extra_macs_exact == 3 * 8 * (40 * 48 - 1)
