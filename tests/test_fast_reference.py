"""The eager fast TLC reference (official ``fast_imp`` semantics) against brute-force float64 loops.

The brute force below restates the official rules sample by sample (which sample rows/columns exist,
which of them a pixel's window averages, where nearest upsampling and replicate padding send the pixel),
without prefix sums, slicing tricks or any code of ``tlc_export.reference.fast``.
"""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from conftest import SMALL, perturb_identity_params
from tlc_export import zoo
from tlc_export.reference import LocalAvgPool2d, LocalInstanceNorm2d, fast_local_mean, to_local


def _factor(n: int, max_r: int) -> int:
    for r in (5, 4, 3, 2, 1):
        if n % r == 0:
            return min(r, max_r)
    raise AssertionError


def _axis_plan(n: int, kernel: int, max_r: int):
    """For one axis: the sample positions, the window length in samples, and for every output position
    the samples (positions in the map) its window averages."""
    r = _factor(n, max_r)
    samples = list(range(0, n, r))
    k = min(len(samples) - 1, kernel // r)
    assert k >= 1
    n_valid = len(samples) - k          # windows j = 0 … n_valid−1 average samples j+1 … j+k
    upsampled = n_valid * r             # nearest upsampling repeats each window r times
    before = (n - upsampled) // 2       # replicate padding: floor before, ceil after
    plan = []
    for i in range(n):
        u = min(max(i - before, 0), upsampled - 1)
        j = u // r
        plan.append([samples[j + 1 + t] for t in range(k)])
    return plan


def brute_fast_mean(x: np.ndarray, window, max_r) -> np.ndarray:
    h, w = x.shape[-2:]
    if window[0] >= h and window[1] >= w:
        return np.broadcast_to(x.mean(axis=(-2, -1), keepdims=True), x.shape).astype(np.float64)
    rows, cols = _axis_plan(h, window[0], max_r[0]), _axis_plan(w, window[1], max_r[1])
    out = np.empty(x.shape, dtype=np.float64)
    for i in range(h):
        for j in range(w):
            acc = np.zeros(x.shape[:-2])
            for a in rows[i]:
                for b in cols[j]:
                    acc = acc + x[..., a, b]
            out[..., i, j] = acc / (len(rows[i]) * len(cols[j]))
    return out


CASES = [
    # shape, window, max_r
    ((1, 2, 20, 30), (8, 12), (5, 5)),     # 20: r=5, 30: r=5
    ((2, 3, 24, 18), (9, 7), (5, 5)),      # batch 2; 24: r=4, 18: r=3
    ((1, 1, 17, 19), (6, 9), (5, 5)),      # primes: r=1 (exact window shifted by one sample)
    ((1, 2, 15, 14), (10, 6), (4, 2)),     # cap that does not divide: 15 -> min(4, 5)=4, 14 -> 2
    ((1, 1, 21, 22), (40, 8), (5, 5)),     # window taller than the map only: k1 = h'-1
    ((1, 2, 16, 25), (9, 30), (2, 5)),     # window wider than the map only
    ((2, 2, 12, 10), (12, 16), (5, 5)),    # window covers the map in both axes: global mean
    ((1, 3, 33, 35), (11, 13), (1, 1)),    # deep level: max_r 1
    ((1, 1, 9, 45), (4, 11), (2, 5)),      # odd sizes, mixed caps
]


@pytest.mark.parametrize("shape,window,max_r", CASES)
def test_fast_local_mean_matches_brute_force(shape, window, max_r):
    x = torch.rand(shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=torch.float64)
    got = fast_local_mean(x, window, max_r).numpy()
    np.testing.assert_allclose(got, brute_fast_mean(x.numpy(), window, max_r), rtol=0, atol=1e-12)


def test_fast_differs_from_exact_by_the_shifted_window():
    """With r = 1 fast mode is exact TLC's window moved one sample down/right (then re-padded)."""
    from tlc_export.reference import local_mean

    x = torch.rand(1, 1, 13, 17, dtype=torch.float64)
    fast = fast_local_mean(x, (5, 6), (1, 1))
    exact = local_mean(x[..., 1:, 1:], (5, 6))
    # Valid rows: fast 13-5 = 8, padded 2 above; exact on 12 rows 8, padded 2 above. Columns: fast
    # 17-6 = 11, 3 to the left; exact on 16 columns 11, 2 to the left.
    np.testing.assert_allclose(fast[..., 2:10, 3:14].numpy(), exact[..., 2:10, 2:13].numpy(), atol=1e-12)


def test_fast_undefined_window_is_refused():
    x = torch.rand(1, 1, 5, 40)
    with pytest.raises(ValueError, match="undefined"):
        fast_local_mean(x, (3, 8), (5, 5))          # 5 rows, r=5: one sample, empty window


def test_local_instance_norm_fast_uses_fast_pooling_for_both_moments():
    gen = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 20, 27, generator=gen, dtype=torch.float64) * 2 - 0.5
    norm = LocalInstanceNorm2d(3, eps=1e-3, affine=True, window=(9, 10)).double()
    norm.max_r = (5, 3)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(3, generator=gen))
        norm.bias.copy_(torch.randn(3, generator=gen))
    xn = x.numpy()
    mu = brute_fast_mean(xn, (9, 10), (5, 3))
    var = brute_fast_mean(xn * xn, (9, 10), (5, 3)) - mu ** 2
    want = (xn - mu) / np.sqrt(var + 1e-3) * norm.weight.detach().numpy()[:, None, None] \
        + norm.bias.detach().numpy()[:, None, None]
    np.testing.assert_allclose(norm(x).detach().numpy(), want, rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# Model level: to_local(fast=True) on the zoo families against the model with brute-force local ops.

def _brute_forward(module):
    """A forward for a converted local op that uses the brute force with the op's window and max_r."""
    if isinstance(module, LocalAvgPool2d):
        def forward(x):
            return torch.from_numpy(brute_fast_mean(x.double().numpy(), module.window, module.max_r)).to(x.dtype)
    else:
        def forward(x):
            xn = x.double().numpy()
            mu = brute_fast_mean(xn, module.window, module.max_r)
            var = brute_fast_mean(xn * xn, module.window, module.max_r) - mu ** 2
            y = (xn - mu) / np.sqrt(var + module.eps)
            if module.affine:
                y = y * module.weight.detach().double().numpy()[:, None, None] \
                    + module.bias.detach().double().numpy()[:, None, None]
            return torch.from_numpy(y).to(x.dtype)
    return forward


# Expected max_r per op window: max(1, 5 * window // calib), the level's downsampling seen by 5.
def _expected_max_r(window, calib):
    return tuple(max(1, 5 * k // c) for k, c in zip(window, calib))


@pytest.mark.parametrize("family,calib,size", [("hinet", (32, 32), (40, 56)), ("nafnet", (32, 32), (36, 60)),
                                               ("mprnet", (32, 32), (40, 48))])
def test_to_local_fast_matches_brute_force_model(family, calib, size):
    torch.manual_seed(0)
    model = perturb_identity_params(zoo.build(family, **SMALL[family])).double().eval()
    example = torch.rand(1, 3, *calib, dtype=torch.float64)
    local, table = to_local(copy.deepcopy(model), calib, example_input=example, fast=True)
    fast_ops = [r for r in table if r.kind in ("avgpool", "instancenorm")]
    assert fast_ops and all(r.max_r == _expected_max_r(r.window, calib) for r in fast_ops)
    assert {r.max_r for r in fast_ops} != {(1, 1)}          # at least one subsampled level
    brute = copy.deepcopy(local)
    for m in brute.modules():
        if isinstance(m, (LocalAvgPool2d, LocalInstanceNorm2d)):
            m.forward = _brute_forward(m)
    x = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    with torch.no_grad():
        got, want = local(x), brute(x)
        exact, _ = to_local(copy.deepcopy(model), calib, example_input=example)
        exact_out = exact(x)
    got, want, exact_out = (t[0] if isinstance(t, (list, tuple)) else t for t in (got, want, exact_out))
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-10)
    assert (got - exact_out).abs().max() > 1e-6          # fast mode is a different function


def test_mprnet_pad_after_convs_equals_pool_padding():
    """The official local CALayer of MPRNet pads after its MLP (auto_pad=False); per-pixel functions
    commute with nearest upsampling and replicate padding, so the pooled-then-padded form gives the
    same numbers."""
    from tlc_export.reference.boxes import replicate_pad_to
    from tlc_export.reference.fast import fast_layout, fast_valid_mean

    torch.manual_seed(3)
    layer = zoo.mprnet.CALayer(8, reduction=2).double().eval()
    local, _ = to_local(copy.deepcopy(layer), (20, 30), fast=True)
    pool = local.avg_pool
    x = torch.rand(2, 8, 27, 35, dtype=torch.float64)
    layout = fast_layout((27, 35), pool.window, pool.max_r)
    valid = fast_valid_mean(x, layout)
    gate = layer.conv_du(valid.repeat_interleave(layout.r[0], -2).repeat_interleave(layout.r[1], -1))
    official = x * replicate_pad_to(gate, (27, 35))
    with torch.no_grad():
        np.testing.assert_allclose(local(x).numpy(), official.detach().numpy(), rtol=0, atol=1e-12)


def test_restormer_fast_changes_nothing():
    from tlc_export.zoo.restormer import Restormer

    torch.manual_seed(0)
    model = Restormer(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 1, 1]).eval()
    exact, _ = to_local(copy.deepcopy(model), (16, 16))
    fast, table = to_local(copy.deepcopy(model), (16, 16), fast=True)
    assert all(r.max_r is None for r in table)
    x = torch.rand(1, 3, 24, 40)
    with torch.no_grad():
        assert torch.equal(exact(x), fast(x))


def test_group_norm_stays_exact_in_fast_mode():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.AdaptiveAvgPool2d(1))
    _, table = to_local(model, (10, 10), fast=True)
    kinds = {r.kind: r.max_r for r in table}
    assert kinds == {"groupnorm": None, "avgpool": (5, 5)}
