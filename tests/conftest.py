import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Two cores on CI: one intra-op thread keeps parallel helpers (ORT, torch) from oversubscribing.
torch.set_num_threads(1)
os.environ.setdefault("OMP_NUM_THREADS", "1")

# Small configurations of each family (official keyword names), fast on CPU.
SMALL = {
    "hinet": dict(wf=8, depth=3, hin_position_left=0, hin_position_right=2),
    "nafnet": dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]),
    "mprnet": dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1, reduction=2),
}


def perturb_identity_params(model: torch.nn.Module, seed: int = 1, scale: float = 0.3) -> torch.nn.Module:
    """Perturb the parameters that start as identities (norm affines, NAFNet's zero beta/gamma) so no
    path is an identity, keeping activations O(1) so float32 rounding stays near 1e-7."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("beta", "gamma") or (p.dim() == 1 and "norm" in name):
                p.add_(torch.randn(p.shape, generator=gen) * scale)
    return model


@pytest.fixture
def small_models():
    return SMALL


# The official checkpoint manifests (shared/ beside the repository on CI and developers' machines).
MANIFEST_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference" / "checkpoints"


def load_manifest(name: str) -> dict:
    """A manifest by preset name; skips the test (with the reason) when shared/ is not beside the repo."""
    if not MANIFEST_DIR.is_dir():
        pytest.skip(f"manifest folder {MANIFEST_DIR} is missing")
    path = MANIFEST_DIR / f"{name}.json"
    if not path.is_file():
        pytest.skip(f"manifest {path} is missing")
    return json.loads(path.read_text())


FAMILY_CALIB = (32, 32)


@pytest.fixture(scope="session")
def converted_families(tmp_path_factory):
    """Each SMALL family (identity parameters perturbed) saved as an official-style checkpoint and
    converted once at FAMILY_CALIB, TLC and global: {family: (model, checkpoint, tlc result, global result)}."""
    from tlc_export import zoo
    from tlc_export.api import convert

    root = tmp_path_factory.mktemp("families")
    out = {}
    for family, kwargs in SMALL.items():
        torch.manual_seed(0)
        model = perturb_identity_params(zoo.build(family, **kwargs)).eval()
        ckpt = root / f"{family}.pth"
        torch.save({"params": model.state_dict()}, ckpt)
        tlc = convert(ckpt, FAMILY_CALIB, arch=family, arch_kwargs=kwargs)
        glob = convert(ckpt, FAMILY_CALIB, arch=family, arch_kwargs=kwargs, tlc=False)
        out[family] = (model, ckpt, tlc, glob)
    return out


def brute_window_mean(x: np.ndarray, kh: int, kw: int) -> np.ndarray:
    """Per pixel: the mean of the k1×k2 window starting at clamp(i − ⌊(k−1)/2⌋, 0, n−k), in float64."""
    h, w = x.shape[-2:]
    k1, k2 = min(h, kh), min(w, kw)
    out = np.empty(x.shape, dtype=np.float64)
    for i in range(h):
        si = min(max(i - (k1 - 1) // 2, 0), h - k1)
        for j in range(w):
            sj = min(max(j - (k2 - 1) // 2, 0), w - k2)
            out[..., i, j] = x[..., si:si + k1, sj:sj + k2].astype(np.float64).mean(axis=(-2, -1))
    return out
