"""Every architecture × input form: converted exactly (≤ 1e-5 against the float64 reference at two
sizes, counts equal to the module tree's, a clearly non-zero TLC effect), kept global with a stated
reason, or — only where PyTorch itself cannot write the form — listed in ``UNWRITABLE``.
Expected failures live in ``expectations.EXPECTED_FAILURES`` (strict xfail)."""
import pytest

from .archs import ARCHS
from .expectations import EXPECTED_FAILURES, UNWRITABLE
from .forms import FORMS
from .matrix import run_cell

# The default run (≈ 1 minute): one channel-attention, one transposed-attention, one group-norm and
# one softmax-pool architecture, each in a cheap form.
DEFAULT_CELLS = {("NAFNet", "onnx_ts"), ("Restormer", "onnx_ts"), ("RealPLKSR", "torchscript"),
                 ("MIRNet_v2", "onnx_ts")}


def _params():
    for arch in ARCHS:
        for form in FORMS:
            marks = [] if (arch, form) in DEFAULT_CELLS else [pytest.mark.conformance_full]
            if (arch, form) in EXPECTED_FAILURES:
                marks.append(pytest.mark.xfail(reason=EXPECTED_FAILURES[arch, form], strict=True))
            yield pytest.param(arch, form, marks=marks, id=f"{arch}-{form}")


@pytest.mark.parametrize("arch,form", list(_params()))
def test_cell(arch, form):
    cell = run_cell(arch, form)
    if (arch, form) in UNWRITABLE:
        assert cell.status == "n/a", f"{arch} {form} is writable now ({cell.status}): drop it from UNWRITABLE"
        return
    assert cell.status in ("exact", "kept-global", "no-global-op"), f"{cell.status}: {cell.what}"
    if cell.status == "kept-global":
        assert cell.what, "kept-global ops must come with a reason (report field kept_global)"
