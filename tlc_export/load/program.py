"""``.pt2`` archives (``torch.export.save``) → ``ExportedProgram``, read without unpickling."""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from ..errors import UserError, first_line as _first_line
from .archives import pt2_pickled_entries, refuse_unsafe


@contextlib.contextmanager
def _weights_only_loads():
    """Second line of defence behind the archive audit: while torch.export reads the archive, any
    ``torch.load`` it makes is ``weights_only`` (its fallback to a full unpickler raises instead)."""
    original = torch.load

    def guarded(*args, **kwargs):
        if kwargs.get("weights_only") is False:
            raise RuntimeError("refused: the archive asks for a full unpickler (weights_only=False)")
        kwargs["weights_only"] = True
        return original(*args, **kwargs)

    torch.load = guarded
    try:
        yield
    finally:
        torch.load = original


def load_program(path: Path, trust_pickle: bool) -> torch.export.ExportedProgram:
    try:
        findings = pt2_pickled_entries(path)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot read {path} as a torch.export archive ({_first_line(exc)})") from None
    refuse_unsafe(path, "torch.export archive", findings, trust_pickle)
    guard = contextlib.nullcontext() if trust_pickle else _weights_only_loads()
    try:
        with guard:
            program = torch.export.load(str(path))
    except Exception as exc:
        raise UserError(f"cannot read {path} as a torch.export archive ({_first_line(exc)})") from None
    _drop_expression_ranges(program)
    return program


def _drop_expression_ranges(program: torch.export.ExportedProgram) -> None:
    """torch.export.load copies range constraints keyed by expressions (``4*s2``, from a dimension
    declared as ``4 * Dim("hb")``) into the shape environment's ``var_to_range``, which must hold symbols
    only: decomposing the program (the first step of the ONNX export) then fails with "expected
    sympy.Symbol". Each such range is implied by its symbol's own range (``s2``), which stays."""
    import sympy
    from torch._export.utils import _get_shape_env_from_gm

    shape_env = _get_shape_env_from_gm(program.graph_module)
    if shape_env is None:
        return
    for key in [k for k in shape_env.var_to_range if not isinstance(k, sympy.Symbol)]:
        del shape_env.var_to_range[key]


def input_dims(program: torch.export.ExportedProgram) -> list[int | str] | None:
    """The image input's dims as the program has them: ints where fixed, symbol names where dynamic."""
    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"
                    and n.name in program.graph_signature.user_inputs]
    shape = getattr(placeholders[0].meta.get("val"), "shape", None) if placeholders else None
    if shape is None:
        return None
    return [d if isinstance(d, int) else str(d) for d in shape]


def input_multiple(program: torch.export.ExportedProgram) -> int:
    """H and W multiple that the program's dynamic dimensions declare (``8*s2`` from ``8 * Dim("hb")``:
    8); 1 for plain dimensions. Other sizes fail the program's guards."""
    import math

    import sympy

    dims = input_dims(program)
    multiple = 1
    for d in (dims or [])[2:4]:
        if not isinstance(d, str):
            continue
        try:
            coeff, _ = sympy.sympify(d).as_coeff_Mul()
        except (sympy.SympifyError, TypeError, ValueError):
            continue
        if coeff.is_Integer and int(coeff) > 1:
            multiple = math.lcm(multiple, int(coeff))
    return multiple
