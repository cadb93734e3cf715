"""Benchmark: median latency of the global graph, the TLC graph, the eager reference (global and
local) and overlapping-patch inference, on the same input in one process, with ratios to the global
graph. Timings are interleaved (one run of each contender per round) so that load from elsewhere on
the machine spreads over all of them instead of biasing one.
"""
from __future__ import annotations

import copy
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

PATCH = 256
PATCH_OVERLAPS = (16, 128)


def patch_starts(size: int, patch: int, overlap: int) -> list[int]:
    """Tile origins covering ``size`` with ``patch``-sized tiles overlapping by at least ``overlap``."""
    if size <= patch:
        return [0]
    stride = patch - overlap
    starts = list(range(0, size - patch, stride)) + [size - patch]
    return sorted(set(starts))


def patch_inference(run: Callable[[np.ndarray], np.ndarray], x: np.ndarray, patch: int = PATCH,
                    overlap: int = 16, multiple: int = 1) -> np.ndarray:
    """Restore ``x`` tile by tile with the global model; overlapping outputs are averaged."""
    n, c, h, w = x.shape
    ph, pw = min(patch, h) // multiple * multiple, min(patch, w) // multiple * multiple
    out = None
    count = np.zeros((1, 1, h, w), dtype=np.float32)
    for i in patch_starts(h, ph, overlap):
        for j in patch_starts(w, pw, overlap):
            y = run(np.ascontiguousarray(x[:, :, i:i + ph, j:j + pw]))
            if out is None:
                out = np.zeros((n, y.shape[1], h, w), dtype=np.float32)
            out[:, :, i:i + ph, j:j + pw] += y
            count[:, :, i:i + ph, j:j + pw] += 1
    return out / count


@dataclass
class BenchRow:
    name: str
    median_ms: float
    ratio_to_global_graph: float | None = None
    runs: list[float] = field(default_factory=list)


@dataclass
class BenchReport:
    model: str
    input_shape: list[int]
    calib: list[int]
    threads: int
    runs: int
    machine: str
    rows: list[BenchRow]

    def table(self) -> str:
        lines = [f"{self.model}: input {'x'.join(map(str, self.input_shape))}, calib {self.calib[0]}x{self.calib[1]}, "
                 f"{self.threads} threads, median of {self.runs} runs",
                 f"{'contender':34s} {'median ms':>10s} {'x global graph':>15s}"]
        for r in self.rows:
            ratio = "" if r.ratio_to_global_graph is None else f"{r.ratio_to_global_graph:.3f}"
            lines.append(f"{r.name:34s} {r.median_ms:10.1f} {ratio:>15s}")
        return "\n".join(lines)

    def as_dict(self) -> dict:
        return asdict(self)


def machine_description() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}"


def run_benchmark(contenders: dict[str, Callable[[], object]], runs: int = 5, warmup: int = 1,
                  clock: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Interleaved timing: ``warmup`` untimed rounds, then ``runs`` rounds of one call per contender.
    ``clock``: wall clock by default; ``time.thread_time`` measures the calling thread's CPU time (with
    one intra-op thread the work of a contender, whatever else loads the machine)."""
    from .progress import bar

    times = {name: [] for name in contenders}
    with bar((warmup + runs) * len(contenders), "benchmark", "run") as b:
        for _ in range(warmup):
            for fn in contenders.values():
                fn()
                b.update(1)
        for _ in range(runs):
            for name, fn in contenders.items():
                start = clock()
                fn()
                times[name].append(1000 * (clock() - start))
                b.update(1)
    return times


def bench_model(module: nn.Module, tlc_onnx, global_onnx, x: np.ndarray, calib: tuple[int, int], *,
                threads: int = 2, runs: int = 5, final_stage_last: bool = False, multiple: int = 1,
                name: str = "model", eager: bool = True, patches: bool = True, progress=None,
                fast_onnx=None, clock: Callable[[], float] = time.perf_counter,
                release_memory: bool = False) -> BenchReport:
    """Time every contender on ``x``; ratios are to the global ONNX graph. ``fast_onnx``: also the graph
    converted with --fast (and, with ``eager``, the eager fast reference). ``release_memory``: sessions
    without a memory arena, so full-size graphs (720x1280) fit side by side in memory; every graph
    contender pays the same per-run allocation."""
    from .reference import to_local
    from .runtime import ort_session

    torch.set_num_threads(threads)
    tlc = ort_session(tlc_onnx, threads=threads, release_memory=release_memory)
    glob = ort_session(global_onnx, threads=threads, release_memory=release_memory)
    in_name = glob.get_inputs()[0].name

    def graph_run(session):
        return lambda arr: session.run(None, {in_name: arr})[0]

    contenders: dict[str, Callable[[], object]] = {
        "global graph (ONNX Runtime)": lambda: glob.run(None, {in_name: x}),
        "TLC graph (ONNX Runtime)": lambda: tlc.run(None, {in_name: x}),
    }
    if fast_onnx is not None:
        fast = ort_session(fast_onnx, threads=threads, release_memory=release_memory)
        contenders["fast TLC graph (ONNX Runtime)"] = lambda: fast.run(None, {in_name: x})
    if eager:
        local, _ = to_local(copy.deepcopy(module), calib)
        xt = torch.from_numpy(x)

        def eager_run(m):
            def call():
                with torch.no_grad():
                    return m(xt)
            return call

        contenders["eager global (PyTorch)"] = eager_run(module.eval())
        contenders["eager TLC reference (PyTorch)"] = eager_run(local.eval())
        if fast_onnx is not None:
            fast_local, _ = to_local(copy.deepcopy(module), calib, fast=True)
            contenders["eager fast TLC reference (PyTorch)"] = eager_run(fast_local.eval())
    if patches:
        for overlap in PATCH_OVERLAPS:
            contenders[f"patches {PATCH}px, overlap {overlap} (ORT)"] = (
                lambda ov=overlap: patch_inference(graph_run(glob), x, PATCH, ov, multiple))
    if progress:
        progress(f"timing {len(contenders)} contenders x {runs} runs")
    times = run_benchmark(contenders, runs=runs, clock=clock)
    base = float(np.median(times["global graph (ONNX Runtime)"]))
    rows = [BenchRow(n, float(np.median(t)), float(np.median(t)) / base, [round(v, 2) for v in t])
            for n, t in times.items()]
    return BenchReport(name, list(x.shape), list(calib), threads, runs, machine_description(), rows)
