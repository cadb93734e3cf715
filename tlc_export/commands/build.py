"""``tlc-export build GRAPH.onnx -o ENGINE.plan``: a TensorRT engine (TensorRT 10.x or 11, GPU needed)."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("graph", help="converted .onnx graph")
    parser.add_argument("-o", "--output", required=True, help="engine path (.plan)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"],
                        help="compute precision; TLC statistics always stay FP32")
    parser.add_argument("--calib", help="calibration HxW, for default optimization-profile shapes")
    parser.add_argument("--min-shape", help="NxCxHxW")
    parser.add_argument("--opt-shape", help="NxCxHxW")
    parser.add_argument("--max-shape", help="NxCxHxW")
    parser.add_argument("--workspace", type=int, help="workspace limit in MiB")
    parser.add_argument("--timing-cache", help="timing cache path (loaded if present, saved after the build)")
    parser.add_argument("--strongly-typed", action="store_true", help="TensorRT 10: build strongly typed")
    parser.add_argument("--plugins", nargs="*", default=[], help="plugin libraries or Python modules to load")


def run(args) -> int:
    from ..api import parse_input_shape, parse_size
    from ..build import build_trt_engine
    from ..errors import UserError

    shapes = {k: parse_input_shape(getattr(args, k), "--" + k.replace("_", "-")) if getattr(args, k) else None
              for k in ("min_shape", "opt_shape", "max_shape")}
    if args.workspace is not None and args.workspace < 1:
        raise UserError(f"--workspace {args.workspace} must be a positive number of MiB")
    path = build_trt_engine(args.graph, args.output, precision=args.precision,
                            calib=parse_size(args.calib) if args.calib else None,
                            workspace=args.workspace * (1 << 20) if args.workspace else None,
                            timing_cache=args.timing_cache, strongly_typed=args.strongly_typed or None,
                            plugins=args.plugins, **shapes)
    print(f"engine written: {path}")
    return 0
