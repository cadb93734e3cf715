"""The one place where expected-failure cells are listed, each with its reason (marked xfail by the
suite, shown as "(xfail)" in docs/CONFORMANCE.md). Remove an entry when a change fixes it: the xfail
is strict, so a fixed cell fails until its entry goes. Regenerate with
``python -m tests.conformance.make_table --expectations``.

UNWRITABLE lists the cells where PyTorch cannot write the form, or writes a file that is itself wrong
at other sizes or that ONNX Runtime cannot run before any rewrite (not the converter's fault; the
converter says which in one line).

Measured at HEAD on 2026-12-01 (docs/CONFORMANCE.md).
"""

EXPECTED_FAILURES: dict[tuple[str, str], str] = {
}

UNWRITABLE: dict[tuple[str, str], str] = {
    ('NAFNet', 'torchscript'): "RuntimeError: Could not export Python function call 'LayerNormFunction'. Remove calls to Python func",
    ('KBNet_s', 'torchscript'): "RuntimeError: Could not export Python function call 'KBAFunction'. Remove calls to Python functions ",
    ('KBNet_l', 'torchscript'): "RuntimeError: Could not export Python function call 'LayerNormFunction'. Remove calls to Python func",
    ('MPRNet', 'torchscript'): 'the torchscript file PyTorch writes is already wrong at other sizes (its global graph (--no-tlc) is ',
    ('MPRNet', 'pt2'): 'the pt2 file PyTorch writes runs at its export size only; the converter says so: the model does not ',
    ('MPRNet', 'onnx_ts'): 'the onnx_ts file PyTorch writes is already wrong at other sizes (its global graph (--no-tlc) is off ',
    ('MPRNet', 'onnx_dynamo'): 'the onnx_dynamo file PyTorch writes is already wrong at other sizes (its global graph (--no-tlc) is ',
    ('DRCT', 'state_dict'): 'the converter refuses by name: the torchscript-exported graph does not run at 112x96 ([ONNXRuntimeEr',
    ('DRCT', 'torchscript'): 'the torchscript file PyTorch writes runs at its export size only; the converter says so: the model d',
    ('DRCT', 'pt2'): 'UserError: Constraints violated (8*hb, 8*wb)! For more information, run with TORCH_LOGS="+dynamic".',
    ('DAT', 'state_dict'): 'the converter refuses by name: the torchscript-exported graph does not run at 112x96 ([ONNXRuntimeEr',
    ('DAT', 'torchscript'): 'the converter refuses by name: the torchscript-exported graph does not run at 112x96 ([ONNXRuntimeEr',
    ('DAT', 'pt2'): 'the converter refuses by name: the dynamo-exported graph does not run at 112x96 ([ONNXRuntimeError] ',
    ('DAT', 'onnx_ts'): 'the converter refuses by name: the source graph, before any rewrite, fails in ONNX Runtime at 64x64 ',
    ('DAT', 'onnx_dynamo'): 'the converter refuses by name: the source graph, before any rewrite, fails in ONNX Runtime at 64x64 ',
    ('SAFMN', 'torchscript'): 'the converter refuses by name: the TorchScript exporter fails on the model (Unsupported: ONNX export',
    ('SAFMN', 'pt2'): 'the pt2 file PyTorch writes runs at its export size only; the converter says so: the model does not ',
    ('SAFMN', 'onnx_ts'): 'SymbolicValueError: Unsupported: ONNX export of operator adaptive pooling, since output_size is not ',
    ('OmniSR', 'torchscript'): "RuntimeError: Could not export Python function call 'LayerNormFunction'. Remove calls to Python func",
    ('SeemoRe', 'pt2'): 'GuardOnDataDependentSymNode: Could not extract specialized integer from data-dependent expression u0',
    ('SeemoRe', 'onnx_dynamo'): 'TorchExportError: Failed to export the model with torch.export. This is step 1/3 of exporti',
    ('M3SNet', 'torchscript'): "RuntimeError: Could not export Python function call 'LayerNormFunction'. Remove calls to Python func",
    ('DITN', 'torchscript'): 'the torchscript file PyTorch writes runs at its export size only; the converter says so: the model d',
}
