"""Will TensorRT's ONNX parser take this graph? A static check that needs no TensorRT and no GPU.

Every node is looked up in the TensorRT ONNX parser's operator table (``data/tensorrt-onnx-operators.json``,
transcribed from onnx/onnx-tensorrt ``docs/operators.md`` at 10.15 GA). A node is reported when

* its op is not in the table or the table marks it unsupported;
* a data input or output has an element type the table does not list for that op (types come from ONNX
  shape inference; TensorRT 10 takes INT64 shape tensors natively, so INT64 is fine wherever the table
  lists it, and the parameter inputs of an op — Pad's ``pads``, Slice's ``starts``/``ends``, a Reshape
  shape, CumSum's ``axis`` — are not data and are not type-checked);
* a restriction the table states can be checked from the graph's structure and does not hold:
  ``axes`` of the Reduce* ops must be an initializer, CumSum's ``axis`` a build-time constant,
  Unsqueeze/Squeeze ``axes`` a constant, AveragePool/MaxPool/LpPool ``dilations`` all ones and at most
  3-D (1-D pools are unsqueezed to 2-D by the importer), MaxPool's ``Indices`` output unused, Dropout's
  ``is_training`` a false initializer, ScatterND ``reduction`` none, TopK ``sorted`` 1 and K < 3840,
  Resize modes, Constant's string/sparse values, LayerNormalization's extra outputs; for TensorRT
  older than 10.4 / 10.3 the ``axes`` input of Pad / Slice must be constant;
* it is a custom-domain node that is not one of the plugin ops (default: the tlc_export plugins
  ``TLCLocalMean`` and ``TLCLocalInstanceNorm``), since TensorRT would need a registered plugin for it;
* TensorRT >= 10.8 CumSum bug (onnx-tensorrt#1034 / NVIDIA/TensorRT#4551): CumSums on *different* axes
  of one network behave as if on one axis, so more than one distinct CumSum axis in a graph is reported
  (every CumSum off the most common axis); CumSums that differ only in ``reverse`` give identical
  outputs (NVIDIA/TensorRT#4513), so mixed ``reverse`` values on one axis are reported too.

Window volumes of AveragePool/MaxPool of 100 000 or more are reported as well: TensorRT 8.x crashes on
them (onnx-tensorrt#937, open) and no 10.x source lifts the limit.
"""
from __future__ import annotations

import copy
import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from .errors import UserError

DEFAULT_PLUGIN_OPS = frozenset({"TLCLocalMean", "TLCLocalInstanceNorm"})
DEFAULT_TRT_VERSION = "10.8"
TABLE_RESOURCE = "data/tensorrt-onnx-operators.json"

# ONNX element type -> name used in the TensorRT operator table.
ONNX_TO_TRT_TYPE = {
    TensorProto.FLOAT: "FP32",
    TensorProto.FLOAT16: "FP16",
    TensorProto.BFLOAT16: "BF16",
    TensorProto.INT32: "INT32",
    TensorProto.INT64: "INT64",
    TensorProto.BOOL: "BOOL",
    TensorProto.INT8: "INT8",
    TensorProto.UINT8: "UINT8",
    TensorProto.FLOAT8E4M3FN: "FP8",
    TensorProto.INT4: "INT4",
}
if hasattr(TensorProto, "FLOAT4E2M1"):
    ONNX_TO_TRT_TYPE[TensorProto.FLOAT4E2M1] = "FP4"

# Ops whose every input is a data tensor of the op's type (elementwise, variadic, matmul-like).
_ALL_INPUTS_DATA = {
    "Add", "Sub", "Mul", "Div", "Pow", "Mod", "Min", "Max", "Sum", "Mean", "Concat", "Equal", "Less",
    "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Range", "Einsum", "MatMul", "Gemm",
    "PRelu", "BitShift",
}
_DATA_INPUTS = {"Where": (1, 2), "ConstantOfShape": (), "Constant": ()}
# Ops whose output type is fixed by the op (indices, shapes, masks), not the table's data type.
_OUTPUT_NOT_DATA = {
    "Shape", "Size", "NonZero", "ArgMax", "ArgMin", "Equal", "Less", "Greater", "LessOrEqual",
    "GreaterOrEqual", "IsNaN", "IsInf", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
}
# Reduce ops: axes moved from attribute to input 1 (ReduceSum at opset 13, the others at opset 18).
_REDUCE_OPS = {
    "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
    "ReduceProd", "ReduceSum", "ReduceSumSquare",
}
_POOL_OPS = {"AveragePool", "MaxPool", "LpPool"}
_POOL_VOLUME_LIMIT = 100_000
_RESIZE_COORD_MODES = {"half_pixel", "pytorch_half_pixel", "tf_half_pixel_for_nn", "asymmetric", "align_corners"}
_RESIZE_NEAREST_MODES = {"floor", "ceil", "round_prefer_floor", "round_prefer_ceil"}


@dataclass(frozen=True)
class Violation:
    """One node TensorRT would reject (or mis-compute), with a one-line reason."""

    node: str
    op: str
    reason: str

    def __str__(self) -> str:
        return f"{self.node}: {self.op}: {self.reason}"

    @property
    def node_name(self) -> str:
        return self.node

    @property
    def op_type(self) -> str:
        return self.op


@dataclass
class CheckReport:
    violations: list[Violation] = field(default_factory=list)
    nodes_checked: int = 0
    untyped_tensors: int = 0      # data tensors whose type shape inference could not tell
    table_source: str = ""
    trt_version: str = DEFAULT_TRT_VERSION


@lru_cache(maxsize=1)
def load_operator_table() -> dict:
    """The TensorRT ONNX operator table shipped as package data: ``{"source": ..., "operators": {...}}``."""
    try:
        text = resources.files("tlc_export").joinpath(TABLE_RESOURCE).read_text(encoding="utf-8")
    except (FileNotFoundError, ModuleNotFoundError) as err:  # pragma: no cover - packaging error
        raise UserError(f"the TensorRT operator table {TABLE_RESOURCE} is missing from the tlc_export "
                        f"package; reinstall tlc-export") from err
    return json.loads(text)


def _version_tuple(version) -> tuple[int, int]:
    if isinstance(version, tuple):
        return (int(version[0]), int(version[1]) if len(version) > 1 else 0)
    parts = str(version).split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        raise UserError(f"bad TensorRT version {version!r}; write it like 10.8") from None


def load_model(model: onnx.ModelProto | str | Path) -> onnx.ModelProto:
    """A ModelProto from a proto or a path (external weights are not loaded: not needed to check)."""
    if isinstance(model, onnx.ModelProto):
        return model
    path = Path(model)
    if not path.is_file():
        raise UserError(f"cannot read {path}: no such file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as err:  # DecodeError, OSError, ...
        first = (str(err).splitlines() or [type(err).__name__])[0]
        raise UserError(f"cannot read {path}: not a valid ONNX model ({first})") from None
    if not proto.HasField("graph") or not proto.ir_version:
        raise UserError(f"cannot read {path}: not a valid ONNX model (no graph)")
    return proto


class _Checker:
    def __init__(self, model: onnx.ModelProto, plugin_ops: set[str], trt_version):
        table = load_operator_table()
        self.ops: dict = table["operators"]
        self.source: str = table.get("source", "")
        self.model = model
        self.plugin_ops = set(plugin_ops)
        self.trt = _version_tuple(trt_version)
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.report = CheckReport(table_source=self.source, trt_version="%d.%d" % self.trt)
        self.ranks: dict[str, int] = {}
        self.types = self._infer_types()
        self.consts: set[str] = set()   # build-time constants: initializers and Constant outputs
        self.const_values: dict[str, np.ndarray] = {}
        self.consumed: set[str] = set()
        self._index_graph(model.graph)

    # ---- graph facts -------------------------------------------------------------------------
    def _infer_types(self) -> dict[str, int]:
        types, ranks = infer_tensor_types(self.model, self.plugin_ops)
        self.ranks.update(ranks)
        return types

    def _index_graph(self, graph: onnx.GraphProto):
        for init in graph.initializer:
            self.consts.add(init.name)
            if init.data_location != TensorProto.EXTERNAL and _small(init):
                self.const_values[init.name] = numpy_helper.to_array(init)
        for node in graph.node:
            self.consumed.update(i for i in node.input if i)
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                self.consts.update(node.output)
                for attr in node.attribute:
                    if attr.name == "value" and _small(attr.t):
                        self.const_values[node.output[0]] = numpy_helper.to_array(attr.t)
                    elif attr.name in ("value_int", "value_ints"):
                        self.const_values[node.output[0]] = np.array(
                            attr.i if attr.name == "value_int" else list(attr.ints), dtype=np.int64)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    self._index_graph(sub)
        self.consumed.update(o.name for o in graph.output)

    # ---- checks ------------------------------------------------------------------------------
    def run(self) -> CheckReport:
        cumsums: list[tuple[onnx.NodeProto, str, int | None, int]] = []
        self._check_graph(self.model.graph, cumsums, "")
        self._check_cumsum_axes(cumsums)
        return self.report

    def flag(self, node: onnx.NodeProto, name: str, reason: str):
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}::{node.op_type}"
        self.report.violations.append(Violation(name, op, reason))

    def _check_graph(self, graph: onnx.GraphProto, cumsums: list, scope: str):
        for index, node in enumerate(graph.node):
            name = node.name or f"{scope}<unnamed {node.op_type} #{index} -> {node.output[0] if node.output else ''}>"
            self.report.nodes_checked += 1
            self._check_node(node, name, cumsums)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    self._check_graph(sub, cumsums, f"{name}/{attr.name}/")

    def _check_node(self, node: onnx.NodeProto, name: str, cumsums: list):
        op = node.op_type
        if node.domain not in ("", "ai.onnx") or op not in self.ops:
            if (node.domain, op) in self.functions and op not in self.plugin_ops:
                # TensorRT's parser imports model-local functions by inlining their bodies.
                body = self.functions[(node.domain, op)]
                for i, inner in enumerate(body.node):
                    self.report.nodes_checked += 1
                    self._check_node(inner, f"{name}/{inner.name or f'{inner.op_type}_{i}'}", cumsums)
                return
        if node.domain not in ("", "ai.onnx"):
            if op in self.plugin_ops:
                return
            self.flag(node, name, f"custom-domain op with no TensorRT importer: TensorRT needs a registered "
                                  f"plugin named {op!r} (not one of the tlc-export plugins)")
            return
        entry = self.ops.get(op)
        if entry is None:
            self.flag(node, name, "op is not in the TensorRT ONNX parser's operator table")
            return
        if not entry["supported"]:
            self.flag(node, name, "op is not supported by the TensorRT ONNX parser")
            return
        self._check_types(node, name, entry["types"])
        self._check_restrictions(node, name, cumsums)

    def _data_inputs(self, node: onnx.NodeProto) -> list[str]:
        op = node.op_type
        if op in _ALL_INPUTS_DATA:
            return [i for i in node.input if i]
        if op in _DATA_INPUTS:
            return [node.input[i] for i in _DATA_INPUTS[op] if i < len(node.input) and node.input[i]]
        return [node.input[0]] if node.input and node.input[0] else []

    def _check_types(self, node: onnx.NodeProto, name: str, allowed: list[str]):
        tensors = [("input", t) for t in self._data_inputs(node)]
        if node.op_type not in _OUTPUT_NOT_DATA and node.output and node.output[0]:
            tensors.append(("output", node.output[0]))
        for role, tensor in tensors:
            elem = self.types.get(tensor)
            if elem is None:
                self.report.untyped_tensors += 1
                continue
            if elem == TensorProto.DOUBLE and tensor in self.consts:
                continue  # the parser casts double weights down to float
            trt_type = ONNX_TO_TRT_TYPE.get(elem, TensorProto.DataType.Name(elem))
            if trt_type not in allowed:
                self.flag(node, name, f"{role} {tensor!r} is {trt_type}; TensorRT's {node.op_type} takes "
                                      f"{', '.join(allowed) or 'no type'}")

    def _input(self, node: onnx.NodeProto, index: int) -> str:
        return node.input[index] if len(node.input) > index else ""

    def _require_constant_input(self, node: onnx.NodeProto, name: str, index: int, requirement: str) -> None:
        """Flag an optional input (axes, …) that is present but computed at run time."""
        tensor = self._input(node, index)
        if tensor and tensor not in self.consts:
            self.flag(node, name, f"axes input {tensor!r} is computed at run time; TensorRT {requirement}")

    def _check_restrictions(self, node: onnx.NodeProto, name: str, cumsums: list):
        op, attrs = node.op_type, {a.name: a for a in node.attribute}
        if op in _REDUCE_OPS:
            self._require_constant_input(node, name, 1, "requires `axes` to be an initializer")
        elif op == "CumSum":
            axis_name = self._input(node, 1)
            if axis_name not in self.consts:
                self.flag(node, name, f"axis input {axis_name!r} is computed at run time; TensorRT requires "
                                      f"`axis` to be a build-time constant (fold constants first)")
                return
            value = self.const_values.get(axis_name)
            axis = int(np.asarray(value).reshape(-1)[0]) if value is not None and np.size(value) else None
            rank = self._rank(node.input[0])
            if axis is not None and axis < 0 and rank is not None:
                axis += rank
            reverse = attrs["reverse"].i if "reverse" in attrs else 0
            cumsums.append((node, name, axis, reverse))
        elif op in ("Unsqueeze", "Squeeze"):
            self._require_constant_input(node, name, 1, "requires `axes` to be resolvable to a constant")
        elif op in _POOL_OPS:
            kernel = list(attrs["kernel_shape"].ints) if "kernel_shape" in attrs else []
            dil = list(attrs["dilations"].ints) if "dilations" in attrs else []
            if len(kernel) > 3:
                self.flag(node, name, f"{len(kernel)}-D pooling; TensorRT pools 2-D or 3-D only")
            if any(d != 1 for d in dil):
                self.flag(node, name, f"dilations {dil}; TensorRT requires `dilations` empty or all ones")
            if op != "LpPool" and kernel and int(np.prod(kernel)) >= _POOL_VOLUME_LIMIT:
                self.flag(node, name, f"window {'x'.join(map(str, kernel))} has volume "
                                      f"{int(np.prod(kernel))} >= {_POOL_VOLUME_LIMIT}; TensorRT's pooling "
                                      f"crashes on such windows (onnx-tensorrt#937)")
            if op == "MaxPool" and len(node.output) > 1 and node.output[1] in self.consumed:
                self.flag(node, name, "the `Indices` output is used; TensorRT does not produce it")
        elif op == "Pad" and self.trt < (10, 4):
            self._require_constant_input(node, name, 3, f"{self.report.trt_version} requires Pad `axes` "
                                                        f"to be an initializer")
        elif op == "Slice" and self.trt < (10, 3):
            self._require_constant_input(node, name, 3, f"{self.report.trt_version} requires Slice `axes` "
                                                        f"to be an initializer")
        elif op == "Dropout":
            train = self._input(node, 2)
            if train:
                value = self.const_values.get(train)
                if train not in self.consts or value is None or bool(np.any(value)):
                    self.flag(node, name, "`is_training` must be an initializer that is False")
        elif op == "ScatterND":
            if "reduction" in attrs and attrs["reduction"].s.decode() != "none":
                self.flag(node, name, f"reduction {attrs['reduction'].s.decode()!r}; TensorRT supports "
                                      f"only `none`")
        elif op == "TopK":
            if "sorted" in attrs and attrs["sorted"].i != 1:
                self.flag(node, name, "`sorted` is 0; TensorRT requires sorted=1")
            k = self.const_values.get(self._input(node, 1))
            if k is not None and np.size(k) and int(np.asarray(k).reshape(-1)[0]) >= 3840:
                self.flag(node, name, "K >= 3840; TensorRT requires K < 3840")
        elif op == "Resize":
            self._check_resize(node, name, attrs)
        elif op == "Constant":
            bad = [a for a in ("sparse_value", "value_string", "value_strings") if a in attrs]
            if bad:
                self.flag(node, name, f"attribute `{bad[0]}` is not supported by TensorRT")
        elif op == "LayerNormalization":
            if any(o and o in self.consumed for o in node.output[1:]):
                self.flag(node, name, "Mean/InvStdDev outputs are used; TensorRT supports only output `Y`")
        elif op == "InstanceNormalization":
            kinds = {self.types.get(t) for t in node.input if t} - {None}
            if len(kinds) > 1:
                self.flag(node, name, "input, scale and bias have different types; TensorRT requires "
                                      "one type for all three")

    def _check_resize(self, node, name, attrs):
        def text(key, default):
            return attrs[key].s.decode() if key in attrs else default

        mode = text("mode", "nearest")
        if mode not in ("nearest", "linear"):
            self.flag(node, name, f"mode {mode!r}; TensorRT supports `nearest` and `linear`")
        coord = text("coordinate_transformation_mode", "half_pixel")
        if coord not in _RESIZE_COORD_MODES:
            self.flag(node, name, f"coordinate_transformation_mode {coord!r} is not supported by TensorRT")
        nearest = text("nearest_mode", "round_prefer_floor")
        if mode == "nearest" and nearest not in _RESIZE_NEAREST_MODES:
            self.flag(node, name, f"nearest_mode {nearest!r} is not supported by TensorRT")
        if "antialias" in attrs and attrs["antialias"].i:
            self.flag(node, name, "antialiasing is not supported by TensorRT")
        if text("keep_aspect_ratio_policy", "stretch") != "stretch":
            self.flag(node, name, "keep_aspect_ratio_policy must be `stretch` for TensorRT")

    def _rank(self, tensor: str) -> int | None:
        return self.ranks.get(tensor)

    def _check_cumsum_axes(self, cumsums: list):
        if self.trt < (10, 8) or len(cumsums) < 2:
            return
        axes = Counter(axis for _, _, axis, _ in cumsums)
        if len(axes) > 1:
            main = axes.most_common(1)[0][0]
            for node, name, axis, _ in cumsums:
                if axis != main:
                    self.flag(node, name, f"CumSum on axis {axis if axis is not None else '?'} while other "
                                          f"CumSums use axis {main}: TensorRT >= 10.8 computes CumSums on "
                                          f"different axes as if on one (onnx-tensorrt#1034)")
        for axis in axes:
            on_axis = [(n, nm, r) for n, nm, a, r in cumsums if a == axis]
            reverses = Counter(r for _, _, r in on_axis)
            if len(reverses) > 1:
                main_r = reverses.most_common(1)[0][0]
                for node, name, r in on_axis:
                    if r != main_r:
                        self.flag(node, name, f"CumSum reverse={r} while other CumSums on axis {axis} use "
                                              f"reverse={main_r}: TensorRT gives such CumSums identical "
                                              f"outputs (NVIDIA/TensorRT#4513)")


def infer_tensor_types(model: onnx.ModelProto, plugin_ops=DEFAULT_PLUGIN_OPS) -> tuple[dict[str, int], dict[str, int]]:
    """``({tensor: ONNX elem type}, {tensor: rank})`` from ONNX shape inference on a copy of ``model``.

    Plugin nodes (custom-domain ``plugin_ops``) have no ONNX schema; for inference they stand in as
    Identity of their first input, which is what they are type-wise (same type and shape as ``x``).
    Subgraphs are included. If inference fails the types written in the file are used.
    """
    probe = copy.deepcopy(model)
    for node in _all_nodes(probe.graph):
        if node.op_type in plugin_ops and node.domain not in ("", "ai.onnx") and node.input:
            inp, out = node.input[0], node.output[0]
            node.Clear()
            node.op_type, node.domain = "Identity", ""
            node.input.append(inp)
            node.output.append(out)
    try:
        probe = onnx.shape_inference.infer_shapes(probe, check_type=False, strict_mode=False)
    except Exception:  # inconsistent graph: fall back to the types written in the file
        probe = model
    types: dict[str, int] = {}
    ranks: dict[str, int] = {}

    def collect(graph: onnx.GraphProto):
        for vi in list(graph.input) + list(graph.output) + list(graph.value_info):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
                types[vi.name] = vi.type.tensor_type.elem_type
                if vi.type.tensor_type.HasField("shape"):
                    ranks[vi.name] = len(vi.type.tensor_type.shape.dim)
        for init in graph.initializer:
            types[init.name] = init.data_type
            ranks[init.name] = len(init.dims)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
                for attr in node.attribute:
                    if attr.name == "value":
                        types.setdefault(node.output[0], attr.t.data_type)
            for attr in node.attribute:
                for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                    collect(sub)

    collect(probe.graph)
    return types, ranks


def _small(tensor: TensorProto) -> bool:
    return int(np.prod(tensor.dims)) <= 64 if tensor.dims else True


def _all_nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _all_nodes(sub)


def check_tensorrt_report(model: onnx.ModelProto | str | Path, plugin_ops: set[str] | None = None,
                          trt_version=DEFAULT_TRT_VERSION) -> CheckReport:
    """Like :func:`check_tensorrt_compat`, with counts for a summary line."""
    proto = load_model(model)
    ops = DEFAULT_PLUGIN_OPS if plugin_ops is None else plugin_ops
    return _Checker(proto, set(ops), trt_version).run()


def check_tensorrt_compat(model: onnx.ModelProto | str | Path, plugin_ops: set[str] | None = None,
                          trt_version=DEFAULT_TRT_VERSION) -> list[Violation]:
    """Every node of ``model`` TensorRT's ONNX parser would reject or mis-compute; empty when clean.

    ``plugin_ops``: custom-domain op types accepted as TensorRT plugins (default: the tlc-export plugins
    TLCLocalMean and TLCLocalInstanceNorm). ``trt_version``: the TensorRT the engine will be built with
    (default 10.8, the oldest this project supports); it gates the version-specific rules.
    Raises :class:`UserError` when a path cannot be read as an ONNX model.
    """
    return check_tensorrt_report(model, plugin_ops, trt_version).violations
