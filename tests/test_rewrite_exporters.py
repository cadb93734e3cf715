"""The zoo's families exported by both ONNX exporters (TorchScript-based and dynamo), rewritten, and run
in ONNX Runtime against the eager TLC reference at two sizes other than the calibration size: one where
every window is smaller than its map, one mixed (taller than the calibration, narrower)."""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import onnx
import pytest
import torch

from conftest import SMALL, perturb_identity_params
from tlc_export import zoo
from tlc_export.api import rewrite_stage
from tlc_export.reference import to_local
from tlc_export.runtime import ort_session

CALIB = (32, 32)
SIZES = [(48, 56), (64, 24)]
FAMILIES = {**SMALL, "restormer": dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 2, 2, 4])}
EXPECTED_OPS = {"hinet": 6, "nafnet": 5, "mprnet": None, "restormer": 8}   # None: at least one


def export(model: torch.nn.Module, exporter: str) -> onnx.ModelProto:
    x = torch.rand(1, 3, *CALIB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            dims = {0: torch.export.Dim("batch", max=16), 2: torch.export.Dim("h", min=8, max=1024),
                    3: torch.export.Dim("w", min=8, max=1024)}
            return torch.onnx.export(model, (x,), dynamo=True, opset_version=18, verbose=False,
                                     dynamic_shapes=(dims,)).model_proto
        buf = io.BytesIO()
        torch.onnx.export(model, (x,), buf, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "b", 2: "h", 3: "w"}})
        return onnx.load_from_string(buf.getvalue())


def _outputs(value) -> list[np.ndarray]:
    return [t.numpy() for t in value] if isinstance(value, (list, tuple)) else [value.numpy()]


@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("family", list(FAMILIES))
def test_both_exporters_give_an_exact_graph(family, exporter):
    torch.manual_seed(0)
    model = perturb_identity_params(zoo.build(family, **FAMILIES[family])).eval()
    stage = rewrite_stage(export(model, exporter), CALIB, (1, 3, *CALIB))
    assert not stage.kept, stage.kept
    expected = EXPECTED_OPS[family]
    assert len(stage.records) == expected if expected else stage.records
    assert all(r.module_path for r in stage.records), stage.records        # dynamo: from node metadata
    local, _ = to_local(copy.deepcopy(model), CALIB)
    session = ort_session(stage.model)
    batch_dim = session.get_inputs()[0].shape[0]
    batch = batch_dim if isinstance(batch_dim, int) else 2      # dynamo may specialise the batch
    for size in SIZES:
        x = torch.rand(batch, 3, *size, generator=torch.Generator().manual_seed(3))
        with torch.no_grad():
            want, glob = _outputs(local(x)), _outputs(model(x))
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        errs = [float(np.abs(g - w).max()) for g, w in zip(got, want)]
        assert max(errs) <= 1e-5, (family, exporter, size, errs)
        assert max(float(np.abs(g - w).max()) for g, w in zip(glob, want)) > 1e-4   # TLC changes something


class ShapeReadingAttention(torch.nn.Module):
    """Restormer's attention written like upstream's einops code: sizes read from the tensors being
    reshaped (``.shape`` of the attention output), the output size from the block input."""

    def forward(self, x):
        _, _, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)

        def heads(t):
            b, c, hh, ww = t.shape
            return t.reshape(b, self.num_heads, c // self.num_heads, hh * ww)

        q, k = torch.nn.functional.normalize(heads(q), dim=-1), torch.nn.functional.normalize(heads(k), dim=-1)
        out = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1) @ heads(v)
        b, n_heads, c, _ = out.shape
        return self.project_out(out.reshape(b, n_heads * c, h, w))


@pytest.mark.parametrize("form", ["torchscript", "trace", "dynamo"])
def test_shape_reading_attention_is_found_in_every_form(form):
    from tlc_export.zoo.restormer import Attention

    torch.manual_seed(0)
    model = perturb_identity_params(zoo.build("restormer", **FAMILIES["restormer"])).eval()
    for module in model.modules():
        if isinstance(module, Attention):
            module.__class__ = type("Upstream", (ShapeReadingAttention, Attention), {})
    with torch.no_grad():
        source = torch.jit.trace(model, torch.rand(1, 3, *CALIB)) if form == "trace" else model
    stage = rewrite_stage(export(source, "dynamo" if form == "dynamo" else "torchscript"), CALIB, (1, 3, *CALIB))
    assert [r.op for r in stage.records] == ["attention"] * 8 and not stage.kept
    local, _ = to_local(copy.deepcopy(model), CALIB)
    session = ort_session(stage.model)
    x = torch.rand(1, 3, *SIZES[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = local(x).numpy()
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.abs(got - want).max() <= 1e-5
