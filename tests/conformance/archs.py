"""Small seeded configurations of every spandrel / spandrel-extra-arches architecture with a global op.

Each entry builds the architecture class directly (small widths and depths, so the whole matrix runs on
CPU) and perturbs every parameter with seeded noise, so no path is an identity or a zero (NAFNet's
beta/gamma start at zero, norm affines at one, Restormer's temperature at one).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn


def _stub_package(name: str) -> None:
    """Register ``name`` as a package without running its ``__init__``."""
    if name in sys.modules:
        return
    parent, _, leaf = name.rpartition(".")
    if parent:
        _stub_package(parent)
        path = [os.path.join(p, leaf) for p in sys.modules[parent].__path__]
    else:
        path = [os.path.join(r, name) for r in sys.path if os.path.isdir(os.path.join(r or ".", name))][:1]
    module = types.ModuleType(name)
    module.__path__ = path
    module.__package__ = name
    sys.modules[name] = module


def arch_module(package: str, arch: str, module: str):
    """Import ``<package>.architectures.<arch>.__arch.<module>`` (e.g. spandrel's NAFNet_arch).

    Without torchvision, ``spandrel/__init__`` cannot run (its registry imports LaMa and RestoreFormer,
    which need it): then ``spandrel`` is registered as a bare package so only the architecture modules
    (and the helpers they import) load."""
    name = f"{package}.architectures.{arch}.__arch.{module}"
    try:   # the converter's own importer (real packages, placeholders for what needs torchvision)
        from tlc_export.load.spandrel_arches import spandrel_registry

        if spandrel_registry().registry is not None:
            return importlib.import_module(name)
    except ImportError:
        pass
    if "spandrel" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        _stub_package("spandrel")
    _stub_package(f"{package}.architectures.{arch}")   # its __init__ imports spandrel's registry API
    return importlib.import_module(name)


def _scale_modules(model: nn.Module, class_name: str, factor: float) -> None:
    """Multiply the output conv of every ``class_name`` module's branch by ``factor`` (weights and
    bias of its last Conv2d before the attention)."""
    with torch.no_grad():
        for m in model.modules():
            if type(m).__name__ == class_name:
                last = [c for c in m.modules() if isinstance(c, nn.Conv2d)][1]
                last.weight.mul_(factor)
                if last.bias is not None:
                    last.bias.mul_(factor)


def perturb(model: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Add seeded noise to every parameter and to BatchNorm statistics: constant-initialised tensors
    (zeros, ones) get absolute noise of ``scale``, the rest noise of ``scale`` times their own spread."""
    gen = torch.Generator().manual_seed(seed)
    # RCAN's MeanShift is a fixed normalisation (−rgb_range·mean), not a learned layer: trained
    # checkpoints hold it exactly, and the loader reads rgb_range from it.
    fixed = {f"{path}.{n}" for path, m in model.named_modules() if type(m).__name__ == "MeanShift"
             for n, _ in m.named_parameters()}
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name in fixed:
                continue
            spread = p.std().item() if p.numel() > 1 else 0.0
            noise = torch.randn(p.shape, generator=gen, dtype=p.dtype)
            p.add_(noise * (scale * spread if spread > 1e-8 else scale))
            if name.rsplit(".", 1)[-1] in ("temperature", "rescale"):
                p.mul_(4.0)   # sharper attention: at 1, softmax over unit-vector products is near uniform
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.add_(torch.randn(m.running_mean.shape, generator=gen) * 0.05)
                m.running_var.mul_(1 + 0.2 * torch.rand(m.running_var.shape, generator=gen))
    return model.eval()


@dataclass
class Arch:
    name: str
    package: str          # spandrel or spandrel_extra_arches
    folder: str           # folder under architectures/
    module: str           # file under __arch/
    cls: str
    kwargs: dict
    multiple: int = 8     # H and W must be multiples of this
    sizes: tuple = ((96, 80), (128, 40))   # all-windows-smaller, mixed
    # class names whose modules hold one global op each (the true count walks the module tree)
    global_classes: tuple = ()
    # (class name, reason): global ops inside such modules are expected to stay global; a name ending
    # in "!" means the module's own op only, not the global ops of its children
    kept: tuple = ()
    note: str = ""
    patch: Callable[[nn.Module], None] | None = None
    perturb_scale: float = 0.3   # larger where the TLC effect would be too small to test (RCAN)

    def build(self, seed: int = 0) -> nn.Module:
        cls = getattr(arch_module(self.package, self.folder, self.module), self.cls)
        torch.manual_seed(seed)
        model = cls(**self.kwargs)
        if self.patch is not None:
            self.patch(model)
        return perturb(model, seed + 1, self.perturb_scale)


POOL = "AdaptiveAvgPool2d"

ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("NAFNet", "spandrel", "NAFNet", "NAFNet_arch", "NAFNet",
         dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), 4, global_classes=(POOL,)),
    Arch("KBNet_s", "spandrel", "KBNet", "kbnet_s", "KBNet_s",
         dict(width=16, middle_blk_num=1, enc_blk_nums=[1, 1], dec_blk_nums=[1, 1]), 4, global_classes=(POOL,)),
    Arch("KBNet_l", "spandrel", "KBNet", "kbnet_l", "KBNet_l",
         dict(dim=24, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2]), 8,
         global_classes=(POOL, "TransAttention")),
    Arch("Restormer", "spandrel_extra_arches", "Restormer", "restormer_arch", "Restormer",
         dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2]), 8,
         global_classes=("Attention",)),
    Arch("MPRNet", "spandrel_extra_arches", "MPRNet", "MPRNet", "MPRNet",
         dict(n_feat=8, scale_unetfeats=4, scale_orsnetfeats=4, num_cab=1, reduction=2), 16,
         sizes=((96, 80), (128, 48)), global_classes=(POOL,)),
    Arch("MIRNet_v2", "spandrel_extra_arches", "MIRNet2", "mirnet_v2_arch", "MIRNet_v2",
         dict(n_feat=16, chan_factor=1.5, n_MRB=1), 8, global_classes=(POOL, "ContextBlock"),
         kept=(("ContextBlock", "softmax-weighted pool over all pixels (an H·W MatMul contraction)"),)),
    Arch("RCAN", "spandrel", "RCAN", "rcan_arch", "RCAN",
         dict(scale=2, n_resgroups=2, n_resblocks=2, n_feats=16, reduction=2, rgb_range=1), 1, global_classes=(POOL,),
         perturb_scale=1.0),
    Arch("HAT", "spandrel", "HAT", "HAT", "HAT",
         dict(img_size=64, embed_dim=12, depths=(1,), num_heads=(2,), window_size=8, compress_ratio=3,
              squeeze_factor=4, conv_scale=0.01, upscale=2, num_feat=16, mlp_ratio=2.0), 8, global_classes=(POOL,),
         # conv_scale is not in the state dict: spandrel assumes the official 0.01; the CAB branch's
         # own weights are scaled up instead, so its channel attention's TLC effect is testable
         patch=lambda m: _scale_modules(m, "CAB", 100.0)),
    Arch("DRCT", "spandrel", "DRCT", "drct_arch", "DRCT",
         dict(img_size=64, embed_dim=12, depths=(1,), num_heads=(2,), window_size=8, upscale=2,
              upsampler="pixelshuffle", gc=8, mlp_ratio=2.0), 8, global_classes=(POOL,)),
    Arch("DAT", "spandrel", "DAT", "DAT", "DAT",
         dict(img_size=64, embed_dim=16, depth=[2], num_heads=[2], split_size=[2, 4], expansion_factor=2.0,
              upscale=2), 8, global_classes=(POOL, "Adaptive_Channel_Attention"),
         kept=(("Adaptive_Spatial_Attention", "pooled (B, C, 1, 1) vector viewed as one (B, 1, C) token"),
               ("Adaptive_Channel_Attention!", "transposed attention over channels-last (B, N, C) tokens, which "
                                               "the attention kind does not localise (its pool is localised)"))),
    Arch("SAFMN", "spandrel", "SAFMN", "safmn", "SAFMN", dict(dim=8, n_blocks=1, upscaling_factor=2), 8,
         global_classes=(POOL,)),
    Arch("OmniSR", "spandrel", "OmniSR", "OmniSR", "OmniSR",
         dict(num_feat=16, block_num=1, window_size=8, res_num=1, up_scale=2), 8,
         global_classes=(POOL, "Channel_Attention_grid", "SqueezeExcitation"), perturb_scale=1.0,
         kept=(("Channel_Attention_grid", "attention over the dilated pixel grid (an H·W contraction in a layout "
                                          "the attention kind does not localise)"),)),
    Arch("SeemoRe", "spandrel", "SeemoRe", "seemore_arch", "SeemoRe",
         dict(scale=2, num_experts=2, num_layers=1, embedding_dim=16, recursive=1, topk=1), 4,
         global_classes=(POOL,),
         kept=(("Router", "pooled vector flattened to (N, C) and fed to a Linear choosing the experts"),)),
    Arch("MixDehazeNet", "spandrel", "MixDehazeNet", "MixDehazeNet", "MixDehazeNet",
         dict(embed_dims=[8, 16, 32, 16, 8], depths=[1, 1, 1, 1, 1]), 4, global_classes=(POOL,)),
    Arch("RealPLKSR", "spandrel", "PLKSR", "RealPLKSR", "RealPLKSR",
         dict(dim=16, n_blocks=2, upscaling_factor=2, kernel_size=7, norm_groups=4), 1,
         global_classes=("GroupNorm",)),
    Arch("RetinexFormer", "spandrel", "RetinexFormer", "retinexformer_arch", "RetinexFormer",
         dict(n_feat=16, stage=1, num_blocks=[1, 1, 1]), 4, global_classes=("IG_MSA",),
         kept=(("IG_MSA", "transposed attention on channels-last Linear q/k/v (k·qᵀ over H·W), which the "
                          "attention kind does not localise"),)),
    Arch("M3SNet", "spandrel_extra_arches", "M3SNet", "M3SNet", "M3SNet",
         dict(width=8, middle_blk_num=1, enc_blk_nums=[1, 1, 1, 1], dec_blk_nums=[1, 1, 1, 1]), 16,
         sizes=((96, 80), (128, 48)), global_classes=(POOL, "Attention")),
    # nb=2: with nb=1 FBCNN's sequential() collapses m_body_encoder and spandrel cannot detect it.
    Arch("FBCNN", "spandrel", "FBCNN", "FBCNN", "FBCNN", dict(nc=[16, 32, 64, 512], nb=2), 8,
         global_classes=(POOL, "InstanceNorm2d"),
         kept=(("qf_pred", "pooled vector flattened and fed to Linear layers (the JPEG quality predictor)"),)),
    Arch("DITN", "spandrel", "DITN", "DITN_Real", "DITN_Real",
         dict(dim=12, ITL_blocks=1, SAL_blocks=1, UFONE_blocks=1, patch_size=8, upscale=2), 8,
         global_classes=(),
         note="its only attention (ISA) runs on fixed 8×8 patches (UFONE cuts the map into patch_size "
              "patches): the window always covers its map, so there is no global op over the image"),
]}


def sample_image(h: int, w: int, seed: int = 0, channels: int = 3) -> torch.Tensor:
    """A [0, 1] image whose local statistics vary across it (ramps, a blob, texture, noise), so local
    and global aggregates differ: uniform noise has nearly equal means in every window."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(h, dtype=torch.float64).reshape(h, 1)
    x = torch.arange(w, dtype=torch.float64).reshape(1, w)
    planes = []
    for c in range(channels):
        ramp = (0.15 + 0.7 * x / w) if c % 2 == 0 else (0.85 - 0.7 * y / h)
        blob = 0.3 * torch.exp(-(((y - h * 0.3) / (h * 0.2)) ** 2 + ((x - w * (0.3 + 0.2 * c)) / (w * 0.2)) ** 2))
        texture = 0.1 * torch.sin(y / (3 + c)) * torch.cos(x / 5)
        planes.append(ramp + blob + texture)
    image = torch.stack(planes)[None] + 0.05 * torch.randn(1, channels, h, w, generator=gen, dtype=torch.float64)
    return image.clamp(0, 1).float()


def _is_global_module(m: nn.Module, classes: tuple) -> bool:
    name = type(m).__name__
    if name not in classes:
        return False
    if isinstance(m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        size = m.output_size
        return size == 1 or tuple(size) == (1, 1)
    if name in ("Attention", "TransAttention"):
        return hasattr(m, "qkv_dwconv")     # OmniSR's windowed Attention has none
    return True


def true_counts(arch: Arch, model: nn.Module, size=(64, 64)) -> tuple[int, int, int, int]:
    """Walk the module tree for the modules whose class holds a global op and count, on one forward,
    (calls, calls expected kept global, distinct aggregations, distinct kept): two modules pooling the
    same tensor (MixDehazeNet's Wg and ca) are one aggregation in an exported graph. 'Kept' ones run
    inside a module named in ``arch.kept``."""
    calls, inputs, alive = [], {}, []   # inputs stay alive so no two share a freed data pointer
    kept_names = {name for name, _ in arch.kept}
    handles = []
    for path, m in model.named_modules():
        if _is_global_module(m, arch.global_classes):
            chain = list(_ancestors(model, path))
            inside_kept = any(type(p).__name__ in kept_names or part in kept_names for part, p in chain) \
                or bool(chain and {type(chain[-1][1]).__name__ + "!", chain[-1][0] + "!"} & kept_names)

            def hook(mod, inp, out, kept=inside_kept):
                calls.append(kept)
                x = inp[0][0] if isinstance(inp[0], (list, tuple)) else inp[0]
                alive.append(x)
                inputs[(x.data_ptr(), tuple(x.shape), type(mod).__name__ == "AdaptiveAvgPool2d")] = kept
            handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.rand(1, 3, *size))
    finally:
        for h in handles:
            h.remove()
    return len(calls), sum(calls), len(inputs), sum(inputs.values())


def _ancestors(model: nn.Module, path: str):
    """(name, module) for every module on the way from the root to ``path`` (inclusive)."""
    m = model
    for part in path.split(".") if path else []:
        m = getattr(m, part)
        yield part, m
