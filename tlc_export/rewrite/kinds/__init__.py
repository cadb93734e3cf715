"""The registry of global-op kinds: one module per kind, each with

* ``KIND``: the name written to the report;
* ``match(node, graph) -> GlobalOp | KeptGlobal | None``: the op anchored at ``node`` (a ``KeptGlobal``
  when it aggregates over all pixels but cannot be localised as a drop-in), or None;
* ``localize(builder, op, window, options) -> str``: add the exact local subgraph producing ``op.output``
  (the op's nodes are already detached unless the kind sets ``KEEPS_REGION = True``) and return the
  implementation name. ``options`` (``rewrite.options.RewriteOptions``) is where variants branch.

``rewrite.patterns.scan_graph`` walks the graph once and asks each kind of ``KINDS`` in order; the
nodes nobody claimed are then offered to ``DETECTORS`` (kept-global only: their anchors come before
the anchor of a kind that would claim them, e.g. the q·kᵀ MatMul before the attention's Softmax).
``plane_aggregation`` finds what the structural patterns miss from symbolic shapes (any layout).
"""
from __future__ import annotations

from . import attention, avgpool, globalmax, groupnorm, instancenorm, plane_aggregation, unlocalised

KINDS = (avgpool, instancenorm, groupnorm, attention, globalmax)
DETECTORS = (plane_aggregation, unlocalised)
BY_NAME = {kind.KIND: kind for kind in KINDS}

__all__ = ["BY_NAME", "DETECTORS", "KINDS"]
