"""``.onnx`` files → ``onnx.ModelProto``; external data only from files beside the model."""
from __future__ import annotations

from pathlib import Path

import onnx
from onnx import external_data_helper

from ..errors import UserError, first_line


def _external_locations(model: onnx.ModelProto) -> list[str]:
    return [next((e.value for e in t.external_data if e.key == "location"), "")
            for t in external_data_helper._get_all_tensors(model)
            if external_data_helper.uses_external_data(t)]


def _check_location(path: Path, location: str) -> None:
    """An external-data location must name a file inside the model's folder (no absolute path, no
    ``..``, no symlink out of it): otherwise a graph could make us read any file on the machine."""
    base = path.resolve().parent
    target = (base / location).resolve()
    if Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(base):
        raise UserError(f"{path} points its external data at {location!r}, outside the model's folder; "
                        f"refusing to read it (keep the data files beside the .onnx)")
    if not target.is_file():
        raise UserError(f"{path} needs its external data file {location!r}, which is missing beside it")


def load_onnx(path: Path) -> onnx.ModelProto:
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise UserError(f"cannot read {path} as ONNX ({first_line(exc)}); is the file complete?") from None
    locations = _external_locations(model)
    for location in sorted(set(locations)):
        _check_location(path, location)
    if locations:
        try:
            external_data_helper.load_external_data_for_model(model, str(path.resolve().parent))
        except Exception as exc:
            raise UserError(f"cannot read the external data of {path} ({first_line(exc)})") from None
    return model
