"""TensorRT quickly deployable plugins (``tensorrt.plugin``) for the TLC plugin-form ONNX graph.

Plugins (namespace ``tlc_export``, version "1"):

* ``tlc_export::TLCLocalMean``: input x (N, C, H, W); attribute ``window`` (int32[2], kh kw).
* ``tlc_export::TLCLocalInstanceNorm``: inputs x, scale [C], bias [C]; attributes ``window``, ``eps``.

Both outputs are like x (fp32, linear). The ONNX parser reaches them from a node whose op_type is
the plugin name with the string attribute ``plugin_namespace = "tlc_export"`` (optional int ``aot``
selects the AOT or JIT implementation; otherwise the network flags PREFER_AOT/JIT_PYTHON_PLUGINS
decide when both exist).

* ``@trtp.impl`` (JIT): launches the Triton kernels from ``kernels`` on TensorRT's stream through
  torch; the Python process running the engine must have called ``register()``.
* ``@trtp.aot_impl`` (TensorRT ≥ 10.9): compiles the same kernels with ``triton.compile``; the PTX
  is baked into the engine, which then runs without Python (trtexec). The window is passed as
  int32 scalar arguments; eps is compiled into the kernel.

The kernels keep their fp32 running sums in the output tensor (a QDP has no workspace), hence the
FP32-only type combination. Written against the documented API (TensorRT samples
``quickly_deployable_plugins``); TensorRT cannot be installed on the development machine, so the
registration has not been exercised there.

This module must not use ``from __future__ import annotations``: ``tensorrt.plugin`` inspects the
annotations as objects.
"""
from typing import List, Tuple, Union

import numpy as np
import numpy.typing as npt

NAMESPACE = "tlc_export"
MEAN = "TLCLocalMean"
INSTANCE_NORM = "TLCLocalInstanceNorm"
PLUGIN_VERSION = "1"

_registered = False


def available() -> bool:
    """Whether ``tensorrt.plugin`` can be imported (TensorRT ≥ 10.6 Python bindings)."""
    try:
        import tensorrt.plugin  # noqa: F401
    except Exception:
        return False
    return True


def aot_supported() -> bool:
    try:
        import tensorrt.plugin as trtp
    except Exception:
        return False
    return hasattr(trtp, "aot_impl")


def register() -> bool:
    """Register both plugins with TensorRT's plugin registry, once per process.

    Returns True when the AOT implementations were registered too (TensorRT ≥ 10.9)."""
    global _registered
    if not _registered:
        import tensorrt.plugin as trtp

        _define(trtp)
        _registered = True
    return aot_supported()


def _window_pair(window) -> Tuple[int, int]:
    kh, kw = (int(k) for k in np.asarray(window).reshape(-1)[:2])
    return kh, kw


def _define(trtp) -> None:
    from . import kernels

    mean_id = f"{NAMESPACE}::{MEAN}"
    norm_id = f"{NAMESPACE}::{INSTANCE_NORM}"

    # ---------------------------------------------------------------- descriptors
    @trtp.register(mean_id)
    def _mean_desc(x: trtp.TensorDesc, window: npt.NDArray[np.int32]) -> trtp.TensorDesc:
        return x.like()

    @trtp.register(norm_id)
    def _norm_desc(x: trtp.TensorDesc, scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                   window: npt.NDArray[np.int32], eps: float) -> trtp.TensorDesc:
        return x.like()

    @trtp.autotune(mean_id)
    def _mean_tune(x: trtp.TensorDesc, outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32, FP32", "LINEAR")]

    @trtp.autotune(norm_id)
    def _norm_tune(x: trtp.TensorDesc, scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                   outputs: Tuple[trtp.TensorDesc]) -> List[trtp.AutoTuneCombination]:
        return [trtp.AutoTuneCombination("FP32, FP32, FP32, FP32", "LINEAR")]

    # ---------------------------------------------------------------- JIT (Python at run time)
    @trtp.impl(mean_id)
    def _mean_impl(x: trtp.Tensor, window: npt.NDArray[np.int32], outputs: Tuple[trtp.Tensor],
                   stream: int) -> None:
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            xt = torch.as_tensor(x, device="cuda")
            yt = torch.as_tensor(outputs[0], device="cuda")
            kernels.local_mean(xt, _window_pair(window), out=yt)

    @trtp.impl(norm_id)
    def _norm_impl(x: trtp.Tensor, scale: trtp.Tensor, bias: trtp.Tensor, window: npt.NDArray[np.int32],
                   eps: float, outputs: Tuple[trtp.Tensor], stream: int) -> None:
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            xt = torch.as_tensor(x, device="cuda")
            st = torch.as_tensor(scale, device="cuda")
            bt = torch.as_tensor(bias, device="cuda")
            yt = torch.as_tensor(outputs[0], device="cuda")
            kernels.local_instance_norm(xt, st, bt, _window_pair(window), float(eps), out=yt)

    if not hasattr(trtp, "aot_impl"):      # TensorRT < 10.9: JIT only
        return

    # ---------------------------------------------------------------- AOT (PTX in the engine)
    # Kernel parameters: tensor inputs, then the int32 extra args below, then the output.
    # Grid: one program per (n, c) plane.
    def _aot_launch(compiled, x, window, with_channels: bool):
        """(kernel name, PTX, launch parameters, extra int32 args H, W, kh, kw[, C]) for one plane per program."""
        name, ptx, num_warps, shared = compiled
        dims = x.shape_expr
        kh, kw = _window_pair(window)
        launch = trtp.KernelLaunchParams()
        launch.grid_x = dims[0] * dims[1]
        launch.block_x = num_warps * 32
        launch.shared_mem = shared
        args = (dims[2], dims[3], kh, kw) + ((dims[1],) if with_channels else ())
        extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in args])
        return name.encode(), ptx.encode(), launch, extra

    @trtp.aot_impl(mean_id)
    def _mean_aot(x: trtp.TensorDesc, window: npt.NDArray[np.int32], outputs: Tuple[trtp.TensorDesc],
                  tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        return _aot_launch(kernels.aot_kernel("mean"), x, window, with_channels=False)

    @trtp.aot_impl(norm_id)
    def _norm_aot(x: trtp.TensorDesc, scale: trtp.TensorDesc, bias: trtp.TensorDesc,
                  window: npt.NDArray[np.int32], eps: float, outputs: Tuple[trtp.TensorDesc],
                  tactic: int) -> Tuple[Union[str, bytes], Union[str, bytes], trtp.KernelLaunchParams, trtp.SymExprs]:
        return _aot_launch(kernels.aot_kernel("instancenorm", eps=float(eps)), x, window, with_channels=True)
