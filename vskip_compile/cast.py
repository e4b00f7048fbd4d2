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
from .core.files import MAX_GRAPH_BYTES, Outputs, input_file
from .core.graph_io import check_opset, read_graph, weights_name


@dataclass
class CastReport:
    source: str
    output: str
    dtype: str
    lines: list[str]
    seconds: float


def cast_model(model_path: str | Path, dtype: str, output: str | Path, force: bool = False,
               lm_head: bool = False, progress: Callable[[str], None] | None = None) -> CastReport:
    """Write ``model_path`` typed in ``dtype`` to ``output`` (see the module docstring)."""
    import onnx

    from .passes.precision import TARGETS, convert_weights, infer_types, type_graph

    if dtype not in TARGETS:
        raise VskipError(f"--dtype {str(dtype)[:40]}: choose {', '.join(TARGETS)}")
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
        report = type_graph(model, dtype, lm_head=lm_head)
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
