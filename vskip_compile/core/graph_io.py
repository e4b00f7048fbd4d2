"""Graph files: read an ONNX graph without its weights, record and read back what vskip
compiled into it, write a graph with the weights it owns.

Reading never loads external weights: every reference to them is checked first
(:func:`vskip_compile.core.files.external_data`: inside the model's directory, inside its
files) and only small external constants (axes, shapes) are read into the graph, since
graph rewrites and shape inference need their values.

A compiled graph records its plan and its row inputs in ``metadata_props``
(:data:`PLAN_METADATA`, :data:`ROWS_METADATA`); :func:`recorded_plan` is the one reader of
that record, so compile refuses a recompile, and validate, flops and bench know which plan
a graph was compiled with. A routable graph (``vskip-compile --routable``) records no plan,
since it takes one at run time, but its layer count and family (:data:`ROUTABLE_METADATA`,
read by :func:`recorded_routable`); :func:`vskip_compiled` says whether either record is there.

A graph written by vskip owns its weights: beside its source it shares the source's data
files; elsewhere each gets a byte copy named after the graph (:func:`weights_name`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import onnx

from .errors import VskipError
from .files import MAX_GRAPH_BYTES, Outputs, external_data, external_info, external_tensors, open_input, parse_json
from .plan import MAX_LAYERS, Plan, load_plan, to_json
from .visual_rows import ROW_INPUTS

PLAN_METADATA = "vskip.plan"
ROWS_METADATA = "vskip.row_inputs"
BLOCKS_METADATA = "vskip.causal_blocks"
ROUTABLE_METADATA = "vskip.routable"
MIN_OPSET = 13  # Unsqueeze/Squeeze take axes as inputs and Softmax is per-axis from 13 on


def read_graph(path: str | Path, weights_needed: bool = True) -> tuple[onnx.ModelProto, dict[str, Path]]:
    """Read an ONNX file without its external weights, checking every reference to them.

    External data must lie inside the model's directory and fit its files (see
    :func:`vskip_compile.core.files.external_data`); small external constants are read in.
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



def recorded_routable(model: onnx.ModelProto, source: str | Path = "graph") -> dict | None:
    """``{"num_layers": N, "family": F or None}`` for a graph vskip-compile --routable wrote,
    else None. A damaged record is refused in one line, like a damaged plan."""
    value = _metadata(model, ROUTABLE_METADATA)
    if value is None:
        return None
    record = parse_json(value, f"{source}: metadata {ROUTABLE_METADATA}", "routing record")
    layers = record.get("num_layers") if isinstance(record, dict) else None
    family = record.get("family") if isinstance(record, dict) else None
    if type(layers) is not int or not 0 < layers <= MAX_LAYERS or not (family is None or isinstance(family, str)):
        raise VskipError(f"{source}: metadata {ROUTABLE_METADATA} must hold a layer count and a family; "
                         "the graph's metadata is damaged")
    return {"num_layers": layers, "family": family}


def record_routable(model: onnx.ModelProto, num_layers: int, family: str | None) -> None:
    """Mark ``model`` as routable: it takes :func:`vskip_compile.core.routing.routing_inputs`."""
    set_metadata(model, ROUTABLE_METADATA, {"num_layers": num_layers, "family": family})


def vskip_compiled(model: onnx.ModelProto, source: str | Path = "graph") -> bool:
    """Whether vskip compiled ``model`` (with a plan, or routable): a second compile is
    refused. A damaged record is refused in one line by its reader."""
    return compiled_plan(model, source) is not None or recorded_routable(model, source) is not None


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



def weights_name(output: Path, index: int) -> str:
    """The external-data file a compiled graph written away from its source owns:
    ``OUT.onnx.data``, then ``OUT.onnx.data2``, ... for a source with several data files."""
    return f"{output.name}.data" + (str(index + 1) if index else "")



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




def recorded_plan(model: onnx.ModelProto, source: str | Path = "graph") -> Plan | None:
    """The plan a compiled graph records, or None for a graph vskip did not compile.

    A record that is not a valid plan is refused in one line: the graph's metadata was
    damaged, and guessing a plan would validate or time the wrong thing.
    """
    recorded = compiled_plan(model, source)
    if recorded is None:
        return None
    try:
        return load_plan(recorded)[0]
    except VskipError as exc:
        raise VskipError(f"{source}: metadata {PLAN_METADATA} is not a valid plan ({exc}); "
                         "the graph's metadata is damaged") from None


def record_compilation(model: onnx.ModelProto, plan: Plan, family: str | None, row_inputs: list[str],
                       causal_blocks: int = 0) -> None:
    """Mark ``model`` as compiled with ``plan``, taking ``row_inputs`` (and, when it was
    blocked, with ``causal_blocks`` query chunks per full-query core)."""
    set_metadata(model, PLAN_METADATA, json.loads(to_json(plan, family=family)))
    set_metadata(model, ROWS_METADATA, row_inputs)
    if causal_blocks:
        set_metadata(model, BLOCKS_METADATA, causal_blocks)


def recorded_causal_blocks(model: onnx.ModelProto, source: str | Path = "graph") -> int:
    """The causal blocks a compiled graph records (0: none)."""
    value = _metadata(model, BLOCKS_METADATA)
    if value is None:
        return 0
    blocks = parse_json(value, f"{source}: metadata {BLOCKS_METADATA}", "causal block count")
    if type(blocks) is not int or blocks < 2:
        raise VskipError(f"{source}: metadata {BLOCKS_METADATA} must be a block count >= 2; "
                         "the graph's metadata is damaged")
    return blocks


RANGE_ISLANDS = "vskip.fp32_range_tensors"


def recorded_range_islands(model: onnx.ModelProto, source: str | Path = "graph") -> int:
    """How many tensors ``vskip cast --range-check`` kept in fp32 for their range (0: none)."""
    text = _metadata(model, RANGE_ISLANDS)
    if text is None:
        return 0
    value = parse_json(text, f"{source}: metadata {RANGE_ISLANDS}")
    if type(value) is not int or value < 0:
        raise VskipError(f"{source}: metadata {RANGE_ISLANDS} must be a count, got {str(value)[:40]}")
    return value


def set_metadata(model: onnx.ModelProto, key: str, value) -> None:
    entry = model.metadata_props.add()
    entry.key, entry.value = key, json.dumps(value, sort_keys=True)
