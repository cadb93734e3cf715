"""What ``convert`` writes: the graph, its report and optionally a Triton entry, as one unit.

The paths are claimed (checked) before any work starts, through :class:`tlc_export.fileio.OutputSet`;
the report is also recorded inside the graph's ONNX ``metadata_props`` (key
:data:`tlc_export.fileio.ONNX_REPORT_KEY`), so a graph always carries its own provenance; all outputs are
staged and renamed together.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .errors import UserError
from .fileio import ONNX_REPORT_KEY, OutputSet, is_tlc_graph, is_tlc_report, is_tlc_triton_entry


@dataclass
class ConversionOutputs:
    outputs: OutputSet
    graph: Path
    report: Path
    triton_entry: Path | None = None

    def write(self, graph_model: onnx.ModelProto, report: dict) -> None:
        """Record ``report`` in the graph, stage everything, rename it all into place."""
        from .serve import write_triton_repo

        record_report(graph_model, report)
        with self.outputs:                     # any failure: every temporary removed, nothing renamed
            staged_graph = self.outputs.write_bytes(self.graph, graph_model.SerializeToString())
            self.outputs.write_text(self.report, json.dumps(report, indent=2) + "\n")
            if self.triton_entry is not None:
                write_triton_repo(self.triton_entry.parent, self.triton_entry.name, onnx_path=staged_graph,
                                  validate=None, overwrite=None, output_set=self.outputs)
            self.outputs.commit()


def triton_name(graph: Path) -> str:
    return graph.name.removesuffix(".onnx").replace(".", "_")


def claim_outputs(source: Path | None, graph: Path, report: Path | None, *, graph_named: bool,
                  triton_repo=None, impl: str = "standard", note=None) -> ConversionOutputs:
    """Check every output path of a conversion before any work (see ``fileio``)."""
    if graph.suffix.lower() != ".onnx":
        raise UserError(f"output {graph} must end in .onnx")
    outputs = OutputSet([source] if source is not None else [], note=note)
    outputs.claim(graph, "the graph", explicit=graph_named, recognise=is_tlc_graph, flag="-o")
    report_path = Path(report) if report else graph.with_suffix(".json")
    outputs.claim(report_path, "the report", explicit=report is not None, recognise=is_tlc_report,
                  flag="--report")
    entry = None
    if triton_repo:
        if impl == "plugin":
            raise UserError("--triton-repo serves the standard-op graph; build a TensorRT plan for the plugin form")
        repo = outputs.output_dir(triton_repo, "--triton-repo")
        entry = outputs.claim(repo / triton_name(graph), "the Triton model entry", explicit=False,
                              recognise=is_tlc_triton_entry, directory=True)
    return ConversionOutputs(outputs, graph, report_path, entry)


def record_report(model: onnx.ModelProto, report: dict) -> None:
    """Put ``report`` (compact JSON) into the graph's metadata, replacing an older one."""
    keep = [p for p in model.metadata_props if p.key != ONNX_REPORT_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(keep)
    prop = model.metadata_props.add()
    prop.key, prop.value = ONNX_REPORT_KEY, json.dumps(report, separators=(",", ":"))


def bake_shape(model: onnx.ModelProto, shape: tuple[int, ...], outputs: list[np.ndarray]) -> onnx.ModelProto:
    """Fix the graph input to ``shape`` and each output to the shape it had in a run at ``shape``.

    Used for ``--static`` with TLC: the graph is exported and calibrated dynamic (so the calibration
    size may differ from the static size), then the shape is baked in."""
    from .calibrate import graph_input

    baked = onnx.ModelProto()
    baked.CopyFrom(model)
    for d, v in zip(graph_input(baked).type.tensor_type.shape.dim, shape):
        d.Clear()
        d.dim_value = int(v)
    for vi, value in zip(baked.graph.output, outputs):
        dims = vi.type.tensor_type.shape.dim
        if len(dims) == value.ndim:
            for d, v in zip(dims, value.shape):
                d.Clear()
                d.dim_value = int(v)
    del baked.graph.value_info[:]          # symbolic intermediate shapes of the dynamic export
    return baked
