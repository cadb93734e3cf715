"""The eager PyTorch TLC reference that every exported graph is checked against."""
from .convert import LocalOpRecord, calibrate, find_functional_means, global_kind, local_ops, replace_functional_means, replace_global_modules, to_local
from .norm import LocalGroupNorm, LocalInstanceNorm2d
from .fast import fast_layout, fast_local_mean, max_factor
from .pooling import LocalAvgPool2d, clamp_window, local_mean, replicate_pad_to

__all__ = [
    "LocalAvgPool2d", "LocalGroupNorm", "LocalInstanceNorm2d", "LocalOpRecord", "calibrate", "clamp_window",
    "fast_layout", "fast_local_mean", "max_factor",
    "find_functional_means", "global_kind",
    "local_mean", "local_ops", "replace_functional_means", "replace_global_modules", "replicate_pad_to", "to_local",
]
