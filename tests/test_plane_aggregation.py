"""Aggregations over all pixels in layouts no structural pattern knows are found, whatever the exporter,
and kept global by name (never a silent no-op); torch.export's identity ``as_strided`` on a pooled map
does not hide a localisable pool; a ``.pt2`` declared with a size multiple converts exactly."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlc_export import convert
from tlc_export.api import rewrite_stage
from tlc_export.calibrate import import_graph
from tlc_export.errors import UserError
from tlc_export.rewrite import scan_graph

from test_rewrite_kinds import CALIB, assert_exact_against_window_reference, export, local_mean, run


class ChannelsLastAttention(nn.Module):
    """RetinexFormer-like: q, k, v from Linear layers on (B, H·W, C) tokens, normalised over the pixel
    axis, attention k·qᵀ (C×C, a sum over all pixels); optionally with a localisable channel attention."""

    def __init__(self, with_pool: bool, c: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.with_pool = with_pool
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.q, self.k, self.v = nn.Linear(c, c), nn.Linear(c, c), nn.Linear(c, c)
        self.sca = nn.Conv2d(c, c, 1)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        t = x.permute(0, 2, 3, 1).reshape(b, h * w, c)
        q, k = (F.normalize(f(t).transpose(1, 2), dim=-1) for f in (self.q, self.k))
        v = self.v(t).transpose(1, 2)
        attn = (k @ q.transpose(1, 2)).softmax(-1)                  # (b, c, c)
        y = (attn @ v).reshape(b, c, h, w)
        if self.with_pool:
            y = y * self.sca(F.adaptive_avg_pool2d(y, 1))
        return self.out(y)


class TokenMean(nn.Module):
    """A pool over the flattened pixels of (B, H·W, C) tokens (no ReduceMean over axes 2, 3) beside a
    channel attention that can be localised; with ``window`` the float64 reference of the TLC model
    (the token pool stays global, the channel attention is local)."""

    def __init__(self, c: int = 8):
        super().__init__()
        torch.manual_seed(1)
        self.window = None
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.sca = nn.Conv2d(c, c, 1)
        self.fc = nn.Linear(c, c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        pooled = local_mean(x, self.window) if self.window else F.adaptive_avg_pool2d(x, 1)
        x = x * self.sca(pooled)
        tokens = x.flatten(2).transpose(1, 2)                        # (b, h·w, c)
        gate = torch.sigmoid(self.fc(tokens.mean(1)))                # (b, c): over all pixels
        return self.out(x * gate.view(b, c, 1, 1))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_channels_last_attention_alone_is_refused_by_name(dynamo):
    with pytest.raises(UserError, match=r"nothing to convert: 1 unsupported global op.*hw-contraction"):
        rewrite_stage(export(ChannelsLastAttention(False).eval(), dynamo), CALIB, (1, 3, *CALIB))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_channels_last_attention_is_kept_and_the_pool_beside_it_rewritten(dynamo):
    model = ChannelsLastAttention(True).eval()
    stage = rewrite_stage(export(model, dynamo), CALIB, (1, 3, *CALIB))
    assert [r.op for r in stage.records] == ["avgpool"]
    assert [k.kind for k in stage.kept] == ["hw-contraction"]   # one op: its normalisations are part of it
    assert "all pixels" in stage.kept[0].reason


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_token_mean_is_kept_global_and_the_graph_is_exact(dynamo):
    model = TokenMean().eval()
    stage = rewrite_stage(export(model, dynamo), CALIB, (1, 3, *CALIB))
    assert [r.op for r in stage.records] == ["avgpool"]
    assert [k.kind for k in stage.kept] == ["hw-reduction"]
    assert_exact_against_window_reference(model, stage.model, seed=2)


def _pool_through_gather(indices: np.ndarray) -> onnx.ModelProto:
    """GlobalAveragePool → Reshape(-1) → Gather(indices) → Conv 1×1 → Mul: torch.export's as_strided."""
    c = 4
    x = gs.Variable("x", np.float32, [1, c, "h", "w"])
    pooled, flat, back, gate, y = (gs.Variable(n, np.float32) for n in ("p", "f", "b", "g", "y"))
    weight = gs.Constant("wt", np.random.default_rng(0).standard_normal((c, c, 1, 1)).astype(np.float32))
    nodes = [gs.Node("GlobalAveragePool", inputs=[x], outputs=[pooled]),
             gs.Node("Reshape", inputs=[pooled, gs.Constant("minus1", np.array([-1], np.int64))], outputs=[flat]),
             gs.Node("Gather", attrs={"axis": 0}, inputs=[flat, gs.Constant("idx", indices)], outputs=[back]),
             gs.Node("Conv", inputs=[back, weight], outputs=[gate]),
             gs.Node("Mul", inputs=[x, gate], outputs=[y])]
    pooled.shape = [1, c, 1, 1]
    model = gs.export_onnx(gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17))
    model.ir_version = 8
    return model


def test_identity_as_strided_does_not_hide_a_pool():
    scan = scan_graph(import_graph(_pool_through_gather(np.arange(4, dtype=np.int64).reshape(1, 4, 1, 1))))
    assert [op.kind for op in scan.ops] == ["avgpool"] and not scan.kept


def test_permuting_gather_is_not_bypassed():
    scan = scan_graph(import_graph(_pool_through_gather(np.array([1, 0, 3, 2], np.int64).reshape(1, 4, 1, 1))))
    assert not scan.ops and len(scan.kept) == 1     # kept global by name: not per pixel any more


def test_pt2_with_a_size_multiple_converts_exactly(tmp_path):
    """``4 * Dim(...)`` dimensions: torch.export.load leaves expression-keyed ranges that broke the
    ONNX export, and the second-size check must use the program's multiple."""
    model = ChannelsLastAttention(True).eval()
    model.forward = _pool_only.__get__(model)
    dims = {2: 4 * torch.export.Dim("hb", min=1, max=128), 3: 4 * torch.export.Dim("wb", min=1, max=128)}
    with torch.no_grad():
        program = torch.export.export(model, (torch.rand(1, 3, *CALIB),), dynamic_shapes=(dims,))
    torch.export.save(program, str(tmp_path / "m.pt2"))
    result = convert(str(tmp_path / "m.pt2"), calib=CALIB, output=tmp_path / "m.onnx")
    assert [r["op"] for r in result.report["rewritten"]] == ["avgpool"]
    x = torch.rand(1, 3, 24, 20, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = model.conv(x)
        want = model.out(y * model.sca(local_mean(y.double(), CALIB).float())).numpy()
    assert np.abs(run(onnx.load(str(result.onnx_path)), x) - want).max() <= 1e-5


def _pool_only(self, x):
    y = self.conv(x)
    return self.out(y * self.sca(F.adaptive_avg_pool2d(y, 1)))
