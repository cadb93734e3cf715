"""The eager TLC reference against brute-force float64 window computations."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import brute_window_mean
from tlc_export.reference import (LocalAvgPool2d, LocalGroupNorm, LocalInstanceNorm2d, local_mean, to_local)


def official_style_mean(x: torch.Tensor, kh: int, kw: int) -> torch.Tensor:
    """The paper's formulation: stride-1 box means (k×k AvgPool) then replicate padding, float64."""
    x = x.double()
    h, w = x.shape[-2:]
    k1, k2 = min(h, kh), min(w, kw)
    out = F.avg_pool2d(x, (k1, k2), stride=1)
    _h, _w = out.shape[-2:]
    pad = ((w - _w) // 2, (w - _w + 1) // 2, (h - _h) // 2, (h - _h + 1) // 2)
    return F.pad(out, pad, mode="replicate")


SHAPES_AND_WINDOWS = [
    ((1, 1, 7, 9), (3, 4)),      # odd map, odd and even windows
    ((2, 3, 11, 6), (5, 2)),     # batch > 1
    ((1, 2, 5, 8), (9, 3)),      # window taller than the map
    ((1, 2, 6, 5), (4, 12)),     # window wider than the map
    ((2, 2, 4, 6), (10, 10)),    # window covers the map in both axes: global mean
    ((1, 3, 9, 7), (1, 1)),      # window 1: identity
    ((1, 1, 13, 13), (8, 6)),
]


@pytest.mark.parametrize("shape,window", SHAPES_AND_WINDOWS)
def test_local_mean_matches_brute_force(shape, window):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)
    got = local_mean(x, window).numpy()
    np.testing.assert_allclose(got, brute_window_mean(x.numpy(), *window), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got, official_style_mean(x, *window).numpy(), rtol=0, atol=1e-12)


def test_local_mean_float32_close_to_float64():
    x = torch.rand(2, 4, 37, 53, generator=torch.Generator().manual_seed(3))
    got = local_mean(x, (16, 24))
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), brute_window_mean(x.numpy(), 16, 24), atol=1e-6)


def test_window_covering_map_is_global_average_pool():
    x = torch.rand(2, 3, 10, 12, dtype=torch.float64)
    got = local_mean(x, (10, 40))
    assert torch.allclose(got, x.mean((2, 3), keepdim=True).expand_as(x), atol=1e-14)


@pytest.mark.parametrize("shape,window", SHAPES_AND_WINDOWS)
@pytest.mark.parametrize("affine", [False, True])
def test_local_instance_norm_matches_brute_force(shape, window, affine):
    c = shape[1]
    gen = torch.Generator().manual_seed(7)
    x = torch.rand(shape, generator=gen, dtype=torch.float64) * 3 - 1
    norm = LocalInstanceNorm2d(c, eps=1e-3, affine=affine, window=window).double()
    if affine:
        with torch.no_grad():
            norm.weight.copy_(torch.randn(c, generator=gen))
            norm.bias.copy_(torch.randn(c, generator=gen))
    got = norm(x).detach().numpy()
    xn = x.numpy()
    mu = brute_window_mean(xn, *window)
    var = brute_window_mean(xn * xn, *window) - mu ** 2
    want = (xn - mu) / np.sqrt(var + 1e-3)
    if affine:
        want = want * norm.weight.detach().numpy()[:, None, None] + norm.bias.detach().numpy()[:, None, None]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)


@pytest.mark.parametrize("shape,window", [((2, 6, 9, 7), (4, 5)), ((1, 4, 5, 6), (8, 2)), ((1, 6, 4, 4), (4, 4))])
def test_local_group_norm_matches_brute_force(shape, window):
    n, c, h, w = shape
    groups = 2
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    norm = LocalGroupNorm(groups, c, eps=1e-5, window=window).double()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(c, generator=gen))
        norm.bias.copy_(torch.randn(c, generator=gen))
    got = norm(x).detach().numpy()
    # Brute force: per pixel, all values of the group's channels inside the pixel's window.
    xn = x.numpy()
    k1, k2 = min(h, window[0]), min(w, window[1])
    want = np.empty_like(xn)
    for i in range(h):
        si = min(max(i - (k1 - 1) // 2, 0), h - k1)
        for j in range(w):
            sj = min(max(j - (k2 - 1) // 2, 0), w - k2)
            for g in range(groups):
                cs = slice(g * c // groups, (g + 1) * c // groups)
                vals = xn[:, cs, si:si + k1, sj:sj + k2].reshape(n, -1)
                mu, var = vals.mean(1), vals.var(1)
                want[:, cs, i, j] = (xn[:, cs, i, j] - mu[:, None]) / np.sqrt(var[:, None] + 1e-5)
    want = want * norm.weight.detach().numpy()[:, None, None] + norm.bias.detach().numpy()[:, None, None]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-10)
    # Window covering the map equals torch's GroupNorm.
    ref = nn.GroupNorm(groups, c).double()
    ref.load_state_dict(norm.state_dict())
    big = LocalGroupNorm(groups, c, window=(h, w)).double()
    big.load_state_dict(norm.state_dict())
    assert torch.allclose(big(x), ref(x), atol=1e-10)


class _SEBlock(nn.Module):
    """Module-based and functional global ops side by side."""

    def __init__(self, c=4):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Conv2d(c, c, 1)
        self.norm = nn.InstanceNorm2d(c, affine=True)
        self.gn = nn.GroupNorm(2, c)
        self.out = nn.Conv2d(c, 3, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        y = y * torch.sigmoid(self.fc(self.pool(y)))
        y = self.norm(y) + y.mean((2, 3), keepdim=True)
        y = self.gn(y) * F.adaptive_avg_pool2d(y, 1)
        return self.out(y)


def _randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model


def test_to_local_converts_modules_and_functional_calls():
    import copy

    model = _randomise(_SEBlock()).eval()
    keys = set(model.state_dict())
    local, table = to_local(copy.deepcopy(model), calib=(8, 6))
    assert set(local.state_dict()) == keys
    kinds = sorted(r.kind for r in table)
    assert kinds == ["avgpool", "avgpool", "avgpool", "groupnorm", "instancenorm"]
    assert all(r.window == (8, 6) for r in table)
    x = torch.rand(1, 3, 13, 10)
    with torch.no_grad():
        g, l = model(x), local(x)
        assert (g - l).abs().max() > 1e-3
        big, _ = to_local(copy.deepcopy(model), calib=(16, 16))
        assert (big(x) - g).abs().max() < 1e-6


def test_to_local_result_matches_manual_composition():
    """The converted block equals the block written out by hand with the brute-force window mean."""
    import copy

    model = _randomise(_SEBlock(), seed=5).double().eval()
    local, _ = to_local(copy.deepcopy(model), calib=(5, 7))
    x = torch.rand(1, 3, 9, 11, dtype=torch.float64)

    def lm(t):
        return torch.from_numpy(brute_window_mean(t.detach().numpy(), 5, 7))

    def lin(t, mod, groups):
        n, c, h, w = t.shape
        tg = t.reshape(n, groups, c // groups, h, w)
        mu = torch.stack([lm(tg[:, g].reshape(n, -1, h, w)).mean(1) for g in range(groups)], 1)
        sq = torch.stack([lm((tg[:, g] ** 2).reshape(n, -1, h, w)).mean(1) for g in range(groups)], 1)
        mu = mu[:, :, None].expand(n, groups, c // groups, h, w).reshape(n, c, h, w)
        var = sq[:, :, None].expand(n, groups, c // groups, h, w).reshape(n, c, h, w) - mu ** 2
        return (t - mu) / torch.sqrt(var + mod.eps) * mod.weight.view(1, -1, 1, 1) + mod.bias.view(1, -1, 1, 1)

    with torch.no_grad():
        y = model.conv(x)
        y = y * torch.sigmoid(model.fc(lm(y)))
        y = lin(y, model.norm, y.shape[1]) + lm(y)
        y = lin(y, model.gn, 2) * lm(y)
        want = model.out(y)
        got = local(x)
    assert torch.allclose(got, want, atol=1e-10)


def test_local_avgpool_calibration_records_input_size():
    pool = LocalAvgPool2d()
    pool(torch.rand(1, 1, 12, 7))
    assert pool.window == (12, 7)
