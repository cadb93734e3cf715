"""Module paths of ONNX nodes from the exporter's node metadata (the dynamo exporter names nodes
``node_X`` and records the module scope in ``metadata_props``)."""
from __future__ import annotations

import ast

import onnx

from .ops import scoped_module_path

NAME_SCOPES = "pkg.torch.onnx.name_scopes"


def module_scopes(model: onnx.ModelProto) -> dict[str, str]:
    """Node name → module path, for the nodes whose metadata records their scope."""
    scopes = {}
    for node in model.graph.node:
        for prop in node.metadata_props:
            if prop.key == NAME_SCOPES and node.name:
                try:
                    value = ast.literal_eval(prop.value)
                except (ValueError, SyntaxError):
                    continue
                if isinstance(value, list) and all(isinstance(v, str) for v in value):
                    scopes[node.name] = scoped_module_path("/".join(value))  # last entry: the op
    return scopes
