"""Parity assertions for users' own tests (pytest or unittest).

    from tlc_export.testing import assert_parity

    def test_my_export():
        assert_parity("model.pth", "model.tlc.onnx", calib=(384, 384), sizes=[(512, 768)], atol=1e-5)
"""
from __future__ import annotations

import copy
from pathlib import Path

from torch import nn

from .verify import VerifyReport, random_inputs, verify, verify_checkpoint


def assert_parity(model: nn.Module | str | Path, onnx_path: str | Path, calib: tuple[int, int], *,
                  sizes: list[tuple[int, int]] | None = None, atol: float = 1e-5, arch: str | None = None,
                  arch_kwargs: dict | None = None, channels: int | None = None, photo: bool = False,
                  batch: int = 1, fast: bool = False) -> VerifyReport:
    """Raise ``AssertionError`` with a readable table unless the graph at ``onnx_path`` matches the eager
    TLC reference of ``model`` (a module, or a checkpoint path as given to the converter) within ``atol``
    at every size in ``sizes``."""
    if isinstance(model, (str, Path)):
        report = verify_checkpoint(model, onnx_path, calib, arch=arch, arch_kwargs=arch_kwargs, sizes=sizes,
                                   atol=atol, photo=photo, batch=batch, fast=fast)
    else:
        from .reference import to_local
        from .reference.convert import run_on_image

        local, _ = to_local(copy.deepcopy(model), calib, fast=fast)
        c = channels or run_on_image(copy.deepcopy(model).eval(), calib)
        inputs = random_inputs(c, sizes or [(calib[0] + 16, calib[1] + 24)], batch=batch)
        report = verify(local, str(onnx_path), inputs, global_model=model, atol=atol)
    if not report.passed:
        raise AssertionError(f"{onnx_path} differs from the eager TLC reference:\n{report.table()}")
    return report
