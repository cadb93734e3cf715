"""Verification through polygraphy: the true graph passes, a deliberately perturbed one is flagged."""
import json

import numpy as np
import onnx
import pytest
import torch

from conftest import SMALL, perturb_identity_params
from tlc_export import zoo
from tlc_export.api import convert
from tlc_export.cli import main
from tlc_export.testing import assert_parity

CALIB = (32, 32)


@pytest.fixture(scope="module")
def nafnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("verify")
    torch.manual_seed(0)
    model = perturb_identity_params(zoo.build("nafnet", **SMALL["nafnet"])).eval()
    ckpt = root / "nafnet.pth"
    torch.save({"params": model.state_dict()}, ckpt)
    result = convert(ckpt, CALIB, arch="nafnet", arch_kwargs=SMALL["nafnet"])
    return model, ckpt, result.onnx_path


def widen_windows(src, dst):
    """The same graph with every calibrated window one pixel wider: a plausible off-by-one bug."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    for node in model.graph.node:
        if "/tlc/" in node.name and node.op_type == "Min":
            const = inits[node.input[1]]
            const.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(const) + 1, const.name))
    onnx.save(model, str(dst))


def test_true_graph_passes_and_perturbed_graph_fails(nafnet, tmp_path):
    model, ckpt, graph = nafnet
    report = assert_parity(model, graph, CALIB, sizes=[(40, 56), (24, 72)], atol=1e-5)
    assert all(r.max_abs <= 1e-5 for r in report.rows)
    assert all(r.psnr_global_vs_local < 120 for r in report.rows), "TLC effect should be visible"
    bad = tmp_path / "bad.onnx"
    widen_windows(graph, bad)
    with pytest.raises(AssertionError, match="differs from the eager TLC reference"):
        assert_parity(model, bad, CALIB, sizes=[(40, 56)], atol=1e-5)


def test_verify_cli_exit_codes(nafnet, tmp_path, capsys):
    _, ckpt, graph = nafnet
    args = ["--calib", "32", "--arch", "nafnet", "--arch-kwargs", json.dumps(SMALL["nafnet"]), "--atol", "1e-5"]
    out = tmp_path / "r.json"
    assert main(["verify", str(ckpt), str(graph), *args, "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert any(r["input_shape"][2:] == [300, 451] for r in rows), "the real photo is verified too"
    bad = tmp_path / "bad.onnx"
    widen_windows(graph, bad)
    assert main(["verify", str(ckpt), str(bad), *args, "--no-photo"]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_bench_runs_end_to_end(nafnet, tmp_path, capsys):
    _, ckpt, _ = nafnet
    args = ["bench", str(ckpt), "--calib", "32", "--size", "48x64", "--arch", "nafnet",
            "--arch-kwargs", json.dumps(SMALL["nafnet"]), "--threads", "1", "--runs", "5", "--out", str(tmp_path),
            "--fast"]
    assert main(args) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    names = [r["name"] for r in report["rows"]]
    assert names[:3] == ["global graph (ONNX Runtime)", "TLC graph (ONNX Runtime)", "fast TLC graph (ONNX Runtime)"]
    assert any("eager TLC" in n for n in names) and any("eager fast TLC" in n for n in names)
    assert sum("patches" in n for n in names) == 2
    assert json.loads((tmp_path / "model.fast.json").read_text())["fast"] is True
    assert all(len(r["runs"]) == 5 and r["median_ms"] > 0 for r in report["rows"])


def test_patch_inference_of_a_pointwise_model_is_exact():
    from tlc_export.bench import patch_inference, patch_starts

    assert patch_starts(600, 256, 16) == [0, 240, 344]
    x = np.random.default_rng(0).random((1, 3, 300, 530), dtype=np.float32)
    out = patch_inference(lambda t: t * 2 + 1, x, patch=256, overlap=128)
    np.testing.assert_allclose(out, x * 2 + 1, rtol=1e-6)


def test_torchscript_model_cannot_serve_as_reference(nafnet, tmp_path, capsys):
    """The eager reference cannot transform a TorchScript module's code: verifying a TLC graph against
    it would compare with the global model, so verify refuses in one line instead of reporting FAIL."""
    model, _, graph = nafnet
    scripted = tmp_path / "nafnet.pt"
    torch.jit.save(torch.jit.trace(model, torch.rand(1, 3, 32, 32)), str(scripted))
    code = main(["verify", str(scripted), str(graph), "--calib", "32", "--sizes", "48x40", "--no-photo"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "localises 0 of the" in err[0], err


def test_reference_that_cannot_run_the_model_is_one_line(tmp_path, capsys):
    """ECA's Conv1d across the pooled vector: the graph runs it per pixel, the eager reference (a pooling
    module returning an (N, C, h, w) map) cannot run the model at all: one line, exit 2, no traceback."""
    from test_rewrite_kinds import Pooled

    path, graph = tmp_path / "eca.pt", tmp_path / "eca.tlc.onnx"
    torch.save(Pooled("eca").eval(), path)
    assert main([str(path), "--calib", "16", "--trust-pickle", "-o", str(graph)]) == 0
    capsys.readouterr()
    code = main(["verify", str(path), str(graph), "--calib", "16", "--sizes", "24x20", "--no-photo",
                 "--trust-pickle"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "the eager TLC reference cannot run this model at 24x20" in err[0], err
