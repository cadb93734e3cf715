"""Local instance and group normalisation (TLC, and the paper's Table 7 extension to group norm).

μ = local mean of x, σ² = local mean of x² − μ², y = (x − μ)/√(σ² + eps), then the affine map. For group
norm the two local statistics are further averaged over the channels of each group. Parameter names are
those of ``nn.InstanceNorm2d`` / ``nn.GroupNorm`` so state dicts load unchanged.
"""
from __future__ import annotations

import torch
from torch import nn

from .pooling import Window, window_mean


def _local_moments(x: torch.Tensor, window: Window, max_r=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Local mean and local (biased) variance of ``x``, both computed in float64; with ``max_r`` both
    moments use the fast pooling (as the official local instance norm in fast mode does)."""
    x64 = x.to(torch.float64)
    mean = window_mean(x64, window, max_r)
    var = window_mean(x64 * x64, window, max_r) - mean * mean
    return mean, var


def _normalise(x, mean, var, eps, weight, bias) -> torch.Tensor:
    y = (x.to(torch.float64) - mean) / torch.sqrt(var + eps)
    if weight is not None:
        y = y * weight.to(torch.float64).view(1, -1, 1, 1) + bias.to(torch.float64).view(1, -1, 1, 1)
    return y.to(x.dtype)


class LocalInstanceNorm2d(nn.Module):
    """Replaces ``nn.InstanceNorm2d`` (instance statistics, i.e. not ``track_running_stats``); ``max_r``
    (per axis) selects fast mode."""

    kind = "instancenorm"
    max_r: tuple[int, int] | None = None

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False,
                 window: Window | None = None):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.affine = affine
        self.window = tuple(window) if window is not None else None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_features))
            self.bias = nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_module(cls, norm: nn.InstanceNorm2d) -> "LocalInstanceNorm2d":
        local = cls(norm.num_features, norm.eps, norm.affine)
        if norm.affine:
            local.weight, local.bias = norm.weight, norm.bias
        return local

    def extra_repr(self) -> str:
        fast = f", max_r={self.max_r}" if self.max_r is not None else ""
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}, window={self.window}{fast}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            self.window = tuple(x.shape[-2:])
        mean, var = _local_moments(x, self.window, self.max_r)
        return _normalise(x, mean, var, self.eps, self.weight, self.bias)


class LocalGroupNorm(nn.Module):
    """Replaces ``nn.GroupNorm`` on 4-D maps: group statistics over the channels of a group and a local window."""

    kind = "groupnorm"

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, affine: bool = True,
                 window: Window | None = None):
        super().__init__()
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.window = tuple(window) if window is not None else None
        if affine:
            self.weight = nn.Parameter(torch.ones(num_channels))
            self.bias = nn.Parameter(torch.zeros(num_channels))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    @classmethod
    def from_module(cls, norm: nn.GroupNorm) -> "LocalGroupNorm":
        local = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
        if norm.affine:
            local.weight, local.bias = norm.weight, norm.bias
        return local

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, window={self.window}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window is None:
            self.window = tuple(x.shape[-2:])
        n, c, h, w = x.shape
        mean, var = _local_moments(x, self.window)
        # Group statistics: average E[x] and E[x²] over the group's channels, then Var = E[x²] − E[x]².
        second = var + mean * mean
        g = self.num_groups
        mean = mean.view(n, g, c // g, h, w).mean(2, keepdim=True).expand(n, g, c // g, h, w).reshape(n, c, h, w)
        second = second.view(n, g, c // g, h, w).mean(2, keepdim=True).expand(n, g, c // g, h, w).reshape(n, c, h, w)
        return _normalise(x, mean, second - mean * mean, self.eps, self.weight, self.bias)
