"""Each global-op kind matched and localised on small exported graphs, against float64 references written
here (``F.avg_pool2d`` windows + replicate pad, per-pixel Linear through ``permute``), in both ONNX
exporters; kept-global cases give the report entry and the warning; the conversion's self-check."""
from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tlc_export.api import rewrite_stage
from tlc_export.errors import UserError
from tlc_export.runtime import ort_session

CALIB = (16, 16)
SIZES = [(24, 20), (12, 40)]     # windows smaller than the map on both axes; one axis of each kind


def local_mean(x: torch.Tensor, window) -> torch.Tensor:
    """TLC local mean, written from the definition: stride-1 window means, replicate-padded back."""
    h, w = x.shape[-2:]
    k1, k2 = min(h, window[0]), min(w, window[1])
    valid = F.avg_pool2d(x, (k1, k2), stride=1)
    top, left = (k1 - 1) // 2, (k2 - 1) // 2
    return F.pad(valid, (left, k2 - 1 - left, top, k1 - 1 - top), mode="replicate")


class Pooled(nn.Module):
    """A restorer-like block whose channel attention pools in one of several ways; ``window`` set: the
    same block with TLC's local mean and the MLP per pixel (the float64 reference)."""

    def __init__(self, pool: str, c: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.pool, self.window = pool, None
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.fc1, self.fc2 = nn.Linear(c, 4), nn.Linear(4, c)
        self.sk = nn.Conv2d(c, 2 * c, 1)
        self.eca = nn.Conv1d(1, 1, 3, padding=1)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def _squeeze(self, x):
        b, c, _, _ = x.shape
        if self.pool == "flatten":
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        if self.pool in ("mean", "own-shape"):
            return x.mean((2, 3))
        if self.pool == "view":
            return x.view(b, c, -1).mean(-1)
        if self.pool == "own-size":    # the pooled map's own sizes: y.view(y.size(0), -1)
            y = F.adaptive_avg_pool2d(x, 1)
            return y.view(y.size(0), -1)
        raise AssertionError(self.pool)

    def forward(self, x):
        x = self.conv(x)
        b, c, _, _ = x.shape
        if self.pool == "sk":      # MixDehazeNet's selective-kernel fusion: attn.view(B, 2, C, 1, 1)
            if self.window is None:
                attn = self.sk(F.adaptive_avg_pool2d(x, 1)).view(b, 2, c, 1, 1).softmax(dim=1)
            else:
                attn = self.sk(local_mean(x, self.window)).view(b, 2, c, *x.shape[-2:]).softmax(dim=1)
            return self.out((torch.stack([x, x * x], 1) * attn).sum(1))
        if self.pool == "eca":     # ECA-Net: a 1-D conv across the channels of the pooled vector
            if self.window is None:
                y = self.eca(F.adaptive_avg_pool2d(x, 1).squeeze(-1).transpose(-1, -2)).transpose(-1, -2)
                return self.out(x * torch.sigmoid(y.unsqueeze(-1)))
            pixels = local_mean(x, self.window).permute(0, 2, 3, 1).reshape(-1, 1, c)
            y = self.eca(pixels).reshape(b, *x.shape[-2:], c).permute(0, 3, 1, 2)
            return self.out(x * torch.sigmoid(y))
        if self.window is None:
            y = torch.sigmoid(self.fc2(torch.relu(self.fc1(self._squeeze(x)))))
            if self.pool == "own-shape":   # einops' rearrange('b c -> b c 1 1'): sizes read off the vector
                return self.out(x * y.reshape(y.shape[0], y.shape[1], 1, 1))
            return self.out(x * y.view(b, c, 1, 1))
        y = local_mean(x, self.window).permute(0, 2, 3, 1)
        y = torch.sigmoid(self.fc2(torch.relu(self.fc1(y)))).permute(0, 3, 1, 2)
        return self.out(x * y)


def export(model: nn.Module, dynamo: bool, dynamic_batch: bool = True) -> onnx.ModelProto:
    x = torch.rand(1, 3, *CALIB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            dims = {0: torch.export.Dim("b", max=8)} if dynamic_batch else {}
            dims |= {2: torch.export.Dim("h", min=2, max=512),
                    3: torch.export.Dim("w", min=2, max=512)}
            return torch.onnx.export(model, (x,), dynamo=True, opset_version=18, verbose=False,
                                     dynamic_shapes={"x": dims}).model_proto
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
        return onnx.load_from_string(buf.getvalue())


def run(model: onnx.ModelProto, x: torch.Tensor) -> np.ndarray:
    session = ort_session(model)
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
@pytest.mark.parametrize("pool", ["flatten", "mean", "view", "sk", "own-shape", "own-size", "eca"])
def test_pooled_vector_and_reshaped_pools_are_localised_exactly(pool, dynamo):
    model = Pooled(pool).eval()
    # torch.export specialises the batch of a Conv1d on (N, 1, C) to the example's 1
    dynamic_batch = not (dynamo and pool == "eca")
    stage = rewrite_stage(export(model, dynamo, dynamic_batch), CALIB, (1, 3, *CALIB))
    assert [r.op for r in stage.records] == ["avgpool"] and not stage.kept
    assert_exact_against_window_reference(model, stage.model, batch=2 if dynamic_batch else 1)


def assert_exact_against_window_reference(model: nn.Module, graph: onnx.ModelProto, batch: int = 1,
                                          seed: int = 1) -> None:
    """``graph`` in ONNX Runtime against ``model`` with ``window = CALIB`` in float64 (a model that
    writes its TLC form itself) at ``SIZES``; and the TLC effect is real, so the check can fail."""
    for size in SIZES:
        x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            glob = model(x).numpy()
            model.window = CALIB
            ref = model.double()(x.double()).numpy()
            model.window = None
            model.float()
        out = run(graph, x)
        assert np.abs(out - ref).max() <= 1e-5, size
        assert np.abs(glob - ref).max() > 1e-5


class KeptGlobal(nn.Module):
    """A global max pool (kept), an average pool feeding a classifier head (kept) and a channel attention
    (localised) in one graph."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.ca = nn.Conv2d(8, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(self.ca(F.adaptive_avg_pool2d(x, 1)))     # localised
        x = x + F.adaptive_max_pool2d(x, 1)                              # kept: max over all pixels
        logits = self.head(x.mean((2, 3)))                               # kept: (N, C) -> graph output
        return x, logits


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_unlocalisable_global_ops_are_kept_reported_and_warned(dynamo):
    model = KeptGlobal().eval()
    stage = rewrite_stage(export(model, dynamo), CALIB, (1, 3, *CALIB))
    assert [r.op for r in stage.records] == ["avgpool"]
    kinds = sorted(k.kind for k in stage.kept)
    assert kinds == ["avgpool", "globalmaxpool"], stage.kept
    reasons = {k.kind: k.reason for k in stage.kept}
    assert "graph output" in reasons["avgpool"] and "max" in reasons["globalmaxpool"]
    x = torch.rand(1, 3, *CALIB)
    with torch.no_grad():
        ref = model(x)
    outs = ort_session(stage.model).run(None, {ort_session(stage.model).get_inputs()[0].name: x.numpy()})
    assert max(np.abs(o - r.numpy()).max() for o, r in zip(outs, ref)) <= 1e-5  # at calib: the global model


def test_kept_global_ops_appear_in_the_report_and_a_warning(tmp_path):
    from tlc_export.api import convert

    with pytest.warns(UserWarning, match="kept global"):
        result = convert(KeptGlobal().eval(), CALIB, output=tmp_path / "m.onnx", input_shape=(1, 3, *CALIB))
    kept = result.report["kept_global"]
    assert sorted(k["kind"] for k in kept) == ["avgpool", "globalmaxpool"]
    assert all(k["onnx_name"] and k["reason"] for k in kept)
    assert len(result.report["rewritten"]) == 1


class OnlyMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * torch.sigmoid(x.amax((2, 3), keepdim=True))


def test_graph_with_only_kept_global_ops_is_refused():
    with pytest.raises(UserError, match="nothing to convert.*kept global.*--no-tlc"):
        rewrite_stage(export(OnlyMax().eval(), False), CALIB, (1, 3, *CALIB))


class ContextPool(nn.Module):
    """GCNet / MIRNet-v2 context block (softmax-weighted pool: a MatMul over H·W, kept global) beside a
    channel attention (localised)."""

    def __init__(self, c: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.mask, self.ca = nn.Conv2d(3, c, 3, padding=1), nn.Conv2d(c, 1, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        x = self.conv(x)
        b, c, h, w = x.shape
        weights = self.mask(x).view(b, 1, h * w).softmax(dim=2).unsqueeze(-1)       # N, 1, HW, 1
        context = torch.matmul(x.view(b, c, h * w).unsqueeze(1), weights).view(b, c, 1, 1)
        return x * torch.sigmoid(self.ca(F.adaptive_avg_pool2d(x, 1))) + context


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_softmax_weighted_context_pool_is_kept_global(dynamo):
    stage = rewrite_stage(export(ContextPool().eval(), dynamo), CALIB, (1, 3, *CALIB))
    assert [r.op for r in stage.records] == ["avgpool"]
    assert [k.kind for k in stage.kept] == ["hw-contraction"] and "all pixels" in stage.kept[0].reason


class InstanceNormBlock(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.norm = nn.Conv2d(3, 4, 3, padding=1), nn.InstanceNorm2d(4, affine=True)

    def forward(self, x):
        return self.norm(self.conv(x))


def test_self_check_refuses_a_wrong_rewrite_with_the_numbers(tmp_path, monkeypatch):
    """A rewrite bug (here: a kind that uses the wrong epsilon) is caught at the calibration size, where
    the TLC graph must equal the source graph; nothing is written."""
    from tlc_export.api import convert
    from tlc_export.rewrite.kinds import instancenorm

    original = instancenorm.localize

    def wrong_eps(b, op, window, options):
        op.attrs["eps"] = 0.5
        return original(b, op, window, options)

    monkeypatch.setattr(instancenorm, "localize", wrong_eps)
    out = tmp_path / "m.onnx"
    with pytest.raises(UserError, match=r"self-check failed.*calibration size 16x16.*output .* by [0-9.e-]+ \(max abs"):
        convert(InstanceNormBlock().eval(), CALIB, output=out, input_shape=(1, 3, *CALIB))
    assert not out.exists()
    monkeypatch.setattr(instancenorm, "localize", original)
    assert convert(InstanceNormBlock().eval(), CALIB, output=out, input_shape=(1, 3, *CALIB)).onnx_path == out
