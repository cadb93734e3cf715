"""Instance normalisation of a 4-D map (InstanceNormalization): local mean and variance over the window."""
from __future__ import annotations

import onnx_graphsurgeon as gs

from .. import subgraphs
from ..graphutil import rank
from ..ops import GlobalOp
from ..options import RewriteOptions

KIND = "instancenorm"


def match(node: gs.Node, graph: gs.Graph) -> GlobalOp | None:
    """A 4-D InstanceNormalization (other ranks are group norms, see ``groupnorm``)."""
    if node.op != "InstanceNormalization" or rank(node.inputs[0]) != 4:
        return None
    return GlobalOp(KIND, node.name, "InstanceNormalization", [node], node.inputs[0], node.outputs[0],
                    {"eps": float(node.attrs.get("epsilon", 1e-5)), "scale": node.inputs[1], "bias": node.inputs[2]})


def localize(b: subgraphs.Builder, op: GlobalOp, window, options: RewriteOptions) -> str:
    """Seam for variants (e.g. a faster approximate mode): ``options`` carries the flags; branch here."""
    subgraphs.local_instance_norm(b, op.source, window, op.attrs["eps"], op.attrs["scale"], op.attrs["bias"],
                                  output=op.output)
    return options.boxfilter_implementation
