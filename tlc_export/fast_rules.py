"""The rules of the official approximate TLC (``fast_imp``) that need no tensor library.

Shared by the eager reference (``reference.fast``) and the graph rewrite (``rewrite.fast``), so the
ONNX path keeps working without PyTorch.
"""
from __future__ import annotations

# Subsampling factors tried in order; the first dividing the map size wins (then capped at max_r).
FACTORS = (5, 4, 3, 2, 1)
# The op kinds fast mode changes: group norm has no official fast mode and Restormer's attention
# ignores the flag, so both stay exact.
FAST_KINDS = ("avgpool", "instancenorm")


def max_factor(map_size: int, calib_size: int) -> int:
    """The official ``max_r`` of one axis: the op's downsampling factor seen by 5-fold subsampling,
    ``max(1, 5·map_at_calib // calib_size)``."""
    return max(1, FACTORS[0] * int(map_size) // int(calib_size))


def max_factors(window: tuple[int, int], calib: tuple[int, int]) -> tuple[int, int]:
    """``max_factor`` of both axes of an op whose window (its map at calibration) is ``window``."""
    return max_factor(window[0], calib[0]), max_factor(window[1], calib[1])


def subsampling_factor(size: int, max_r: int) -> int:
    """The first of 5, 4, 3, 2, 1 dividing ``size``, capped at ``max_r`` (the cap need not divide)."""
    return min(int(max_r), next(r for r in FACTORS if size % r == 0))
