"""The interface every backend implements: load a graph (or engine), run named feeds to
named outputs, say what it is.

Modelled on Polygraphy's runners (``polygraphy/backend/base/runner.py``): a backend is a
factory, :meth:`Backend.load` gives a :class:`Session` bound to one graph, and a session
runs a feed dict. ``run``, ``validate`` and ``bench`` only ever talk to this interface,
so a new backend is one new file plus one line in :mod:`vskip_compile.backends`.

The checks every backend needs are here, once: :func:`check_feeds` refuses missing and
unknown inputs and row inputs that are not proper row lists, before any backend sees them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import VskipError
from ..core.files import Outputs
from ..core.routing import is_routing_input
from ..core.sidecar import Sidecar
from ..core.visual_rows import ROW_INPUTS, check_row_feeds, sequence_length


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output as a backend sees it."""

    name: str
    shape: tuple             # ints for fixed axes, strings or None for dynamic ones
    dtype: type | None       # numpy scalar type; None where the backend does not say


def spec_of(info) -> TensorSpec:
    """The TensorSpec of an ONNX ValueInfoProto (a graph's declared input or output)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    tensor = info.type.tensor_type
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
    return TensorSpec(info.name, shape, tensor_dtype_to_np_dtype(tensor.elem_type).type if tensor.elem_type else None)


@dataclass(frozen=True)
class Description:
    """What a session runs on, for reports: e.g. onnxruntime 1.32.0, CPU, fp32."""

    backend: str             # the registry name, e.g. "ort-cpu"
    runtime: str             # the library, e.g. "onnxruntime"
    version: str
    device: str
    precision: str           # the graph's floating type: fp32, fp16, bf16

    def to_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        return f"{self.backend} ({self.runtime} {self.version}, {self.device}, {self.precision})"


class Session(ABC):
    """One loaded graph, ready to run."""

    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    description: Description

    @abstractmethod
    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run on exactly the session's inputs (already checked); outputs by name."""

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check ``feeds`` against the inputs, then run; outputs by name."""
        return self.infer(check_feeds(self.inputs, feeds))

    def run_kept(self, feeds: dict, keep: tuple[str, ...]) -> tuple[dict[str, np.ndarray], dict]:
        """Run, giving the outputs named in ``keep`` back as values this backend takes as
        feeds again without a copy (a decode loop's KV cache), the others as numpy.

        ``feeds`` may hold such kept values, from this session or another of the same
        backend. This default keeps numpy arrays; a backend with device-side values
        (ONNX Runtime's OrtValue) overrides it.
        """
        outputs = self.run(feeds)
        return ({k: v for k, v in outputs.items() if k not in keep}, {k: outputs[k] for k in keep})


class Backend(ABC):
    """A way to run graphs; stateless until :meth:`load`."""

    name: str                # the --backend name
    summary: str             # one line for --help

    def unavailable(self) -> str | None:
        """None when this backend can run here; else one line saying what to install."""
        return None

    @abstractmethod
    def load(self, path: Path, *, threads: int | None = None, outputs: Outputs | None = None,
             sidecar: Sidecar | None = None, progress: Callable[[str], None] | None = None) -> Session:
        """A session on the graph at ``path``, after vskip's checks of the file.

        ``threads``: intra-op threads, where the backend has such a setting. ``outputs``
        learns every file read, as an input, so no output of the command can replace it.
        ``sidecar``: the export the graph came from, for backends that need the model
        itself (default: the vskip.json beside the graph). ``progress`` hears about slow steps.
        """


def check_feeds(inputs: list[TensorSpec], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Exactly the inputs' feeds, in their order; missing or unknown names and bad row
    inputs are one-line errors (a graph cannot check its row inputs itself)."""
    expected = [spec.name for spec in inputs]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing:
        raise VskipError(f"missing graph inputs: {', '.join(missing)}")
    if extra:
        raise VskipError(f"inputs not in the graph: {', '.join(extra)} (graph takes {', '.join(expected)})")
    rows = {n: feeds[n] for n in expected if n in ROW_INPUTS or is_routing_input(n)}
    if rows:
        check_row_feeds(rows, sequence_length(feeds))
    return {n: np.asarray(feeds[n]) for n in expected}


_PRECISIONS = {np.dtype(np.float32): "fp32", np.dtype(np.float16): "fp16", np.dtype(np.float64): "fp64"}


def precision_of(inputs: list[TensorSpec]) -> str:
    """The floating type of a graph's float inputs (``inputs_embeds`` for a decoder)."""
    kinds = []
    for spec in inputs:
        if spec.dtype is None:
            continue
        dtype = np.dtype(spec.dtype)
        name = _PRECISIONS.get(dtype) or ("bf16" if dtype.name == "bfloat16" else None)
        if name and name not in kinds:
            kinds.append(name)
    return "+".join(kinds) or "-"
