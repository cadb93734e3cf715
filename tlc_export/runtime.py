"""ONNX Runtime sessions for converted graphs (CPU here; CUDA/TensorRT providers when present).

The plugin form (``--impl plugin``) needs the ``tlc_export`` custom-op domain registered; that comes
from the ``tlc_trt_plugin`` package in ``plugins/``.
"""
from __future__ import annotations

from pathlib import Path

import onnx


def session_options(impl: str = "standard", threads: int | None = None, release_memory: bool = False):
    """``release_memory``: no CPU arena and no memory pattern, so a session gives back its intermediate
    buffers after every run (several sessions of a full-size model can then live side by side)."""
    import onnxruntime as ort

    if impl == "plugin":
        from .errors import UserError

        try:
            from tlc_trt_plugin.ort_ops import session_options as plugin_options
        except ImportError:
            raise UserError("the plugin-form graph needs the tlc_trt_plugin package: "
                            "pip install -e 'plugins/tlc_trt_plugin[ort]'") from None
        options = plugin_options()
    else:
        options = ort.SessionOptions()
    options.log_severity_level = 3
    if release_memory:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    return options


def ort_session(model: onnx.ModelProto | str | Path, impl: str = "standard", threads: int | None = None,
                providers: list[str] | None = None, release_memory: bool = False):
    """An InferenceSession for ``model`` (ModelProto or path)."""
    import onnxruntime as ort

    if providers is None:
        available = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = session_options(impl, threads, release_memory)
    if impl == "plugin":
        # onnxruntime-extensions serves Python ops only in its own domain: run a copy whose TLC plugin
        # nodes are moved there (the written graph keeps the tlc_export domain TensorRT looks up).
        from tlc_trt_plugin.ort_ops import to_ort_model

        model = to_ort_model(model if isinstance(model, onnx.ModelProto) else onnx.load(str(model)))
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=providers)
