"""``tlc-export restore GRAPH.onnx IN [IN ...] -o DIR``: restore image files with a converted graph.

PNG/JPEG in, ``DIR/<stem>.png`` out, same size and bit depth (see ``tlc_export/restore.py``). Every
input is checked (readable, PNG/JPEG, at most ``--max-pixels``) before any is processed; a refusal is
one line and exit 2, and outputs are written atomically.
"""
from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    from ..restore import DEFAULT_MAX_PIXELS, DEFAULT_MULTIPLE

    parser.add_argument("graph", help="converted .onnx graph (output 0 is the restored image)")
    parser.add_argument("inputs", nargs="+", metavar="IN", help="PNG or JPEG images (8/16-bit, grey or RGB)")
    parser.add_argument("-o", "--output-dir", required=True, help="directory for <stem>.png outputs")
    parser.add_argument("--multiple", type=int,
                        help="pad H and W to multiples of N (default: from the conversion report beside the "
                             f"graph, else {DEFAULT_MULTIPLE})")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"refuse images with more pixels (default {DEFAULT_MAX_PIXELS})")
    parser.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (default: its own)")


def run(args) -> int:
    from ..restore import restore_files

    def note(message: str) -> None:
        print(f"tlc-export: note: {message}", file=sys.stderr)

    done = restore_files(args.graph, args.inputs, args.output_dir, multiple=args.multiple,
                         max_pixels=args.max_pixels, threads=args.threads, note=note)
    for r in done:
        for n in r.notes:
            note(f"{r.source}: {n}")
        kind = "grey" if r.channels == 1 else "RGB"
        print(f"{r.source} -> {r.output} ({r.width}x{r.height}, {r.bit_depth}-bit {kind})")
    return 0
