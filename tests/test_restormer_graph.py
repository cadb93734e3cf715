"""Restormer at graph level: the transposed attention found in exported ONNX and made local.

Windows and their merge are checked in integer arithmetic against the eager reference's
``window_starts`` (itself checked against megvii-research/TLC's grids() in test_local_attention.py),
converted graphs against the eager TLC reference ``to_local``.
"""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch

from tlc_export import zoo
from tlc_export.api import convert, localize_graph
from tlc_export.calibrate import import_graph
from tlc_export.export import export_onnx
from tlc_export.reference import to_local
from tlc_export.reference.attention import window_starts
from tlc_export.rewrite import find_global_ops
from tlc_export.rewrite.attention import _cover_indices, _window_indices, window_layout
from tlc_export.rewrite.subgraphs import Builder
from tlc_export.runtime import ort_session
from tlc_export.zoo.restormer import Attention

torch.set_num_threads(1)

CALIB = (32, 32)
SMALL = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])
SIZES = [(1, 3, 48, 64), (2, 3, 40, 72)]          # larger than the calibration size; batch 2
ATTENTION_PATHS = ["encoder_level1.0.attn", "encoder_level2.0.attn", "encoder_level3.0.attn", "latent.0.attn",
                   "decoder_level3.0.attn", "decoder_level2.0.attn", "decoder_level1.0.attn", "refinement.0.attn"]


def randomised(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial temperatures and LayerNorm affines (seeded), so no attention is a plain average."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("temperature"):
                p.copy_(0.5 + 2.0 * torch.rand(p.shape, generator=g))
            elif ".norm" in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return model.eval()


# ---------------------------------------------------------------------------------------------------
# (a) the window layout as graph arithmetic


def test_integer_step_is_upstreams_float_step():
    """ceil((n−k)/(num−1) − 1e-8) (upstream, float) == (n−k+num−2)//(num−1) (ours, integer)."""
    for n in range(2, 1500):
        for k in range(1, n):
            num = (n - 1) // k + 1
            if num > 1:
                assert math.ceil((n - k) / (num - 1) - 1e-8) == (n - k + num - 2) // (num - 1), (n, k)


def test_no_position_is_covered_by_three_windows():
    """The merge averages at most two windows per axis: exhaustive over sizes ≤ 8192, every window ≤ size
    (the same check ran to 20000 when the merge was designed)."""
    for n in range(1, 8193):
        k = np.arange(1, n + 1, dtype=np.int64)
        num = (n - 1) // k + 1
        den = np.maximum(num - 1, 1)
        step = np.maximum((n - k + den - 1) // den, 1)
        count = (n - k + step - 1) // step + 1
        # three regular windows span 2·step; the flush window with the two before it spans n−k−(count−3)·step
        triple = (count >= 3) & ((2 * step < k) | ((count - 3) * step + k > n - k))
        assert not triple.any(), (n, k[triple][:5])


def _layout_session(window: int):
    """A graph from a dummy input of length n to the layout tensors of ``window_layout``."""
    graph = gs.Graph(opset=17)
    x = gs.Variable("x", dtype=np.float32, shape=["n"])
    graph.inputs = [x]
    b = Builder(graph, "t", 17)
    n = b.op("Shape", [x])
    k, count, starts, offsets = window_layout(b, n, window)
    first, last = _cover_indices(b, n, k, starts, offsets)
    outs = [k, count, starts, _window_indices(b, starts, k), first, last]
    for t, name in zip(outs, ["k", "count", "starts", "indices", "first", "last"]):
        t.name, t.dtype = name, np.int64
    graph.outputs = outs
    model = gs.export_onnx(graph)
    model.ir_version = 8             # what ONNX Runtime reads; opset 17 needs IR ≥ 8
    return ort_session(model, threads=1)


@pytest.mark.parametrize("window", [1, 2, 3, 5, 7, 8, 16, 31, 32, 48, 64, 100])
def test_window_layout_graph_matches_window_starts(window):
    session = _layout_session(window)
    for n in list(range(1, 130)) + [191, 255, 256, 257, 383, 500, 720]:
        k, count, starts, indices, first, last = session.run(None, {"x": np.zeros(n, np.float32)})
        expected = window_starts(n, window)
        kk = min(n, window)
        assert int(k[0]) == kk and int(count[0]) == len(expected), (n, window)
        assert starts.tolist() == expected, (n, window)
        assert indices.tolist() == [s + i for s in expected for i in range(kk)]
        # first/last: flat indices (window·k + offset) of the first and last window covering each position
        for y in range(n):
            covering = [r for r, s in enumerate(expected) if s <= y < s + kk]
            assert len(covering) <= 2
            assert first[y] == covering[0] * kk + y - expected[covering[0]], (n, window, y)
            assert last[y] == covering[-1] * kk + y - expected[covering[-1]], (n, window, y)


# ---------------------------------------------------------------------------------------------------
# (b) the small Restormer converted end to end


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    root = tmp_path_factory.mktemp("restormer")
    torch.manual_seed(0)
    model = randomised(zoo.build("restormer", **SMALL))
    ckpt = root / "restormer.pth"
    torch.save({"params": model.state_dict()}, ckpt)
    tlc = convert(ckpt, CALIB, arch="restormer", arch_kwargs=SMALL, progress=None)
    glob = convert(ckpt, CALIB, arch="restormer", arch_kwargs=SMALL, tlc=False, progress=None)
    local, table = to_local(copy.deepcopy(model), CALIB)
    return model, local, table, tlc, glob


def test_exported_restormer_has_one_attention_op_per_block(converted):
    *_, glob = converted
    ops = find_global_ops(import_graph(onnx.load(str(glob.onnx_path))))
    assert [op.kind for op in ops] == ["attention"] * len(ATTENTION_PATHS)
    assert [op.module_path for op in ops] == [f"model.{p}" for p in ATTENTION_PATHS]
    assert all(op.source.inputs[0].name.endswith("qkv_dwconv/Conv") for op in ops)
    assert all(op.output.outputs[0].name.endswith("project_out/Conv") for op in ops)


def test_freshly_built_model_is_matched_too():
    """Equal initial temperatures are de-duplicated by the exporter into Identity nodes."""
    torch.manual_seed(0)
    graph = export_onnx(zoo.build("restormer", **SMALL).eval(), (1, 3, *CALIB), family="restormer")
    assert any(n.op_type == "Identity" for n in graph.graph.node)
    ops = find_global_ops(import_graph(graph))
    assert [op.module_path for op in ops] == [f"model.{p}" for p in ATTENTION_PATHS]


def test_tlc_graph_matches_eager_reference(converted):
    model, local, _, tlc, _ = converted
    session = ort_session(tlc.onnx_path, threads=1)
    for shape in SIZES:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[3]))
        got = session.run(None, {"input": x.numpy()})[0]
        with torch.no_grad():
            want, glob = local(x).numpy(), model(x).numpy()
        assert np.abs(got - want).max() <= 1e-5, shape
        assert np.abs(got - glob).max() > 1e-4, "the conversion changed nothing"


def test_batch_images_are_independent(converted):
    *_, tlc, _ = converted
    session = ort_session(tlc.onnx_path, threads=1)
    x = np.random.default_rng(3).random((2, 3, 40, 72), dtype=np.float32)
    both = session.run(None, {"input": x})[0]
    for i in range(2):
        alone = session.run(None, {"input": x[i:i + 1]})[0]
        assert np.abs(both[i:i + 1] - alone).max() <= 1e-6


def test_window_covering_the_map_is_the_global_attention(converted):
    """At or below the calibration size every window covers its map: the TLC graph is the global one
    (up to float rounding: windows are stored transposed, which reorders the pixel sums)."""
    *_, tlc, glob = converted
    s_tlc, s_glob = ort_session(tlc.onnx_path, threads=1), ort_session(glob.onnx_path, threads=1)
    for shape in [(1, 3, 32, 32), (2, 3, 24, 16), (1, 3, 8, 32)]:
        x = np.random.default_rng(shape[2]).random(shape, dtype=np.float32)
        diff = np.abs(s_tlc.run(None, {"input": x})[0] - s_glob.run(None, {"input": x})[0]).max()
        assert diff <= 1e-6, (shape, diff)


def test_no_tlc_graph_matches_global_model(converted):
    model, _, _, _, glob = converted
    assert "rewritten" in glob.report and glob.report["rewritten"] == []
    session = ort_session(glob.onnx_path, threads=1)
    for shape in SIZES:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(7))
        with torch.no_grad():
            want = model(x).numpy()
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - want).max() <= 1e-5


def test_node_count_within_twice_the_global_graph(converted):
    *_, tlc, glob = converted
    n_tlc = len(onnx.load(str(tlc.onnx_path)).graph.node)
    n_glob = len(onnx.load(str(glob.onnx_path)).graph.node)
    assert n_tlc <= 2 * n_glob, (n_tlc, n_glob)


def test_report_lists_attention_ops_with_paths_and_windows(converted):
    _, _, table, tlc, _ = converted
    report = json.loads(Path(tlc.report_path).read_text())
    rows = report["rewritten"]
    assert [r["module_path"] for r in rows] == ATTENTION_PATHS
    assert {r["op"] for r in rows} == {"attention"} and {r["implementation"] for r in rows} == {"window-gather"}
    windows = {r["module_path"]: r["window"] for r in rows}
    assert windows == {t.path: list(t.window) for t in table}
    assert windows["encoder_level1.0.attn"] == [32, 32] and windows["latent.0.attn"] == [4, 4]
    assert {t["path"] for t in report["torch_global_ops"]} == set(ATTENTION_PATHS)


def test_rewritten_graph_is_a_fixed_point(converted):
    *_, tlc, _ = converted
    model = onnx.load(str(tlc.onnx_path))
    assert find_global_ops(import_graph(model)) == []
    onnx.checker.check_model(model)


# ---------------------------------------------------------------------------------------------------
# (c) foreign graphs: no node names; shapes baked into constants


def test_attention_found_without_node_names(converted):
    model, local, *_ = converted
    graph = export_onnx(model, (1, 3, *CALIB), family="restormer")
    for node in graph.graph.node:
        node.name = ""
    out, records = localize_graph(graph, CALIB, (1, 3, *CALIB))
    assert [r.op for r in records] == ["attention"] * len(ATTENTION_PATHS)
    x = torch.rand(2, 3, 40, 72, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = local(x).numpy()
    assert np.abs(ort_session(out, threads=1).run(None, {"input": x.numpy()})[0] - want).max() <= 1e-5


class OfficialStyleAttention(torch.nn.Module):
    """swz30 Restormer's ``Attention.forward`` as written upstream (``b, c, h, w = x.shape`` of the block
    input; the einops rearranges spelled as reshapes with those sizes): the attention's reshapes read
    sizes from outside the qkv map."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        ref = Attention(dim, heads, bias=True)
        self.num_heads, self.temperature = heads, ref.temperature
        self.qkv, self.qkv_dwconv, self.project_out = ref.qkv, ref.qkv_dwconv, ref.project_out

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        q, k, v = (t.reshape(b, self.num_heads, c // self.num_heads, h * w) for t in (q, k, v))
        q, k = torch.nn.functional.normalize(q, dim=-1), torch.nn.functional.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(b, c, h, w))


def test_attention_reading_sizes_of_the_block_input():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), OfficialStyleAttention(8, 2),
                              torch.nn.Conv2d(8, 3, 3, padding=1))
    randomised(net)
    graph = export_onnx(net, (1, 3, 16, 16))
    out, records = localize_graph(graph, (16, 16), (1, 3, 16, 16))
    assert [r.op for r in records] == ["attention"]
    local, _ = to_local(copy.deepcopy(net), (16, 16))
    session = ort_session(out, threads=1)
    for shape in [(1, 3, 24, 40), (2, 3, 16, 36)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[3]))
        with torch.no_grad():
            want, glob = local(x).numpy(), net(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert np.abs(got - want).max() <= 1e-5 and np.abs(got - glob).max() > 1e-4, shape


def _bake_attention_shapes(model: onnx.ModelProto, shape) -> onnx.ModelProto:
    """The attention's Reshape/Expand targets replaced by their values at ``shape`` — what a model that
    computes its sizes with Python ints (``int(x.shape[2])``) exports: a graph pinned to that size."""
    graph = gs.import_onnx(model)
    targets = {n.inputs[1].name: n for n in graph.nodes if n.op in ("Reshape", "Expand") and "/attn/" in n.name
               and not isinstance(n.inputs[1], gs.Constant)}
    probe = copy.deepcopy(model)
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in targets)
    session = ort_session(probe, threads=1)
    names = [o.name for o in session.get_outputs()][1:]
    values = session.run(names, {"input": np.zeros(shape, np.float32)})
    for name, value in zip(names, values):
        targets[name].inputs[1] = gs.Constant(f"{name}_baked", value.astype(np.int64))
    graph.cleanup().toposort()
    return gs.export_onnx(graph)


def test_attention_with_baked_reshape_targets(converted):
    """Reshape/Expand targets baked at the calibration size pin the global graph to that size; the
    rewrite rebuilds them to follow the window batch, so the TLC graph runs at larger sizes and batch 2
    (its windows are calibration-sized there)."""
    model, local, *_ = converted
    baked = _bake_attention_shapes(export_onnx(model, (1, 3, *CALIB), family="restormer"), (1, 3, *CALIB))
    inits = {i.name for i in baked.graph.initializer}
    assert sum(n.op_type == "Reshape" and n.input[1] in inits for n in baked.graph.node) >= 7 * len(ATTENTION_PATHS)
    x = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(9))
    with pytest.raises(Exception):
        ort_session(baked, threads=1).run(None, {"input": x.numpy()})
    out, records = localize_graph(baked, CALIB, (1, 3, *CALIB))
    assert len(records) == len(ATTENTION_PATHS)
    with torch.no_grad():
        want = local(x).numpy()
    assert np.abs(ort_session(out, threads=1).run(None, {"input": x.numpy()})[0] - want).max() <= 1e-5


# ---------------------------------------------------------------------------------------------------
# (d) a full-size preset


@pytest.mark.slow
def test_full_size_preset_converts(tmp_path):
    torch.manual_seed(0)
    model = randomised(zoo.build("Restormer-motion_deblurring"))
    ckpt = tmp_path / "Restormer-motion_deblurring.pth"
    torch.save({"params": model.state_dict()}, ckpt)
    result = convert(ckpt, (64, 64), progress=None)
    assert result.report["preset"] == "Restormer-motion_deblurring"
    rows = result.report["rewritten"]
    assert len(rows) == 4 + 6 + 6 + 8 + 6 + 6 + 4 + 4 and {r["op"] for r in rows} == {"attention"}
    windows = {r["module_path"]: list(r["window"]) for r in rows}
    assert windows["encoder_level1.0.attn"] == [64, 64] and windows["latent.7.attn"] == [8, 8]
    # The attention regions stay; the rewrite only adds nodes (named …/tlc_attention/…).
    nodes = result.model.graph.node
    assert len(nodes) <= 2 * sum("/tlc_attention/" not in n.name for n in nodes)
    local, _ = to_local(copy.deepcopy(model), (64, 64))
    x = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = local(x).numpy()
    got = ort_session(result.onnx_path, threads=1).run(None, {"input": x.numpy()})[0]
    print("full-size max abs", np.abs(got - want).max())
    assert np.abs(got - want).max() <= 1e-5


def test_issue_configuration_calib_96(tmp_path):
    """The issue's own check: --calib 96x96, two sizes larger than the calibration size, batch 2."""
    torch.manual_seed(1)
    model = randomised(zoo.build("restormer", **SMALL))
    ckpt = tmp_path / "restormer.pth"
    torch.save({"params": model.state_dict()}, ckpt)
    tlc = convert(ckpt, (96, 96), arch="restormer", arch_kwargs=SMALL)
    local, _ = to_local(copy.deepcopy(model), (96, 96))
    session = ort_session(tlc.onnx_path, threads=1)
    for shape in [(2, 3, 128, 160), (1, 3, 104, 200)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[2]))
        with torch.no_grad():
            want = local(x).numpy()
        assert np.abs(session.run(None, {"input": x.numpy()})[0] - want).max() <= 1e-5, shape
