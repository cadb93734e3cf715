"""Atomic writes: outputs appear whole or not at all, and never replace the input."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import UserError


def refuse_overwriting_input(output: Path, inputs: list[Path]) -> None:
    for inp in inputs:
        if output.exists() and inp.exists() and output.resolve() == inp.resolve():
            raise UserError(f"output {output} is the input file; choose another -o path")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
