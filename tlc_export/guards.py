"""Argument and input checks shared by every command: refuse early, in one line (``UserError``).

Numbers that cannot be right (a NaN tolerance, zero threads, an opset the installed exporter or ONNX
Runtime cannot handle), weights that are not finite, and sizes whose memory need exceeds what the
machine has (estimated before anything large is allocated).
"""
from __future__ import annotations

import functools
import math

from .errors import UserError

MIN_OPSET = 17
GIB = float(1 << 30)


# ----------------------------------------------------------------------------------------- numbers

def check_atol(atol: float, flag: str = "--atol") -> float:
    """A finite, non-negative tolerance (``nan`` would pass every comparison)."""
    try:
        value = float(atol)
    except (TypeError, ValueError):
        raise UserError(f"{flag} {atol!r} is not a number") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"{flag} {atol} must be a finite number >= 0, e.g. 1e-4")
    return value


def check_threads(threads: int | None, flag: str = "--threads") -> int | None:
    if threads is not None and threads < 1:
        raise UserError(f"{flag} {threads} must be at least 1 (omit it for the runtime's default)")
    return threads


def check_positive(value: int | None, flag: str) -> int | None:
    if value is not None and value < 1:
        raise UserError(f"{flag} {value} must be a positive integer")
    return value


@functools.lru_cache(maxsize=None)
def max_opset() -> tuple[int, str]:
    """(newest opset this installation can write and run, what limits it)."""
    import onnx
    from torch.onnx import _constants

    limits = {"torch.onnx": int(getattr(_constants, "ONNX_MAX_OPSET", 20)),
              "onnx": int(onnx.defs.onnx_opset_version())}
    top = min(limits.values())
    for version in range(top, MIN_OPSET - 1, -1):   # ONNX Runtime publishes no maximum: ask it
        if _ort_accepts(version):
            break
    if version < top:
        return version, "onnxruntime"
    return top, min(limits, key=limits.get)


def _ort_accepts(opset: int) -> bool:
    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def check_opset(opset: int) -> int:
    if opset < MIN_OPSET:
        raise UserError(f"--opset {opset} is too old: tlc-export writes opset {MIN_OPSET} to {max_opset()[0]}")
    top, limit = max_opset()
    if opset > top:
        raise UserError(f"--opset {opset} is newer than the installed {limit} supports: "
                        f"choose {MIN_OPSET} to {top}")
    return opset


def check_arch_kwargs(arch: str | None, arch_kwargs: dict | None) -> None:
    """``--arch-kwargs`` configure the family/preset ``--arch`` names; alone they would be ignored."""
    if arch_kwargs and not arch:
        raise UserError("--arch-kwargs needs --arch (the family or preset they configure), "
                        "e.g. --arch nafnet --arch-kwargs '{\"width\": 32}'")


# ----------------------------------------------------------------------------------------- weights

def check_finite_weights(tensors, where: str) -> None:
    """Refuse NaN/Inf in ``tensors`` (name -> array or torch tensor), naming the first bad one."""
    import numpy as np

    for name, value in tensors:
        arr = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if arr.dtype.kind != "f" or arr.size == 0:
            continue
        finite = np.isfinite(arr)
        if not finite.all():
            bad = int(arr.size - finite.sum())
            kinds = " and ".join(k for k, f in (("NaN", np.isnan(arr).any()), ("Inf", np.isinf(arr).any())) if f)
            raise UserError(f"{where}: tensor {name!r} has {bad} {kinds} value(s) out of {arr.size}; "
                            f"the weights are damaged (re-download or re-train the checkpoint)")


def module_tensors(module):
    """(name, tensor) of a module's parameters and buffers; TorchScript and export modules included."""
    yield from module.state_dict().items()


def onnx_tensors(model):
    from onnx import numpy_helper

    for init in model.graph.initializer:
        yield init.name, numpy_helper.to_array(init)


# ----------------------------------------------------------------------------------------- memory

def available_bytes() -> int | None:
    """Memory the run could still get (MemAvailable, else physical memory), or None if unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import os

        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def refuse_if_too_big(need: float, what: str, hint: str) -> None:
    have = available_bytes()
    if have is not None and need > have:
        raise UserError(f"{what} needs at least {need / GIB:.1f} GiB of memory (estimated), more than the "
                        f"{have / GIB:.1f} GiB available; {hint}")


def arch_bytes(name: str, arch_kwargs: dict) -> int | None:
    """Parameter bytes of zoo ``name`` built with ``arch_kwargs``, counted on the meta device (no memory)."""
    import torch

    from . import zoo

    try:
        with torch.device("meta"):
            model = zoo.build(name, **arch_kwargs)
    except Exception:          # unknown name or bad kwargs: the loader says which, in its own words
        return None
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def check_arch_size(arch: str | None, arch_kwargs: dict | None) -> None:
    """Refuse ``--arch-kwargs`` whose weights alone would not fit in memory, before building them."""
    if not arch or not arch_kwargs:
        return
    from . import zoo

    name = zoo.find_preset(arch) or arch.lower()
    need = arch_bytes(name, arch_kwargs)
    if need is not None:
        refuse_if_too_big(2 * need, f"--arch {arch} with these --arch-kwargs ({need / GIB:.1f} GiB of weights)",
                          "check the --arch-kwargs values")


PROBE_SIDE = 32             # activations are measured at this size and scaled by area
CHECK_ABOVE_PIXELS = 1 << 20


def activation_bytes(module, shape: tuple[int, int, int, int], multiple: int = 1) -> float:
    """The largest single activation of ``module`` at ``shape`` (N, C, H, W), in bytes: measured with
    forward hooks on a small input and scaled by the area ratio (convolutional networks scale so)."""
    import torch

    side = max(PROBE_SIDE // multiple, 1) * multiple
    if side < multiple:
        side = multiple
    largest = [0]

    def hook(_module, _inputs, output):
        for t in output if isinstance(output, (tuple, list)) else (output,):
            if isinstance(t, torch.Tensor):
                largest[0] = max(largest[0], t.numel() * t.element_size())

    handles = [m.register_forward_hook(hook) for m in module.modules()] if hasattr(module, "modules") else []
    try:
        with torch.no_grad():
            module(torch.zeros(1, shape[1], side, side))
    except Exception:
        return 4.0 * math.prod(shape)
    finally:
        for h in handles:
            h.remove()
    scale = shape[0] * shape[2] * shape[3] / (side * side)
    return max(largest[0] * scale, 4.0 * math.prod(shape))


def check_run_size(module, shape: tuple[int, int, int, int], what: str, multiple: int = 1) -> None:
    """Refuse a run at ``shape`` (export, calibration) that cannot fit in memory. Small runs skip the probe."""
    n, c, h, w = shape
    if n * h * w <= CHECK_ABOVE_PIXELS:
        return
    refuse_if_too_big(4.0 * math.prod(shape), what, f"choose a smaller {what.split()[0]}")
    if module is not None:
        # ~3 activations live at once (input, output, a skip connection) while the model runs.
        refuse_if_too_big(3 * activation_bytes(module, shape, multiple), what,
                          f"choose a smaller {what.split()[0]}")
