"""onnx's reference evaluator as a backend: exact half-precision numerics on any CPU.

ONNX Runtime's CPU provider computes most fp16 op chains in fp32 behind inserted casts
and has no bfloat16 arithmetic. The reference evaluator runs each node in NumPy in the
graph's own types (bfloat16 through ml_dtypes), rounding every op's output as a
strongly typed engine stores it. It is slow, so it takes small graphs only: the tiny
presets validate their fp16 and bf16 exports on it, and nothing here times it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import VskipError
from ..core.files import Outputs, check_threads, one_line
from ..core.sidecar import Sidecar
from .base import Backend, Description, Session, precision_of, spec_of

# Above this many weight bytes the evaluator would take minutes per run (NumPy, one op at a time).
MAX_WEIGHT_BYTES = 256 * 2**20


class ReferenceSession(Session):
    def __init__(self, evaluator, model):
        import onnx

        self.evaluator = evaluator
        self.inputs = [spec_of(i) for i in model.graph.input]
        self.outputs = [spec_of(o) for o in model.graph.output]
        self.description = Description("onnx-ref", "onnx reference evaluator", onnx.__version__, "CPU",
                                       precision_of(self.inputs))

    def infer(self, feeds):
        names = [o.name for o in self.outputs]
        try:
            values = self.evaluator.run(names, feeds)
        except Exception as exc:  # the evaluator raises whatever a NumPy kernel raised
            raise VskipError(f"the onnx reference evaluator failed to run the graph: {one_line(exc)}") from None
        return {name: np.asarray(value) for name, value in zip(names, values)}


class ReferenceBackend(Backend):
    name = "onnx-ref"
    summary = "onnx's reference evaluator (exact fp16/bf16 rounding per op; small graphs only)"

    def unavailable(self) -> str | None:
        try:
            import onnx.reference  # noqa: F401
        except ImportError:
            return "needs onnx's reference evaluator: pip install 'onnx>=1.19'"
        return None

    def load(self, path: Path, *, threads: int | None = None, outputs: Outputs | None = None,
             sidecar: Sidecar | None = None, progress=None) -> ReferenceSession:
        from onnx.external_data_helper import load_external_data_for_model
        from onnx.reference import ReferenceEvaluator

        from ..core.files import external_info, external_tensors
        from ..core.graph_io import read_graph

        path = Path(path)
        check_threads(threads)  # accepted for the interface; the evaluator runs on one thread
        model, files = read_graph(path)
        if outputs is not None:
            for read in (path, *files.values()):
                outputs.add_input(read)
        size = sum(t.ByteSize() for t in model.graph.initializer) + sum(
            external_info(t, path)[2] or 0 for t in external_tensors(model))
        if size > MAX_WEIGHT_BYTES:
            raise VskipError(f"{path}: {size / 2**20:.0f} MiB of weights is too much for the onnx reference "
                             f"evaluator (at most {MAX_WEIGHT_BYTES // 2**20} MiB); use --backend ort-cpu, "
                             "or a GPU backend for bf16")
        load_external_data_for_model(model, str(path.parent))  # locations checked by read_graph
        try:
            evaluator = ReferenceEvaluator(model)
        except Exception as exc:
            raise VskipError(f"{path}: the onnx reference evaluator cannot load it: {one_line(exc)}") from None
        return ReferenceSession(evaluator, model)


ONNX_REFERENCE = ReferenceBackend()
