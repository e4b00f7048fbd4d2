"""The native TensorRT backend's place: engines built from vskip's graphs, run with
TensorRT's Python API (through Polygraphy's runner).

Not built yet: building engines (precision flags, optimization profiles for the dynamic
batch, sequence and row-input axes) is the next piece of work. Until then this backend
says so in one line rather than pretending; ``ort-trt`` runs graphs through ONNX
Runtime's TensorRT execution provider where ``onnxruntime-gpu`` is installed.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import VskipError
from ..core.files import Outputs
from .base import Backend, Session


class TensorRTBackend(Backend):
    name = "trt"
    summary = "TensorRT engines (not built yet: use ort-trt for ONNX Runtime's TensorRT provider)"

    def unavailable(self) -> str | None:
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return ("needs TensorRT's Python package on a machine with an NVIDIA GPU: pip install 'vskip[trt]' "
                    "(NVIDIA's wheels download the libraries from pypi.nvidia.com)")
        return None

    def load(self, path: Path, *, threads: int | None = None, outputs: Outputs | None = None,
             **options) -> Session:
        raise VskipError(f"{path}: vskip does not build TensorRT engines yet; run the graph with "
                         "--backend ort-trt (ONNX Runtime's TensorRT execution provider) instead")


TENSORRT = TensorRTBackend()
