"""Native TensorRT engines (``--backend trt``), run with Polygraphy's ``TrtRunner``.

``load`` takes either

- an engine that ``vskip build`` wrote (any file name but ``*.onnx``): its sidecar
  ``ENGINE.json`` is read and checked first (built by this TensorRT version; built from the
  source graph as it is now, where that graph is still at its recorded path), then the engine
  is deserialized (``EngineFromBytes``); or
- an ONNX graph (``*.onnx``), as ``validate`` and ``bench`` give: with ``engine=PATH`` that
  engine is used, after checking that it was built from this very graph (sha256); without
  it an engine is built in memory for the graph (:data:`IN_MEMORY_LIMITS`), as the ort-trt
  backend builds its own.

Feeds and outputs go by name like every backend's. A feed outside the engine's profile
is refused in one line naming the input and the ``vskip build`` flag to raise, before
TensorRT sees it. ``threads`` has no meaning on a GPU and is only checked.

Needs TensorRT (>= 10), Polygraphy and an NVIDIA GPU; without them :meth:`unavailable`
says what to install, and nothing is loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.dtypes import SHORT
from ..core.errors import VskipError
from ..core.files import Outputs, available_memory, check_threads, escape, one_line, read_bytes
from ..core.sidecar import Sidecar
from ..trt.profiles import (BATCH, CONTEXT, IMAGE_TOKENS, IMAGES, PAST, SEQUENCE, SUFFIX, TEXT, VISUAL,
                             ProfileLimits)
from .base import Backend, Description, Session, TensorSpec

# An engine built for an ONNX graph handed to the trt backend (validate, bench): the
# default profile with room for validate's batches of 8 half-precision prompts.
IN_MEMORY_LIMITS = ProfileLimits(max_batch=8)

# The vskip build flag that raises each kind of axis.
_FLAGS = {BATCH: "--max-batch", SEQUENCE: "--max-seq", VISUAL: "--max-visual-rows", TEXT: "--max-seq",
          SUFFIX: "--max-seq", PAST: "--max-seq", CONTEXT: "--max-seq", IMAGES: "--max-images",
          IMAGE_TOKENS: "--max-visual-rows"}
def _numpy_type(name: str):
    """The numpy scalar type of a sidecar dtype name (bfloat16 through ml_dtypes); None for
    a type vskip does not name (a graph's int or bool tensors keep numpy's own names)."""
    from ..core.dtypes import DTYPES, numpy_dtype

    if name in DTYPES:
        return numpy_dtype(name).type
    try:
        return np.dtype(name).type
    except TypeError:
        return None


def engine_specs(info) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """The inputs and outputs an engine sidecar (:class:`vskip_compile.trt.build.EngineInfo`) lists."""
    def specs(items):
        return [TensorSpec(name, tuple(shape), _numpy_type(dtype)) for name, shape, dtype in items]

    return specs(info.inputs), specs(info.outputs)


def check_profile(info, feeds: dict[str, np.ndarray]) -> None:
    """Every feed's shape inside the engine's profile; else one line naming the input, its
    axis and the ``vskip build`` flag that would make room for it."""
    axes = {name: shape for name, shape, _ in info.inputs}
    for profile in info.profiles:
        if profile.name not in feeds:
            continue
        shape = tuple(np.shape(feeds[profile.name]))
        if len(shape) != len(profile.min):
            raise VskipError(f"input {profile.name}: has {len(shape)} axes, the engine takes {len(profile.min)} "
                             f"({list(profile.min)} to {list(profile.max)})")
        for axis, (size, low, high) in enumerate(zip(shape, profile.min, profile.max)):
            if low <= size <= high:
                continue
            kind = axes.get(profile.name, ())[axis] if axis < len(axes.get(profile.name, ())) else None
            hint = (f"; rebuild the engine with a larger {_FLAGS[kind]}" if size > high and kind in _FLAGS
                    else "")
            raise VskipError(f"input {profile.name}: shape {list(shape)} is outside the engine's profile "
                             f"({list(profile.min)} to {list(profile.max)}): axis {axis} ({kind or 'static'}) "
                             f"is {size}, the engine takes {low}-{high}{hint}")


class TrtSession(Session):
    """One engine on the GPU, through an activated Polygraphy ``TrtRunner``."""

    def __init__(self, runner, info, version: str):
        self.runner, self.info = runner, info
        self.inputs, self.outputs = engine_specs(info)
        self.description = Description("trt", "tensorrt", version, "GPU (CUDA)", SHORT.get(info.dtype, info.dtype))

    def infer(self, feeds):
        from polygraphy.exception import PolygraphyException

        from ..trt.build import _routed_logs

        check_profile(self.info, feeds)
        with _routed_logs(lambda _line: None) as log:
            try:
                values = self.runner.infer(feed_dict=feeds)
            except PolygraphyException as exc:
                raise VskipError(f"TensorRT failed to run the engine: {escape(log.last_error() or one_line(exc))}") \
                    from None
        missing = [spec.name for spec in self.outputs if spec.name not in values]
        if missing:
            raise VskipError(f"the engine gives no output {', '.join(missing)}; its sidecar does not describe it")
        # TrtRunner reuses its host buffers between runs: the outputs are copied out.
        return {spec.name: np.array(values[spec.name], copy=True) for spec in self.outputs}

    def close(self) -> None:
        if getattr(self, "runner", None) is not None and self.runner.is_active:
            self.runner.deactivate()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown: nothing left to tell
            pass


class TensorRTBackend(Backend):
    name = "trt"
    summary = "TensorRT engines from `vskip build` (an .onnx graph gets an engine built in memory)"

    def unavailable(self) -> str | None:
        from ..trt.build import missing_tensorrt

        return missing_tensorrt()

    def load(self, path: Path, *, threads: int | None = None, outputs: Outputs | None = None,
             sidecar: Sidecar | None = None, progress=None, engine: str | Path | None = None,
             limits: ProfileLimits | None = None) -> TrtSession:
        """An engine file, or an ONNX graph (with ``engine=`` its engine, else one built in
        memory with ``limits``, default :data:`IN_MEMORY_LIMITS`). ``sidecar`` is not
        needed: the engine's own sidecar says what it takes."""
        from ..trt import build

        reason = self.unavailable()
        if reason:
            raise VskipError(f"backend {self.name} is not available: {reason}")
        check_threads(threads)
        path = Path(path)
        version = build.tensorrt_version()
        if path.suffix == ".onnx" and engine is None:
            if progress:
                progress(f"building a TensorRT engine for {path} in memory (`vskip build` writes one to reuse)")
            data, record = build.build_in_memory(path, limits or IN_MEMORY_LIMITS, progress, outputs)
            info = build.parse_engine_record(record, f"the engine built for {path}", record["engine"])
        else:
            engine_path = Path(engine) if engine is not None else path
            if limits is not None:
                raise VskipError(f"{engine_path}: an engine's profile is fixed when it is built; limits apply "
                                 "only to engines built in memory (rebuild with vskip build)")
            info = build.read_engine_sidecar(engine_path)
            build.check_engine(info, version, graph=path if engine is not None else None)
            data = read_bytes(engine_path, "TensorRT engine", max_bytes=available_memory())
            if outputs is not None:
                for read in (engine_path, build.engine_sidecar_path(engine_path)) + ((path,) if engine else ()):
                    outputs.add_input(read)
        return TrtSession(_activate(data, path), info, version)


def _activate(data, where: Path):
    """A ``TrtRunner`` on the serialized engine ``data``, activated."""
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner
    from polygraphy.exception import PolygraphyException

    from ..trt.build import _routed_logs

    with _routed_logs(lambda _line: None) as log:
        try:
            runner = TrtRunner(EngineFromBytes(data), name="vskip-trt")
            runner.activate()
        except PolygraphyException as exc:
            raise VskipError(f"{where}: TensorRT cannot load the engine: {escape(log.last_error() or one_line(exc))} "
                             "(engines run only on the GPU model and TensorRT version they were built with)") \
                from None
    return runner


TENSORRT = TensorRTBackend()
