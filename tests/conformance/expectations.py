"""The one place where expected-failure cells are listed, each with its reason (marked xfail by the
suite, shown as "(xfail)" in docs/CONFORMANCE.md). Remove an entry when a merge fixes it: the suite's
xfail is strict, so a fixed cell fails until its entry goes."""

EXPECTED_FAILURES: dict[tuple[str, str], str] = {
    ("Restormer", "onnx_ts"): "transposed attention not found in TorchScript-exporter graphs (no-op, exit 0)",
    ("MIRNet_v2", "onnx_ts"): "SKFF's pooled vector reshaped to (N, branches, C, 1, 1): rewritten anyway, "
                              "graph fails in ONNX Runtime; ContextBlock's softmax pool not handled",
}

# Forms PyTorch itself cannot write for an architecture (not the converter's fault).
_CUSTOM_AUTOGRAD = "torch.jit.save cannot serialise the custom autograd LayerNormFunction in a trace"
UNWRITABLE: dict[tuple[str, str], str] = {
    ("NAFNet", "torchscript"): _CUSTOM_AUTOGRAD,
    ("KBNet_s", "torchscript"): "torch.jit.save cannot serialise the custom autograd KBAFunction in a trace",
    ("KBNet_l", "torchscript"): _CUSTOM_AUTOGRAD,
}
