"""Is Restormer's --fast graph the exact graph? Convert both (calibration 128) and compare node lists."""
import collections, sys, tempfile
from pathlib import Path
import onnx, torch
sys.path.insert(0, ".")
from tlc_export import zoo
from tlc_export.api import convert
torch.manual_seed(0)
name = "Restormer-motion_deblurring"
model = zoo.build(name).eval()
with tempfile.TemporaryDirectory() as tmp:
    graphs = {}
    for fast in (False, True):
        r = convert(model, (128, 128), arch=name, output=Path(tmp) / f"{fast}.onnx", fast=fast)
        graphs[fast] = onnx.load(str(r.onnx_path)).graph
    ops = {f: [n.op_type for n in g.node] for f, g in graphs.items()}
    print("exact nodes", len(ops[False]), "fast nodes", len(ops[True]))
    print("same op sequence:", ops[False] == ops[True])
    print("same initializers:", sorted(i.name for i in graphs[False].initializer) == sorted(i.name for i in graphs[True].initializer))
    same_init = all(a.SerializeToString() == b.SerializeToString() for a, b in zip(graphs[False].initializer, graphs[True].initializer))
    print("initializers byte-identical:", same_init)
    same_nodes = all(a.SerializeToString() == b.SerializeToString() for a, b in zip(graphs[False].node, graphs[True].node))
    print("nodes byte-identical:", same_nodes)
    print("op counts:", dict(collections.Counter(ops[False]).most_common(12)))
