"""The plugin form: Triton kernels, numpy/ONNX Runtime custom ops and ``localize_plugin``, against the
eager TLC reference; TensorRT registration when TensorRT is installed.

The Triton kernels run under ``TRITON_INTERPRET=1`` (CPU tensors) in a subprocess: the interpreter
must be switched on before ``triton`` is first imported, which another test module may already have
done in this process. The AOT build (``triton.compile`` to PTX for sm_80) needs no GPU and runs in a
second subprocess without the interpreter.
"""
import copy
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = ROOT / "plugins"
if importlib.util.find_spec("tlc_trt_plugin") is None:      # not pip-installed: use the source tree
    sys.path.insert(0, str(PLUGINS))

from tlc_trt_plugin import numpy_ref  # noqa: E402
from tlc_export.calibrate import calibrate_windows, import_graph  # noqa: E402
from tlc_export.reference import LocalInstanceNorm2d, local_mean, to_local  # noqa: E402
from tlc_export.rewrite import find_global_ops  # noqa: E402
from tlc_export.rewrite.plugin_nodes import add_plugin_opset, localize_plugin  # noqa: E402

HAS_TRITON = importlib.util.find_spec("triton") is not None
HAS_ORT_EXT = importlib.util.find_spec("onnxruntime_extensions") is not None
try:
    import tensorrt  # noqa: F401
    TRT_SKIP = None
except Exception as exc:  # ImportError, or a broken install (no CUDA driver)
    TRT_SKIP = f"TensorRT is not importable here ({type(exc).__name__}: {exc}); no GPU on this machine"

needs_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed (pip install triton==3.9.0)")
needs_ort_ext = pytest.mark.skipif(not HAS_ORT_EXT,
                                   reason="onnxruntime-extensions is not installed (pip install onnxruntime-extensions==0.15.2)")

# (shape, window, block): odd sizes, windows past the map in one or both axes, window 1, batch > 1,
# several column chunks (block 16 on wide maps).
KERNEL_CASES = [
    ((1, 1, 7, 9), (3, 4), None),
    ((2, 3, 11, 6), (5, 2), None),      # batch > 1
    ((1, 2, 5, 8), (9, 3), None),       # window taller than the map
    ((1, 2, 6, 5), (4, 12), None),      # window wider than the map
    ((2, 2, 4, 6), (10, 10), None),     # window covers the map: global op
    ((1, 3, 9, 7), (1, 1), None),       # window 1: identity / bias
    ((1, 1, 13, 13), (8, 6), None),
    ((1, 1, 1, 5), (3, 3), None),       # a single row
    ((1, 2, 6, 37), (3, 20), 16),       # three column chunks, window head across chunks
    ((1, 1, 9, 35), (7, 33), 16),
]
# Windows of 2–3 pixels: the local variance can be ~0, where y = (x − μ)·rstd amplifies float32
# rounding of μ by up to 1/√eps ≈ 316; these are judged in input units (error / (|scale|·rstd)).
SMALL_WINDOW_CASES = [((1, 2, 8, 8), (1, 2), None), ((1, 2, 8, 8), (2, 1), None), ((2, 2, 10, 12), (2, 2), None)]


def _affine(c, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(c, generator=g, dtype=torch.float64), torch.randn(c, generator=g, dtype=torch.float64)


def _reference_norm(x, window, scale, bias, eps=1e-5):
    norm = LocalInstanceNorm2d(x.shape[1], eps=eps, affine=True, window=window).double()
    with torch.no_grad():
        norm.weight.copy_(scale)
        norm.bias.copy_(bias)
        return norm(x.double())


def _kernel_worker(cases):
    """Runs in the TRITON_INTERPRET=1 subprocess: errors of the kernels against the reference."""
    torch.set_num_threads(1)
    from tlc_trt_plugin import kernels

    out = []
    for shape, window, block in cases:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape) + sum(window)))
        scale, bias = _affine(shape[1], sum(shape))
        want_mean = local_mean(x.double(), window)
        want_norm = _reference_norm(x, window, scale, bias)
        got_mean = kernels.local_mean(x, window, block=block)
        got_norm = kernels.local_instance_norm(x, scale.float(), bias.float(), window, 1e-5, block=block)
        # Conditioning of each output element: |scale|·rstd, from the float64 reference statistics.
        x64 = x.double()
        mu = local_mean(x64, window)
        rstd = 1 / torch.sqrt(local_mean(x64 * x64, window) - mu * mu + 1e-5)
        amp = scale.abs().view(1, -1, 1, 1) * rstd
        into = torch.empty_like(x)
        kernels.local_mean(x, window, block=block, out=into)
        xh = x.half()
        got_half = kernels.local_mean(xh, window, block=block)
        got_half_norm = kernels.local_instance_norm(xh, scale.float(), bias.float(), window, 1e-5, block=block)
        out.append({
            "mean": (got_mean.double() - want_mean).abs().max().item(),
            "norm": (got_norm.double() - want_norm).abs().max().item(),
            "norm_input_units": ((got_norm.double() - want_norm).abs() / amp).max().item(),
            "out_param": (into - got_mean).abs().max().item(),
            "identity": (got_mean - x).abs().max().item(),
            "bias_only": (got_norm - bias.float().view(1, -1, 1, 1)).abs().max().item(),
            "dtypes": [str(got_mean.dtype), str(got_norm.dtype), str(got_half.dtype)],
            # float16 in/out: the separate float32 scratch path; the output rounding dominates.
            "half_mean": (got_half.double() - local_mean(xh.double(), window)).abs().max().item(),
            "half_norm": (got_half_norm.double() - _reference_norm(xh.double(), window, scale, bias)).abs().max().item(),
        })
    return out


def _run_worker(code: str, interpret: bool, timeout: int = 240):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests"), str(PLUGINS), str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=str(ROOT), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def kernel_errors():
    cases = [list(map(list, (s, w))) + [b] for s, w, b in KERNEL_CASES + SMALL_WINDOW_CASES]
    code = ("import json, test_plugin as t; "
            f"print(json.dumps(t._kernel_worker(json.loads({json.dumps(json.dumps(cases))}))))")
    errors = _run_worker(code, interpret=True)
    return dict(zip([(tuple(s), tuple(w), b) for s, w, b in KERNEL_CASES + SMALL_WINDOW_CASES], errors))


@needs_triton
@pytest.mark.parametrize("shape,window,block", KERNEL_CASES)
def test_triton_kernels_match_reference(kernel_errors, shape, window, block):
    err = kernel_errors[(shape, window, block)]
    assert err["mean"] <= 1e-5, err
    assert err["norm"] <= 1e-5, err
    assert err["out_param"] == 0
    assert err["dtypes"] == ["torch.float32", "torch.float32", "torch.float16"]
    assert err["half_mean"] <= 1e-3 and err["half_norm"] <= 1e-2, err
    if window == (1, 1):
        assert err["identity"] == 0 and err["bias_only"] == 0, "a 1x1 window must be exact (identity / bias)"


@needs_triton
@pytest.mark.parametrize("shape,window,block", SMALL_WINDOW_CASES)
def test_triton_instance_norm_small_windows(kernel_errors, shape, window, block):
    err = kernel_errors[(shape, window, block)]
    assert err["mean"] <= 1e-5, err
    # Judged in input units: |Δy| / (|scale|·rstd). Where σ² ≲ eps the float32 rounding of
    # E[x²] − E[x]² (~1e-7 absolute) moves rstd by up to ~1e-7/eps relative, so ~1e-5 absolute
    # errors of y are float32's conditioning here, not the algorithm's (measured: ~1e-4 absolute,
    # ~4e-6 in input units).
    assert err["norm"] <= 1e-3, err
    assert err["norm_input_units"] <= 1e-5, err


def _flat_plane_worker():
    """Runs in the TRITON_INTERPRET=1 subprocess: a photo-like plane (a flat level with faint texture)
    whose top-left corner is dark. Kernel instance norm error against the float64 reference."""
    torch.set_num_threads(1)
    from tlc_trt_plugin import kernels

    g = torch.Generator().manual_seed(5)
    x = 0.6 + 0.01 * torch.rand(1, 2, 40, 48, generator=g)
    x[..., :4, :4] = 0.0
    scale, bias = torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    got = kernels.local_instance_norm(x, scale.float(), bias.float(), (8, 8), 1e-5)
    return (got.double() - _reference_norm(x, (8, 8), scale, bias)).abs().max().item()


@needs_triton
def test_triton_instance_norm_keeps_precision_on_flat_planes():
    """The moments are shifted by a level near the plane's mean, not by its first pixel: with a dark
    corner, E[x'²] − E[x']² on x' = x − x[0, 0] ≈ 0.6 loses the ~8e-6 variance of the flat part (error
    1.1e-2 with that shift, 3.3e-4 with the subsampled mean). What is left is float32's conditioning at
    σ² ≈ eps: rstd ≈ 240 amplifies the ~1e-9 rounding the running sums carry past the dark corner."""
    code = "import json, test_plugin as t; print(json.dumps(t._flat_plane_worker()))"
    assert _run_worker(code, interpret=True) <= 1e-3


AOT_CODE = r"""
import json, os, re, subprocess
import triton
from triton.backends.compiler import GPUTarget
from tlc_trt_plugin import kernels
ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
out = {}
for kind in ("mean", "instancenorm"):
    name, ptx, warps, shared = kernels.aot_kernel(kind, eps=1e-5, target=GPUTarget("cuda", 80, 32))
    decl = re.search(r"\.entry\s+" + name + r"\s*\(([^)]*)\)", ptx).group(1)
    params = [p.split()[1].lstrip(".") for p in decl.split(",") if p.strip()]
    assembled = None
    if os.path.exists(ptxas):
        path = f"/tmp/tlc_aot_{os.getpid()}_{kind}.ptx"
        open(path, "w").write(ptx)
        r = subprocess.run([ptxas, "-arch=sm_80", path, "-o", path + ".cubin"], capture_output=True, text=True)
        assembled = r.returncode == 0
        os.remove(path)
        if os.path.exists(path + ".cubin"):
            os.remove(path + ".cubin")
    out[kind] = {"name": name, "params": params, "warps": warps, "shared": shared, "assembled": assembled}
print(json.dumps(out))
"""


@needs_triton
def test_aot_kernels_compile_to_ptx_without_gpu():
    """The AOT plugin kernels: PTX with exactly inputs, int32 extra args, output (what TensorRT passes)."""
    out = _run_worker(AOT_CODE, interpret=False)
    assert out["mean"]["params"] == ["u64", "u32", "u32", "u32", "u32", "u64"]
    assert out["instancenorm"]["params"] == ["u64"] * 3 + ["u32"] * 5 + ["u64"]
    for kind in out.values():
        assert kind["warps"] >= 1 and kind["assembled"] in (True, None)


# ------------------------------------------------------------------------------------------------
# numpy reference and ONNX Runtime custom ops

@pytest.mark.parametrize("shape,window,block", KERNEL_CASES[:7])
def test_numpy_ref_matches_reference(shape, window, block):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    scale, bias = _affine(shape[1], 4)
    np.testing.assert_allclose(numpy_ref.local_mean(x.numpy(), window), local_mean(x, window).numpy(),
                               rtol=0, atol=1e-12)
    got = numpy_ref.local_instance_norm(x.numpy(), scale.numpy(), bias.numpy(), window, 1e-5)
    np.testing.assert_allclose(got, _reference_norm(x, window, scale, bias).numpy(), rtol=0, atol=1e-9)


def _plugin_model(c: int, window, eps: float = 1e-5, seed: int = 0):
    """x → TLCLocalMean → TLCLocalInstanceNorm (both in domain tlc_export), dynamic N/H/W."""
    scale, bias = _affine(c, seed)
    x = gs.Variable("x", np.float32, ["n", c, "h", "w"])
    m = gs.Variable("m", np.float32, ["n", c, "h", "w"])
    y = gs.Variable("y", np.float32, ["n", c, "h", "w"])
    common = {"plugin_namespace": "tlc_export", "plugin_version": "1"}
    nodes = [
        gs.Node("TLCLocalMean", "mean", {"window": list(window), **common}, [x], [m], domain="tlc_export"),
        gs.Node("TLCLocalInstanceNorm", "norm", {"window": list(window), "eps": eps, **common},
                [m, gs.Constant("scale", scale.float().numpy()), gs.Constant("bias", bias.float().numpy())], [y],
                domain="tlc_export"),
    ]
    model = gs.export_onnx(gs.Graph(nodes=nodes, inputs=[x], outputs=[y], opset=17))
    model.ir_version = 8                      # what the exporter writes; ONNX Runtime 1.31 reads <= 13
    return add_plugin_opset(model), scale, bias


@needs_ort_ext
@pytest.mark.parametrize("window", [(3, 4), (9, 3), (1, 1), (20, 20)])
def test_ort_custom_ops_match_reference(window):
    from tlc_trt_plugin import ort_ops

    model, scale, bias = _plugin_model(3, window)
    session = ort_ops.inference_session(model)
    for shape in [(1, 3, 7, 9), (2, 3, 11, 6)]:
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[2]))
        got = session.run(None, {"x": x.numpy()})[0]
        want = _reference_norm(local_mean(x.double(), window), window, scale, bias)
        assert got.dtype == np.float32 and got.shape == shape
        assert np.abs(got - want.numpy()).max() <= 1e-5


@needs_ort_ext
def test_to_ort_model_keeps_the_plugin_model_intact():
    from tlc_trt_plugin import ort_ops

    model, _, _ = _plugin_model(2, (3, 5))
    before = model.SerializeToString()
    ort_model = ort_ops.to_ort_model(model)
    assert model.SerializeToString() == before
    nodes = {n.op_type: n for n in ort_model.graph.node}
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in nodes["TLCLocalMean"].attribute}
    assert nodes["TLCLocalMean"].domain == "ai.onnx.contrib"
    assert attrs["window_h"] == 3 and attrs["window_w"] == 5 and list(attrs["window"]) == [3, 5]
    assert "ai.onnx.contrib" in {o.domain for o in ort_model.opset_import}


# ------------------------------------------------------------------------------------------------
# localize_plugin end to end

class _Tiny(nn.Module):
    """Channel attention (AdaptiveAvgPool2d(1)), an affine InstanceNorm2d and a GroupNorm (no plugin)."""

    def __init__(self, c=6):
        super().__init__()
        self.head = nn.Conv2d(3, c, 3, padding=1)
        self.norm = nn.InstanceNorm2d(c, affine=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, 3, 1), nn.Conv2d(3, c, 1)
        self.gn = nn.GroupNorm(2, c)
        self.tail = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        y = self.norm(self.head(x))
        y = y * torch.sigmoid(self.fc2(torch.relu(self.fc1(self.pool(y)))))
        return self.tail(self.gn(y)) + x


CALIB = (16, 20)


@pytest.fixture(scope="module")
def plugin_form(tmp_path_factory):
    torch.manual_seed(0)
    model = _Tiny().eval()
    with torch.no_grad():
        for p in (model.norm.weight, model.norm.bias, model.gn.weight, model.gn.bias):
            p.add_(torch.randn(p.shape) * 0.3)
    path = tmp_path_factory.mktemp("plugin") / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.rand(1, 3, *CALIB),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "n", 2: "h", 3: "w"}})
    proto = onnx.load(str(path))
    graph = import_graph(proto)
    ops = find_global_ops(graph)
    windows = calibrate_windows(proto, ops, CALIB)
    records = localize_plugin(graph, ops, windows, 17)
    out = add_plugin_opset(gs.export_onnx(graph))
    return model, out, records


def test_localize_plugin_emits_plugin_nodes(plugin_form):
    _, out, records = plugin_form
    kinds = sorted((r.op, r.implementation, r.window) for r in records)
    assert kinds == [("avgpool", "plugin", CALIB), ("groupnorm", "boxfilter", CALIB),
                     ("instancenorm", "plugin", CALIB)]
    ops = [n.op_type for n in out.graph.node]
    assert not {"GlobalAveragePool", "InstanceNormalization"} & set(ops)   # GroupNorm's subgraph has a ReduceMean
    plugin_nodes = [n for n in out.graph.node if n.domain == "tlc_export"]
    assert sorted(n.op_type for n in plugin_nodes) == ["TLCLocalInstanceNorm", "TLCLocalMean"]
    for node in plugin_nodes:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        assert list(attrs["window"]) == list(CALIB)
        assert attrs["plugin_namespace"] == b"tlc_export" and attrs["plugin_version"] == b"1"
        assert "aot" not in attrs
        if node.op_type == "TLCLocalInstanceNorm":
            assert len(node.input) == 3 and abs(attrs["eps"] - 1e-5) < 1e-12
    assert ("tlc_export", 1) in {(o.domain, o.version) for o in out.opset_import}
    assert find_global_ops(import_graph(out)) == []


@needs_ort_ext
def test_localize_plugin_runs_in_ort_like_the_eager_reference(plugin_form):
    from tlc_trt_plugin import ort_ops

    model, out, _ = plugin_form
    local, _ = to_local(copy.deepcopy(model), CALIB)
    session = ort_ops.inference_session(out)
    for shape in [(1, 3, 24, 28), (2, 3, 13, 31)]:          # neither is the calibration size
        x = torch.rand(shape, generator=torch.Generator().manual_seed(shape[3]))
        with torch.no_grad():
            want = local(x).numpy()
            glob = model(x).numpy()
        got = session.run(None, {"input": x.numpy()})[0]
        assert np.abs(got - want).max() <= 1e-5, shape
        assert np.abs(got - glob).max() > 1e-4, "the conversion changed nothing"


def test_localize_plugin_aot_attribute(tmp_path):
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.InstanceNorm2d(4, affine=True)).eval()
    path = tmp_path / "in.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(1, 3, 8, 8),), str(path), dynamo=False, opset_version=17,
                          input_names=["input"], output_names=["output"])
    proto = onnx.load(str(path))
    graph = import_graph(proto)
    ops = find_global_ops(graph)
    records = localize_plugin(graph, ops, calibrate_windows(proto, ops, (8, 8)), 17, aot=True)
    assert [r.implementation for r in records] == ["plugin"]
    node = next(n for n in graph.nodes if n.op == "TLCLocalInstanceNorm")
    assert node.attrs["aot"] == 1 and node.domain == "tlc_export"


# ------------------------------------------------------------------------------------------------
# TensorRT (skipped without it)

@pytest.mark.skipif(TRT_SKIP is not None, reason=TRT_SKIP or "")
def test_tensorrt_plugins_register():
    import tensorrt as trt
    from tlc_trt_plugin import trt_plugin

    aot = trt_plugin.register()
    assert trt_plugin.register() == aot                      # idempotent
    registry = trt.get_plugin_registry()
    for name in ("TLCLocalMean", "TLCLocalInstanceNorm"):
        assert registry.get_creator(name, "1", "tlc_export") is not None, name


@pytest.mark.skipif(TRT_SKIP is not None, reason=TRT_SKIP or "")
@pytest.mark.parametrize("aot", [False, True])
def test_tensorrt_engine_matches_ort(plugin_form, tmp_path, aot):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: a TensorRT engine cannot be built here")
    import tensorrt as trt
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, TrtRunner
    from tlc_trt_plugin import ort_ops, trt_plugin

    if trt_plugin.register() is False and aot:
        pytest.skip("TensorRT < 10.9: no AOT Python plugins")
    out = copy.deepcopy(plugin_form[1])
    for node in out.graph.node:
        if node.domain == "tlc_export":
            node.attribute.append(onnx.helper.make_attribute("aot", int(aot)))
    path = tmp_path / "plugin.onnx"
    onnx.save(out, str(path))
    profile = Profile().add("input", min=(1, 3, 8, 8), opt=(1, 3, 24, 28), max=(2, 3, 40, 40))
    engine = EngineFromNetwork(NetworkFromOnnxPath(str(path), strongly_typed=True), CreateConfig(profiles=[profile]))
    session = ort_ops.inference_session(out)
    with TrtRunner(engine) as runner:
        for shape in [(1, 3, 24, 28), (2, 3, 13, 31)]:
            x = np.random.default_rng(shape[3]).random(shape, dtype=np.float32)
            got = runner.infer({"input": x})["output"]
            want = session.run(None, {"input": x})[0]
            assert np.abs(np.asarray(got) - want).max() <= 1e-4, (aot, shape, trt.__version__)
