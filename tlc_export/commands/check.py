"""``tlc-export check --target tensorrt OUT.onnx``: will TensorRT's ONNX parser take this graph?

Prints one line per violation (``node_name: op: reason``) and a summary on stdout. Exit 0 when the graph
is clean, 1 on any violation, 2 with one line on stderr when the file is missing or is not an ONNX model.
"""
from __future__ import annotations

import sys

from ..errors import UserError

TARGETS = ("tensorrt",)


def add_arguments(parser) -> None:
    parser.add_argument("model", help="ONNX file to check (e.g. the converter's <stem>.tlc.onnx)")
    parser.add_argument("--target", default="tensorrt", choices=TARGETS,
                        help="deployment target whose operator support to check (default: tensorrt)")
    parser.add_argument("--trt-version", default=None,
                        help="TensorRT version the engine will be built with; gates version-specific rules "
                             "(default 10.8)")
    parser.add_argument("--plugin-op", action="append", default=[], metavar="OP",
                        help="extra custom-domain op type to accept as a TensorRT plugin (repeatable); "
                             "TLCLocalMean and TLCLocalInstanceNorm are always accepted")


def run(args) -> int:
    from ..trtcheck import DEFAULT_PLUGIN_OPS, DEFAULT_TRT_VERSION, check_tensorrt_report

    target = getattr(args, "target", "tensorrt") or "tensorrt"
    try:
        if target not in TARGETS:
            raise UserError(f"unknown --target {target!r}; choose from {', '.join(TARGETS)}")
        plugin_ops = set(DEFAULT_PLUGIN_OPS) | set(getattr(args, "plugin_op", None) or [])
        report = check_tensorrt_report(args.model, plugin_ops,
                                       getattr(args, "trt_version", None) or DEFAULT_TRT_VERSION)
    except UserError as exc:
        print(f"tlc-export: error: {exc}", file=sys.stderr)
        return 2
    for v in report.violations:
        print(v)
    bad_nodes = len({v.node for v in report.violations})
    note = (f"; {report.untyped_tensors} tensor type(s) unknown after shape inference, not type-checked"
            if report.untyped_tensors else "")
    verdict = "OK" if not report.violations else "FAIL"
    print(f"{verdict}: {report.nodes_checked} nodes checked against TensorRT {report.trt_version}+ "
          f"({report.table_source}): {len(report.violations)} violation(s) on {bad_nodes} node(s){note}")
    return 1 if report.violations else 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="tlc-export check", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
