"""The one place where expected-failure cells are listed, each with its reason (marked xfail by the
suite, shown as "(xfail)" in docs/CONFORMANCE.md). The F-numbers are the findings in
docs/CONFORMANCE-FINDINGS.md. Remove an entry when a merge fixes it: the xfail is strict, so a fixed
cell fails until its entry goes. Regenerate with ``python -m tests.conformance.make_table --expectations``.
UNWRITABLE lists the forms PyTorch itself cannot write for an architecture (not the converter's fault).

Measured at HEAD (issue-rewrite c476218 + issue-loaders 8356191): Restormer, KBNet_l, NAFNet, and
MIRNet_v2 / RealPLKSR partly; the other rows are from the run against main 45b29f3 and may be stale
(state_dict rows especially: the spandrel loader landed after it).
"""

EXPECTED_FAILURES: dict[tuple[str, str], str] = {
    ('Restormer', 'torchscript'): 'RuntimeError: The following operation failed in the TorchScript interpreter. (module.py:1789)',
    ('Restormer', 'pt2'): 'UserError: the dynamo ONNX exporter fails on the program (Failed to decompose the FX graph for ONNX compatibility. ',
    ('KBNet_l', 'pt2'): 'UserError: the dynamo ONNX exporter fails on the program (Failed to decompose the FX graph for ONNX compatibility. ',
    ('NAFNet', 'pt2'): 'UserError: the dynamo ONNX exporter fails on the program (Failed to decompose the FX graph for ONNX compatibility. ',
    ('KBNet_s', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('KBNet_s', 'pt2'): 'F3: .pt2 graph runs only at the calibration size',
    ('MPRNet', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('MPRNet', 'torchscript'): "F7: MPRNet's exported global graph is wrong before any rewrite",
    ('MPRNet', 'pt2'): 'F10: .pt2 retraced through the TorchScript exporter (traceback)',
    ('MPRNet', 'onnx_ts'): "F7: MPRNet's exported global graph is wrong before any rewrite",
    ('MPRNet', 'onnx_dynamo'): "F7: MPRNet's exported global graph is wrong before any rewrite",
    ('MIRNet_v2', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('MIRNet_v2', 'pt2'): 'F3: .pt2 graph runs only at the calibration size',
    ('RCAN', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('RCAN', 'pt2'): 'F2: .pt2 output cropped to the calibration size',
    ('HAT', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('HAT', 'pt2'): 'F10: .pt2 retraced through the TorchScript exporter (traceback)',
    ('HAT', 'onnx_dynamo'): '96x80: max err 8.0e-04 > 1e-05; 128x40: max err 1.1e-03 > 1e-05',
    ('DRCT', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('DAT', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('DAT', 'torchscript'): 'F8: DAT graph fails in ONNX Runtime inside convert (traceback)',
    ('DAT', 'pt2'): 'F10: .pt2 retraced through the TorchScript exporter (traceback)',
    ('DAT', 'onnx_ts'): 'F8: DAT graph fails in ONNX Runtime inside convert (traceback)',
    ('DAT', 'onnx_dynamo'): 'F8: DAT graph fails in ONNX Runtime inside convert (traceback)',
    ('SAFMN', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('SAFMN', 'torchscript'): 'F9: TorchScript-exporter traceback for an input the dynamo exporter handles',
    ('SAFMN', 'pt2'): 'F9: TorchScript-exporter traceback for an input the dynamo exporter handles',
    ('OmniSR', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('OmniSR', 'pt2'): 'F11: SE pool reduced to (N, C) refused instead of kept global',
    ('OmniSR', 'onnx_ts'): 'F11: SE pool reduced to (N, C) refused instead of kept global',
    ('OmniSR', 'onnx_dynamo'): 'F11: SE pool reduced to (N, C) refused instead of kept global',
    ('SeemoRe', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('SeemoRe', 'torchscript'): 'F6/F12: pool reshaped to (N, C, …) rewritten instead of kept global (ORT traceback)',
    ('SeemoRe', 'onnx_ts'): 'F6/F12: pool reshaped to (N, C, …) rewritten instead of kept global (ORT traceback)',
    ('MixDehazeNet', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('MixDehazeNet', 'torchscript'): 'F6/F12: pool reshaped to (N, C, …) rewritten instead of kept global (ORT traceback)',
    ('MixDehazeNet', 'pt2'): 'F3: .pt2 graph runs only at the calibration size',
    ('MixDehazeNet', 'onnx_ts'): 'F6/F12: pool reshaped to (N, C, …) rewritten instead of kept global (ORT traceback)',
    ('MixDehazeNet', 'onnx_dynamo'): 'F6/F12: pool reshaped to (N, C, …) rewritten instead of kept global (ORT traceback)',
    ('RetinexFormer', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('RetinexFormer', 'torchscript'): 'F4/F13: transposed attention not found (silent no-op, exit 0)',
    ('RetinexFormer', 'pt2'): 'F4/F13: transposed attention not found (silent no-op, exit 0)',
    ('RetinexFormer', 'onnx_ts'): 'F4/F13: transposed attention not found (silent no-op, exit 0)',
    ('RetinexFormer', 'onnx_dynamo'): 'F4/F13: transposed attention not found (silent no-op, exit 0)',
    ('M3SNet', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('M3SNet', 'onnx_ts'): 'F4/F16: transposed attention missed (counts and outputs off)',
    ('M3SNet', 'onnx_dynamo'): 'F5: transposed attention from the dynamo exporter refused',
    ('FBCNN', 'state_dict'): 'F1: spandrel state dicts not recognised by the loader',
    ('FBCNN', 'torchscript'): "F15: FBCNN's Flatten→Linear pool rewritten instead of kept global (ORT traceback)",
    ('FBCNN', 'pt2'): "F15: FBCNN's Flatten→Linear pool rewritten instead of kept global (ORT traceback)",
    ('FBCNN', 'onnx_ts'): "F15: FBCNN's Flatten→Linear pool rewritten instead of kept global (ORT traceback)",
    ('FBCNN', 'onnx_dynamo'): 'F6/F12: pool reshaped to (N, C, …) rewritten instead of kept global (ORT traceback)',
}

UNWRITABLE: dict[tuple[str, str], str] = {
    ('KBNet_l', 'torchscript'): "RuntimeError: Could not export Python function call 'LayerNormFunction'. Remove calls to Python func",
    ('NAFNet', 'torchscript'): "RuntimeError: Could not export Python function call 'LayerNormFunction'. Remove calls to Python func",
    ('KBNet_s', 'torchscript'): "RuntimeError: Could not export Python function call 'KBAFunction'. Remove calls to Python functions ",
    ('DRCT', 'pt2'): 'UserError: Constraints violated (8*hb, 8*wb)! For more information, run with TORCH_LOGS="+dynamic".',
    ('SAFMN', 'onnx_ts'): 'SymbolicValueError: Unsupported: ONNX export of operator adaptive pooling, since output_size is not ',
    ('OmniSR', 'torchscript'): "RuntimeError: Could not export Python function call 'LayerNormFunction'. Remove calls to Python func",
    ('SeemoRe', 'pt2'): 'GuardOnDataDependentSymNode: Could not extract specialized integer from data-dependent expression u0',
    ('SeemoRe', 'onnx_dynamo'): 'TorchExportError: Failed to export the model with torch.export. This is step 1/3 of exporti',
    ('M3SNet', 'torchscript'): "RuntimeError: Could not export Python function call 'LayerNormFunction'. Remove calls to Python func",
}
