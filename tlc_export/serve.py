"""Triton Inference Server model repositories for converted graphs.

``write_triton_repo(DIR, NAME, onnx_path=...)`` writes ``DIR/NAME/config.pbtxt`` and
``DIR/NAME/1/model.onnx`` (ONNX Runtime backend); with ``plan_path=...`` it writes ``DIR/NAME/1/model.plan``
(TensorRT backend). Dynamic H/W become ``-1`` dims; a dynamic batch becomes ``max_batch_size`` (and is
left out of ``dims``, as Triton expects). ``DIR/NAME/README.txt`` says how to start the server.

Plugins. Triton's model configuration has no per-model plugin preload for the TensorRT backend: the
``model_operations { op_library_filename }`` field is read by the TensorFlow and ONNX Runtime backends
(the ORT backend registers each library with ``RegisterCustomOpsLibrary``), not by the TensorRT backend.
A TensorRT plugin library is loaded for the whole server, either with the TensorRT backend's own
command-line option ``--backend-config=tensorrt,plugins="/path/a.so;/path/b.so"`` (tensorrt_backend
README, "Command-line Options") or with ``LD_PRELOAD=/path/a.so tritonserver ...`` (Triton user guide,
"Custom Operations"). Both are written into the README of a plan repository.

The repository is written atomically: everything goes into a hidden temporary directory inside ``DIR``
which is renamed to ``DIR/NAME`` at the end, so a failure never leaves a partial model behind.
``config.pbtxt`` is validated by parsing it into Triton's own ``ModelConfig`` protobuf
(``tritonclient.grpc.model_config_pb2``) when tritonclient is installed.
"""
from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import onnx
from onnx import TensorProto

from .errors import UserError
from .fileio import OutputSet, default_mode, is_tlc_triton_entry

# ONNX element type -> Triton data type (model_config.proto DataType).
_ONNX_TO_TRITON = {
    TensorProto.FLOAT: "TYPE_FP32", TensorProto.FLOAT16: "TYPE_FP16", TensorProto.BFLOAT16: "TYPE_BF16",
    TensorProto.DOUBLE: "TYPE_FP64", TensorProto.INT8: "TYPE_INT8", TensorProto.INT16: "TYPE_INT16",
    TensorProto.INT32: "TYPE_INT32", TensorProto.INT64: "TYPE_INT64", TensorProto.UINT8: "TYPE_UINT8",
    TensorProto.UINT16: "TYPE_UINT16", TensorProto.UINT32: "TYPE_UINT32", TensorProto.UINT64: "TYPE_UINT64",
    TensorProto.BOOL: "TYPE_BOOL", TensorProto.STRING: "TYPE_STRING",
}
_ALIASES = {
    "fp32": "TYPE_FP32", "float32": "TYPE_FP32", "float": "TYPE_FP32", "fp16": "TYPE_FP16",
    "float16": "TYPE_FP16", "half": "TYPE_FP16", "bf16": "TYPE_BF16", "bfloat16": "TYPE_BF16",
    "fp64": "TYPE_FP64", "float64": "TYPE_FP64", "double": "TYPE_FP64", "int8": "TYPE_INT8",
    "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64", "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32", "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL",
    "string": "TYPE_STRING",
}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, full dims (batch included; -1 = dynamic), Triton data type."""

    name: str
    dims: tuple[int, ...]
    dtype: str = "TYPE_FP32"


def triton_dtype(dtype) -> str:
    """Triton ``TYPE_*`` name for an ONNX elem type, a numpy dtype, or a name like fp32 / TYPE_FP32."""
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        if dtype in _ONNX_TO_TRITON:
            return _ONNX_TO_TRITON[dtype]
        raise UserError(f"ONNX element type {dtype} has no Triton data type")
    text = str(getattr(dtype, "name", dtype)).strip()
    if text.upper().startswith("TYPE_"):
        return text.upper()
    if text.lower() in _ALIASES:
        return _ALIASES[text.lower()]
    raise UserError(f"unknown tensor data type {dtype!r} for Triton (use e.g. fp32, fp16, int64)")


def _spec(item) -> TensorSpec:
    if isinstance(item, TensorSpec):
        return TensorSpec(item.name, tuple(int(d) for d in item.dims), triton_dtype(item.dtype))
    if isinstance(item, dict):
        return TensorSpec(str(item["name"]), tuple(int(d) for d in item["dims"]),
                          triton_dtype(item.get("dtype", item.get("data_type", "fp32"))))
    name, dims, *rest = item
    return TensorSpec(str(name), tuple(int(d) for d in dims), triton_dtype(rest[0] if rest else "fp32"))


def tensor_specs_from_onnx(onnx_path: str | Path | onnx.ModelProto) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Inputs and outputs of an ONNX graph as TensorSpecs; symbolic or unknown dims become -1."""
    model = onnx_path if isinstance(onnx_path, onnx.ModelProto) else _load_onnx(Path(onnx_path))
    inits = {i.name for i in model.graph.initializer}

    def specs(values) -> list[TensorSpec]:
        out = []
        for vi in values:
            tt = vi.type.tensor_type
            if not tt.HasField("shape"):
                raise UserError(f"tensor {vi.name!r} has no shape in the ONNX graph; give its dims explicitly")
            dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tt.shape.dim)
            out.append(TensorSpec(vi.name, dims, triton_dtype(tt.elem_type)))
        return out

    return specs([i for i in model.graph.input if i.name not in inits]), specs(model.graph.output)


def _load_onnx(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise UserError(f"cannot read {path}: no such file")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as err:
        raise UserError(f"cannot read {path}: not a valid ONNX model ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _tensor_block(kind: str, specs: Sequence[TensorSpec], batched: bool) -> str:
    entries = []
    for s in specs:
        dims = s.dims[1:] if batched else s.dims
        entries.append(f"  {{\n    name: {_q(s.name)}\n    data_type: {s.dtype}\n"
                       f"    dims: [ {', '.join(str(d) for d in dims)} ]\n  }}")
    return f"{kind} [\n" + ",\n".join(entries) + "\n]\n"


def render_config(name: str, kind: str, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec],
                  max_batch_size: int, op_libraries: Iterable[str] = ()) -> str:
    """config.pbtxt text. ``kind`` is "onnx" or "plan"."""
    platform, backend, filename = (("onnxruntime_onnx", "onnxruntime", "model.onnx") if kind == "onnx"
                                   else ("tensorrt_plan", "tensorrt", "model.plan"))
    text = (f"# Written by tlc-export. Schema: Triton ModelConfig (model_config.proto).\n"
            f"name: {_q(name)}\nplatform: {_q(platform)}\nbackend: {_q(backend)}\n"
            f"default_model_filename: {_q(filename)}\nmax_batch_size: {max_batch_size}\n")
    text += _tensor_block("input", inputs, max_batch_size > 0)
    text += _tensor_block("output", outputs, max_batch_size > 0)
    libs = list(op_libraries)
    if libs:
        text += "model_operations {\n" + "".join(f"  op_library_filename: {_q(lib)}\n" for lib in libs) + "}\n"
    return text


def parse_config(text: str):
    """Parse config.pbtxt text with Triton's ModelConfig protobuf; UserError on a schema error.

    Needs ``tritonclient[grpc]`` (it ships ``tritonclient.grpc.model_config_pb2``).
    """
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except Exception as err:  # ImportError, or tritonclient's RuntimeError without grpc support
        raise UserError("validating a Triton config needs tritonclient with grpc: "
                        "pip install 'tritonclient[grpc]'") from err
    config = model_config_pb2.ModelConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as err:
        raise UserError(f"generated config.pbtxt does not parse as Triton ModelConfig: {err}") from None
    return config


def _have_tritonclient() -> bool:
    try:
        from tritonclient.grpc import model_config_pb2  # noqa: F401
    except Exception:
        return False
    return True


def _readme(name: str, kind: str, repo_dir: Path, plugin_libraries: list[str], max_batch_size: int) -> str:
    repo = str(repo_dir)
    lines = [
        f"Triton model repository entry '{name}' written by tlc-export.",
        "",
        f"  {name}/config.pbtxt     model configuration (Triton ModelConfig protobuf text)",
        f"  {name}/1/model.{'onnx' if kind == 'onnx' else 'plan'}"
        f"      {'ONNX Runtime backend' if kind == 'onnx' else 'TensorRT backend (serialized engine)'}",
        "",
        "Dims of -1 are dynamic (any height/width). "
        + (f"The batch is dynamic: max_batch_size {max_batch_size}, so dims leave the batch out."
           if max_batch_size > 0 else "The batch is fixed: max_batch_size 0, so dims include it."),
        "",
        "Start the server:",
    ]
    if kind == "plan" and plugin_libraries:
        libs = ";".join(plugin_libraries)
        lines += [
            "",
            "  This engine uses TensorRT plugins from:",
            *[f"    {lib}" for lib in plugin_libraries],
            "",
            "  Triton's model configuration has no per-model way to preload a TensorRT plugin library",
            "  (model_operations/op_library_filename is read by the TensorFlow and ONNX Runtime backends,",
            "  not by the TensorRT backend). Load it for the whole server, with either",
            "",
            "  (a) the TensorRT backend's option (tensorrt_backend README, \"Command-line Options\";",
            "      several libraries are separated by ';'):",
            f"      tritonserver --model-repository={repo} \\",
            f"          --backend-config=tensorrt,plugins=\"{libs}\"",
            "",
            "  (b) LD_PRELOAD (Triton user guide, \"Custom Operations\"):",
            f"      LD_PRELOAD={':'.join(plugin_libraries)}:${{LD_PRELOAD}} tritonserver --model-repository={repo}",
            "",
            "  The library must be built against the same TensorRT version as the Triton release's",
            "  TensorRT. Plugins written as Python TensorRT plugins (tensorrt.plugin) only run inside",
            "  Triton's C++ TensorRT backend when built ahead-of-time (trtp.aot_impl: the kernel is baked",
            "  into the engine); JIT Python plugins (trtp.impl) need a Python process and do not.",
        ]
    else:
        lines += ["", f"  tritonserver --model-repository={repo}"]
    if kind == "plan":
        lines += [
            "",
            "A TensorRT plan only runs on the GPU model and TensorRT version it was built with: use the",
            "Triton container whose TensorRT matches the builder, and a max_batch_size no larger than the",
            "engine's optimization-profile maximum batch.",
        ]
    elif plugin_libraries:
        lines += [
            "",
            "ONNX Runtime loads the custom-op libraries listed in config.pbtxt (model_operations):",
            *[f"    {lib}" for lib in plugin_libraries],
        ]
    return "\n".join(lines) + "\n"


def _copy_onnx(src: Path, dst: Path) -> None:
    """Copy an ONNX file; a model with external weights is re-saved with them beside it."""
    model = _load_onnx(src)
    external = any(t.data_location == TensorProto.EXTERNAL for t in model.graph.initializer)
    if not external:
        shutil.copyfile(src, dst)
        return
    full = onnx.load(str(src), load_external_data=True)
    onnx.save(full, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
              location=dst.name + ".data")


def _fill_entry(outputs: OutputSet, final: Path, kind: str, model_src: Path, config: str, readme: str,
                overwrite: bool | None) -> None:
    """Stage the model directory ``final`` in ``outputs`` (renamed into place at its commit)."""
    outputs.claim(final, "the Triton model entry", explicit=bool(overwrite), recognise=is_tlc_triton_entry,
                  directory=True)
    tmp = outputs.stage_dir(final)
    try:
        (tmp / "1").mkdir()
        if kind == "onnx":
            _copy_onnx(model_src, tmp / "1" / "model.onnx")
        else:
            shutil.copyfile(model_src, tmp / "1" / "model.plan")
        (tmp / "config.pbtxt").write_text(config, encoding="utf-8")
        (tmp / "README.txt").write_text(readme, encoding="utf-8")
        os.chmod(tmp / "1", default_mode(directory=True))
    except OSError as exc:
        raise UserError(f"cannot write the Triton model entry {final}: {exc.strerror or exc}") from None


def write_triton_repo(repo_dir: str | Path, name: str, onnx_path: str | Path | None = None,
                      plan_path: str | Path | None = None, max_batch_size: int | None = None,
                      inputs: Sequence | None = None, outputs: Sequence | None = None,
                      plugin_library: str | Path | Sequence[str | Path] | None = None,
                      validate: bool | None = None, overwrite: bool | None = False,
                      output_set: OutputSet | None = None) -> Path:
    """Write a Triton model ``DIR/<name>`` for an ONNX graph or a TensorRT plan; return its directory.

    * ``onnx_path`` alone: ONNX Runtime backend, ``1/model.onnx``.
    * ``plan_path``: TensorRT backend, ``1/model.plan``. Inputs/outputs must then be given, or
      ``onnx_path`` too — the ONNX the plan was built from, read only for I/O names, dims and types.
    * ``inputs`` / ``outputs``: TensorSpec, ``(name, dims, dtype)`` or ``{"name", "dims", "dtype"}`` items
      with the full dims, batch first (-1 = dynamic); default: read from the ONNX graph.
    * ``max_batch_size``: default 1 when the batch dim is dynamic in every input and output, else 0
      (fixed batch, dims written whole). A positive value needs a dynamic batch.
    * ``plugin_library``: path(s) of the TensorRT plugin library the plan needs (documented in
      README.txt: Triton loads it per server, not per model) or, for ONNX, ORT custom-op libraries
      (written to config.pbtxt as ``model_operations``).
    * ``validate``: parse config.pbtxt with tritonclient's ``model_config_pb2`` (default: when tritonclient
      is installed; True makes it required).
    * ``overwrite``: replace an existing ``DIR/<name>`` (False: UserError; None: only an entry
      tlc-export wrote).
    * ``output_set``: stage the entry in this :class:`~tlc_export.fileio.OutputSet` (renamed with the run's
      other outputs at its commit) instead of writing it now.
    """
    repo_dir = Path(repo_dir)
    if not _NAME_RE.match(name or ""):
        raise UserError(f"bad Triton model name {name!r}: use letters, digits, '_', '-' and '.'")
    if onnx_path is None and plan_path is None:
        raise UserError("write_triton_repo needs onnx_path or plan_path")
    kind = "plan" if plan_path is not None else "onnx"
    model_src = Path(plan_path if kind == "plan" else onnx_path)
    if not model_src.is_file():
        raise UserError(f"cannot read {model_src}: no such file")

    if plugin_library is None:
        libs: list[str] = []
    elif isinstance(plugin_library, (str, Path)):
        libs = [str(Path(plugin_library).resolve())]
    else:
        libs = [str(Path(p).resolve()) for p in plugin_library]

    if inputs is None or outputs is None:
        if onnx_path is None:
            raise UserError("for a TensorRT plan give inputs= and outputs= (or onnx_path= of the ONNX it was "
                            "built from)")
        onnx_in, onnx_out = tensor_specs_from_onnx(onnx_path)
        inputs = onnx_in if inputs is None else inputs
        outputs = onnx_out if outputs is None else outputs
    if kind == "onnx" and not libs:
        custom = sorted({f"{n.domain}::{n.op_type}" for n in _load_onnx(model_src).graph.node
                         if n.domain not in ("", "ai.onnx")})
        if custom:
            raise UserError(f"the ONNX graph has custom-domain nodes ({', '.join(custom[:3])}) that ONNX Runtime "
                            f"cannot run without their kernels: pass plugin_library= the ORT custom-op library, "
                            f"or serve the standard-op graph (or a TensorRT plan)")
    in_specs, out_specs = [_spec(s) for s in inputs], [_spec(s) for s in outputs]
    if not in_specs or not out_specs:
        raise UserError("a Triton model needs at least one input and one output")

    dynamic_batch = all(s.dims and s.dims[0] == -1 for s in in_specs + out_specs)
    if max_batch_size is None:
        max_batch_size = 1 if dynamic_batch else 0
    max_batch_size = int(max_batch_size)
    if max_batch_size < 0:
        raise UserError(f"max_batch_size must be >= 0, got {max_batch_size}")
    if max_batch_size > 0 and not dynamic_batch:
        raise UserError(f"max_batch_size {max_batch_size} needs a dynamic batch (first dim -1) in every input "
                        f"and output; this model's batch is fixed, use max_batch_size=0")

    text = render_config(name, kind, in_specs, out_specs, max_batch_size,
                         op_libraries=libs if kind == "onnx" else ())
    if validate is None:
        validate = _have_tritonclient()
    if validate:
        config = parse_config(text)
        if config.name != name or config.max_batch_size != max_batch_size:
            raise UserError("generated config.pbtxt lost fields when parsed as Triton ModelConfig")

    final = repo_dir / name
    if final.exists() and overwrite is False:
        raise UserError(f"{final} already exists; remove it or pass overwrite=True")
    if output_set is None:
        repo_dir.mkdir(parents=True, exist_ok=True)
        with OutputSet([model_src]) as own:
            _fill_entry(own, final, kind, model_src, text, _readme(name, kind, repo_dir.resolve(), libs,
                                                                   max_batch_size), overwrite)
            own.commit()
    else:
        _fill_entry(output_set, final, kind, model_src, text, _readme(name, kind, repo_dir.resolve(), libs,
                                                                   max_batch_size), overwrite)
    return final
