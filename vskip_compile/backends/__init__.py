"""Backends: where a graph runs. Each is one file behind :class:`base.Backend`; this
registry is the only list of them, and ``--backend`` takes its names.

    ort-cpu    ONNX Runtime, CPU provider (the default)
    ort-cuda   ONNX Runtime, CUDA execution provider (onnxruntime-gpu)
    ort-trt    ONNX Runtime, TensorRT execution provider (onnxruntime-gpu with TensorRT)
    torch      the PyTorch skip reference
    torch-skip the same model computing only the plan's live rows (what PyTorch's seconds are)
    onnx-ref   onnx's reference evaluator (exact fp16/bf16 numerics on CPU, small graphs)
    trt        native TensorRT engines from `vskip build`, through Polygraphy's TrtRunner

Importing this package imports no runtime: each backend imports its library when used.
"""

from __future__ import annotations

from pathlib import Path

from ..core.errors import VskipError
from .base import Backend, Description, Session, TensorSpec, check_feeds
from .onnx_reference import ONNX_REFERENCE
from .ort import ORT_CPU, ORT_CUDA, ORT_TRT
from .tensorrt import TENSORRT
from .torch_reference import TORCH, TORCH_SKIP

BACKENDS: dict[str, Backend] = {b.name: b for b in (ORT_CPU, ORT_CUDA, ORT_TRT, TORCH, TORCH_SKIP, ONNX_REFERENCE,
                                                     TENSORRT)}
DEFAULT = ORT_CPU.name

__all__ = ["BACKENDS", "DEFAULT", "TORCH", "TORCH_SKIP", "Backend", "Description", "Session", "TensorSpec", "check_feeds",
           "check_engines", "engine_options", "get_backend", "open_session"]


def engine_options(backend: Backend, graph: str | Path, engines: bool) -> dict:
    """What ``backend.load`` takes to run ``graph``'s prebuilt engine (``--engines``): the
    engine `vskip build` wrote beside it (``GRAPH.engine``) on the trt backend; nothing for
    the other backends, or without ``engines``. A missing engine is one line naming the
    command that builds it."""
    if not engines or backend.name != TENSORRT.name:
        return {}
    from ..trt.build import default_engine_path

    engine = default_engine_path(graph)
    if not engine.is_file():
        raise VskipError(f"{graph}: --engines runs the engine beside it, and there is no {engine.name}; build it: "
                         f"vskip build {graph}")
    return {"engine": engine}


def check_engines(backends, engines: bool) -> None:
    """``--engines`` needs the trt backend among ``backends`` (names)."""
    if engines and TENSORRT.name not in ([backends] if isinstance(backends, str) else list(backends)):
        raise VskipError("--engines runs prebuilt TensorRT engines: it goes with --backend trt")


def get_backend(name: str) -> Backend:
    """The backend called ``name``, if it can run here; else one line naming what to install."""
    backend = BACKENDS.get(name)
    if backend is None:
        raise VskipError(f"unknown backend {name!r}; backends are {', '.join(BACKENDS)}")
    reason = backend.unavailable()
    if reason:
        raise VskipError(f"backend {name} is not available: {reason}")
    return backend


def open_session(path: str | Path, backend: str = DEFAULT, **options) -> Session:
    """A session on ``path`` with the backend called ``backend`` (see :meth:`Backend.load`)."""
    return get_backend(backend).load(Path(path), **options)


def help_text() -> str:
    """One line per backend, for --help."""
    return "; ".join(f"{b.name}: {b.summary}" for b in BACKENDS.values())
