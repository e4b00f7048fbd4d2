"""The compile pipeline: graph file + plan -> compiled graph file.

    load (graph only; external weights stay on disk) -> refuse recompiles -> read the plan
    -> locate layers by structure -> skip visual rows per plan -> write atomically

Weights in external data are never read or loaded. A compiled graph owns its weights:
written beside its source (the default) it references the source's data files, which it
may share; written to another directory it gets a byte copy named after itself,
``OUT.onnx.data`` (:func:`weights_name`), so any number of compiled graphs can live in one
directory and ``--force`` only ever replaces files that belong to OUT. Every output is
claimed before any work (:class:`vskip_compile.files.Outputs`) and published by rename
at the end. The compiled model records its plan in ``metadata_props`` so a second
compile is refused.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import onnx

from .errors import VskipError
from .files import (MAX_GRAPH_BYTES, Outputs, external_data, external_info, external_tensors, input_file,
                    open_input, parse_json)
from .plan import Action, Plan, PlanInfo, load_plan, to_json
from .shapes import with_shapes
from .sidecar import read_sidecar, sidecar_path
from .visual_rows import ROW_INPUTS

PLAN_METADATA = "vskip.plan"
ROWS_METADATA = "vskip.row_inputs"


@dataclass
class CompileReport:
    source: str
    output: str
    layers_found: int
    actions: list[Action]
    row_inputs: list[str]
    nodes_before: int
    nodes_after: int
    nodes_added_per_layer: dict[int, int] = field(default_factory=dict)
    notes: dict[int, str] = field(default_factory=dict)    # per layer, how the rewrite went
    seconds: float = 0.0
    external_data: list[str] = field(default_factory=list)
    table: str = ""
    plan: Plan | None = None                                # the plan compiled, freeze scope included

    def summary(self) -> str:
        counts = {a: self.actions.count(a) for a in Action if self.actions.count(a)}
        actions = ", ".join(f"{a.value} x{n}" for a, n in counts.items())
        return (f"compiled {self.source} -> {self.output}: {self.layers_found} layers ({actions}); "
                f"nodes {self.nodes_before} -> {self.nodes_after}; row inputs {', '.join(self.row_inputs)}; "
                f"{self.seconds:.2f} s")


MIN_OPSET = 13  # Unsqueeze/Squeeze take axes as inputs and Softmax is per-axis from 13 on


def read_graph(path: str | Path, weights_needed: bool = True) -> tuple[onnx.ModelProto, dict[str, Path]]:
    """Read an ONNX file without its external weights, checking every reference to them.

    External data must lie inside the model's directory and fit its files (see
    :func:`vskip_compile.files.external_data`); small external constants are read in.
    Returns the graph and the data files it still reads (location -> path).
    ``weights_needed=False`` accepts absent data files (the FLOPs counter needs shapes only).
    """
    path = Path(path)
    with open_input(path, "ONNX model", MAX_GRAPH_BYTES) as handle:
        data = handle.read()
    try:
        model = onnx.load_model_from_string(data)
    except Exception:  # protobuf raises DecodeError and friends for bad bytes
        raise VskipError(f"{path}: not an ONNX model or truncated") from None
    if not model.graph.node:
        raise VskipError(f"{path}: not an ONNX model or truncated (no graph nodes)")
    files = external_data(model, path, weights_needed)
    _inline_small_external(model, path, files)
    read = {external_info(tensor, path)[0] for tensor in external_tensors(model)}
    return model, {location: file for location, file in files.items() if location in read}


def load_graph(path: str | Path, weights_needed: bool = True) -> onnx.ModelProto:
    """:func:`read_graph` for callers that need the graph only."""
    return read_graph(path, weights_needed)[0]


def check_opset(model: onnx.ModelProto, path: str | Path) -> int:
    """The graph's default-domain opset, if vskip can rewrite it and ONNX Runtime load the result."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    if not versions:
        raise VskipError(f"{path}: imports no default ONNX opset; not a decoder graph vskip can compile")
    opset, newest = versions[0], onnx.defs.onnx_opset_version()
    if not MIN_OPSET <= opset <= newest:
        raise VskipError(f"{path}: opset {opset} is not supported; vskip compiles opsets {MIN_OPSET}-{newest} "
                         "(re-export the model with a newer opset)")
    return opset


def _inline_small_external(model: onnx.ModelProto, path: Path, files: dict[str, Path], limit: int = 4096) -> None:
    """Read external tensors of at most ``limit`` bytes into the graph.

    The rewrite reads a few small constants (axes, shapes); any exporter may have put them
    in external data. Weights stay where they are. ``files`` are the references
    :func:`external_data` checked; a location missing from it is an absent file (allowed
    only without ``weights_needed``), whose values stay unknown.
    """
    for tensor in external_tensors(model):
        location, offset, length = external_info(tensor, path)
        data = files.get(location)
        if length is None or length > limit or data is None:
            continue
        with open_input(data, "external data file") as handle:
            handle.seek(offset)
            tensor.raw_data = handle.read(length)
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def compiled_plan(model: onnx.ModelProto, source: str | Path = "graph") -> dict | None:
    """The plan a compiled graph records (a JSON object), or None for a graph vskip did not compile."""
    value = _metadata(model, PLAN_METADATA)
    if value is None:
        return None
    plan = parse_json(value, f"{source}: metadata {PLAN_METADATA}", "recorded plan")
    if not isinstance(plan, dict):
        raise VskipError(f"{source}: metadata {PLAN_METADATA} is not a plan (a JSON object); "
                         "the graph's metadata is damaged")
    return plan


def row_input_names(model: onnx.ModelProto, source: str | Path = "graph") -> list[str]:
    value = _metadata(model, ROWS_METADATA)
    if value is None:
        return []
    names = parse_json(value, f"{source}: metadata {ROWS_METADATA}", "row input list")
    if not isinstance(names, list) or not all(isinstance(n, str) and n in ROW_INPUTS for n in names):
        raise VskipError(f"{source}: metadata {ROWS_METADATA} must list row inputs among {', '.join(ROW_INPUTS)}")
    return names


def _metadata(model: onnx.ModelProto, key: str) -> str | None:
    for prop in model.metadata_props:
        if prop.key == key:
            return prop.value
    return None


def default_output(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path.with_name(f"{path.stem}.vskip.onnx")


def weights_name(output: Path, index: int) -> str:
    """The external-data file a compiled graph written away from its source owns:
    ``OUT.onnx.data``, then ``OUT.onnx.data2``, ... for a source with several data files."""
    return f"{output.name}.data" + (str(index + 1) if index else "")


def compile_model(model_path: str | Path, plan: str | Path | Plan, output: str | Path | None = None,
                  force: bool = False, progress: Callable[[str], None] | None = None,
                  extra_outputs: Callable[[Path], list[Path]] | None = None) -> CompileReport:
    """Compile ``model_path`` with ``plan`` (a plan file or a Plan) into ``output``.

    ``extra_outputs(output)`` names further files the caller will write for this output
    (the --report files): they are claimed, so refused, before any work is done.
    """
    from onnx_graphsurgeon import export_onnx, import_onnx

    from .passes.locate import format_table, locate_layers, node_scopes
    from .passes.skip_visual import row_inputs_for, skip_visual_rows

    start = time.perf_counter()
    model_path = input_file(model_path, "ONNX model", MAX_GRAPH_BYTES)
    output = Path(output) if output else default_output(model_path)
    outputs = Outputs([model_path] + ([] if isinstance(plan, Plan) else [plan]), force=force)
    with outputs:
        model, data_files = read_graph(model_path)
        for path in data_files.values():
            outputs.add_input(path)
        sidecar = read_sidecar(model_path)
        if sidecar is not None:
            outputs.add_input(sidecar_path(model_path))
        outputs.claim(output, "compiled graph")
        copies = claim_weight_copies(outputs, model_path, output, data_files)
        for extra in (extra_outputs(output) if extra_outputs else []):
            outputs.claim(extra, "report")
        if compiled_plan(model, model_path) is not None:
            raise VskipError(f"{model_path}: already compiled by vskip; compile the original graph instead")
        check_opset(model, model_path)
        if isinstance(plan, Plan):
            plan_obj, info = plan, PlanInfo("<plan>", "vskip-plan", None, plan.num_layers)
        else:
            plan_obj, info = load_plan(plan)
        family = sidecar.get("family") if sidecar else None
        if sidecar and "num_layers" in sidecar:  # before the graph is walked: a plan for another model costs nothing
            info.check_model(family or info.family or "decoder", sidecar["num_layers"])

        graph = import_onnx(with_shapes(model))
        structure = locate_layers(graph, scopes=node_scopes(model))
        info.check_model(family or info.family or "decoder", len(structure.layers))
        if progress:
            progress(f"found {len(structure.layers)} decoder layers "
                     f"({structure.layers[0].attention.kind if structure.layers else '-'} attention)")
        nodes_before = len(graph.nodes)
        table = format_table(structure)
        if plan_obj.is_empty:
            # The source graph itself, node for node and in its own order, plus the row input:
            # identical numbers and the same execution plan, so it cannot be slower.
            compiled, row_inputs, added, notes = model, row_inputs_for(plan_obj), {}, {}
            compiled.graph.input.extend(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.INT64,
                                                                           [f"{name}_count"]) for name in row_inputs)
        else:
            result = skip_visual_rows(structure, plan_obj)
            compiled, row_inputs = export_onnx(graph), result.row_inputs
            added = {c.index: c.nodes_added for c in result.layers}
            notes = {c.index: c.note for c in result.layers if c.note}
            _copy_model_fields(model, compiled)
        _set_metadata(compiled, PLAN_METADATA, json.loads(to_json(plan_obj, family=family or info.family)))
        _set_metadata(compiled, ROWS_METADATA, row_inputs)
        write_graph(outputs, compiled, output, data_files, copies, progress)
        outputs.commit()
    return CompileReport(
        source=str(model_path), output=str(output), layers_found=len(structure.layers),
        actions=list(plan_obj.actions), row_inputs=row_inputs, nodes_before=nodes_before,
        nodes_after=len(compiled.graph.node), nodes_added_per_layer=added, notes=notes,
        seconds=time.perf_counter() - start, external_data=[str(p) for p in copies.values()], table=table,
        plan=plan_obj,
    )


def claim_weight_copies(outputs: Outputs, model_path: Path, output: Path, files: dict[str, Path]) -> dict[str, Path]:
    """The weight files ``output``, a graph made from ``model_path``, owns: none beside its
    source, whose files it shares; elsewhere a copy of each named after it (:func:`weights_name`),
    claimed in ``outputs``. Returns source location -> copy."""
    directory = output.parent if str(output.parent) else Path(".")
    if os.path.realpath(directory) == os.path.realpath(model_path.parent):
        return {}
    copies = {location: output.with_name(weights_name(output, i)) for i, location in enumerate(files)}
    for target in copies.values():
        outputs.claim(target, f"weights of {output.name}")
    return copies


def write_graph(outputs: Outputs, model: onnx.ModelProto, output: Path, files: dict[str, Path],
                copies: dict[str, Path], progress: Callable[[str], None] | None = None) -> None:
    """Copy the weights ``output`` owns, point ``model`` at them and write it; all of it is
    published by ``outputs.commit()``."""
    for location, target in copies.items():
        outputs.copy(files[location], target, progress)
    _relocate_weights(model, copies)
    outputs.write_bytes(output, model.SerializeToString())


def _relocate_weights(model: onnx.ModelProto, copies: dict[str, Path]) -> None:
    """Point every external tensor at the copy its output owns (offsets are unchanged: byte copies)."""
    if not copies:
        return
    for tensor in external_tensors(model):
        for entry in tensor.external_data:
            if entry.key == "location" and entry.value in copies:
                entry.value = copies[entry.value].name


def _copy_model_fields(source: onnx.ModelProto, target: onnx.ModelProto) -> None:
    target.ir_version = source.ir_version
    target.producer_name = source.producer_name
    target.producer_version = source.producer_version
    del target.metadata_props[:]
    target.metadata_props.extend(source.metadata_props)
    existing = {o.domain for o in target.opset_import}
    target.opset_import.extend(o for o in source.opset_import if o.domain not in existing)


def _set_metadata(model: onnx.ModelProto, key: str, value) -> None:
    entry = model.metadata_props.add()
    entry.key, entry.value = key, json.dumps(value, sort_keys=True)
