"""What the finder returns: ops to localise (``GlobalOp``) and ops that must stay global (``KeptGlobal``)."""
from __future__ import annotations

from dataclasses import dataclass, field

import onnx_graphsurgeon as gs


def scoped_module_path(name: str) -> str:
    """The PyTorch module path from the TorchScript exporter's scoped node name: ``/a/b/Op`` -> ``a.b``;
    container children are scoped with their parent's name (``/enc/enc.0/conv/Op`` -> ``enc.0.conv``)."""
    parts = [p for p in name.split("/") if p][:-1]
    path: list[str] = []
    for part in parts:
        if path and part.startswith(path[-1] + "."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


@dataclass
class GlobalOp:
    """A matched global op: the nodes to replace, the 4-D map whose spatial size is the op's window at
    the calibration size (``source``), and the tensor the local replacement must produce (``output``)."""

    kind: str                      # the kind module's KIND: avgpool | instancenorm | groupnorm | attention | …
    name: str                      # ONNX name of the anchor node (reported)
    pattern: str                   # what was matched, e.g. "GlobalAveragePool", "Reshape>InstanceNormalization>Reshape"
    nodes: list[gs.Node]
    source: gs.Tensor
    output: gs.Tensor
    attrs: dict = field(default_factory=dict)
    scope: str | None = None       # module path from node metadata (dynamo exporter), when known

    @property
    def module_path(self) -> str:
        return self.scope if self.scope is not None else scoped_module_path(self.name)


@dataclass
class KeptGlobal:
    """A node that aggregates over all pixels and that TLC cannot localise as a drop-in: left as it
    is, reported under ``kept_global`` and named in a warning."""

    kind: str                      # globalmaxpool | avgpool | attention | …
    name: str
    reason: str
    nodes: list[gs.Node] = field(default_factory=list)
    scope: str | None = None

    @property
    def module_path(self) -> str:
        return self.scope if self.scope is not None else scoped_module_path(self.name)
