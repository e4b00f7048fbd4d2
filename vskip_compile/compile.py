"""The compile pipeline: graph file + plan -> compiled graph file.

    load (graph only; external weights stay on disk) -> refuse recompiles -> read the plan
    -> locate layers by structure -> skip visual rows per plan -> write atomically

Weights in external data are never read or loaded: the compiled graph references the
source's data file when written beside it (the default), and gets a copy of that file
when written to another directory. The compiled model
records its plan in ``metadata_props`` so a second compile is refused.
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
from .files import copy_file_atomic, output_directory, write_bytes_atomic
from .shapes import with_shapes
from .plan import Action, Plan, PlanInfo, load_plan, to_json

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

    def summary(self) -> str:
        counts = {a: self.actions.count(a) for a in Action if self.actions.count(a)}
        actions = ", ".join(f"{a.value} x{n}" for a, n in counts.items())
        return (f"compiled {self.source} -> {self.output}: {self.layers_found} layers ({actions}); "
                f"nodes {self.nodes_before} -> {self.nodes_after}; row inputs {', '.join(self.row_inputs)}; "
                f"{self.seconds:.2f} s")


def load_graph(path: str | Path) -> onnx.ModelProto:
    """Read an ONNX file without its external weights, checking the weights are there."""
    path = Path(path)
    if not path.is_file():
        raise VskipError(f"{path}: no such file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends for bad bytes
        raise VskipError(f"{path}: not an ONNX model or truncated ({type(exc).__name__})") from None
    if not model.graph.node:
        raise VskipError(f"{path}: not an ONNX model or truncated (no graph nodes)")
    for name, needed in external_files(model).items():
        data = path.parent / name
        if not data.is_file():
            raise VskipError(f"{path}: missing external data file {data}")
        if data.stat().st_size < needed:
            raise VskipError(f"{path}: external data file {data} is truncated "
                             f"({data.stat().st_size} bytes, the graph needs {needed})")
    _inline_small_external(model, path.parent)
    return model


def _inline_small_external(model: onnx.ModelProto, base_dir: Path, limit: int = 4096) -> None:
    """Read external tensors of at most ``limit`` bytes into the graph.

    The rewrite reads a few small constants (axes, shapes); any exporter may have put them
    in external data. Weights stay where they are.
    """
    from onnx.external_data_helper import load_external_data_for_tensor

    for tensor in _all_initializers(model):
        info = {e.key: e.value for e in tensor.external_data}
        if tensor.data_location == onnx.TensorProto.EXTERNAL and int(info.get("length", limit + 1)) <= limit:
            load_external_data_for_tensor(tensor, str(base_dir))
            tensor.data_location = onnx.TensorProto.DEFAULT
            del tensor.external_data[:]


def external_files(model: onnx.ModelProto) -> dict[str, int]:
    """External data file -> the number of bytes the graph reads from it."""
    files: dict[str, int] = {}
    for tensor in _all_initializers(model):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        end = int(info.get("offset", 0)) + int(info.get("length", 0))
        files[info["location"]] = max(files.get(info["location"], 0), end)
    return files


def _all_initializers(model: onnx.ModelProto):
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR and attr.t.data_location == onnx.TensorProto.EXTERNAL:
                yield attr.t


def compiled_plan(model: onnx.ModelProto) -> dict | None:
    for prop in model.metadata_props:
        if prop.key == PLAN_METADATA:
            return json.loads(prop.value)
    return None


def row_input_names(model: onnx.ModelProto) -> list[str]:
    for prop in model.metadata_props:
        if prop.key == ROWS_METADATA:
            return json.loads(prop.value)
    return []


def default_output(model_path: str | Path) -> Path:
    path = Path(model_path)
    return path.with_name(f"{path.stem}.vskip.onnx")


def compile_model(model_path: str | Path, plan: str | Path | Plan, output: str | Path | None = None,
                  force: bool = False, progress: Callable[[str], None] | None = None) -> CompileReport:
    """Compile ``model_path`` with ``plan`` (a plan file or a Plan) into ``output``."""
    from onnx_graphsurgeon import export_onnx, import_onnx

    from .passes.locate import format_table, locate_layers, node_scopes
    from .passes.skip_visual import row_inputs_for, skip_visual_rows

    start = time.perf_counter()
    model_path = Path(model_path)
    output = Path(output) if output else default_output(model_path)
    _check_output(model_path, output, force)
    model = load_graph(model_path)
    if compiled_plan(model) is not None:
        raise VskipError(f"{model_path}: already compiled by vskip; compile the original graph instead")
    if isinstance(plan, Plan):
        plan_obj, info = plan, PlanInfo("<plan>", "vskip-plan", None, plan.num_layers)
    else:
        plan_obj, info = load_plan(plan)

    graph = import_onnx(with_shapes(model))
    structure = locate_layers(graph, scopes=node_scopes(model))
    family = _sidecar_family(model_path)
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
    data_files = _write_atomic(compiled, model_path, output, force, progress)
    return CompileReport(
        source=str(model_path), output=str(output), layers_found=len(structure.layers),
        actions=list(plan_obj.actions), row_inputs=row_inputs, nodes_before=nodes_before,
        nodes_after=len(compiled.graph.node), nodes_added_per_layer=added, notes=notes,
        seconds=time.perf_counter() - start, external_data=data_files, table=table,
    )


def _sidecar_family(model_path: Path) -> str | None:
    sidecar = model_path.parent / "vskip.json"
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text()).get("family")
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise VskipError(f"{sidecar}: not valid JSON") from None


def _check_output(model_path: Path, output: Path, force: bool) -> None:
    if output.resolve() == model_path.resolve():
        raise VskipError(f"{output}: the output would overwrite the input graph; choose another -o")
    if output.exists() and not force:
        raise VskipError(f"{output}: exists; pass --force to overwrite it")
    output_directory(output)


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


def _write_atomic(model: onnx.ModelProto, source: Path, output: Path, force: bool,
                  progress: Callable[[str], None] | None) -> list[str]:
    """Write ``output`` through a temp file + rename; make its external data resolvable.

    Beside the source (the default output) the compiled graph shares the source's weight
    file. In another directory the weights must be a regular file of their own there:
    onnx refuses hard-linked external data and ONNX Runtime refuses paths leaving the
    model's directory, so they are copied, once, and the copy is reported.
    """
    directory = output.parent if str(output.parent) else Path(".")
    copied = []
    for name in external_files(model):
        src, dst = source.parent / name, directory / name
        if dst.exists() and os.path.samefile(src, dst):
            continue
        if dst.exists() and not force:
            raise VskipError(f"{dst}: exists and is not the source's external data; pass --force to replace it")
        if progress:
            progress(f"copying {src.stat().st_size / 2**20:.0f} MiB of weights to {dst} "
                     "(write the output beside the source to share them instead)")
        copy_file_atomic(src, dst)
        copied.append(str(dst))
    write_bytes_atomic(output, model.SerializeToString())
    return copied

