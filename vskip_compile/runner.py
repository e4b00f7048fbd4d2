"""Run an ONNX graph on ONNX Runtime CPU with feeds given by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import VskipError


def make_session(path: str | Path, threads: int | None = None, optimize: bool = True, outputs=None):
    """An ORT CPU session on ``path``, after the graph and its external-data references
    passed vskip's checks (ORT would otherwise be the first to read them). ``outputs``
    (a :class:`vskip_compile.files.Outputs`) learns the files read, as inputs."""
    import onnxruntime as ort

    from .compile import read_graph
    from .files import check_threads

    path = Path(path)
    _, files = read_graph(path)
    if outputs is not None:
        for read in (path, *files.values()):
            outputs.add_input(read)
    threads = check_threads(threads)
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own exception types for bad or truncated files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise VskipError(f"{path}: ONNX Runtime cannot load it: {first}") from None


def run_session(session, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run with exactly the graph's inputs; returns outputs by name."""
    expected = [i.name for i in session.get_inputs()]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing:
        raise VskipError(f"missing graph inputs: {', '.join(missing)}")
    if extra:
        raise VskipError(f"inputs not in the graph: {', '.join(extra)} (graph takes {', '.join(expected)})")
    from .visual_rows import ROW_INPUTS, check_row_feeds, sequence_length

    rows = {n: feeds[n] for n in expected if n in ROW_INPUTS}
    if rows:
        check_row_feeds(rows, sequence_length(feeds))
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, {n: np.asarray(feeds[n]) for n in expected})
    except Exception as exc:
        first = str(exc).strip().splitlines()[0]
        raise VskipError(f"ONNX Runtime failed to run the graph: {first}") from None
    return dict(zip(names, values))
