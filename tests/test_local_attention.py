"""The eager TLC reference for Restormer's transposed attention (tlc_export.reference.attention)."""
from __future__ import annotations

import math

import pytest
import torch

from tlc_export.reference.attention import LocalTransposedAttention, window_starts
from tlc_export.zoo.restormer import Attention

torch.set_num_threads(1)


def official_grids(h: int, w: int, k1: int, k2: int) -> list[tuple[int, int]]:
    """Literal transcription of megvii-research/TLC LocalAttention.grids() index loop (no tensors)."""
    k1 = min(h, k1)
    k2 = min(w, k2)
    num_row = (h - 1) // k1 + 1
    num_col = (w - 1) // k2 + 1
    step_j = k2 if num_col == 1 else math.ceil((w - k2) / (num_col - 1) - 1e-8)
    step_i = k1 if num_row == 1 else math.ceil((h - k1) / (num_row - 1) - 1e-8)
    idxes = []
    i = 0
    last_i = False
    while i < h and not last_i:
        j = 0
        if i + k1 >= h:
            i = h - k1
            last_i = True
        last_j = False
        while j < w and not last_j:
            if j + k2 >= w:
                j = w - k2
                last_j = True
            idxes.append((i, j))
            j = j + step_j
        i = i + step_i
    return idxes


# ---------------------------------------------------------------------------------------------
# (a) window positions


def test_window_starts_match_official_grids():
    checked = 0
    for size in list(range(1, 70)) + [96, 97, 127, 128, 191, 255, 256, 384, 511, 720, 1000]:
        ks = set(range(1, min(size + 3, 40))) | {size - 1, size, size + 1, 2 * size, 48, 64, 96, 128, 192}
        for k in sorted(x for x in ks if x >= 1):
            rows = window_starts(size, k)
            # One axis of the official 2-D walk: vary the rows, keep a single column.
            expected = [i for i, _ in official_grids(size, 1, k, 1)]
            assert rows == expected, (size, k, rows, expected)
            checked += 1
    assert checked > 2000


@pytest.mark.parametrize("h,w,k1,k2", [(13, 11, 5, 4), (16, 24, 8, 8), (17, 9, 6, 20), (7, 7, 7, 7),
                                        (10, 31, 1, 3), (30, 20, 12, 7), (5, 40, 9, 13)])
def test_window_product_order_matches_official(h, w, k1, k2):
    ours = [(i, j) for i in window_starts(h, k1) for j in window_starts(w, k2)]
    assert ours == official_grids(h, w, k1, k2)


def test_window_starts_cover_and_stay_inside():
    for size in range(1, 60):
        for k in range(1, 70):
            starts = window_starts(size, k)
            kk = min(size, k)
            assert starts[0] == 0 and starts[-1] == size - kk
            assert starts == sorted(set(starts))
            covered = set()
            for s in starts:
                covered.update(range(s, s + kk))
            assert covered == set(range(size))


def test_window_starts_rejects_non_positive():
    with pytest.raises(ValueError):
        window_starts(10, 0)
    with pytest.raises(ValueError):
        window_starts(0, 3)


# ---------------------------------------------------------------------------------------------
# (b) local attention against a brute-force float64 computation


def _make_attention(dim: int, heads: int, seed: int, bias: bool = True) -> Attention:
    torch.manual_seed(seed)
    attn = Attention(dim, heads, bias=bias)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        attn.temperature.copy_(0.5 + 2.0 * torch.rand(attn.temperature.shape, generator=g))
    return attn


def _textbook_attention(qkv: torch.Tensor, heads: int, temperature: torch.Tensor) -> torch.Tensor:
    """One window, one image: qkv [3C, h, w] float64 -> [C, h, w], head by head."""
    c3, h, w = qkv.shape
    c = c3 // 3
    ch = c // heads
    out = torch.empty(c, h, w, dtype=torch.float64)
    for head in range(heads):
        sl = slice(head * ch, (head + 1) * ch)
        q = qkv[:c][sl].reshape(ch, h * w)
        k = qkv[c:2 * c][sl].reshape(ch, h * w)
        v = qkv[2 * c:][sl].reshape(ch, h * w)
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
        k = k / k.norm(dim=1, keepdim=True).clamp_min(1e-12)
        logits = (q @ k.T) * temperature[head].item()
        weights = torch.exp(logits - logits.max(dim=1, keepdim=True).values)
        weights = weights / weights.sum(dim=1, keepdim=True)
        out[sl] = (weights @ v).reshape(ch, h, w)
    return out


def _brute_force(attn: Attention, x: torch.Tensor, window: tuple[int, int]) -> torch.Tensor:
    attn = attn.double()
    x = x.double()
    with torch.no_grad():
        qkv = attn.qkv_dwconv(attn.qkv(x))
        b, c3, h, w = qkv.shape
        k1, k2 = min(h, window[0]), min(w, window[1])
        acc = torch.zeros(b, c3 // 3, h, w, dtype=torch.float64)
        count = torch.zeros(h, w, dtype=torch.float64)
        for i, j in official_grids(h, w, window[0], window[1]):
            for n in range(b):
                acc[n, :, i:i + k1, j:j + k2] += _textbook_attention(
                    qkv[n, :, i:i + k1, j:j + k2], attn.num_heads, attn.temperature.reshape(-1))
            count[i:i + k1, j:j + k2] += 1
        return attn.project_out(acc / count)


CASES = [
    # (h, w, window, heads): odd sizes, overlapping windows, windows larger than the map in one axis
    # or both, a 1-pixel window axis, batch 2 throughout.
    (13, 11, (5, 4), 2),
    (15, 9, (6, 20), 1),
    (9, 17, (30, 7), 2),
    (11, 13, (40, 50), 2),
    (8, 12, (4, 6), 4),
    (7, 10, (1, 3), 2),
]


@pytest.mark.parametrize("h,w,window,heads", CASES)
def test_local_attention_matches_brute_force(h, w, window, heads):
    attn = _make_attention(8, heads, seed=h * 100 + w)
    x = torch.randn(2, 8, h, w, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    local = LocalTransposedAttention(attn.double(), window=window)
    with torch.no_grad():
        got = local(x)
    expected = _brute_force(attn, x, window)
    assert got.shape == (2, 8, h, w)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def test_batch_items_are_independent():
    attn = _make_attention(8, 2, seed=3)
    local = LocalTransposedAttention(attn, window=(5, 4))
    x = torch.randn(3, 8, 13, 11, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        batched = local(x)
        single = torch.cat([local(x[n:n + 1]) for n in range(3)])
    torch.testing.assert_close(batched, single, rtol=1e-6, atol=1e-6)


def test_local_attention_is_really_local():
    attn = _make_attention(8, 2, seed=4)
    x = torch.randn(1, 8, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        glob = attn(x)
        loc = LocalTransposedAttention(attn, window=(6, 6))(x)
    assert torch.isfinite(loc).all()
    assert (glob - loc).abs().max() > 1e-3


# ---------------------------------------------------------------------------------------------
# (c) a window covering the map is the global module


@pytest.mark.parametrize("window", [(13, 11), (13, 50), (64, 11), (100, 100)])
def test_covering_window_equals_global(window):
    attn = _make_attention(8, 2, seed=11)
    x = torch.randn(2, 8, 13, 11, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        glob = attn(x)
        loc = LocalTransposedAttention(attn, window=window)(x)
    assert torch.equal(glob, loc)


def test_calibration_pass_records_window_and_is_global():
    attn = _make_attention(8, 2, seed=12)
    local = LocalTransposedAttention(attn)
    assert local.window is None
    x = torch.randn(1, 8, 10, 14, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(local(x), attn(x))
    assert local.window == (10, 14)
    # Later, larger inputs use the recorded window.
    y = torch.randn(2, 8, 17, 23, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(local(y), _brute_force(attn, y, (10, 14)).float(), rtol=1e-5, atol=1e-5)


def test_parameters_are_shared_and_keys_unchanged():
    attn = _make_attention(8, 2, seed=13)
    local = LocalTransposedAttention(attn, window=(4, 4))
    assert local.num_heads == attn.num_heads
    assert local.temperature is attn.temperature
    for name in ("qkv", "qkv_dwconv", "project_out"):
        assert getattr(local, name) is getattr(attn, name)
    ref = {k: v.shape for k, v in attn.state_dict().items()}
    got = {k: v.shape for k, v in local.state_dict().items()}
    assert got == ref
    local.load_state_dict(attn.state_dict(), strict=True)
    assert local.is_local and not getattr(attn, "is_local", False)
