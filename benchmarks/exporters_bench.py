"""Both ONNX exporters side by side on the zoo families and a few spandrel architectures.

For each model and exporter: conversion time (load → export → second-size check → rewrite → check),
exactness of the TLC graph against the eager TLC reference (``to_local``) at a size other than the
calibration size, and the TLC graph's median ONNX Runtime latency (interleaved runs, 1 thread).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/exporters_bench.py [--json out.json]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]   # this checkout's tlc_export, and the tests' small configs
from conftest import SMALL, perturb_identity_params  # noqa: E402

from tlc_export import zoo  # noqa: E402
from tlc_export.api import convert  # noqa: E402
from tlc_export.errors import UserError  # noqa: E402
from tlc_export.load.spandrel_arches import spandrel_registry  # noqa: E402
from tlc_export.reference import to_local  # noqa: E402
from tlc_export.runtime import ort_session  # noqa: E402

CALIB = (32, 32)
SIZE = (1, 3, 64, 96)
RESTORMER = dict(dim=8, num_blocks=[1, 1, 1, 1], num_refinement_blocks=1, heads=[1, 1, 2, 2])


def models():
    out = {f"zoo:{f}": (f, kw) for f, kw in SMALL.items()}
    out["zoo:restormer"] = ("restormer", RESTORMER)
    found = spandrel_registry()
    if found.registry is not None:
        import spandrel.architectures.NAFNet as nafnet
        import spandrel.architectures.RCAN as rcan

        out["spandrel:NAFNet"] = (lambda: nafnet.NAFNet(width=8, middle_blk_num=1, enc_blk_nums=[1, 1],
                                                        dec_blk_nums=[1, 1]), None)
        out["spandrel:RCAN"] = (lambda: rcan.RCAN(scale=2, n_resgroups=1, n_resblocks=1, n_feats=8,
                                                  reduction=4), None)
    return out


def build(spec):
    make, kwargs = spec
    torch.manual_seed(0)
    net = zoo.build(make, **kwargs) if isinstance(make, str) else make()
    return perturb_identity_params(net).eval(), (make if isinstance(make, str) else None), kwargs


def final(out, family):
    if isinstance(out, (list, tuple)):
        return out[-1] if family == "hinet" else out[0]
    return out


def latency(path, x, runs=7):
    session = ort_session(path, threads=1)
    name = session.get_inputs()[0].name
    session.run(None, {name: x})
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        session.run(None, {name: x})
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure(name, spec, exporter, tmp):
    model, family, kwargs = build(spec)
    ckpt = tmp / f"{name.replace(':', '_')}.pth"
    torch.save(model.state_dict(), ckpt)
    arch = dict(arch=family, arch_kwargs=kwargs) if family else {}
    start = time.perf_counter()
    try:
        result = convert(ckpt, CALIB, output=tmp / f"{name.replace(':', '_')}.{exporter}.onnx",
                         exporter=exporter, **arch)
    except UserError as exc:
        return {"error": str(exc)[:200]}
    seconds = time.perf_counter() - start
    local, _ = to_local(copy.deepcopy(model), CALIB)
    x = torch.rand(SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want = final(local(x.clone()), family).numpy()
    session = ort_session(result.onnx_path)
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    return {"convert_s": round(seconds, 2), "max_abs": float(np.abs(got - want).max()),
            "latency_ms": round(1000 * latency(result.onnx_path, x.numpy()), 2),
            "rewritten": len(result.report["rewritten"]), "exporter_used": result.report["exporter"],
            "nodes": len(result.model.graph.node)}


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--json")
    parser.add_argument("--only", help="comma-separated model names")
    args = parser.parse_args()
    table = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, spec in models().items():
            if args.only and name not in args.only.split(","):
                continue
            table[name] = {ex: measure(name, spec, ex, Path(tmp)) for ex in ("torchscript", "dynamo")}
            print(name, json.dumps(table[name]), flush=True)
    print("\n| model | exporter | convert s | max abs vs eager | TLC latency ms | nodes | rewritten |")
    print("|---|---|---|---|---|---|---|")
    for name, row in table.items():
        for ex, r in row.items():
            if "error" in r:
                print(f"| {name} | {ex} | refused: {r['error'][:90]} | | | | |")
            else:
                print(f"| {name} | {ex} | {r['convert_s']} | {r['max_abs']:.1e} | {r['latency_ms']} | {r['nodes']} | "
                      f"{r['rewritten']} |")
    if args.json:
        Path(args.json).write_text(json.dumps(table, indent=2) + "\n")


if __name__ == "__main__":
    main()
