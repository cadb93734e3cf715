"""``tlc-export presets``: the zoo presets, one per line, name first."""
from __future__ import annotations

import json


def add_arguments(parser) -> None:
    parser.add_argument("--json", action="store_true", help="print name, family and constructor kwargs as JSON")


def run(args) -> int:
    from .. import zoo

    table = zoo.presets()
    if args.json:
        print(json.dumps({name: {"family": fam, "class": cls.__name__, "kwargs": kw}
                          for name, (fam, cls, kw) in table.items()}, indent=2))
        return 0
    for name, (family, cls, kwargs) in table.items():
        print(f"{name}\t{family}\t{json.dumps(kwargs, separators=(',', ':'))}")
    return 0
