"""The standard-op TLC subgraphs alone, both box-filter forms, against brute-force float64 windows."""
import numpy as np
import onnx_graphsurgeon as gs
import pytest

from conftest import brute_window_mean
from tlc_export.rewrite import subgraphs
from tlc_export.runtime import ort_session

OPSET = 17
CASES = [
    ((1, 1, 7, 9), (3, 4)),      # odd map, odd and even windows
    ((2, 3, 11, 6), (5, 2)),     # batch > 1
    ((1, 2, 5, 8), (9, 3)),      # window taller than the map
    ((1, 2, 6, 5), (4, 12)),     # window wider than the map
    ((2, 2, 4, 6), (10, 10)),    # window covers the map: the global mean
    ((1, 3, 9, 7), (1, 1)),      # window 1: identity
    ((1, 2, 37, 50), (16, 24)),
]
# The If picks the banded-matrix form while (h−k1+1)+(w−k2+1) <= MATMUL_MAX_SPAN, else the prefix sums.
FORMS = {"matmul": 10**9, "cumsum": 0}


def local_stats_graph(kind: str, channels: int, window, eps=1e-5):
    """A one-op graph with a dynamic (N, C, h, w) input: TLC local mean or local instance norm."""
    x = gs.Variable("x", np.float32, ("n", channels, "h", "w"))
    graph = gs.Graph(inputs=[x], opset=OPSET)
    b = subgraphs.Builder(graph, "op/tlc", OPSET)
    if kind == "mean":
        out = subgraphs.local_mean(b, x, window)
    else:
        rng = np.random.default_rng(channels)
        scale = gs.Constant("scale", rng.random(channels, dtype=np.float32) + 0.5)
        bias = gs.Constant("bias", rng.random(channels, dtype=np.float32) - 0.5)
        out = subgraphs.local_instance_norm(b, x, window, eps, scale, bias)
    out.dtype = np.float32
    graph.outputs = [out]
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = 10
    return model


def brute_instance_norm(x, window, eps, scale, bias):
    mean = brute_window_mean(x, *window)
    var = brute_window_mean(x.astype(np.float64) ** 2, *window) - mean ** 2
    return (x - mean) / np.sqrt(var + eps) * scale[:, None, None] + bias[:, None, None]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("shape, window", CASES)
def test_local_mean_both_forms(monkeypatch, form, shape, window):
    monkeypatch.setattr(subgraphs, "MATMUL_MAX_SPAN", FORMS[form])
    session = ort_session(local_stats_graph("mean", shape[1], window))
    x = np.random.default_rng(sum(shape)).random(shape, dtype=np.float32)
    got = session.run(None, {"x": x})[0]
    assert got.shape == x.shape
    assert np.abs(got - brute_window_mean(x, *window)).max() <= 2e-6


@pytest.mark.parametrize("form", list(FORMS))
def test_local_instance_norm_both_forms(monkeypatch, form):
    monkeypatch.setattr(subgraphs, "MATMUL_MAX_SPAN", FORMS[form])
    window, eps = (6, 9), 1e-5
    model = local_stats_graph("norm", 3, window, eps)
    scale = gs.import_onnx(model).tensors()["scale"].values
    bias = gs.import_onnx(model).tensors()["bias"].values
    session = ort_session(model)
    for shape in [(2, 3, 13, 17), (1, 3, 5, 30)]:
        # An offset and a small spread: the case where E[x²] − E[x]² loses digits without conditioning.
        x = (0.7 + 0.05 * np.random.default_rng(shape[2]).random(shape)).astype(np.float32)
        want = brute_instance_norm(x.astype(np.float64), window, eps, scale, bias)
        assert np.abs(session.run(None, {"x": x})[0] - want).max() <= 1e-4


def test_one_graph_switches_form_with_the_input_size():
    """At the default threshold a small map takes the matrix form and a large one the prefix sums; both
    come out exact from the same graph."""
    window = (12, 20)
    session = ort_session(local_stats_graph("mean", 2, window))
    # Prefix sums carry float32 rounding of their running totals (~1e-6 here), the products do not.
    for shape, tol in [((1, 2, 20, 30), 1e-6), ((1, 2, 96, 140), 1e-5)]:   # spans 9+11 and 85+121
        x = np.random.default_rng(shape[2]).random(shape, dtype=np.float32)
        assert np.abs(session.run(None, {"x": x})[0] - brute_window_mean(x, *window)).max() <= tol
