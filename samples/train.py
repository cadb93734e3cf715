#!/usr/bin/env python
"""Train a small NAFNet or HINet on 64x64 crops of scikit-image photos and measure TLC on full photos.

The point (issue 5): restoration networks are trained on small crops but run on whole images, so their
global operations (NAFNet's channel-attention ``AdaptiveAvgPool2d(1)``, HINet's half instance norm) see
different statistics at test time. This script trains such a network on patches, then evaluates the
held-out photos at full resolution twice: with the global ops as trained ("global") and with TLC
(``tlc_export.reference.to_local``) at several calibration sizes.

    python samples/train.py --arch nafnet --out samples/models/nafnet_denoise.pth
    python samples/train.py --arch hinet  --out samples/models/hinet_denoise.pth

Writes ``<out>`` as ``{"params": state_dict}`` (basicsr style; loads with
``tlc_export.load.load_model(path, arch=..., arch_kwargs=...)``) and ``<out>.json`` (provenance and
all held-out PSNRs). CPU only, seeded: the same command on the same torch build and thread count gives
the same weights. Data split and degradations: see ``samples/photo_data.py``.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import photo_data  # noqa: E402
from tlc_export import zoo  # noqa: E402
from tlc_export.reference import to_local  # noqa: E402

# Small configurations (official constructor keyword names).
DEFAULT_ARCH_KWARGS = {
    # Channel attention (sca = AdaptiveAvgPool2d(1) + 1x1 conv) in every block; 3 downsamplings.
    "nafnet": dict(img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=[1, 1, 1], dec_blk_nums=[1, 1, 1]),
    # Half instance norm in every encoder level (the official SIDD denoising setting: left 0, right 4 of 5).
    "hinet": dict(in_chn=3, wf=16, depth=3, relu_slope=0.2, hin_position_left=0, hin_position_right=2),
}
DEFAULT_LR = {"nafnet": 1e-3, "hinet": 1e-3}
CALIB_SIZES = (64, 96, 128, 192, 256, 384, 512)


def build_model(arch: str, arch_kwargs: dict) -> torch.nn.Module:
    return zoo.build(arch, **arch_kwargs)


def final_output(out):
    """HINet returns [stage1, stage2]; the restored image is the last one."""
    return out[-1] if isinstance(out, (list, tuple)) else out


def psnr_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """basicsr ``PSNRLoss`` (toY=False): mean over the batch of 10*log10(MSE + 1e-8); lower is better."""
    mse = ((pred - target) ** 2).mean(dim=(1, 2, 3))
    return (10.0 / math.log(10.0)) * torch.log(mse + 1e-8).mean()


def compute_loss(out, target: torch.Tensor, kind: str) -> torch.Tensor:
    """The loss on every output (HINet supervises both stages, as officially)."""
    outs = out if isinstance(out, (list, tuple)) else [out]
    fn = psnr_loss if kind == "psnr" else (lambda p, t: F.l1_loss(p, t))
    return sum(fn(o, target) for o in outs)


def train(arch: str, arch_kwargs: dict | None = None, *, steps: int = 4000, patch: int = 64, batch: int = 8,
          seed: int = 0, lr: float | None = None, loss: str = "psnr", task: str = "denoise",
          sigma: float | tuple[float, float] = 25.0, blur_sigma: float | tuple[float, float] = 2.0,
          photos=photo_data.TRAIN_PHOTOS,
          log_every: int = 100, log=print) -> tuple[torch.nn.Module, dict]:
    """Train from scratch; returns the model (eval mode) and a summary (losses, time)."""
    arch_kwargs = dict(DEFAULT_ARCH_KWARGS[arch] if arch_kwargs is None else arch_kwargs)
    lr = DEFAULT_LR[arch] if lr is None else lr
    torch.manual_seed(seed)
    model = build_model(arch, arch_kwargs)
    multiple = zoo.input_multiple(arch, model)
    if patch % multiple:
        raise ValueError(f"patch {patch} is not a multiple of {multiple} (required by {arch})")
    sampler = photo_data.PatchSampler(photos, patch=patch, seed=seed)
    noise_gen = torch.Generator().manual_seed(seed + 1)
    # NAFNet's official optimiser setting (AdamW betas 0.9/0.9, no weight decay here) and cosine annealing.
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.9))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=lr * 1e-3)
    model.train()
    losses = []
    start = time.perf_counter()
    for step in range(1, steps + 1):
        clean = sampler.sample(batch)
        noisy = photo_data.degrade(clean, noise_gen, task, sigma, blur_sigma)
        value = compute_loss(model(noisy), clean, loss)
        if not torch.isfinite(value):
            raise FloatingPointError(f"loss is {value.item()} at step {step}")
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(value.detach()))
        if log is not None and (step % log_every == 0 or step == steps):
            window = losses[-log_every:]
            log(f"step {step:6d}/{steps}  loss {sum(window) / len(window):9.4f}  "
                f"lr {sched.get_last_lr()[0]:.2e}  {time.perf_counter() - start:7.1f}s")
    model.eval()
    tail = losses[-min(len(losses), 200):]
    summary = dict(train_seconds=round(time.perf_counter() - start, 1),
                   final_train_loss=sum(tail) / len(tail), final_train_loss_window=len(tail),
                   arch_kwargs=arch_kwargs, lr=lr)
    return model, summary


def save_checkpoint(model: torch.nn.Module, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save({"params": state}, str(path))
    return path


def psnr_8bit(pred: torch.Tensor, clean: torch.Tensor) -> float:
    """PSNR in dB of the 8-bit-rounded prediction against the clean image (all 3 channels)."""
    mse = float(((photo_data.quantize(pred) - clean) ** 2).mean())
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


@torch.no_grad()
def restore(model: torch.nn.Module, degraded: torch.Tensor, multiple: int) -> torch.Tensor:
    """Run on one full (3, H, W) image; reflect-pads to ``multiple`` when the network does not pad itself."""
    h, w = degraded.shape[-2:]
    x = degraded[None]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph or pw:
        x = F.pad(x, (0, pw, 0, ph), mode="reflect")
    out = final_output(model(x))
    return out[0, :, :h, :w].clamp(0.0, 1.0)


@torch.no_grad()
def restore_tiled(model: torch.nn.Module, degraded: torch.Tensor, tile: int) -> torch.Tensor:
    """Diagnostic: run on non-overlapping ``tile`` x ``tile`` crops (reflect-padded image), as in training.

    Every tile sees patch statistics like a training crop, at the price of no context across tile
    borders (the boundary artifacts TLC is meant to avoid).
    """
    h, w = degraded.shape[-2:]
    x = F.pad(degraded[None], (0, (-w) % tile, 0, (-h) % tile), mode="reflect")
    out = torch.empty_like(x)
    for top in range(0, x.shape[-2], tile):
        for left in range(0, x.shape[-1], tile):
            out[..., top:top + tile, left:left + tile] = final_output(
                model(x[..., top:top + tile, left:left + tile]))
    return out[0, :, :h, :w].clamp(0.0, 1.0)


def evaluate(model: torch.nn.Module, arch: str, pairs, calib_sizes=CALIB_SIZES, tiles=()) -> dict:
    """Held-out PSNRs: the degraded input, the global model, TLC at each calibration size, and (diagnostic)
    the global model run tile by tile at each size in ``tiles``."""
    multiple = zoo.input_multiple(arch, model)
    model.eval()
    result = {"input": {n: psnr_8bit(d, c) for n, d, c in pairs}}
    result["global"] = {n: psnr_8bit(restore(model, d, multiple), c) for n, d, c in pairs}
    result["tiled"] = {str(t): {n: psnr_8bit(restore_tiled(model, d, t), c) for n, d, c in pairs}
                       for t in tiles}
    result["tlc"] = {}
    result["tlc_windows"] = {}
    for size in calib_sizes:
        local, records = to_local(copy.deepcopy(model), calib=(size, size))
        result["tlc"][str(size)] = {n: psnr_8bit(restore(local, d, multiple), c) for n, d, c in pairs}
        result["tlc_windows"][str(size)] = sorted({f"{r.kind}:{r.window[0]}x{r.window[1]}" for r in records})
    mean = lambda d: sum(d.values()) / len(d)  # noqa: E731
    result["mean"] = {"input": mean(result["input"]), "global": mean(result["global"]),
                      **{f"tlc{s}": mean(v) for s, v in result["tlc"].items()},
                      **{f"tiled{t}": mean(v) for t, v in result["tiled"].items()}}
    return result


TILED_NOTE = ("diagnostic, not TLC: the global model run on non-overlapping tiles (reflect-padded image), "
              "so every tile has training-like statistics but no context across tile borders")


def eval_only(args, calib, tiles) -> int:
    """Re-run the held-out evaluation of an existing checkpoint and update its provenance file."""
    from tlc_export.load import load_model

    out = Path(args.out)
    json_path = out.with_suffix(".json")
    meta = json.loads(json_path.read_text())
    loaded = load_model(out, arch=meta["arch"], arch_kwargs=meta["arch_kwargs"])
    deg = meta["degradation"]
    start = time.perf_counter()
    pairs = photo_data.heldout_pairs(deg["task"], deg["sigma_255"], deg.get("blur_sigma_heldout", 2.0))
    results = evaluate(loaded.module, meta["arch"], pairs, calib, tiles)
    meta["eval_seconds"] = round(time.perf_counter() - start, 1)
    meta["eval"].update(calib_sizes=list(calib), tiled=TILED_NOTE, tile_sizes=list(tiles))
    meta["heldout_psnr"] = results
    meta["eval_command"] = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    json_path.write_text(json.dumps(meta, indent=2) + "\n")
    for key, value in results["mean"].items():
        print(f"held-out mean PSNR {key:8s} {value:.3f} dB", flush=True)
    print(f"updated {json_path} (eval {meta['eval_seconds']}s)")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--arch", choices=sorted(DEFAULT_ARCH_KWARGS), required=True)
    p.add_argument("--out", required=True, help="checkpoint path (.pth); provenance goes next to it (.json)")
    p.add_argument("--arch-kwargs", default=None, help="JSON overriding the default small configuration")
    p.add_argument("--steps", type=int, default=4000)
    p.add_argument("--patch", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--loss", choices=("psnr", "l1"), default="psnr")
    p.add_argument("--task", choices=("denoise", "deblur"), default="denoise")
    p.add_argument("--sigma", type=float, default=25.0, help="noise std on the 0..255 scale")
    p.add_argument("--blur-sigma", type=float, default=2.0,
                   help="Gaussian blur std in pixels of the held-out photos (--task deblur)")
    p.add_argument("--train-blur-range", default=None,
                   help="LO,HI: training blur std drawn per crop from [LO, HI] (default: --blur-sigma)")
    p.add_argument("--train-sigma-range", default=None,
                   help="LO,HI: training noise std (0..255 scale) drawn per crop from [LO, HI] "
                        "(blind denoising; default: --sigma)")
    p.add_argument("--calib", default=",".join(map(str, CALIB_SIZES)), help="TLC calibration sizes to sweep")
    p.add_argument("--tiles", default=None,
                   help="diagnostic tile sizes for tile-by-tile inference (default: the patch and twice it)")
    p.add_argument("--eval-only", action="store_true",
                   help="do not train: re-evaluate the checkpoint at --out and refresh its .json")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    calib = tuple(int(s) for s in args.calib.split(","))
    tiles = tuple(int(s) for s in args.tiles.split(",")) if args.tiles else (args.patch, 2 * args.patch)
    if args.eval_only:
        return eval_only(args, calib, tiles)
    arch_kwargs = dict(DEFAULT_ARCH_KWARGS[args.arch])
    if args.arch_kwargs:
        arch_kwargs.update(json.loads(args.arch_kwargs))
    command = "python " + " ".join(shlex.quote(a) for a in ([sys.argv[0]] + list(argv if argv is not None
                                                                                     else sys.argv[1:])))
    print(f"{args.arch} {arch_kwargs}; task {args.task}, sigma {args.sigma}, patch {args.patch}, "
          f"batch {args.batch}, steps {args.steps}, seed {args.seed}", flush=True)
    train_blur = args.blur_sigma
    if args.train_blur_range:
        train_blur = tuple(float(v) for v in args.train_blur_range.split(","))
    train_sigma = args.sigma
    if args.train_sigma_range:
        train_sigma = tuple(float(v) for v in args.train_sigma_range.split(","))
    model, summary = train(args.arch, arch_kwargs, steps=args.steps, patch=args.patch, batch=args.batch,
                           seed=args.seed, lr=args.lr, loss=args.loss, task=args.task, sigma=train_sigma,
                           blur_sigma=train_blur, log_every=args.log_every,
                           log=lambda s: print(s, flush=True))
    out = save_checkpoint(model, args.out)

    start = time.perf_counter()
    pairs = photo_data.heldout_pairs(args.task, args.sigma, args.blur_sigma)
    results = evaluate(model, args.arch, pairs, calib, tiles)
    eval_seconds = round(time.perf_counter() - start, 1)
    for key, value in results["mean"].items():
        print(f"held-out mean PSNR {key:8s} {value:.3f} dB", flush=True)

    degradation = {"task": args.task, "noise": "additive white Gaussian, clipped to [0,1], rounded to 8 bits",
                   "sigma_255": args.sigma,
                   "sigma_255_train": (f"uniform in [{train_sigma[0]}, {train_sigma[1]}] per crop"
                                       if isinstance(train_sigma, tuple) else train_sigma),
                   "noise_seed_train": args.seed + 1,
                   "noise_seed_heldout": f"{photo_data.HELDOUT_SEED} + index of the photo"}
    if args.task == "deblur":
        degradation["blur"] = "isotropic Gaussian, reflect borders, before the noise"
        degradation["blur_sigma_heldout"] = args.blur_sigma
        degradation["blur_sigma_train"] = (f"uniform in [{train_blur[0]}, {train_blur[1]}] per crop"
                                           if isinstance(train_blur, tuple) else train_blur)
    n_params = sum(p.numel() for p in model.parameters())
    provenance = {
        "arch": args.arch,
        "arch_kwargs": arch_kwargs,
        "params": n_params,
        "checkpoint_format": '{"params": state_dict}',
        "data": {"source": f"skimage.data (scikit-image {__import__('skimage').__version__})",
                 "train": list(photo_data.TRAIN_PHOTOS), "heldout": list(photo_data.HELDOUT_PHOTOS),
                 "greyscale": "replicated to 3 channels",
                 "heldout_sizes": {n: list(c.shape[-2:]) for n, _, c in pairs},
                 "sampling": "random crops, photo chosen with probability proportional to its pixel count, "
                             "random horizontal flip and 90-degree rotation"},
        "degradation": degradation,
        "patch": args.patch, "steps": args.steps, "batch": args.batch, "seed": args.seed,
        "loss": {"psnr": "PSNRLoss (basicsr), on every output", "l1": "L1 on every output"}[args.loss],
        "optimizer": "Adam betas (0.9, 0.9), grad-norm clip 1.0", "lr": summary["lr"],
        "lr_schedule": "cosine annealing to lr*1e-3 over all steps",
        "command": command,
        "threads": args.threads,
        "torch": torch.__version__, "python": platform.python_version(),
        "train_seconds": summary["train_seconds"], "eval_seconds": eval_seconds,
        "final_train_loss": summary["final_train_loss"],
        "final_train_loss_note": f"mean over the last {summary['final_train_loss_window']} steps",
        "eval": {"resolution": "full (no resize); reflect-pad to the network multiple when it does not pad "
                               "itself (NAFNet zero-pads internally), crop back; output clipped and rounded "
                               "to 8 bits; PSNR over all 3 channels",
                 "tlc": "tlc_export.reference.to_local(model, calib=(s, s)) for each s in calib_sizes",
                 "calib_sizes": list(calib),
                 "tiled": TILED_NOTE, "tile_sizes": list(tiles),
                 "caveat": "the calibration sweep is run on the held-out photos themselves (no separate "
                           "validation split): the best TLC number is optimistic by construction"},
        "heldout_psnr": results,
    }
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(provenance, indent=2) + "\n")
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB) and {json_path}; train {summary['train_seconds']}s, "
          f"eval {eval_seconds}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
