"""Engine builders, in Polygraphy's style: an ONNX Runtime session and a TensorRT engine.

* :func:`build_ort_session` — ONNX Runtime, CPU by default; CUDA / TensorRT execution providers when
  asked for and available (``providers="auto"`` takes the best available).
* :func:`build_trt_engine` — TensorRT through Polygraphy's loaders (``NetworkFromOnnxPath``,
  ``CreateConfig``, ``Profile``, ``EngineFromNetwork``, ``SaveEngine``), imported lazily: this module
  imports without TensorRT, and a build without TensorRT or a GPU ends in one-line :class:`UserError`.

Reduced precision and the TLC statistics. An integral image sums up to H·W values, past FP16's 65504,
and no TensorRT document says CumSum accumulates in FP32; so the TLC subgraphs (every node the converter
adds has ``/tlc/`` in its name) stay FP32 in every build:

* TensorRT 10, weakly typed (default there): the FP16/BF16 builder flag, plus
  ``OBEY_PRECISION_CONSTRAINTS`` with ``layer.precision = float32`` (and FP32 output types) on every
  floating-point layer whose name contains ``/tlc/`` (the ONNX parser names layers after their nodes).
* TensorRT 11 (always strongly typed; the FP16 flag is gone) or ``strongly_typed=True`` on 10.x: the
  precision must be in the ONNX types, so the graph is first rewritten by
  :func:`to_reduced_precision_onnx`: weights and activations to FP16/BF16, the ``/tlc/`` nodes (and the
  plugin nodes) kept FP32 with Cast nodes on the boundary.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .errors import UserError
from .fileio import OutputSet, read_onnx
from .trtcheck import DEFAULT_PLUGIN_OPS, infer_tensor_types

TLC_MARK = "/tlc/"
PRECISIONS = ("fp32", "fp16", "bf16")
_REDUCED = {"fp16": TensorProto.FLOAT16, "float16": TensorProto.FLOAT16,
            "bf16": TensorProto.BFLOAT16, "bfloat16": TensorProto.BFLOAT16}
_TYPE_STR = {TensorProto.FLOAT16: "tensor(float16)", TensorProto.BFLOAT16: "tensor(bfloat16)"}
_SHORT = {TensorProto.FLOAT16: "fp16", TensorProto.BFLOAT16: "bf16", TensorProto.FLOAT: "fp32"}
_FP16_MAX = 65504.0
_ORT_PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider",
    "trt": "TensorrtExecutionProvider",
}


# ---------------------------------------------------------------------------------------------------
# ONNX Runtime
# ---------------------------------------------------------------------------------------------------
def build_ort_session(onnx_path: str | Path, providers: str | Sequence[str] | None = None,
                      threads: int | None = None, custom_op_library: str | Path | None = None):
    """An ``onnxruntime.InferenceSession`` for ``onnx_path``.

    ``providers``: None → CPU; ``"auto"`` → TensorRT, CUDA, CPU, those available; or names such as
    ``["cuda", "cpu"]`` / ``"CUDAExecutionProvider"`` (an unavailable one is a UserError).
    ``threads``: intra-op threads (default: ONNX Runtime's choice). ``custom_op_library``: a shared
    library with ORT kernels for custom-domain nodes (the TLC plugin form needs one on ORT).
    """
    import onnxruntime as ort

    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"cannot read {path}: no such file")
    available = ort.get_available_providers()
    if providers is None:
        chosen = ["CPUExecutionProvider"]
    elif isinstance(providers, str) and providers.lower() == "auto":
        chosen = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
                  if p in available]
    else:
        names = [providers] if isinstance(providers, str) else list(providers)
        chosen = []
        for name in names:
            full = _ORT_PROVIDERS.get(name.lower(), name)
            if full not in available:
                raise UserError(f"ONNX Runtime execution provider {name!r} is not available here "
                                f"(available: {', '.join(available)})")
            chosen.append(full)
    from .runtime import session_options

    if threads is not None and int(threads) < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    options = session_options("standard", int(threads) if threads is not None else None)
    if custom_op_library is not None:
        lib = Path(custom_op_library)
        if not lib.is_file():
            raise UserError(f"cannot read custom-op library {lib}: no such file")
        options.register_custom_ops_library(str(lib))
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=chosen)
    except Exception as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise UserError(f"ONNX Runtime cannot load {path}: {first}") from None


# ---------------------------------------------------------------------------------------------------
# Reduced-precision ONNX with FP32 TLC islands
# ---------------------------------------------------------------------------------------------------
def is_tlc_node(node: onnx.NodeProto, plugin_ops=DEFAULT_PLUGIN_OPS) -> bool:
    """A node the TLC converter added (name contains ``/tlc/``) or a TLC plugin node."""
    return TLC_MARK in node.name or (node.op_type in plugin_ops and node.domain not in ("", "ai.onnx"))


def _reduced_type(dtype) -> int:
    key = str(dtype).lower()
    if key not in _REDUCED:
        raise UserError(f"reduced precision {dtype!r} is not one of fp16, bf16")
    return _REDUCED[key]


def _convert_array(arr: np.ndarray, rtype: int) -> TensorProto:
    arr = np.asarray(arr, dtype=np.float32)
    if rtype == TensorProto.FLOAT16:
        return numpy_helper.from_array(np.clip(arr, -_FP16_MAX, _FP16_MAX).astype(np.float16))
    import ml_dtypes  # a dependency of onnx

    return numpy_helper.from_array(arr.astype(ml_dtypes.bfloat16))


def _convert_tensor(t: TensorProto, rtype: int, name: str | None = None) -> TensorProto:
    out = _convert_array(numpy_helper.to_array(t), rtype)
    out.name = t.name if name is None else name
    return out


def _schema(node: onnx.NodeProto, opsets: dict[str, int]):
    try:
        return onnx.defs.get_schema(node.op_type, opsets.get(node.domain or "", 1), node.domain or "")
    except Exception:
        return None


def _param(params, index: int):
    if not params:
        return None
    if index < len(params):
        return params[index]
    if params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _allows(schema, newest, kind: str, index: int, type_str: str) -> bool:
    """May formal input/output ``index`` of ``schema`` hold ``type_str``?

    With ``newest`` (the op's newest schema) the question is asked of it for the same parameter (same
    name): ONNX added bfloat16 to many ops late (Conv at opset 22) and TensorRT's parser does not check
    ONNX type constraints, only its own table.
    """
    sch, param = schema, _param(getattr(schema, kind), index)
    if newest is not None and param is not None:
        latest = _param(getattr(newest, kind), index)
        if latest is not None and latest.name == param.name:
            sch, param = newest, latest
    if param is None:
        return False
    constraints = {c.type_param_str: list(c.allowed_type_strs) for c in sch.type_constraints}
    return type_str in constraints.get(param.type_str, [param.type_str])


def to_reduced_precision_onnx(model: onnx.ModelProto | str | Path, dtype: str = "fp16",
                              keep_io_types: bool = True, plugin_ops=DEFAULT_PLUGIN_OPS,
                              respect_opset: bool = True) -> onnx.ModelProto:
    """A copy of ``model`` computing in ``dtype`` (fp16 / bf16), with the TLC statistics kept in FP32.

    * FP32 weights become ``dtype`` (FP16 clipped to ±65504); FP32 activations follow — every node
      whose ONNX schema admits ``dtype`` for a float input/output computes in ``dtype`` (Cast ``to``,
      ConstantOfShape / Constant values and ``dtype`` attributes are rewritten to match).
    * FP32 islands: TLC nodes (name contains ``/tlc/``), the TLC plugin nodes, other custom-domain nodes,
      and any float input/output a schema fixes to float32 (e.g. Resize ``scales``). Cast nodes sit on
      every boundary; those entering a TLC island are named inside it (``<prefix>/tlc/Cast_in_*``).
    * ``keep_io_types``: graph inputs/outputs stay float32 (Casts after inputs / before outputs), so
      callers feed and get FP32; else they become ``dtype``.
    * ``respect_opset``: an op computes in ``dtype`` only if its schema *at the model's opset* admits it,
      so the result passes ``onnx.checker``. ONNX admits bfloat16 late (Conv from opset 22), so at opset
      17/18 a bf16 graph keeps its Convs in FP32; with ``respect_opset=False`` the op's newest schema
      decides instead — what TensorRT accepts (its parser checks its own type table, not ONNX's
      opset), at the price of a graph ``onnx.checker`` and ONNX Runtime may reject.
    Other control flow (If/Loop/Scan outside the TLC subgraphs) is refused. Value info is recomputed
    by shape inference.
    """
    rtype = _reduced_type(dtype)
    rstr = _TYPE_STR[rtype]
    if isinstance(model, onnx.ModelProto):
        m = copy.deepcopy(model)
    else:
        path = Path(model)
        if not path.is_file():
            raise UserError(f"cannot read {path}: no such file")
        m = onnx.load(str(path))
    g = m.graph
    opsets = {o.domain if o.domain != "ai.onnx" else "": o.version for o in m.opset_import}
    if rtype == TensorProto.BFLOAT16 and opsets.get("", 0) < 13:
        raise UserError("bf16 needs ONNX opset >= 13 (Cast to bfloat16); re-export with a newer opset")
    for node in g.node:
        # The TLC box filter's If stays FP32 whole; the float tensors its branches read from the outer
        # graph are outputs of TLC nodes (FP32 islands), so no Cast is missing inside.
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute) \
                and not is_tlc_node(node, plugin_ops):
            raise UserError(f"node {node.name or node.op_type!r} has a subgraph (control flow); "
                            f"to_reduced_precision_onnx handles straight-line graphs only (apart from "
                            f"the converter's own TLC nodes)")

    etype, _ = infer_tensor_types(m, plugin_ops)
    FLOAT = TensorProto.FLOAT

    def is_float(name: str) -> bool:
        return bool(name) and etype.get(name) == FLOAT

    inits = {t.name: t for t in g.initializer}
    graph_inputs = {vi.name for vi in g.input}

    # 1. Which precision each node wants for its float inputs, and which each float tensor has ("home").
    island: dict[int, bool] = {}
    want_in: dict[tuple[int, int], int] = {}
    home: dict[str, int] = {}
    for vi in g.input:
        if is_float(vi.name) and vi.name not in inits:
            home[vi.name] = FLOAT if keep_io_types else rtype
    for k, node in enumerate(g.node):
        schema = None if is_tlc_node(node, plugin_ops) else _schema(node, opsets)
        isl = schema is None or node.domain not in ("", "ai.onnx")
        island[k] = isl
        newest = None if respect_opset or isl else _schema(node, {"": onnx.defs.onnx_opset_version()})
        for i, name in enumerate(node.input):
            if is_float(name):
                want_in[(k, i)] = FLOAT if isl or not _allows(schema, newest, "inputs", i, rstr) else rtype
        for j, name in enumerate(node.output):
            if is_float(name):
                home[name] = FLOAT if isl or not _allows(schema, newest, "outputs", j, rstr) else rtype

    # 2. Rewrite attributes that fix an output type, on nodes whose output moves to the reduced type.
    for k, node in enumerate(g.node):
        if island[k] or not node.output or home.get(node.output[0]) != rtype:
            continue
        for attr in node.attribute:
            if node.op_type == "Cast" and attr.name == "to" and attr.i == FLOAT:
                attr.i = rtype
            elif attr.name == "value" and attr.type == onnx.AttributeProto.TENSOR and attr.t.data_type == FLOAT:
                attr.t.CopyFrom(_convert_tensor(attr.t, rtype))
            elif attr.name == "dtype" and attr.type == onnx.AttributeProto.INT and attr.i == FLOAT:
                attr.i = rtype
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name in ("value_float", "value_floats"):
                    vals = [attr.f] if attr.name == "value_float" else list(attr.floats)
                    arr = np.array(vals if attr.name == "value_floats" else vals[0], dtype=np.float32)
                    node.attribute.remove(attr)
                    node.attribute.append(helper.make_attribute("value", _convert_array(arr, rtype)))
                    break

    # 3. Float initializers: converted in place when every consumer wants the reduced type, else a copy.
    wanted_by_init: dict[str, set[int]] = {}
    for (k, i), want in want_in.items():
        name = g.node[k].input[i]
        if name in inits:
            wanted_by_init.setdefault(name, set()).add(want)
    init_version: dict[tuple[str, int], str] = {}
    output_names = {o.name for o in g.output}
    for name, wants in wanted_by_init.items():
        t = inits[name]
        if t.data_type != FLOAT:
            continue
        if wants == {rtype} and name not in graph_inputs and name not in output_names:
            t.CopyFrom(_convert_tensor(t, rtype))
            init_version[(name, rtype)] = name
            home[name] = rtype
            continue
        init_version[(name, FLOAT)] = name
        home[name] = FLOAT
        if rtype in wants:
            copy_name = f"{name}__{_SHORT[rtype]}"
            g.initializer.append(_convert_tensor(t, rtype, copy_name))
            init_version[(name, rtype)] = copy_name

    # 4. Cast nodes where a tensor's home precision differs from what its consumer wants.
    new_nodes: list[onnx.NodeProto] = []
    casts: dict[tuple[str, int], str] = {}
    counter = [0]

    def cast(tensor: str, to: int, consumer: onnx.NodeProto) -> str:
        key = (tensor, to)
        if key in casts:
            return casts[key]
        counter[0] += 1
        out = f"{tensor}__{_SHORT[to]}"
        if to == FLOAT and TLC_MARK in consumer.name:
            prefix = consumer.name[: consumer.name.index(TLC_MARK) + len(TLC_MARK)]
            node_name = f"{prefix}Cast_in_{counter[0]}_fp32"
        else:
            node_name = f"/precision/Cast_{counter[0]}_to_{_SHORT[to]}"
        new_nodes.append(helper.make_node("Cast", [tensor], [out], name=node_name, to=to))
        casts[key] = out
        return out

    for k, node in enumerate(g.node):
        for i, name in enumerate(node.input):
            want = want_in.get((k, i))
            if want is None:
                continue
            if (name, want) in init_version:
                node.input[i] = init_version[(name, want)]
                continue
            have = home.get(name, FLOAT)
            if have != want:
                node.input[i] = cast(name, want, node)
        new_nodes.append(node)

    # 5. Graph outputs.
    tail: list[onnx.NodeProto] = []
    for out in g.output:
        if not is_float(out.name) or home.get(out.name, FLOAT) == FLOAT:
            continue
        if not keep_io_types:
            out.type.tensor_type.elem_type = rtype
            continue
        inner = f"{out.name}__{_SHORT[rtype]}"
        for node in new_nodes:
            for seq in (node.input, node.output):
                for idx, name in enumerate(seq):
                    if name == out.name:
                        seq[idx] = inner
        counter[0] += 1
        tail.append(helper.make_node("Cast", [inner], [out.name], name=f"/precision/Cast_{counter[0]}_to_fp32",
                                     to=FLOAT))
    for vi in g.input:
        if vi.name in home and vi.name not in inits:
            vi.type.tensor_type.elem_type = home[vi.name]

    del g.node[:]
    g.node.extend(new_nodes + tail)
    del g.value_info[:]
    try:
        m = onnx.shape_inference.infer_shapes(m, strict_mode=False)
    except Exception:
        pass
    return m


# ---------------------------------------------------------------------------------------------------
# TensorRT
# ---------------------------------------------------------------------------------------------------
def _import_tensorrt():
    try:
        import tensorrt as trt  # noqa: F401
    except Exception as err:
        raise UserError("TensorRT is not installed (pip install 'tensorrt-cu12>=10.8,<11' on a machine with "
                        f"an NVIDIA GPU): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                        .rstrip(": ")) from None
    return trt


def _require_gpu(trt) -> None:
    """TensorRT imports without a GPU but cannot make a builder: say so in one line."""
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
    except Exception as err:
        builder, why = None, _one_line(err)
    else:
        why = "the builder could not be created"
    if builder is None:
        raise UserError(f"TensorRT {getattr(trt, '__version__', '')} cannot build here: it needs an NVIDIA GPU "
                        f"with a working CUDA driver ({why})")
    del builder


def trt_major_version(trt) -> int:
    return int(str(trt.__version__).split(".")[0])


def default_profile_shapes(channels: int, calib: tuple[int, int], batch: int = 1,
                           max_scale: int = 4) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(min, opt, max) N×C×H×W shapes around the calibration size H×W.

    min = H/2 × W/2, opt = the calibration size, max = ``max_scale``× per side (TLC exists to run at sizes
    larger than the training crop); batch 1..``batch``.
    """
    h, w = int(calib[0]), int(calib[1])
    if h < 1 or w < 1 or channels < 1:
        raise UserError(f"bad calibration size {calib} / channels {channels} for TensorRT shapes")
    return ((1, channels, max(1, h // 2), max(1, w // 2)), (1, channels, h, w),
            (max(1, batch), channels, h * max_scale, w * max_scale))


def _input_info(path: Path) -> tuple[str, list]:
    model = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in model.graph.initializer}
    for vi in model.graph.input:
        if vi.name not in inits:
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                    for d in vi.type.tensor_type.shape.dim]
            return vi.name, dims
    raise UserError(f"{path} has no graph input")


def _mark_tlc_fp32(network, trt) -> int:
    """Weakly typed builds: every floating layer named ``…/tlc/…`` computes and outputs FP32."""
    floats = {trt.float32, trt.float16}
    if hasattr(trt, "bfloat16"):
        floats.add(trt.bfloat16)
    skip = {getattr(trt.LayerType, n) for n in ("CONSTANT", "SHAPE") if hasattr(trt.LayerType, n)}
    marked = 0
    for index in range(network.num_layers):
        layer = network.get_layer(index)
        if TLC_MARK not in layer.name or layer.type in skip:
            continue
        outputs = [layer.get_output(i) for i in range(layer.num_outputs)]
        if not outputs or any(o.dtype not in floats for o in outputs):
            continue
        layer.precision = trt.float32
        for i in range(layer.num_outputs):
            layer.set_output_type(i, trt.float32)
        marked += 1
    return marked


def _one_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[-1] if text else type(err).__name__)[:300]


def build_trt_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp32",
                     min_shape: Sequence[int] | None = None, opt_shape: Sequence[int] | None = None,
                     max_shape: Sequence[int] | None = None, workspace: int | None = None,
                     timing_cache: str | Path | None = None, strongly_typed: bool | None = None,
                     calib: tuple[int, int] | None = None, input_name: str | None = None,
                     plugins: Sequence[str | Path] = ()) -> Path:
    """Build and save a TensorRT engine for ``onnx_path``; return ``engine_path``.

    ``precision``: fp32 / fp16 / bf16, TLC subgraphs always FP32 (see the module doc). ``min/opt/max_shape``:
    the optimization profile of the image input (N, C, H, W); any missing is taken from
    :func:`default_profile_shapes` around ``calib`` (H, W). ``workspace``: workspace pool limit in bytes.
    ``timing_cache``: path loaded if present and saved after the build. ``strongly_typed``: TensorRT 10
    only (default False = builder flags + layer precision constraints); TensorRT 11 is always strongly
    typed. ``plugins``: shared libraries to load (``*.so``, via Polygraphy's LoadPlugins) or Python
    modules to import (Python ``tensorrt.plugin`` definitions) before parsing.
    Raises :class:`UserError` (one line) without TensorRT, without a GPU, or when the build fails.
    """
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise UserError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    src = Path(onnx_path)
    read_onnx(src)                     # a missing, empty or corrupt graph is refused before TensorRT loads
    outputs = OutputSet([src])
    engine_path = outputs.claim(engine_path, "the engine", explicit=True)
    if timing_cache:
        outputs.claim(timing_cache, "the timing cache", explicit=True)
    trt = _import_tensorrt()
    try:
        from polygraphy.backend.trt import (CreateConfig, EngineFromNetwork, LoadPlugins, NetworkFromOnnxPath,
                                            PostprocessNetwork, Profile, SaveEngine)
        from polygraphy.exception import PolygraphyException
    except Exception as err:
        raise UserError(f"Polygraphy's TensorRT backend cannot be imported: {_one_line(err)}") from None

    major = trt_major_version(trt)
    if major >= 11:
        if strongly_typed is False:
            raise UserError(f"TensorRT {trt.__version__} networks are always strongly typed; "
                            f"strongly_typed=False needs TensorRT 10.x")
        strongly_typed = True
    strongly_typed = bool(strongly_typed)
    # TensorRT 11 networks are strongly typed whatever the flag (kSTRONGLY_TYPED is deprecated and
    # ignored there), so the flag is only passed to 10.x.
    network_strongly_typed = strongly_typed if major < 11 else None
    _require_gpu(trt)

    name, dims = _input_info(src)
    if input_name is not None:
        name = input_name
    if min_shape is None or opt_shape is None or max_shape is None:
        if all(d is not None for d in dims) and dims:
            static = tuple(int(d) for d in dims)
            defaults = (static, static, static)
        else:
            if calib is None:
                raise UserError("give min_shape/opt_shape/max_shape or calib=(H, W) for the TensorRT "
                                "optimization profile")
            channels = dims[1] if len(dims) > 1 and dims[1] else None
            if channels is None:
                raise UserError("the ONNX input's channel count is dynamic; give min/opt/max shapes")
            defaults = default_profile_shapes(int(channels), calib)
        min_shape = tuple(min_shape or defaults[0])
        opt_shape = tuple(opt_shape or defaults[1])
        max_shape = tuple(max_shape or defaults[2])

    work = outputs.scratch_dir(engine_path)
    try:
        parse_path = src
        if strongly_typed and precision != "fp32":
            reduced = to_reduced_precision_onnx(src, precision, respect_opset=False)
            parse_path = work / "reduced.onnx"
            onnx.save(reduced, str(parse_path), save_as_external_data=reduced.ByteSize() > (1 << 30),
                      location="reduced.onnx.data")

        so_plugins, modules = [], []
        for p in map(str, plugins):
            is_lib = Path(p).is_file() or p.endswith((".so", ".dll")) or ".so." in p
            (so_plugins if is_lib else modules).append(p)
        for module in modules:  # Python tensorrt.plugin definitions: import, then register() if offered
            import importlib

            try:
                imported = importlib.import_module(module)
            except ImportError as err:
                raise UserError(f"cannot import plugin module {module!r}: {_one_line(err)}") from None
            if callable(getattr(imported, "register", None)):
                imported.register()
        network = NetworkFromOnnxPath(str(parse_path), strongly_typed=network_strongly_typed)
        if so_plugins:
            network = LoadPlugins(plugins=so_plugins, obj=network)
        weak_reduced = not strongly_typed and precision != "fp32"
        if weak_reduced:
            network = PostprocessNetwork(network, func=lambda network: _mark_tlc_fp32(network, trt),
                                         name="tlc-fp32")
        config_kwargs = dict(profiles=[Profile().add(name, min=min_shape, opt=opt_shape, max=max_shape)])
        if weak_reduced:
            config_kwargs.update(fp16=precision == "fp16", bf16=precision == "bf16", precision_constraints="obey")
        if workspace:
            config_kwargs["memory_pool_limits"] = {trt.MemoryPoolType.WORKSPACE: int(workspace)}
        if timing_cache:
            config_kwargs["load_timing_cache"] = str(timing_cache)
        config = CreateConfig(**config_kwargs)
        engine = EngineFromNetwork(network, config=config,
                                   save_timing_cache=str(timing_cache) if timing_cache else None)
        SaveEngine(engine, path=str(outputs.stage(engine_path)))()
        outputs.commit()
    except UserError:
        raise
    except PolygraphyException as err:
        raise UserError(f"TensorRT build of {src} failed: {_one_line(err)}") from None
    except Exception as err:  # CUDA initialisation without a GPU, parser errors, ...
        msg = _one_line(err)
        if "cuda" in msg.lower() or "gpu" in msg.lower() or "device" in msg.lower():
            raise UserError(f"TensorRT needs an NVIDIA GPU with a working CUDA driver: {msg}") from None
        raise UserError(f"TensorRT build of {src} failed: {msg}") from None
    finally:
        outputs.discard()
    return engine_path
