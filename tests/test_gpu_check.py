"""benchmarks/gpu_check.py: its CPU part (Triton interpreter, tiny sizes and tiny models) and its clean
skip without CUDA. The interpreter must be on before triton is imported, hence the subprocesses."""
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="triton is not installed (pip install triton==3.9.0)")


def _run(args, interpret: bool, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    if interpret:
        env["TRITON_INTERPRET"] = "1"
    env["OMP_NUM_THREADS"] = "1"
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, cwd=str(tmp_path),
                          capture_output=True, text=True, timeout=600)


@needs_triton
def test_cpu_smoke_checks_kernels_and_models(tmp_path):
    out = tmp_path / "check.json"
    proc = _run(["--cpu-smoke", "--out", str(out)], True, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["ok"] and result["skipped_parts"] == []
    checks = result["correctness"]
    assert {c["dtype"] for c in checks} == {"float32", "float16"}
    assert all(c["ok"] and c["mean_max_abs"] <= c["atol"]["mean"] for c in checks)
    assert all(r["local_mean_ms"] > 0 and r["global_mean_ms"] > 0 for r in result["kernel_speed"])
    models = {r["model"]: r for r in result["models"]}
    assert set(models) == {"NAFNet-GoPro-width64", "Restormer-motion_deblurring"}
    nafnet = models["NAFNet-GoPro-width64"]
    # The Triton-served model computes the same function as the eager reference.
    assert nafnet["ops_on_triton"] > 0 and nafnet["triton_vs_reference_max_abs"] <= 1e-5
    assert [c["name"] for c in nafnet["contenders"]][:3] == ["eager global", "TLC reference", "TLC fast reference"]
    assert models["Restormer-motion_deblurring"]["ops_on_triton"] == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the check would run")
def test_without_cuda_it_skips_with_the_reason(tmp_path):
    proc = _run(["--out", str(tmp_path / "x.json")], False, tmp_path)
    assert proc.returncode == 0
    assert "skipped" in proc.stdout and "CUDA" in proc.stdout
    assert not (tmp_path / "x.json").exists()
