"""Command line: ``tlc-export MODEL --calib HxW [...]`` plus subcommands. A thin layer over the API.

Bad input ends with one line on stderr and exit code 2; no traceback.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

from .errors import UserError, first_line

# Set to see the traceback of an unexpected failure instead of its one-line summary.
TRACEBACK_VARIABLE = "TLC_EXPORT_TRACEBACK"

# Subcommand name -> module in tlc_export.commands with add_arguments(parser) and run(args) -> int.
SUBCOMMANDS = {
    "presets": "List the model-zoo presets, one per line, name first.",
    "check": "Check an ONNX graph against a deployment target's operator support (--target tensorrt).",
    "verify": "Compare a converted graph with the eager PyTorch TLC reference.",
    "bench": "Median latency of global / TLC graphs, the eager reference and patch inference.",
    "sweep": "PSNR/SSIM of TLC at several calibration sizes against the global model on degraded/clean pairs.",
    "inspect": "List the ops that aggregate over all pixels, their TLC windows, extra multiply-adds and effect.",
    "restore": "Restore PNG/JPEG images with a converted graph (any size; bit depth kept).",
    "build": "Build a TensorRT engine from a converted graph (needs TensorRT and a GPU).",
    "compare": "Picture of degraded | global | TLC | clean and a |TLC - global| heat map for one image.",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (argparse's default prints the whole usage too)
        raise UserError(f"{message} (see {self.prog} --help)")


def convert_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tlc-export", description="Convert a restoration network's global ops to TLC local "
                "ops inside an exported ONNX graph. Subcommands: " + ", ".join(SUBCOMMANDS) + ".")
    p.add_argument("model", help="checkpoint (.pth), TorchScript, torch.export (.pt2) or .onnx file")
    p.add_argument("--calib", required=True, help="calibration image size HxW (e.g. 384x384, 384, 384,384), or auto: a zoo preset's training crop x 1.5")
    p.add_argument("--arch", help="preset or family for a checkpoint (default: detected from its keys)")
    p.add_argument("--arch-kwargs", help="JSON of constructor keyword arguments (official names)")
    p.add_argument("-o", "--output", help="output .onnx path (default: <stem>.tlc.onnx beside the input)")
    p.add_argument("--input-shape", help="export input NxCxHxW (default 1xCx<calib>)")
    p.add_argument("--static", action="store_true", help="bake the export shape (default: dynamic N, H, W)")
    p.add_argument("--opset", type=int, default=None,
                   help="ONNX opset (default: the exporter's lowest, 18 for dynamo, 17 for torchscript; up to "
                        "the newest the installed exporter and ONNX Runtime support)")
    p.add_argument("--exporter", default=None, choices=["dynamo", "torchscript"],
                   help="PyTorch's ONNX exporter (default torchscript, checked at a second size and replaced "
                        "by dynamo where it is unfaithful; dynamo: torch.export-based). "
                        "A .pt2 always takes dynamo, a TorchScript archive torchscript")
    p.add_argument("--no-tlc", action="store_true", help="export the unchanged global model the same way")
    p.add_argument("--impl", default="standard", choices=["standard", "plugin"],
                   help="standard-op subgraphs (default) or one custom node per op (TensorRT plugin)")
    p.add_argument("--box-filter", default="auto", choices=["auto", "cumsum", "matmul"],
                   help="standard-op box filter: chosen per op at run time by the map size (auto, default), "
                        "or one form everywhere with no If node (cumsum: prefix sums; matmul: banded matrices, "
                        "fast on small maps only)")
    p.add_argument("--fast", action="store_true",
                   help="the official approximate TLC (fast_imp): local means and instance norms on a map "
                        "subsampled by up to 5 per axis (group norm and attention stay exact)")
    p.add_argument("--report", help="JSON report path (default: beside the output)")
    p.add_argument("--triton-repo", metavar="DIR",
                   help="also write a Triton Inference Server model repository (ONNX Runtime backend) to DIR")
    p.add_argument("--trust-pickle", action="store_true",
                   help="allow a pickled full nn.Module (unpickling runs code from the file)")
    return p


def progress_printer():
    """Stage messages on an interactive terminal; scripts and logs get only results and errors."""
    from .api import stderr_progress

    return stderr_progress if sys.stderr.isatty() else None


def run_convert(argv: list[str]) -> int:
    args = convert_parser().parse_args(argv)
    from .api import convert, parse_arch_kwargs

    arch_kwargs = parse_arch_kwargs(args.arch_kwargs)

    # Library warnings (the deprecated TorchScript exporter, tracer notes) are noise on the command line;
    # what the user must know comes back in result.warnings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = convert(args.model, args.calib, arch=args.arch, arch_kwargs=arch_kwargs, output=args.output,
                         input_shape=args.input_shape, static=args.static, opset=args.opset,
                         tlc=not args.no_tlc, report=args.report, trust_pickle=args.trust_pickle, impl=args.impl,
                         box_filter=args.box_filter, fast=args.fast, triton_repo=args.triton_repo,
                         **({"exporter": args.exporter} if args.exporter else {}),
                         progress=progress_printer())
    for w in result.warnings:
        print(f"tlc-export: warning: {w}", file=sys.stderr)
    if result.triton_path is not None:
        print(f"tlc-export: Triton model repository entry written: {result.triton_path}", file=sys.stderr)
    for r in result.report.get("rewritten", []):
        fast = f"\tmax_r {r['max_r'][0]}x{r['max_r'][1]}" if r.get("max_r") else ""
        print(f"{r['onnx_name']}\t{r['op']}\t{r['window'][0]}x{r['window'][1]}\t{r['module_path']}{fast}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in SUBCOMMANDS:
            name = argv[0]
            module = importlib.import_module(f"tlc_export.commands.{name}")
            parser = _Parser(prog=f"tlc-export {name}", description=SUBCOMMANDS[name])
            module.add_arguments(parser)
            return int(module.run(parser.parse_args(argv[1:])) or 0)
        return run_convert(argv)
    except UserError as exc:
        print(f"tlc-export: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tlc-export: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a library failing on this model: one line (the traceback on request)
        if os.environ.get(TRACEBACK_VARIABLE):
            raise
        print(f"tlc-export: error: {type(exc).__name__} while processing the model: {first_line(exc)} "
              f"(nothing was written; set {TRACEBACK_VARIABLE}=1 for the traceback, and please report it "
              f"with the model)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
