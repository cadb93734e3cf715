"""``to_local``: turn the global ops of any ``nn.Module`` into TLC local ops and calibrate their windows.

Three passes, each a function from module to module:
1. ``replace_global_modules``: ``nn.AdaptiveAvgPool2d(1)``, ``nn.InstanceNorm2d`` (instance statistics),
   ``nn.GroupNorm`` and Restormer-style transposed attention become their local counterparts, sharing
   the original parameters (state-dict keys are unchanged).
2. ``replace_functional_means``: inside modules whose ``forward`` calls ``F.adaptive_avg_pool2d(x, 1)`` or
   a spatial ``mean(..., keepdim=True)``, torch.fx rewrites those calls into ``LocalAvgPool2d`` submodules.
3. ``calibrate``: one forward pass on a calib-sized input; every local op records the spatial size of its
   input as its window.
With ``fast=True``, local means and instance norms then also record the official fast mode's ``max_r``
(``fast.max_factor``); group norms (no official fast mode) and attention (whose official fast flag
changes nothing) stay exact.
"""
from __future__ import annotations

import inspect
import re
import warnings
from dataclasses import dataclass

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from ..fast_rules import FAST_KINDS, max_factors
from .norm import LocalGroupNorm, LocalInstanceNorm2d
from .pooling import LocalAvgPool2d


_ATTENTION_ATTRS = ("num_heads", "temperature", "qkv", "qkv_dwconv", "project_out")


@dataclass(frozen=True)
class LocalOpRecord:
    """One converted global op: where it lives, what it was, its calibrated window (kh, kw) and, in fast
    mode, its subsampling cap ``max_r`` per axis (None: exact)."""

    path: str
    kind: str
    window: tuple[int, int] | None
    max_r: tuple[int, int] | None = None


def _is_transposed_attention(module: nn.Module) -> bool:
    return all(hasattr(module, a) for a in _ATTENTION_ATTRS) and not getattr(module, "is_local", False)


def _local_counterpart(module: nn.Module) -> nn.Module | None:
    """The local replacement of a global module, or None when the module is not a global op."""
    kind = global_kind(module)
    if kind == "avgpool":
        return LocalAvgPool2d()
    if kind == "instancenorm":
        return LocalInstanceNorm2d.from_module(module)
    if kind == "groupnorm":
        return LocalGroupNorm.from_module(module)
    if kind == "attention":
        from .attention import LocalTransposedAttention

        return LocalTransposedAttention(module)
    return None


def global_kind(module: nn.Module) -> str | None:
    """The TLC kind of a global-op module (avgpool, instancenorm, groupnorm, attention), else None."""
    if isinstance(module, nn.AdaptiveAvgPool2d):
        return "avgpool" if module.output_size in (1, (1, 1), [1, 1]) else None
    if isinstance(module, nn.InstanceNorm2d):
        # With running statistics in eval mode the norm uses stored moments: nothing global to localise.
        return None if (module.track_running_stats and not module.training) else "instancenorm"
    if isinstance(module, nn.GroupNorm):
        return "groupnorm"
    if _is_transposed_attention(module):
        return "attention"
    return None


def replace_global_modules(model: nn.Module) -> nn.Module:
    """Swap global-op submodules for local ones, in place. A module object shared by several parents
    stays shared (one local object replaces it everywhere)."""
    memo: dict[int, nn.Module] = {}

    def visit(parent: nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if id(child) in memo:
                setattr(parent, name, memo[id(child)])
                continue
            local = _local_counterpart(child)
            if local is not None:
                memo[id(child)] = local
                setattr(parent, name, local)
            else:
                visit(child)

    root = _local_counterpart(model)
    if root is not None:
        return root
    visit(model)
    return model


# ---------------------------------------------------------------------------------------------------
# Functional global means, found with torch.fx.

_FUNCTIONAL_HINT = re.compile(r"adaptive_avg_pool2d|\.mean\(|torch\.mean\(")
_SPATIAL_DIMS = ({2, 3}, {-2, -1}, {2, -1}, {-2, 3})


def _is_spatial_mean(node: fx.Node) -> bool:
    """True for ``x.mean((2, 3), keepdim=True)`` / ``torch.mean(x, (-2, -1), keepdim=True)`` /
    ``F.adaptive_avg_pool2d(x, 1)`` on a 4-D map."""
    if node.op == "call_function" and node.target in (F.adaptive_avg_pool2d, torch._C._nn.adaptive_avg_pool2d):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        return size in (1, (1, 1), [1, 1])
    is_method = node.op == "call_method" and node.target == "mean"
    is_function = node.op == "call_function" and node.target is torch.mean
    if not (is_method or is_function):
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    if not isinstance(dims, (tuple, list)) or not keepdim:
        return False
    return set(dims) in _SPATIAL_DIMS


class _LeafTracer(fx.Tracer):
    """Traces one module's own forward; every submodule stays a leaf call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


def _localize_forward(module: nn.Module) -> tuple[nn.Module, list[str]]:
    """fx-rewrite the spatial means of ``module``'s own forward; returns (module, new submodule names)."""
    graph = _LeafTracer().trace(module)
    added = []
    for node in list(graph.nodes):
        if not _is_spatial_mean(node):
            continue
        name = f"tlc_local_mean_{len(added)}"
        while hasattr(module, name):
            name += "_"
        module.add_module(name, LocalAvgPool2d())
        with graph.inserting_after(node):
            call = graph.call_module(name, (node.args[0],))
        node.replace_all_uses_with(call)
        graph.erase_node(node)
        added.append(name)
    if not added:
        return module, []
    graph.lint()
    return fx.GraphModule(module, graph, class_name=type(module).__name__ + "Local"), added


def _functional_candidate(m: nn.Module) -> bool:
    """Whether ``m``'s own forward source mentions a functional global mean (worth an fx trace)."""
    if isinstance(m, (fx.GraphModule, LocalAvgPool2d, LocalInstanceNorm2d, LocalGroupNorm)):
        return False
    if type(m).__module__.startswith("torch."):
        return False
    try:
        return bool(_FUNCTIONAL_HINT.search(inspect.getsource(type(m).forward)))
    except (OSError, TypeError):
        return False


def find_functional_means(model: nn.Module) -> list[str]:
    """Paths ``module.fx_node`` of the functional spatial means fx finds, without changing anything."""
    found = []
    for path, m in model.named_modules():
        if not _functional_candidate(m):
            continue
        try:
            graph = _LeafTracer().trace(m)
        except Exception:  # untraceable forward: nothing to report from it
            continue
        found += [f"{path}.{n.name}" if path else n.name for n in graph.nodes if _is_spatial_mean(n)]
    return found


def replace_functional_means(model: nn.Module) -> nn.Module:
    """Rewrite functional spatial means of every module whose forward source mentions one."""
    candidate = _functional_candidate

    def rewrite(m: nn.Module, path: str) -> nn.Module:
        try:
            new, added = _localize_forward(m)
        except Exception as exc:  # fx cannot trace every forward (data-dependent control flow)
            warnings.warn(f"tlc-export: could not trace {path or type(m).__name__} with torch.fx to find "
                          f"functional global means ({type(exc).__name__}: {exc}); left unchanged")
            return m
        return new

    def visit(parent: nn.Module, prefix: str) -> None:
        for name, child in list(parent.named_children()):
            path = f"{prefix}.{name}" if prefix else name
            visit(child, path)
            if candidate(child):
                setattr(parent, name, rewrite(child, path))

    visit(model, "")
    return rewrite(model, "") if candidate(model) else model


# ---------------------------------------------------------------------------------------------------

def local_ops(model: nn.Module) -> list[LocalOpRecord]:
    """The table of local ops in ``model``: module path, kind and window."""
    records = []
    seen = set()
    for path, m in model.named_modules():
        kind = getattr(m, "kind", None)
        if kind is None or not hasattr(m, "window") or id(m) in seen:
            continue
        seen.add(id(m))
        records.append(LocalOpRecord(path, kind, m.window, getattr(m, "max_r", None)))
    return records


def channel_candidates(model: nn.Module) -> list[int]:
    """Plausible image channel counts, most likely first: a traced program's recorded input channels,
    then the input channels of convolution weights, fewest first (image stems take 1-6 channels;
    feature convolutions usually take more). Works for eager, TorchScript and torch.export modules."""
    recorded = []
    graph = getattr(model, "graph", None)
    if isinstance(model, fx.GraphModule) and graph is not None:
        for node in graph.nodes:
            val = node.meta.get("val") if node.op == "placeholder" else None
            if val is not None and getattr(val, "dim", lambda: 0)() == 4 and isinstance(val.shape[1], int):
                recorded.append(int(val.shape[1]))
                break
    counts = {m.in_channels for m in model.modules() if isinstance(m, nn.Conv2d) and m.groups == 1}
    counts |= {int(p.shape[1]) for p in model.parameters() if p.dim() == 4 and p.shape[1] > 1}
    if not recorded and not counts:
        raise ValueError("cannot tell the model's input channels (no convolution found); pass example_input")
    return recorded + sorted(counts - set(recorded))


def _reset_windows(model: nn.Module) -> None:
    for m in model.modules():
        if getattr(m, "kind", None) is not None and hasattr(m, "window"):
            m.window = None
            if getattr(m, "max_r", None) is not None:
                m.max_r = None


def set_fast(model: nn.Module, calib: tuple[int, int]) -> nn.Module:
    """Switch the calibrated local means and instance norms of ``model`` to the official fast mode:
    each records ``max_r`` from its window and the calibration size ``calib``."""
    for m in model.modules():
        if getattr(m, "kind", None) in FAST_KINDS and getattr(m, "window", None) is not None:
            m.max_r = max_factors(m.window, calib)
    return model


@torch.no_grad()
def run_on_image(model: nn.Module, size: tuple[int, int], before_each=None) -> int:
    """Run ``model`` once on a random 1×C×H×W image, guessing C (``channel_candidates``; a guess the
    network rejects is followed by the next one); returns the C that ran."""
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None else torch.float32
    failure = None
    for channels in channel_candidates(model):
        if before_each is not None:
            before_each()
        try:
            model(torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(0), dtype=dtype))
            return channels
        except RuntimeError as exc:  # wrong channel guess (or a size the model rejects): next guess
            failure = exc
    raise failure


@torch.no_grad()
def calibrate(model: nn.Module, calib: tuple[int, int], example_input: torch.Tensor | None = None) -> nn.Module:
    """Set every local op's window to its input size on a calib-sized input (one forward pass)."""
    was_training = model.training
    model.eval()
    try:
        if example_input is not None:
            _reset_windows(model)
            model(example_input)
        else:
            run_on_image(model, calib, before_each=lambda: _reset_windows(model))
    finally:
        model.train(was_training)
    return model


def to_local(model: nn.Module, calib: tuple[int, int] | int,
             example_input: torch.Tensor | None = None, fast: bool = False) -> tuple[nn.Module, list[LocalOpRecord]]:
    """Convert ``model`` to TLC (in place where possible) and calibrate on a ``calib`` = (H, W) input
    (or on ``example_input``, whose size then is the calibration size). ``fast``: the official
    approximate TLC (``fast_imp``, see ``fast``) for local means and instance norms.

    Returns the converted model (a new object only when the root itself had to be replaced) and the
    table of converted ops.
    """
    if isinstance(calib, int):
        calib = (calib, calib)
    calib = (int(calib[0]), int(calib[1]))
    if calib[0] < 1 or calib[1] < 1:
        raise ValueError(f"calibration size must be positive, got {calib}")
    model = replace_global_modules(model)
    model = replace_functional_means(model)
    calibrate(model, calib, example_input)
    if fast:
        set_fast(model, tuple(example_input.shape[-2:]) if example_input is not None else calib)
    return model, local_ops(model)
