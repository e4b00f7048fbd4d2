"""``vskip cast``: an fp32 graph as a strictly typed fp16 or bf16 graph with fp32 islands.

The rules are :mod:`vskip_compile.passes.precision`'s. The graph is read without its
weights; every weight is then read, converted and appended to the output's own data file
one tensor at a time, so memory holds the graph and the largest tensor, never the model.
The output always owns its weights (``OUT.onnx.data``: they changed type). Writing it
beside the source keeps the source's ``vskip.json`` in reach, so ``vskip validate`` finds
the reference model; elsewhere, validate needs ``--model``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .core.errors import VskipError
from .core.files import MAX_GRAPH_BYTES, Outputs, input_file, read_npz
from .core.graph_io import RANGE_ISLANDS, check_opset, read_graph, set_metadata, weights_name


@dataclass
class CastReport:
    source: str
    output: str
    dtype: str
    lines: list[str]
    seconds: float


def cast_model(model_path: str | Path, dtype: str, output: str | Path, force: bool = False,
               lm_head: bool = False, progress: Callable[[str], None] | None = None,
               range_check: bool = False, range_inputs: str | Path | None = None) -> CastReport:
    """Write ``model_path`` typed in ``dtype`` to ``output`` (see the module docstring).

    ``range_check`` / ``range_inputs``: run the fp32 graph once on sample feeds (validate's
    prompts for the sidecar's model, or a FEEDS.npz) and keep in fp32 whatever goes beyond
    fp16's range there (fp16 only; bf16 has fp32's range). The graph records how many
    tensors that kept, and validate then judges it by its own outputs.
    """
    import onnx

    from .passes.precision import TARGETS, convert_weights, infer_types, out_of_range_tensors, type_graph

    if dtype not in TARGETS:
        raise VskipError(f"--dtype {str(dtype)[:40]}: choose {', '.join(TARGETS)}")
    if range_check and range_inputs is not None:
        raise VskipError("--range-check generates its feeds; --range-inputs gives them: choose one")
    if (range_check or range_inputs is not None) and dtype != "float16":
        raise VskipError(f"the range check is for float16: {dtype} has fp32's range")
    start = time.perf_counter()
    model_path = input_file(model_path, "ONNX model", MAX_GRAPH_BYTES)
    output = Path(output)
    with Outputs([model_path], force=force) as outputs:
        model, files = read_graph(model_path)
        for path in files.values():
            outputs.add_input(path)
        outputs.claim(output, "typed graph")
        data_name = weights_name(output, 0)
        has_external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
        if has_external:
            outputs.claim(output.with_name(data_name), f"weights of {output.name}")
        check_opset(model, model_path)
        infer_types(model)
        keep = []
        if range_check or range_inputs is not None:
            if range_inputs is not None:
                outputs.add_input(range_inputs)
            feeds = read_npz(range_inputs) if range_inputs is not None else _sample_feeds(model, model_path, outputs)
            keep = out_of_range_tensors(model, model_path.parent, feeds)
            if progress:
                progress(f"range check: {len(keep)} tensors beyond fp16's range on the sample feeds")
        report = type_graph(model, dtype, lm_head=lm_head, keep_fp32=keep)
        if range_check or range_inputs is not None:
            set_metadata(model, RANGE_ISLANDS, len(keep))
        if progress:
            for line in report.lines():
                progress(line)
        if has_external:
            def write_data(handle):
                def append(chunk: bytes) -> int:
                    offset = handle.tell()
                    handle.write(chunk)
                    return offset
                convert_weights(model, files, model_path, report.converted, data_name, append)

            outputs.write_with(output.with_name(data_name), write_data)
        outputs.write_bytes(output, model.SerializeToString())
        outputs.commit()
    return CastReport(str(model_path), str(output), dtype, report.lines(), time.perf_counter() - start)


def _sample_feeds(model, model_path: Path, outputs: Outputs) -> dict:
    """validate's prompts for the model the graph's vskip.json names, as the graph's feeds."""
    from .core.sidecar import read_sidecar, sidecar_path
    from .core.visual_rows import ROW_INPUTS, row_feeds
    from .models.loading import load_model
    from .validate import HALF_BATCH, sample_feeds

    sidecar = read_sidecar(model_path)
    if sidecar is None or not sidecar.source:
        raise VskipError(f"{model_path}: --range-check needs the vskip.json beside the graph naming its model; "
                         "give feeds with --range-inputs FEEDS.npz instead")
    outputs.add_input(sidecar_path(model_path))
    feeds, visual = sample_feeds(load_model(sidecar.source, seed=sidecar.seed or 0), sidecar.seed or 0, HALF_BATCH)
    rows = [i.name for i in model.graph.input if i.name in ROW_INPUTS]
    if rows:
        feeds.update(row_feeds(visual, rows))
    return feeds
