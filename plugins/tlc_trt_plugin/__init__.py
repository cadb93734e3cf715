"""TLC local mean / local instance norm as TensorRT plugins (Triton kernels) and ONNX Runtime custom ops.

Submodules (all imported lazily, so ``import tlc_trt_plugin`` needs neither TensorRT nor Triton):

* ``kernels``: Triton kernels and torch launchers (``local_mean``, ``local_instance_norm``), AOT build.
* ``numpy_ref``: the same math in numpy.
* ``trt_plugin``: ``register()`` of ``tlc_export::TLCLocalMean`` / ``tlc_export::TLCLocalInstanceNorm``
  with ``tensorrt.plugin``.
* ``ort_ops``: ONNX Runtime custom ops for the same nodes (``session_options``, ``inference_session``).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"
NAMESPACE = "tlc_export"
PLUGIN_VERSION = "1"
OP_TYPES = ("TLCLocalMean", "TLCLocalInstanceNorm")

_SUBMODULES = ("kernels", "numpy_ref", "trt_plugin", "ort_ops")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_tensorrt() -> bool:
    """Register the TensorRT plugins (needs ``tensorrt`` ≥ 10.6); True when AOT is available too."""
    from .trt_plugin import register

    return register()


__all__ = ["NAMESPACE", "OP_TYPES", "PLUGIN_VERSION", "register_tensorrt", *_SUBMODULES]
