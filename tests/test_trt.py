"""TensorRT readiness without TensorRT: the static checker, the check CLI, Triton repositories, the
reduced-precision rewrite and the engine builders. Tests that need TensorRT skip when it is missing."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tlc_export.build import build_ort_session, build_trt_engine, to_reduced_precision_onnx
from tlc_export.commands import check as check_cmd
from tlc_export.errors import UserError
from tlc_export.serve import write_triton_repo
from tlc_export.trtcheck import check_tensorrt_compat, infer_tensor_types

OPSET = 18
WINDOW = (4, 4)
P = "/body/gap/tlc/"   # every node the converter adds has /tlc/ in its name


def _c(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


class _G:
    """A tiny graph builder: nodes, initializers, unique names."""

    def __init__(self):
        self.nodes, self.inits, self.n = [], [], 0

    def const(self, values, dtype=np.int64, prefix="c"):
        self.n += 1
        name = f"{prefix}{self.n}"
        self.inits.append(_c(name, values, dtype))
        return name

    def op(self, op_type, inputs, name, **attrs):
        out = f"{name}_out"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out


def _local_mean(g: _G, x: str, window=WINDOW, prefix=P) -> str:
    """TLC local mean of x (N,C,h,w) by hand: two zero-led CumSums (both on axis 3, a Transpose between),
    valid-window differences, a run-time 1/(k1·k2) and TLC's edge padding back to h×w."""
    h = g.op("Shape", [x], prefix + "Shape_h", start=2, end=3)
    w = g.op("Shape", [x], prefix + "Shape_w", start=3, end=4)
    k1 = g.op("Min", [h, g.const([window[0]])], prefix + "Min_k1")
    k2 = g.op("Min", [w, g.const([window[1]])], prefix + "Min_k2")
    axis3 = g.const(3)

    def box_last(t, n, k, tag):
        cs = g.op("CumSum", [t, axis3], prefix + f"CumSum_{tag}")
        lead = g.op("Pad", [cs, g.const([0, 0, 0, 1, 0, 0, 0, 0])], prefix + f"Pad_lead_{tag}", mode="constant")
        n1 = g.op("Add", [n, g.const([1])], prefix + f"Add_n1_{tag}")
        nv = g.op("Sub", [n1, k], prefix + f"Sub_nvalid_{tag}")
        hi = g.op("Slice", [lead, k, n1, g.const([3])], prefix + f"Slice_hi_{tag}")
        lo = g.op("Slice", [lead, g.const([0]), nv, g.const([3])], prefix + f"Slice_lo_{tag}")
        return g.op("Sub", [hi, lo], prefix + f"Sub_box_{tag}")

    along_w = box_last(x, w, k2, "w")
    t = g.op("Transpose", [along_w], prefix + "Transpose_hlast", perm=[0, 1, 3, 2])
    along_h = box_last(t, h, k1, "h")
    back = g.op("Transpose", [along_h], prefix + "Transpose_back", perm=[0, 1, 3, 2])
    area = g.op("Cast", [g.op("Mul", [k1, k2], prefix + "Mul_area")], prefix + "Cast_area", to=TensorProto.FLOAT)
    mean = g.op("Div", [back, area], prefix + "Div_mean")
    # TLC split of the k-1 missing rows/cols: top/left (k-1)//2, the rest bottom/right.
    two, one = g.const([2]), g.const([1])
    k1m, k2m = g.op("Sub", [k1, one], prefix + "Sub_k1m"), g.op("Sub", [k2, one], prefix + "Sub_k2m")
    top, left = g.op("Div", [k1m, two], prefix + "Div_top"), g.op("Div", [k2m, two], prefix + "Div_left")
    bottom, right = g.op("Sub", [k1m, top], prefix + "Sub_bottom"), g.op("Sub", [k2m, left], prefix + "Sub_right")
    zeros = g.const([0, 0])
    pads = g.op("Concat", [zeros, top, left, zeros, bottom, right], prefix + "Concat_pads", axis=0)
    return g.op("Pad", [mean, pads], prefix + "Pad_edge", mode="edge")


def _model(g: _G, inp="input", out="output", extra_opsets=(), c_in=3) -> onnx.ModelProto:
    graph = helper.make_graph(
        g.nodes, "tlc_test",
        [helper.make_tensor_value_info(inp, TensorProto.FLOAT, ["N", c_in, "H", "W"])],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", c_in, "H", "W"])],
        initializer=g.inits)
    opsets = [helper.make_opsetid("", OPSET)] + [helper.make_opsetid(d, 1) for d in extra_opsets]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def tlc_net(plugin: bool = False) -> onnx.ModelProto:
    """input -> Conv(3→4) -> x * local_mean(x) -> Conv(4→3) -> + input -> output."""
    rng = np.random.default_rng(0)
    g = _G()
    w1 = g.const(rng.normal(0, 0.3, (4, 3, 3, 3)), np.float32, "w")
    w2 = g.const(rng.normal(0, 0.3, (3, 4, 3, 3)), np.float32, "w")
    feat = g.op("Conv", ["input", w1], "/body/conv1/Conv", pads=[1, 1, 1, 1])
    if plugin:
        mean = g.op("TLCLocalMean", [feat], "/body/gap/TLCLocalMean", domain="tlc_export", window=list(WINDOW),
                    plugin_namespace="tlc_export", plugin_version="1")
    else:
        mean = _local_mean(g, feat)
    gated = g.op("Mul", [feat, mean], "/body/Mul")
    res = g.op("Conv", [gated, w2], "/body/conv2/Conv", pads=[1, 1, 1, 1])
    g.nodes.append(helper.make_node("Add", [res, "input"], ["output"], name="/body/Add"))
    return _model(g, extra_opsets=("tlc_export",) if plugin else ())


def local_mean_reference(x: np.ndarray, window=WINDOW) -> np.ndarray:
    n, c, h, w = x.shape
    k1, k2 = min(h, window[0]), min(w, window[1])
    valid = np.zeros((n, c, h - k1 + 1, w - k2 + 1), dtype=np.float64)
    for i in range(h - k1 + 1):
        for j in range(w - k2 + 1):
            valid[:, :, i, j] = x[:, :, i:i + k1, j:j + k2].mean(axis=(2, 3))
    top, left = (k1 - 1) // 2, (k2 - 1) // 2
    return np.pad(valid, ((0, 0), (0, 0), (top, k1 - 1 - top), (left, k2 - 1 - left)), mode="edge")


@pytest.fixture(scope="module")
def net_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("net") / "net.tlc.onnx"
    onnx.checker.check_model(tlc_net(), full_check=True)
    onnx.save(tlc_net(), str(path))
    return path


def _reduce_mean_runtime_axes(g: _G, x: str) -> str:
    rank = g.op("Shape", [g.op("Shape", [x], "/bad/Shape")], "/bad/Rank")
    axes = g.op("Sub", [rank, g.const([1])], "/bad/Sub_axes")       # [rank-1]: computed at run time
    return g.op("ReduceMean", [x, axes], "/bad/ReduceMean_runtime_axes", keepdims=1)


# ------------------------------------------------------------------------------------------------
# The hand-built TLC subgraph is what the converter emits: check it runs and computes TLC's local mean.
# ------------------------------------------------------------------------------------------------
def test_hand_built_local_mean_matches_reference(tmp_path):
    g = _G()
    mean = _local_mean(g, "input")
    g.nodes.append(helper.make_node("Identity", [mean], ["output"], name="/out"))
    path = tmp_path / "lm.onnx"
    onnx.save(_model(g), str(path))
    sess = build_ort_session(path)
    for shape in [(1, 3, 9, 7), (2, 3, 3, 5)]:   # windows clamp to the map when it is smaller
        x = np.random.default_rng(1).normal(size=shape).astype(np.float32)
        got = sess.run(None, {"input": x})[0]
        np.testing.assert_allclose(got, local_mean_reference(x), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# trtcheck
# ------------------------------------------------------------------------------------------------
def test_checker_passes_standard_tlc_graph(net_path):
    assert check_tensorrt_compat(net_path) == []
    assert check_tensorrt_compat(onnx.load(str(net_path))) == []


def test_checker_accepts_plugin_nodes_and_types_through_them():
    model = tlc_net(plugin=True)
    assert check_tensorrt_compat(model) == []
    types, _ = infer_tensor_types(model)
    assert types["/body/Mul_out"] == TensorProto.FLOAT   # typed past the plugin node
    # Without the plugin ops accepted, the node is an unknown custom op.
    v = check_tensorrt_compat(model, plugin_ops=set())
    assert [(x.node, x.op) for x in v] == [("/body/gap/TLCLocalMean", "tlc_export::TLCLocalMean")]


def test_checker_flags_planted_problems():
    model = tlc_net()
    g = _G()
    g.nodes, g.inits = list(model.graph.node), list(model.graph.initializer)
    g.n = 1000
    feat = "/body/conv1/Conv_out"
    # an op the table marks unsupported
    g.nodes.append(helper.make_node("Col2Im", [feat, g.const([4, 4]), g.const([2, 2])], ["col2im_out"],
                                    name="/bad/Col2Im"))
    # a custom-domain node that is not a tlc-export plugin
    g.nodes.append(helper.make_node("Frobnicate", [feat], ["frob_out"], name="/bad/Frobnicate",
                                    domain="com.example"))
    # a CumSum on another axis than the TLC ones (axis 3)
    g.op("CumSum", [feat, g.const(2)], "/bad/CumSum_axis2")
    # ReduceMean whose axes are computed at run time
    _reduce_mean_runtime_axes(g, feat)
    # a CumSum whose axis is computed at run time
    g.op("CumSum", [feat, g.op("Squeeze", [g.op("Shape", [feat], "/bad/Shape2", start=0, end=1)], "/bad/Sq")],
         "/bad/CumSum_runtime_axis")
    # a data tensor of a type TensorRT lacks (double)
    dbl = g.op("Cast", [feat], "/bad/Cast_double", to=TensorProto.DOUBLE)
    g.op("Relu", [dbl], "/bad/Relu_double")
    # pooling with dilations and a huge window
    g.op("AveragePool", [feat], "/bad/AveragePool_dilated", kernel_shape=[3, 3], dilations=[2, 2])
    g.op("AveragePool", [feat], "/bad/AveragePool_huge", kernel_shape=[400, 400])
    model = _model(g, extra_opsets=("com.example",))

    violations = check_tensorrt_compat(model)
    by_node = {}
    for v in violations:
        by_node.setdefault(v.node, []).append(v)
    assert set(by_node) == {
        "/bad/Col2Im", "/bad/Frobnicate", "/bad/CumSum_axis2", "/bad/ReduceMean_runtime_axes",
        "/bad/CumSum_runtime_axis", "/bad/Cast_double", "/bad/Relu_double", "/bad/AveragePool_dilated",
        "/bad/AveragePool_huge"}, violations
    assert by_node["/bad/Col2Im"][0].op == "Col2Im" and "not supported" in by_node["/bad/Col2Im"][0].reason
    assert by_node["/bad/Frobnicate"][0].op == "com.example::Frobnicate"
    assert "plugin" in by_node["/bad/Frobnicate"][0].reason
    assert "onnx-tensorrt#1034" in by_node["/bad/CumSum_axis2"][0].reason
    assert "axes" in by_node["/bad/ReduceMean_runtime_axes"][0].reason
    assert "build-time constant" in by_node["/bad/CumSum_runtime_axis"][0].reason
    assert "FLOAT64" in by_node["/bad/Relu_double"][0].reason or "DOUBLE" in by_node["/bad/Relu_double"][0].reason
    assert "dilations" in by_node["/bad/AveragePool_dilated"][0].reason
    assert "onnx-tensorrt#937" in by_node["/bad/AveragePool_huge"][0].reason
    for v in violations:   # one line each, "node: op: reason"
        assert "\n" not in str(v) and str(v).startswith(f"{v.node}: {v.op}: ")
    # The CumSum rule is the >= 10.8 bug: an older target does not report it.
    older = {v.node for v in check_tensorrt_compat(model, trt_version="10.7")}
    assert "/bad/CumSum_axis2" not in older and "/bad/Col2Im" in older


def test_checker_pad_slice_axes_rules_depend_on_version():
    g = _G()
    axes = g.op("Sub", [g.op("Shape", ["input"], "/x/Shape", start=0, end=1), g.const([-2])], "/x/axes")
    g.op("Slice", ["input", g.const([0]), g.const([2]), axes], "/x/Slice_runtime_axes")
    g.nodes.append(helper.make_node("Identity", ["input"], ["output"], name="/x/Id"))
    model = _model(g)
    assert [v.node for v in check_tensorrt_compat(model, trt_version="10.2")] == ["/x/Slice_runtime_axes"]
    assert check_tensorrt_compat(model, trt_version="10.8") == []


# ------------------------------------------------------------------------------------------------
# tlc-export check CLI
# ------------------------------------------------------------------------------------------------
def _run_check(path, capsys, **kw):
    args = argparse.Namespace(model=str(path), target="tensorrt", trt_version=None, plugin_op=[], **kw)
    code = check_cmd.run(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_check_cli_exit_codes(net_path, tmp_path, capsys):
    code, out, err = _run_check(net_path, capsys)
    assert code == 0 and out.startswith("OK: ") and err == ""

    g = _G()
    feat = _reduce_mean_runtime_axes(g, "input")
    g.nodes.append(helper.make_node("Col2Im", ["input", g.const([4, 4]), g.const([2, 2])], ["c"], name="/bad/Col2Im"))
    g.nodes.append(helper.make_node("Mul", ["input", feat], ["output"], name="/out/Mul"))
    bad = tmp_path / "bad.onnx"
    onnx.save(_model(g), str(bad))
    code, out, err = _run_check(bad, capsys)
    lines = out.strip().splitlines()
    assert code == 1
    assert any(l.startswith("/bad/ReduceMean_runtime_axes: ReduceMean: ") for l in lines)
    assert any(l.startswith("/bad/Col2Im: Col2Im: ") for l in lines)
    assert lines[-1].startswith("FAIL: ") and "2 violation(s)" in lines[-1]

    code, out, err = _run_check(tmp_path / "missing.onnx", capsys)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no such file" in err

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07garbage\xff\xfe not a protobuf" * 3)
    code, out, err = _run_check(corrupt, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a valid ONNX model" in err

    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    code, out, err = _run_check(empty, capsys)
    assert code == 2 and "not a valid ONNX model" in err


def test_check_module_entry_point(net_path):
    proc = subprocess.run([sys.executable, "-m", "tlc_export.commands.check", "--target", "tensorrt",
                           str(net_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK: ")


# ------------------------------------------------------------------------------------------------
# Triton repositories
# ------------------------------------------------------------------------------------------------
def _parse_config(path: Path):
    model_config_pb2 = pytest.importorskip(
        "tritonclient.grpc.model_config_pb2", reason="tritonclient[grpc] is not installed")
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_triton_onnx_repo(net_path, tmp_path):
    repo = tmp_path / "models"
    model_dir = write_triton_repo(repo, "restore", onnx_path=net_path)
    assert model_dir == repo / "restore"
    assert (model_dir / "1" / "model.onnx").read_bytes() == net_path.read_bytes()
    cfg = _parse_config(model_dir / "config.pbtxt")
    assert cfg.name == "restore" and cfg.platform == "onnxruntime_onnx" and cfg.backend == "onnxruntime"
    assert cfg.max_batch_size == 1                        # dynamic N -> batching, N not in dims
    assert [(i.name, list(i.dims)) for i in cfg.input] == [("input", [3, -1, -1])]
    assert [(o.name, list(o.dims)) for o in cfg.output] == [("output", [3, -1, -1])]
    from tritonclient.grpc import model_config_pb2

    assert cfg.input[0].data_type == model_config_pb2.TYPE_FP32
    assert "tritonserver --model-repository=" in (model_dir / "README.txt").read_text()
    assert [p.name for p in repo.iterdir()] == ["restore"]     # no temp dirs left

    with pytest.raises(UserError, match="already exists"):
        write_triton_repo(repo, "restore", onnx_path=net_path)
    write_triton_repo(repo, "restore", onnx_path=net_path, max_batch_size=4, overwrite=True)
    assert _parse_config(model_dir / "config.pbtxt").max_batch_size == 4
    assert [p.name for p in repo.iterdir()] == ["restore"]


def test_triton_plan_repo_with_plugin(tmp_path, net_path):
    plan = tmp_path / "net.plan"
    plan.write_bytes(b"not really an engine")
    lib = tmp_path / "libtlc_plugins.so"
    lib.write_bytes(b"")
    repo = tmp_path / "models"
    # fixed batch 1: max_batch_size 0 and the batch dim in dims
    model_dir = write_triton_repo(repo, "restore_trt", plan_path=plan, plugin_library=lib,
                                  inputs=[("input", (1, 3, -1, -1), "fp32")],
                                  outputs=[{"name": "output", "dims": [1, 3, -1, -1], "dtype": "fp32"}])
    assert (model_dir / "1" / "model.plan").read_bytes() == plan.read_bytes()
    cfg = _parse_config(model_dir / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.backend == "tensorrt" and cfg.max_batch_size == 0
    assert list(cfg.input[0].dims) == [1, 3, -1, -1] and list(cfg.output[0].dims) == [1, 3, -1, -1]
    assert not cfg.HasField("model_operations")           # not read by the TensorRT backend
    readme = (model_dir / "README.txt").read_text()
    assert f'--backend-config=tensorrt,plugins="{lib.resolve()}"' in readme
    assert f"LD_PRELOAD={lib.resolve()}" in readme

    # I/O from the ONNX the plan was built from; dynamic batch
    model_dir = write_triton_repo(repo, "restore_trt_b", plan_path=plan, onnx_path=net_path, max_batch_size=2)
    cfg = _parse_config(model_dir / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == 2 and list(cfg.input[0].dims) == [3, -1, -1]
    assert (model_dir / "1" / "model.plan").exists() and not (model_dir / "1" / "model.onnx").exists()

    with pytest.raises(UserError, match="fixed"):
        write_triton_repo(repo, "bad", plan_path=plan, max_batch_size=4,
                          inputs=[("input", (1, 3, -1, -1), "fp32")], outputs=[("output", (1, 3, -1, -1))])
    with pytest.raises(UserError, match="inputs="):
        write_triton_repo(repo, "bad", plan_path=plan)


def test_triton_onnx_repo_with_custom_nodes_needs_an_ort_library(tmp_path):
    path = tmp_path / "plugin.tlc.onnx"
    onnx.save(tlc_net(plugin=True), str(path))
    with pytest.raises(UserError, match="custom-domain nodes"):
        write_triton_repo(tmp_path / "models", "p", onnx_path=path)
    lib = tmp_path / "libtlc_ort_ops.so"
    lib.write_bytes(b"")
    model_dir = write_triton_repo(tmp_path / "models", "p", onnx_path=path, plugin_library=lib)
    cfg = _parse_config(model_dir / "config.pbtxt")
    assert list(cfg.model_operations.op_library_filename) == [str(lib.resolve())]


def test_triton_repo_is_atomic(tmp_path, net_path, monkeypatch):
    import tlc_export.serve as serve

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(serve, "_readme", boom)
    repo = tmp_path / "models"
    with pytest.raises(OSError, match="disk full"):
        write_triton_repo(repo, "restore", onnx_path=net_path)
    assert list(repo.iterdir()) == []


# ------------------------------------------------------------------------------------------------
# Reduced precision
# ------------------------------------------------------------------------------------------------
def _elem_types(model):
    types = {vi.name: vi.type.tensor_type.elem_type for vi in
             list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    types.update({t.name: t.data_type for t in model.graph.initializer})
    return types


@pytest.mark.parametrize("dtype,rtype", [("fp16", TensorProto.FLOAT16), ("bf16", TensorProto.BFLOAT16)])
def test_reduced_precision_keeps_tlc_fp32(net_path, tmp_path, dtype, rtype):
    reduced = to_reduced_precision_onnx(net_path, dtype)
    onnx.checker.check_model(reduced, full_check=True)
    types = _elem_types(reduced)
    tlc = [n for n in reduced.graph.node if "/tlc/" in n.name]
    stats = [n for n in tlc if n.op_type in ("CumSum", "Div", "Sub", "Pad", "Slice", "Transpose")]
    assert {n.op_type for n in stats} >= {"CumSum", "Div", "Sub"}
    for n in stats:
        for t in list(n.input[:1]) + list(n.output):
            assert types[t] in (TensorProto.FLOAT, TensorProto.INT64), (n.name, t, types[t])
        if n.op_type in ("CumSum", "Div") and types[n.output[0]] != TensorProto.INT64:
            assert types[n.output[0]] == TensorProto.FLOAT
    # the network around them is reduced; Casts mark the boundary and the I/O stays float32
    mul = next(n for n in reduced.graph.node if n.name == "/body/Mul")
    assert types[mul.output[0]] == rtype
    convs = [n for n in reduced.graph.node if n.op_type == "Conv"]
    conv_type = rtype if dtype == "fp16" else TensorProto.FLOAT   # ONNX Conv admits bfloat16 from opset 22
    assert all(types[n.input[1]] == conv_type and types[n.output[0]] == conv_type for n in convs)
    casts_in = [n for n in reduced.graph.node if n.op_type == "Cast" and "/tlc/Cast_in_" in n.name]
    assert bool(casts_in) == (conv_type == rtype)   # the Conv feeding the TLC island is reduced
    assert all(helper.get_attribute_value(a) == TensorProto.FLOAT
                            for n in casts_in for a in n.attribute if a.name == "to")
    assert types["input"] == TensorProto.FLOAT and types["output"] == TensorProto.FLOAT
    assert check_tensorrt_compat(reduced) == []
    if dtype == "fp16":
        # ONNX Runtime CPU runs it (it falls back to float for fp16 ops it lacks) and matches fp32
        path = tmp_path / "net.fp16.onnx"
        onnx.save(reduced, str(path))
        x = np.random.default_rng(2).uniform(0, 1, (1, 3, 12, 10)).astype(np.float32)
        ref = build_ort_session(net_path).run(None, {"input": x})[0]
        got = build_ort_session(path).run(None, {"input": x})[0]
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, ref, atol=2e-2, rtol=2e-2)


def test_bf16_for_tensorrt_ignores_onnx_opset_type_limits(net_path):
    reduced = to_reduced_precision_onnx(net_path, "bf16", respect_opset=False)
    types, _ = infer_tensor_types(reduced)
    convs = [n for n in reduced.graph.node if n.op_type == "Conv"]
    assert convs and all(types[n.input[1]] == TensorProto.BFLOAT16 for n in convs)
    cumsums = [n for n in reduced.graph.node if n.op_type == "CumSum"]
    assert cumsums and all(types[n.output[0]] == TensorProto.FLOAT for n in cumsums)
    assert check_tensorrt_compat(reduced) == []


def test_reduced_precision_plugin_nodes_stay_fp32():
    reduced = to_reduced_precision_onnx(tlc_net(plugin=True), "fp16")
    plugin = next(n for n in reduced.graph.node if n.op_type == "TLCLocalMean")
    types, _ = infer_tensor_types(reduced)
    assert types[plugin.input[0]] == TensorProto.FLOAT and types[plugin.output[0]] == TensorProto.FLOAT
    assert check_tensorrt_compat(reduced) == []


def test_reduced_precision_bad_dtype(net_path):
    with pytest.raises(UserError, match="fp16, bf16"):
        to_reduced_precision_onnx(net_path, "int8")


# ------------------------------------------------------------------------------------------------
# Builders
# ------------------------------------------------------------------------------------------------
def test_build_ort_session(net_path):
    sess = build_ort_session(net_path, providers=["cpu"], threads=1)
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert build_ort_session(net_path, providers="auto").get_providers()[-1] == "CPUExecutionProvider"
    with pytest.raises(UserError, match="not available"):
        build_ort_session(net_path, providers=["NoSuchExecutionProvider"])
    with pytest.raises(UserError, match="no such file"):
        build_ort_session(net_path.parent / "nope.onnx")


def _have_tensorrt() -> bool:
    try:
        import importlib

        importlib.import_module("tensorrt")
    except Exception:
        return False
    return True


def test_build_trt_engine_without_tensorrt_is_one_line_user_error(net_path, tmp_path):
    if _have_tensorrt():
        pytest.skip("TensorRT is installed: the missing-TensorRT path cannot be exercised")
    with pytest.raises(UserError) as info:
        build_trt_engine(net_path, tmp_path / "net.plan", precision="fp16", calib=(16, 16))
    assert "TensorRT is not installed" in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "net.plan").exists()
    with pytest.raises(UserError, match="precision"):
        build_trt_engine(net_path, tmp_path / "net.plan", precision="int4")


class _FakeTrt:
    """Just enough of the tensorrt module's surface for the code paths that need no GPU."""

    __version__ = "10.8.0"
    float32, float16, bfloat16, int64 = "float32", "float16", "bfloat16", "int64"

    class LayerType:
        CONSTANT, SHAPE, CUMULATIVE, ELEMENTWISE, CAST = "constant", "shape", "cumulative", "elementwise", "cast"

    class Logger:
        ERROR = 1

        def __init__(self, level=None):
            pass

    class Builder:
        def __init__(self, logger):
            raise TypeError("pybind11::init(): factory function returned nullptr")


class _FakeLayer:
    def __init__(self, name, type_, out_dtypes):
        self.name, self.type, self._outs = name, type_, [type("T", (), {"dtype": d})() for d in out_dtypes]
        self.precision, self.output_types = None, {}

    num_outputs = property(lambda self: len(self._outs))

    def get_output(self, i):
        return self._outs[i]

    def set_output_type(self, i, dtype):
        self.output_types[i] = dtype


def test_weak_typing_marks_only_floating_tlc_layers_fp32():
    from tlc_export.build import _mark_tlc_fp32

    t = _FakeTrt
    layers = [_FakeLayer(P + "CumSum_w", t.LayerType.CUMULATIVE, [t.float32]),
              _FakeLayer(P + "Div_mean", t.LayerType.ELEMENTWISE, [t.float16]),
              _FakeLayer(P + "Shape_h", t.LayerType.SHAPE, [t.int64]),
              _FakeLayer(P + "Min_k1", t.LayerType.ELEMENTWISE, [t.int64]),
              _FakeLayer(P + "Cast_area", t.LayerType.CAST, [t.float32]),
              _FakeLayer("/body/conv1/Conv", t.LayerType.ELEMENTWISE, [t.float32])]
    network = type("N", (), {"num_layers": len(layers), "get_layer": lambda self, i: layers[i]})()
    assert _mark_tlc_fp32(network, t) == 3
    assert [l.precision for l in layers] == [t.float32, t.float32, None, None, t.float32, None]
    assert layers[1].output_types == {0: t.float32} and layers[5].output_types == {}


def test_build_trt_engine_without_gpu_is_one_line_user_error(net_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTrt)
    with pytest.raises(UserError) as info:
        build_trt_engine(net_path, tmp_path / "net.plan", precision="fp16", calib=(16, 16))
    assert "needs an NVIDIA GPU" in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("precision,strongly_typed", [("fp32", None), ("fp16", None), ("fp16", True)])
def test_build_trt_engine_matches_ort(net_path, tmp_path, precision, strongly_typed):
    if not _have_tensorrt():
        pytest.skip("TensorRT is not installed (no GPU on this machine)")
    from polygraphy.backend.common import BytesFromPath
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    plan = build_trt_engine(net_path, tmp_path / "net.plan", precision=precision, calib=(16, 16),
                            strongly_typed=strongly_typed)
    x = np.random.default_rng(3).uniform(0, 1, (1, 3, 24, 20)).astype(np.float32)
    ref = build_ort_session(net_path).run(None, {"input": x})[0]
    with TrtRunner(EngineFromBytes(BytesFromPath(str(plan)))) as runner:
        got = runner.infer({"input": x})["output"]
    tol = 1e-4 if precision == "fp32" else 2e-2
    np.testing.assert_allclose(np.asarray(got, dtype=np.float32), ref, atol=tol, rtol=tol)
