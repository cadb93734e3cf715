"""Trace: list the global ops of a PyTorch model with their module paths (they go into the report).

Module-type global ops come from the module tree; functional ones (``F.adaptive_avg_pool2d(x, 1)``,
``x.mean((2, 3), keepdim=True)``) from a torch.fx trace of the modules whose forward calls them.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .reference import find_functional_means, global_kind


@dataclass(frozen=True)
class TracedGlobalOp:
    path: str
    kind: str


def list_global_ops(model: nn.Module) -> list[TracedGlobalOp]:
    ops = [TracedGlobalOp(path, kind) for path, m in model.named_modules()
           if (kind := global_kind(m)) is not None]
    ops += [TracedGlobalOp(path, "avgpool") for path in find_functional_means(model)]
    return ops
