"""The converter end to end: exported graphs against the eager TLC reference, and the CLI contract."""
import copy
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import FAMILY_CALIB, SMALL, perturb_identity_params
from tlc_export import zoo
from tlc_export.api import convert
from tlc_export.calibrate import import_graph
from tlc_export.cli import main
from tlc_export.reference import to_local
from tlc_export.rewrite import constant_value, find_global_ops
from tlc_export.runtime import ort_session

CALIB = FAMILY_CALIB
SIZES = [(1, 3, 48, 64), (2, 3, 40, 56)]   # neither is the export (= calibration) size
# Large enough that the shallow levels take the prefix-sum box filter and the deep ones the matrix form.
BOTH_FORMS = (1, 3, 160, 224)


def final_output(family, out):
    if isinstance(out, (list, tuple)):
        return out[-1] if family == "hinet" else out[0]
    return out


@pytest.fixture(scope="module")
def converted(converted_families):
    return {family: (model, tlc, glob) for family, (model, _, tlc, glob) in converted_families.items()}


@pytest.mark.parametrize("family", list(SMALL))
def test_tlc_graph_matches_eager_reference(converted, family):
    model, tlc, _ = converted[family]
    local, table = to_local(copy.deepcopy(model), CALIB)
    # A module called several times (MPRNet shares stage modules) is one eager op but several nodes.
    assert {r.path for r in table} == {r["module_path"] for r in tlc.report["rewritten"]}
    session = ort_session(tlc.onnx_path)
    for shape in SIZES + [BOTH_FORMS]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[2]))
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = final_output(family, local(x)).numpy()
            glob = final_output(family, model(x)).numpy()
        assert np.abs(got - want).max() <= 1e-5, (family, shape)
        assert np.abs(got - glob).max() > 1e-4, "the conversion changed nothing"


@pytest.mark.parametrize("family", list(SMALL))
def test_no_tlc_graph_matches_global_model(converted, family):
    model, _, glob = converted[family]
    session = ort_session(glob.onnx_path)
    for shape in SIZES:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(7))
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = final_output(family, model(x)).numpy()
        assert np.abs(got - want).max() <= 1e-5


@pytest.mark.parametrize("family", list(SMALL))
def test_rewritten_graph_has_no_global_op_and_is_a_fixed_point(converted, family):
    _, tlc, _ = converted[family]
    graph = onnx.load(str(tlc.onnx_path))
    ops = {n.op_type for n in graph.graph.node}
    assert not ops & {"GlobalAveragePool", "InstanceNormalization", "GroupNormalization"}
    for node in import_graph(graph).nodes:
        if node.op == "ReduceMean":  # axes: an attribute up to opset 17, a constant input from 18
            axes = node.attrs.get("axes")
            if axes is None and len(node.inputs) > 1:
                axes = constant_value(node.inputs[1])
            assert axes is not None and not {2, 3} <= {int(a) % 5 for a in np.ravel(axes)}
    cumsum_axes = {tuple(onnx.numpy_helper.to_array(i).reshape(-1)) for i in graph.graph.initializer
                   if any(n.op_type == "CumSum" and n.input[1] == i.name for n in graph.graph.node)}
    assert len(cumsum_axes) <= 1, "CumSums on different axes (TensorRT >= 10.8 bug)"
    assert find_global_ops(import_graph(graph)) == []


def test_report_lists_rewritten_ops(converted):
    _, tlc, _ = converted["hinet"]
    report = json.loads(Path(tlc.report_path).read_text())
    assert report["opset"] >= 17 and report["calib"] == list(CALIB)
    assert report["inputs"][0]["shape"] == ["batch", 3, "height", "width"]
    assert report["outputs"][0]["name"] == "output"
    paths = {r["module_path"] for r in report["rewritten"]}
    assert {"down_path_1.0.norm", "down_path_2.2.norm"} <= paths
    windows = {r["module_path"]: r["window"] for r in report["rewritten"]}
    assert windows["down_path_1.0.norm"] == [32, 32] and windows["down_path_1.2.norm"] == [8, 8]
    assert {t["path"] for t in report["torch_global_ops"]} == paths


class _SEIN(nn.Module):
    """A small SE + instance-norm + group-norm network exported elsewhere by plain torch.onnx.export."""

    def __init__(self):
        super().__init__()
        self.head = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.InstanceNorm2d(8, affine=True)
        self.fc1, self.fc2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
        self.gn = nn.GroupNorm(2, 8)
        self.tail = nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        y = self.norm(self.head(x))
        y = y * torch.sigmoid(self.fc2(F.relu(self.fc1(y.mean((2, 3), keepdim=True)))))
        return self.tail(self.gn(y)) + x


def test_foreign_onnx_converts_without_pytorch_in_the_loop(tmp_path):
    model = perturb_identity_params(_SEIN()).eval()
    path = tmp_path / "sein.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, 24, 24),), str(path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "y": {0: "n", 2: "h", 3: "w"}})
    assert main([str(path), "--calib", "16x20"]) == 0
    out = tmp_path / "sein.tlc.onnx"
    session = ort_session(out)
    local, _ = to_local(copy.deepcopy(model), (16, 20))
    for shape in [(1, 3, 33, 27), (2, 3, 20, 45)]:
        x = torch.rand(shape)
        with torch.no_grad():
            want = local(x).numpy()
        assert np.abs(session.run(None, {"x": x.numpy()})[0] - want).max() <= 1e-5


@pytest.mark.parametrize("fmt", ["torchscript", "torch.export"])
def test_traced_archives_convert(tmp_path, fmt):
    model = perturb_identity_params(_SEIN()).eval()
    x = torch.rand(1, 3, 24, 24)
    if fmt == "torchscript":
        path = tmp_path / "sein.ts"
        torch.jit.save(torch.jit.trace(model, x), path)
    else:
        path = tmp_path / "sein.pt2"
        dim = {2: torch.export.Dim("h", min=4, max=2048), 3: torch.export.Dim("w", min=4, max=2048)}
        torch.export.save(torch.export.export(model, (x,), dynamic_shapes={"x": dim}), path)
    result = convert(path, (16, 20))
    assert result.report["format"] == fmt and len(result.report["rewritten"]) == 3
    local, _ = to_local(copy.deepcopy(model), (16, 20))
    # The .pt2 was saved with batch 1 fixed (only H and W dynamic): its graph keeps the program's shapes.
    y = torch.rand(2 if fmt == "torchscript" else 1, 3, 33, 27)
    with torch.no_grad():
        want = local(y).numpy()
    got = ort_session(result.onnx_path).run(None, {"input": y.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-5


def test_preset_is_detected_from_a_released_style_checkpoint(tmp_path):
    """MPRNet-Deraining as released: 'state_dict' wrapper, 'module.' prefix (DataParallel)."""
    model = zoo.build("MPRNet-Deraining")
    state = {"module." + k: v for k, v in model.state_dict().items()}
    path = tmp_path / "model_deraining.pth"
    torch.save({"epoch": 1, "state_dict": state}, path)
    from tlc_export.load import load_model

    loaded = load_model(path)
    assert loaded.preset == "MPRNet-Deraining" and loaded.input_multiple == 8


# --------------------------------------------------------------------------- bad input: one line, exit 2

def run_cli(args, capsys):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "hinet.pth"
    torch.save({"params": zoo.build("hinet", **SMALL["hinet"]).state_dict()}, path)
    return path


HINET_ARGS = ["--arch", "hinet", "--arch-kwargs", json.dumps(SMALL["hinet"])]


@pytest.mark.parametrize("calib", ["0x32", "-32", "32.5", "abc", "32x", "32x32x32", ""])
def test_bad_calib_is_refused(small_ckpt, capsys, calib):
    code, err = run_cli([small_ckpt, "--calib", calib, *HINET_ARGS], capsys)
    assert code == 2 and len(err) == 1 and "--calib" in err[0]


@pytest.mark.parametrize("calib", ["32x32", "32", "32,32"])
def test_calib_forms_accepted(small_ckpt, tmp_path, capsys, calib):
    out = tmp_path / "o.onnx"
    code, _ = run_cli([small_ckpt, "--calib", calib, *HINET_ARGS, "-o", out], capsys)
    assert code == 0 and out.exists()


def test_missing_and_corrupt_files(tmp_path, capsys):
    code, err = run_cli([tmp_path / "nope.pth", "--calib", "32"], capsys)
    assert code == 2 and len(err) == 1 and "not found" in err[0]
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"PK\x03\x04 truncated")
    code, err = run_cli([bad, "--calib", "32"], capsys)
    assert code == 2 and len(err) == 1 and "cannot read" in err[0]
    bad_onnx = tmp_path / "bad.onnx"
    bad_onnx.write_bytes(b"\x08\x07garbage")
    code, err = run_cli([bad_onnx, "--calib", "32"], capsys)
    assert code == 2 and len(err) == 1 and "ONNX" in err[0]
    assert not (tmp_path / "bad.tlc.onnx").exists()


def test_unknown_architecture_checkpoint(tmp_path, capsys):
    path = tmp_path / "other.pth"
    torch.save({"params": nn.Sequential(nn.Conv2d(3, 5, 3), nn.Conv2d(5, 3, 1)).state_dict()}, path)
    code, err = run_cli([path, "--calib", "32"], capsys)
    assert code == 2 and len(err) == 1 and "unknown architecture" in err[0] and "closest" in err[0]


def test_mismatched_arch_names_keys(small_ckpt, capsys):
    code, err = run_cli([small_ckpt, "--calib", "32", "--arch", "hinet"], capsys)
    assert code == 2 and len(err) == 1 and "missing" in err[0] and "best-fitting preset" in err[0]


def test_pickled_module_needs_trust_flag(tmp_path, capsys):
    path = tmp_path / "full.pt"
    torch.save(_SEIN(), path)
    code, err = run_cli([path, "--calib", "16"], capsys)
    assert code == 2 and len(err) == 1 and "--trust-pickle" in err[0]
    code, _ = run_cli([path, "--calib", "16", "--trust-pickle"], capsys)
    assert code == 0 and (tmp_path / "full.tlc.onnx").exists()


def test_calibration_window_below_one_pixel(capsys, tmp_path):
    path = tmp_path / "valid_conv.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 4, 5), nn.AdaptiveAvgPool2d(1)), path)   # no padding: h − 4
    out = tmp_path / "o.onnx"
    code, err = run_cli([path, "--calib", "4", "--input-shape", "1x3x16x16", "--trust-pickle", "-o", out], capsys)
    assert code == 2 and len(err) == 1 and "smaller than 1 pixel" in err[0], err
    assert not out.exists()


def test_input_shape_not_a_multiple(small_ckpt, capsys):
    code, err = run_cli([small_ckpt, "--calib", "30", *HINET_ARGS], capsys)
    assert code == 2 and len(err) == 1 and "multiples of 4" in err[0]
    code, err = run_cli([small_ckpt, "--calib", "32", "--input-shape", "1x3x30x32", *HINET_ARGS], capsys)
    assert code == 2 and len(err) == 1 and "multiples of 4" in err[0]


def test_graph_without_global_op_converts_nothing(tmp_path, capsys):
    path = tmp_path / "plain.pt"
    torch.save(nn.Sequential(nn.Conv2d(3, 3, 3, padding=1)), path)
    code, err = run_cli([path, "--calib", "16", "--trust-pickle"], capsys)
    assert code == 0 and any("no global op" in line for line in err)
    assert not (tmp_path / "plain.tlc.onnx").exists()


class _Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return self.conv(x).mean((2, 3))   # keepdim=False: a global op TLC cannot localise


def test_unsupported_global_op_names_the_node(tmp_path, capsys):
    path = tmp_path / "cls.pt"
    torch.save(_Classifier(), path)
    code, err = run_cli([path, "--calib", "16", "--trust-pickle"], capsys)
    assert code == 2 and len(err) == 1 and "unsupported global op" in err[0] and "ReduceMean" in err[0]


def test_never_overwrites_the_input(tmp_path, capsys):
    model = perturb_identity_params(_SEIN()).eval()
    path = tmp_path / "m.onnx"
    buf = io.BytesIO()
    torch.onnx.export(model, (torch.rand(1, 3, 16, 16),), buf, dynamo=False, opset_version=17)
    path.write_bytes(buf.getvalue())
    code, err = run_cli([path, "--calib", "16", "-o", path], capsys)
    assert code == 2 and len(err) == 1 and "is the input" in err[0]
    assert path.read_bytes() == buf.getvalue()


def test_console_script_exit_code(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "tlc_export.cli", str(tmp_path / "x.pth"), "--calib", "8"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("box_filter", ["cumsum", "matmul"])
@pytest.mark.parametrize("family", ["hinet", "nafnet"])
def test_fixed_box_filter_form_has_no_if_and_matches(converted_families, tmp_path, capsys, family, box_filter):
    """--box-filter cumsum|matmul: one form everywhere, no If node (straight-line graphs for runtimes that
    prefer them), still exact at every size."""
    model, ckpt, _, _ = converted_families[family]
    out = tmp_path / f"{family}.{box_filter}.onnx"
    assert main([str(ckpt), "--calib", "x".join(map(str, CALIB)), "--arch", family, "--arch-kwargs",
                 json.dumps(SMALL[family]), "--box-filter", box_filter, "-o", str(out)]) == 0
    graph = onnx.load(str(out))
    assert not [n for n in graph.graph.node if n.op_type == "If"]
    assert {"cumsum": "CumSum", "matmul": "MatMul"}[box_filter] in {n.op_type for n in graph.graph.node}
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["box_filter"] == box_filter
    assert {r["implementation"] for r in report["rewritten"]} == {f"boxfilter-{box_filter}"}
    local, _ = to_local(copy.deepcopy(model), CALIB)
    session = ort_session(out)
    for shape in [SIZES[1], BOTH_FORMS]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[3]))
        with torch.no_grad():
            want = final_output(family, local(x)).numpy()
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - want).max() <= 1e-5, shape
