"""Untrusted model files never run code without --trust-pickle: each crafted file below would create a
marker file when loaded naively; the CLI must refuse it (exit 2, one stderr line) and the marker must
not appear. With --trust-pickle the same file is loaded as PyTorch would."""
import json
import pickle
import zipfile

import onnx
import pytest
import torch
from torch import nn

from tlc_export.cli import main


class _Payload:
    """Unpickling this creates ``marker`` (stands in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        return self.conv(x) * x.mean((2, 3), keepdim=True)


def _refused(args, capsys):
    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, (code, err)
    return err[0]


def _pt2(tmp_path):
    path = tmp_path / "tiny.pt2"
    d = torch.export.Dim.DYNAMIC
    torch.export.save(torch.export.export(_Tiny().eval(), (torch.rand(2, 3, 16, 16),),
                                          dynamic_shapes=({0: d, 2: d, 3: d},)), path)
    return path


def _rewrite_zip(src, dst, edit):
    """Copy the zip ``src`` to ``dst``, passing each (name, bytes) through ``edit`` (None drops it)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = edit(name, zin.read(name))
            if data is not None:
                zout.writestr(name, data)


def _pickled_weight(tmp_path, marker):
    """A .pt2 whose first weight is marked use_pickle and holds the payload (torch.export.load would
    torch.load it with weights_only=False)."""
    payload = pickle.dumps(_Payload(marker))

    def edit(name, data):
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("data/weights/weight_0"):
            return payload
        return data

    out = tmp_path / "evil_weight.pt2"
    _rewrite_zip(_pt2(tmp_path), out, edit)
    return out


def _pickled_sample_inputs(tmp_path, marker):
    """A .pt2 whose sample inputs only a full unpickler reads (torch falls back to weights_only=False)."""
    import io

    buffer = io.BytesIO()
    torch.save(_Payload(marker), buffer)

    def edit(name, data):
        return buffer.getvalue() if "data/sample_inputs/" in name else data

    out = tmp_path / "evil_inputs.pt2"
    _rewrite_zip(_pt2(tmp_path), out, edit)
    return out


def _native_library(tmp_path, marker):
    """A .pt2 carrying an AOTInductor entry (a shared library torch would dlopen)."""
    src = _pt2(tmp_path)
    out = tmp_path / "evil_aoti.pt2"
    _rewrite_zip(src, out, lambda n, d: d)
    with zipfile.ZipFile(out, "a") as z:
        top = z.namelist()[0].split("/")[0]
        z.writestr(f"{top}/data/aotinductor/model/model.so", b"\x7fELF not really")
    return out


def _plain_pickle(tmp_path, marker):
    path = tmp_path / "evil.pth"
    torch.save({"params": _Payload(marker)}, path)
    return path


@pytest.mark.parametrize("craft", [_pickled_weight, _pickled_sample_inputs, _native_library, _plain_pickle])
def test_crafted_archive_is_refused_and_runs_nothing(tmp_path, capsys, craft):
    marker = tmp_path / "pwned"
    path = craft(tmp_path, marker)
    message = _refused([path, "--calib", "16"], capsys)
    assert "--trust-pickle" in message and not marker.exists()
    assert not list(tmp_path.glob("*.onnx"))


def test_pickled_weight_runs_only_with_trust_pickle(tmp_path, capsys):
    """The crafted file really is dangerous: with --trust-pickle torch.export.load runs the payload."""
    marker = tmp_path / "pwned"
    path = _pickled_weight(tmp_path, marker)
    main([str(path), "--calib", "16", "--trust-pickle"])
    capsys.readouterr()
    assert marker.exists()


def test_plain_pt2_loads_without_trust_pickle(tmp_path):
    from tlc_export.load import load_model

    loaded = load_model(_pt2(tmp_path))
    assert loaded.format == "torch.export" and loaded.program is not None


class _WritesOnLoad(nn.Module):
    """TorchScript whose __setstate__ writes a file: torch.jit.load runs it."""

    def __init__(self, marker: str):
        super().__init__()
        self.marker = marker
        self.conv = nn.Conv2d(3, 3, 1)

    def forward(self, x):
        return self.conv(x)

    @torch.jit.export
    def __getstate__(self):
        return (self.marker, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[str, bool]):
        self.marker = state[0]
        self.training = state[1]
        torch.save(torch.ones(1), state[0])


def test_torchscript_that_writes_files_is_refused(tmp_path, capsys):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.jit.save(torch.jit.script(_WritesOnLoad(str(marker))), path)
    marker.unlink(missing_ok=True)
    message = _refused([path, "--calib", "16"], capsys)
    assert "torch.save" in message and not marker.exists()


@pytest.mark.parametrize("location", ["../outside.bin", "/etc/hostname", "sub/../../outside.bin"])
def test_onnx_external_data_outside_the_model_folder_is_refused(tmp_path, capsys, location):
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1, 3, 1, 1], [1.0, 1.0, 1.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "12")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, "h", "w"])], [weight])
    folder = tmp_path / "model"
    folder.mkdir()
    (tmp_path / "outside.bin").write_bytes(b"\0" * 12)
    path = folder / "m.onnx"
    onnx.save(helper.make_model(graph), str(path))
    message = _refused([path, "--calib", "16"], capsys)
    assert "outside the model's folder" in message
