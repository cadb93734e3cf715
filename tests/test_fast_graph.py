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
