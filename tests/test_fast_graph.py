"""Fast TLC as ONNX subgraphs (``rewrite.fast``) against the brute-force fast rules, and converted zoo
graphs (``convert(..., fast=True)``) against the eager fast reference."""
import numpy as np
import onnx_graphsurgeon as gs
import pytest

from test_fast_reference import CASES, brute_fast_mean
from tlc_export.rewrite import fast, subgraphs
from tlc_export.runtime import ort_session

OPSET = 17
FORMS = {"matmul": 10**9, "cumsum": 0}


def fast_graph(kind, channels, window, max_r, eps=1e-5, box_filter="auto"):
    """A one-op graph with a dynamic (N, C, h, w) input: fast local mean or fast local instance norm."""
    x = gs.Variable("x", np.float32, ("n", channels, "h", "w"))
    graph = gs.Graph(inputs=[x], opset=OPSET)
    b = subgraphs.Builder(graph, "op/tlc", OPSET, box_filter)
    if kind == "mean":
        out = fast.fast_local_mean(b, x, window, max_r)
        params = None
    else:
        rng = np.random.default_rng(channels)
        params = rng.random(channels, dtype=np.float32) + 0.5, rng.random(channels, dtype=np.float32) - 0.5
        out = fast.fast_local_instance_norm(b, x, window, max_r, eps, gs.Constant("scale", params[0]),
                                            gs.Constant("bias", params[1]))
    out.dtype = np.float32
    graph.outputs = [out]
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = 10
    return model, params


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("shape,window,max_r", CASES)
def test_fast_local_mean_graph_matches_brute_force(monkeypatch, form, shape, window, max_r):
    monkeypatch.setattr(subgraphs, "MATMUL_MAX_SPAN", FORMS[form])
    session = ort_session(fast_graph("mean", shape[1], window, max_r)[0])
    x = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    got = session.run(None, {"x": x})[0]
    assert got.shape == x.shape
    assert np.abs(got - brute_fast_mean(x.astype(np.float64), window, max_r)).max() <= 2e-6


@pytest.mark.parametrize("box_filter", ["auto", "cumsum", "matmul"])
def test_one_fast_graph_serves_every_size(box_filter):
    """One graph (window 12x20, max_r 5x5) at sizes with every factor, odd sizes, and a covering window."""
    window, max_r = (12, 20), (5, 5)
    session = ort_session(fast_graph("mean", 2, window, max_r, box_filter=box_filter)[0])
    for shape in [(2, 2, 20, 30), (1, 2, 24, 36), (1, 2, 27, 49), (1, 2, 31, 17), (2, 2, 10, 14), (1, 2, 96, 140)]:
        x = np.random.default_rng(shape[2]).random(shape, dtype=np.float32)
        want = brute_fast_mean(x.astype(np.float64), window, max_r)
        assert np.abs(session.run(None, {"x": x})[0] - want).max() <= 1e-5, shape


def test_fast_local_instance_norm_graph_matches_brute_force():
    window, max_r, eps = (9, 10), (5, 3), 1e-5
    model, (scale, bias) = fast_graph("norm", 3, window, max_r, eps)
    session = ort_session(model)
    for shape in [(2, 3, 20, 27), (1, 3, 17, 31), (1, 3, 8, 9)]:
        # An offset and a small spread: where E[x²] − E[x]² loses digits without conditioning.
        x = (0.7 + 0.05 * np.random.default_rng(shape[2]).random(shape)).astype(np.float32)
        x64 = x.astype(np.float64)
        mu = brute_fast_mean(x64, window, max_r)
        var = brute_fast_mean(x64 * x64, window, max_r) - mu ** 2
        want = (x64 - mu) / np.sqrt(var + eps) * scale[:, None, None] + bias[:, None, None]
        assert np.abs(session.run(None, {"x": x})[0] - want).max() <= 1e-4, shape


# ---------------------------------------------------------------------------------------------------
# Converted zoo graphs (tiny HINet / NAFNet / MPRNet) against the eager fast reference.

FAST_SIZES = [(1, 3, 48, 64), (2, 3, 40, 56), (1, 3, 56, 72), (1, 3, 40, 120), (1, 3, 160, 224)]


@pytest.fixture(scope="module")
def fast_converted(converted_families, tmp_path_factory):
    """{family: (model, exact result, fast graph path, fast report)} via the CLI with --fast."""
    import json

    from conftest import FAMILY_CALIB, SMALL
    from tlc_export.cli import main

    root = tmp_path_factory.mktemp("fast")
    out = {}
    for family, (model, ckpt, tlc, _) in converted_families.items():
        path = root / f"{family}.fast.onnx"
        assert main([str(ckpt), "--calib", "x".join(map(str, FAMILY_CALIB)), "--arch", family,
                     "--arch-kwargs", json.dumps(SMALL[family]), "--fast", "-o", str(path)]) == 0
        out[family] = (model, tlc, path, json.loads(path.with_suffix(".json").read_text()))
    return out


@pytest.mark.parametrize("family", ["hinet", "nafnet", "mprnet"])
def test_fast_graph_matches_eager_fast_reference(fast_converted, family):
    import copy

    import torch

    from conftest import FAMILY_CALIB
    from test_convert import final_output
    from tlc_export.reference import to_local

    model, exact, path, report = fast_converted[family]
    assert report["fast"] is True
    rows = report["rewritten"]
    assert rows and all(r["max_r"] == [max(1, 5 * k // c) for k, c in zip(r["window"], FAMILY_CALIB)]
                        and r["implementation"] == "fast-boxfilter" for r in rows)
    local, table = to_local(copy.deepcopy(model), FAMILY_CALIB, fast=True)
    assert {(r.path, r.window, r.max_r) for r in table} == \
        {(r["module_path"], tuple(r["window"]), tuple(r["max_r"])) for r in rows}
    fast_session, exact_session = ort_session(path), ort_session(exact.onnx_path)
    for shape in FAST_SIZES:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[3]))
        got = fast_session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want = final_output(family, local(x)).numpy()
        assert np.abs(got - want).max() <= 1e-5, (family, shape)
        assert np.abs(got - exact_session.run(None, {"input": x.numpy()})[0]).max() > 1e-5, "fast == exact"


def test_fast_with_plugin_is_refused(converted_families, capsys):
    from conftest import SMALL
    from tlc_export.cli import main

    _, ckpt, _, _ = converted_families["nafnet"]
    import json
    assert main([str(ckpt), "--calib", "32", "--arch", "nafnet", "--arch-kwargs", json.dumps(SMALL["nafnet"]),
                 "--fast", "--impl", "plugin", "-o", str(ckpt.with_name("x.onnx"))]) == 2
    assert "--fast" in capsys.readouterr().err
    assert not ckpt.with_name("x.onnx").exists()


def test_verify_fast_graph_against_fast_reference(fast_converted, converted_families):
    """``verify --fast`` checks a --fast graph against the eager fast reference; the exact reference
    rejects it (the two modes are different functions)."""
    import json

    from conftest import FAMILY_CALIB, SMALL
    from tlc_export.cli import main

    _, ckpt, _, _ = converted_families["nafnet"]
    path = fast_converted["nafnet"][2]
    common = [str(ckpt), str(path), "--calib", "x".join(map(str, FAMILY_CALIB)), "--arch", "nafnet",
              "--arch-kwargs", json.dumps(SMALL["nafnet"]), "--sizes", "40x56,36x60", "--no-photo"]
    assert main(["verify", *common, "--fast", "--atol", "1e-5"]) == 0
    assert main(["verify", *common, "--atol", "1e-5"]) == 1
