"""The conformance reference validated on its own: window arithmetic against per-pixel loops, the
grid layout against its definition, local == global at the calibration size, module-tree counts, and
agreement with tlc_export's own eager reference on the zoo's NAFNet and Restormer."""
import copy
import itertools

import pytest
import torch

from .archs import ARCHS, sample_image, true_counts
from .reference import TLCReference, grid_starts, local_mean, windowed

torch.set_num_threads(1)


def test_local_mean_equals_per_pixel_loop():
    x = torch.rand(2, 3, 9, 7, dtype=torch.float64)
    for kh, kw in [(4, 3), (9, 7), (20, 2), (1, 1), (6, 100)]:
        k1, k2 = min(9, kh), min(7, kw)
        oh, ow = 9 - k1 + 1, 7 - k2 + 1
        want = torch.empty_like(x)
        for i, j in itertools.product(range(9), range(7)):
            # replicate padding = clamp the window's top-left corner into the valid range
            a = min(max(i - (k1 - 1) // 2, 0), oh - 1)
            b = min(max(j - (k2 - 1) // 2, 0), ow - 1)
            want[..., i, j] = x[..., a:a + k1, b:b + k2].mean(dim=(-2, -1))
        assert torch.allclose(local_mean(x, (kh, kw)), want, atol=1e-14), (kh, kw)


@pytest.mark.parametrize("n,k", [(9, 4), (64, 64), (96, 64), (40, 64), (130, 32), (33, 8), (7, 7)])
def test_grid_starts_cover_evenly(n, k):
    k = min(n, k)
    starts = grid_starts(n, k)
    assert starts[0] == 0 and starts[-1] == n - k and len(starts) == (n - 1) // k + 1
    covered = torch.zeros(n)
    for s in starts:
        covered[s:s + k] += 1
    assert covered.min() >= 1 and covered.max() <= 2


def test_windowed_is_global_when_the_window_covers_the_map():
    x = torch.rand(1, 6, 10, 12, dtype=torch.float64)
    core = lambda t: t.softmax(dim=1) * t.mean(dim=(2, 3), keepdim=True)  # global over the window
    assert torch.equal(windowed(x, (10, 12), core), core(x))
    assert not torch.allclose(windowed(x, (5, 5), core), core(x))


DEFAULT_ARCHS = ["NAFNet", "Restormer", "RealPLKSR", "MIRNet_v2"]
ALL = [pytest.param(a, marks=() if a in DEFAULT_ARCHS else pytest.mark.conformance_full) for a in ARCHS]


@pytest.mark.parametrize("name", ALL)
def test_reference_counts_and_calibration_identity(name):
    arch = ARCHS[name]
    model = arch.build()
    calls, kept, _, _ = true_counts(arch, model)
    ref = TLCReference(model, arch.kept, (64, 64))
    assert (len(ref.ops), len(ref.kept_ops)) == (calls, kept)
    image = sample_image(64, 64, seed=5)
    assert (ref(image) - ref(image, local=False)).abs().max() < 1e-12
    out = model(image.clone())
    out = out[0] if isinstance(out, (tuple, list)) else out
    assert (ref(image, local=False) - out.double()).abs().max() < 1e-5   # the float32 eager model
    if ref.rewritable:
        h, w = arch.sizes[0]
        image = sample_image(h, w, seed=6)
        assert (ref(image) - ref(image, local=False)).abs().max() > 1e-5


@pytest.mark.parametrize("family,kwargs", [
    ("nafnet", dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1])),
    ("restormer", dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])),
])
def test_agrees_with_tlc_export_reference_on_the_zoo(family, kwargs):
    from tlc_export import zoo
    from tlc_export.reference import to_local

    from .archs import perturb

    model = perturb(zoo.build(family, **kwargs), seed=3)
    ours = TLCReference(model, (), (64, 64))
    theirs, _ = to_local(copy.deepcopy(model).double(), (64, 64))
    for h, w in [(96, 80), (128, 40)]:
        image = sample_image(h, w, seed=7).double()
        with torch.no_grad():
            expected = theirs(image)
        expected = expected[0] if isinstance(expected, (tuple, list)) else expected
        assert (ours(image) - expected).abs().max() < 1e-10
        assert (ours(image) - ours(image, local=False)).abs().max() > 1e-4
