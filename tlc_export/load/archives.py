"""Zip archives (``.pt2``, TorchScript) audited before PyTorch reads them: nothing in them may run code.

``torch.export.load`` unpickles weights and constants marked ``use_pickle``, opaque constants, legacy
weight files, and falls back to ``weights_only=False`` for the sample inputs; it also loads AOTInductor
shared libraries. ``torch.jit.load`` runs the archive's TorchScript ``__setstate__`` methods, and
TorchScript can write files (``torch.save``). Without ``--trust-pickle`` such archives are refused
here, by reading the zip directly, before any of that can happen.
"""
from __future__ import annotations

import io
import json
import pickle
import re
import zipfile
from pathlib import Path

import torch

from ..errors import UserError

TRUST_HINT = "re-run with --trust-pickle only if you trust its source"

# Entries a plain torch.export.save archive holds, under its top folder.
_PT2_ENTRIES = re.compile(r"(archive_format|archive_version|byteorder|\.data/.*|models/[^/]+\.json|"
                          r"data/weights/[^/]+|data/constants/[^/]+|data/sample_inputs/[^/]+\.pt|extra/.*)")
# TorchScript ops that touch the file system, and custom-op namespaces (unknown native code).
_TS_FILE_OPS = re.compile(r"\btorch\.(save|load|from_file)\b|\bops\.aten\.(save|load|from_file|_save\w*)\b")
_TS_OP_NAMESPACE = re.compile(r"\bops\.(\w+)\.")
_TS_NAMESPACES = {"aten", "prim", "quantized"}


def zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError):
        return None


def is_torchscript(names: list[str] | None) -> bool:
    if not names:
        return False
    return any(n.endswith("/constants.pkl") for n in names) and any("/code/" in n for n in names)


def is_pt2(names: list[str] | None) -> bool:
    return bool(names) and any(n.endswith("/archive_format") or n == "archive_format" for n in names)


def _inner(name: str) -> str:
    return name.split("/", 1)[1] if "/" in name else name


def _payload_configs(z: zipfile.ZipFile) -> list[tuple[str, dict]]:
    configs = []
    for name in z.namelist():
        if name.endswith("_weights_config.json") or name.endswith("_constants_config.json"):
            try:
                configs.append((name, json.loads(z.read(name)).get("config", {})))
            except (ValueError, AttributeError):
                raise UserError(f"the archive's {_inner(name)} is not valid JSON; is the file complete?") from None
    return configs


def _sample_inputs_load_safely(data: bytes) -> bool:
    try:
        torch.load(io.BytesIO(data), weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError):
        return False
    return True


def pt2_pickled_entries(path: Path) -> list[str]:
    """What in a ``.pt2`` archive would be unpickled or run as native code by ``torch.export.load``."""
    found = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            inner = _inner(name)
            if not name.endswith("/") and not _PT2_ENTRIES.fullmatch(inner):
                found.append(f"{inner} (not written by torch.export.save: native code or a legacy pickle)")
        for name, config in _payload_configs(z):
            for fqn, meta in config.items():
                if not isinstance(meta, dict):
                    continue
                path_name = str(meta.get("path_name", ""))
                if meta.get("use_pickle") or (name.endswith("_constants_config.json")
                                              and not path_name.startswith("tensor_")):
                    found.append(f"{fqn} (pickled {'constant' if 'constants' in name else 'weight'})")
        for name in z.namelist():
            if _inner(name).startswith("data/sample_inputs/") and not _sample_inputs_load_safely(z.read(name)):
                found.append(f"{_inner(name)} (sample inputs that only a full unpickler reads)")
    return found


def torchscript_risky_code(path: Path) -> list[str]:
    """TorchScript calls in an archive's code that write or read files or run custom native ops."""
    found = []
    with zipfile.ZipFile(path) as z:
        for name in z.namelist():
            if "/code/" not in name or not name.endswith(".py"):
                continue
            code = z.read(name).decode("utf-8", "replace")
            for match in _TS_FILE_OPS.finditer(code):
                found.append(f"{match.group(0)} in {_inner(name)}")
            for match in _TS_OP_NAMESPACE.finditer(code):
                if match.group(1) not in _TS_NAMESPACES:
                    found.append(f"custom op namespace {match.group(1)!r} in {_inner(name)}")
    return sorted(set(found))


def refuse_unsafe(path: Path, what: str, findings: list[str], trust_pickle: bool) -> None:
    if findings and not trust_pickle:
        more = f" and {len(findings) - 2} more" if len(findings) > 2 else ""
        raise UserError(f"{path} is a {what} whose loading could run code from the file "
                        f"({'; '.join(findings[:2])}{more}): {TRUST_HINT}")
