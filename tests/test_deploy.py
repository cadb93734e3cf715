"""Deployment forms of converted zoo models: the plugin form in ONNX Runtime against the reference,
TensorRT operator-table checks of both forms, Triton repositories, and TensorRT's absence handled."""
import copy
import importlib.util
import json

import numpy as np
import pytest
import torch

from conftest import FAMILY_CALIB, SMALL
from tlc_export.api import convert
from tlc_export.cli import main
from tlc_export.reference import to_local
from tlc_export.runtime import ort_session
from tlc_export.trtcheck import check_tensorrt_compat

CALIB = FAMILY_CALIB
needs_plugin = pytest.mark.skipif(importlib.util.find_spec("onnxruntime_extensions") is None
                                  or importlib.util.find_spec("tlc_trt_plugin") is None,
                                  reason="plugin form needs tlc_trt_plugin[ort] (make test installs it)")


@pytest.fixture(scope="module")
def forms(converted_families, tmp_path_factory):
    """The converted families plus their plugin form: {family: (model, checkpoint, standard, plugin)}."""
    root = tmp_path_factory.mktemp("deploy")
    out = {}
    for family, (model, ckpt, std, _) in converted_families.items():
        plug = None
        if importlib.util.find_spec("tlc_trt_plugin") is not None:
            plug = convert(ckpt, CALIB, arch=family, arch_kwargs=SMALL[family], impl="plugin",
                           output=root / f"{family}.plugin.onnx")
        out[family] = (model, ckpt, std, plug)
    return out


@pytest.mark.parametrize("family", list(SMALL))
def test_both_forms_pass_the_tensorrt_operator_check(forms, family):
    _, _, std, plug = forms[family]
    assert check_tensorrt_compat(std.onnx_path) == []
    if plug is not None:
        assert check_tensorrt_compat(plug.onnx_path) == []
        assert main(["check", "--target", "tensorrt", str(plug.onnx_path)]) == 0


@needs_plugin
@pytest.mark.parametrize("family", list(SMALL))
def test_plugin_form_matches_reference_in_onnxruntime(forms, family):
    model, _, _, plug = forms[family]
    assert {r["implementation"] for r in plug.report["rewritten"]} == {"plugin"}
    local, _ = to_local(copy.deepcopy(model), CALIB)
    session = ort_session(plug.onnx_path, impl="plugin")
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(3))
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        out = local(x)
    want = (out[-1] if family == "hinet" else out[0]) if isinstance(out, (list, tuple)) else out
    assert np.abs(got - want.numpy()).max() <= 1e-5


def test_triton_repository_from_the_cli(forms, tmp_path):
    pytest.importorskip("tritonclient.grpc.model_config_pb2", reason="tritonclient not installed")
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    _, ckpt, _, _ = forms["nafnet"]
    repo = tmp_path / "repo"
    args = [str(ckpt), "--calib", "32", "--arch", "nafnet", "--arch-kwargs", json.dumps(SMALL["nafnet"]),
            "-o", str(tmp_path / "naf.tlc.onnx"), "--triton-repo", str(repo)]
    assert main(args) == 0
    config = text_format.Parse((repo / "naf_tlc" / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "onnxruntime" and config.max_batch_size >= 1
    assert list(config.input[0].dims) == [3, -1, -1]
    assert (repo / "naf_tlc" / "1" / "model.onnx").is_file()


def test_engine_build_without_tensorrt_is_one_line(forms, capsys):
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("TensorRT is installed: the absence path cannot be exercised here")
    _, _, std, _ = forms["hinet"]
    code = main(["build", str(std.onnx_path), "-o", str(std.onnx_path.with_suffix(".plan"))])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "TensorRT is not installed" in err[0]
    assert not std.onnx_path.with_suffix(".plan").exists()


@pytest.mark.parametrize("family", list(SMALL))
def test_reduced_precision_of_a_converted_graph(forms, family):
    """FP16 around FP32 TLC statistics on the converter's own output (its box-filter Ifs included):
    the If nodes stay float32, ONNX Runtime runs the graph at both box-filter forms, close to FP32."""
    from tlc_export.build import to_reduced_precision_onnx

    _, _, std, _ = forms[family]
    reduced = to_reduced_precision_onnx(std.onnx_path, "fp16")
    ifs = [n for n in reduced.graph.node if n.op_type == "If"]
    assert ifs and all("/tlc/" in n.name for n in ifs)
    float32 = {o.name for o in reduced.graph.value_info if o.type.tensor_type.elem_type == 1}
    assert all(n.output[0] in float32 for n in ifs)
    fp16, fp32 = ort_session(reduced), ort_session(std.onnx_path)
    for shape in [(1, 3, 40, 56), (1, 3, 160, 224)]:
        x = np.random.default_rng(shape[2]).random(shape, dtype=np.float32)
        got, want = fp16.run(None, {"input": x})[0], fp32.run(None, {"input": x})[0]
        assert np.abs(got - want).max() <= 2e-2
