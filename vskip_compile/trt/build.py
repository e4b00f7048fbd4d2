"""Build a TensorRT engine from a vskip graph, through Polygraphy (``vskip build``).

    graph ──read_graph (vskip's checks)──> derive_profiles ──> NetworkFromOnnxPath(path, strongly_typed)
          ──> CreateConfig(profiles, timing cache, progress monitor) ──> EngineBytesFromNetwork
          ──> ENGINE + ENGINE.json (claimed before the build, written through core.files.Outputs)

- **Strongly typed.** The precision is the graph's (DESIGN.md section 7): TensorRT 11 has no
  weak typing at all, and 10.x builds strongly typed networks, so no FP16/BF16 builder flag
  is ever set (Polygraphy's ``fp16=`` / ``bf16=`` raise on TensorRT 11).
- **Parsed from the file path**, so external data (weights over 2 GB) loads beside the graph;
  vskip has checked every external reference first (inside the model's directory, sizes fit).
- **One profile** from :func:`vskip_compile.trt.profiles.derive_profiles`.
- **Timing cache** (``--timing-cache PATH``): read if it exists, and replaced atomically by
  this build's cache (which holds the old entries plus the new timings), as trtexec's
  ``--timingCacheFile`` does. vskip reads and writes it, never Polygraphy (which would put a
  ``.lock`` file beside it and write in place).
- **The engine sidecar** ``ENGINE.json`` says what the engine is: TensorRT version, the
  limits and profile, the plan the graph records, the source graph's sha256 and type, and
  every input and output; the ``trt`` backend reads it before it loads the engine.
- Polygraphy's and TensorRT's log lines go to ``progress`` (warnings and errors only), as
  do TensorRT's top-level build phases; stdout stays clean.

Only :func:`build_serialized` and the backend's runner touch TensorRT; everything else here
(profiles, sidecars, the missing-TensorRT line) runs anywhere.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..core.errors import VskipError
from ..core.files import (MAX_GRAPH_BYTES, MAX_JSON_BYTES, Outputs, escape, input_file, one_line, open_input,
                          read_bytes, read_json)
from ..core.sidecar import sidecar_path
from .profiles import InputAxes, InputProfile, ProfileLimits, derive_profiles, graph_axes, profiles_to_dict

ENGINE_FORMAT = "vskip-engine"
ENGINE_VERSION = 1
INSTALL = "pip install 'vskip[trt]'"
MIN_TENSORRT = 10          # strongly typed networks and INT64 I/O
MAX_TIMING_CACHE_BYTES = 2**30

Progress = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


# ------------------------------------------------------------------- TensorRT presence

def missing_tensorrt() -> str | None:
    """None when TensorRT (>= 10) and Polygraphy import here; else one line saying what to install."""
    need = f"needs TensorRT and an NVIDIA GPU: {INSTALL} on a machine with an NVIDIA GPU and its driver"
    try:
        import tensorrt
    except (ImportError, OSError) as exc:  # OSError: the wheel is there but its libraries are not
        return f"{need} (TensorRT does not import here: {one_line(exc)})"
    try:
        import polygraphy  # noqa: F401
    except ImportError:
        return f"{need} (Polygraphy is not installed)"
    version = getattr(tensorrt, "__version__", "0")
    try:
        major = int(str(version).split(".")[0])
    except ValueError:
        major = 0
    if major < MIN_TENSORRT:
        return f"needs TensorRT {MIN_TENSORRT} or newer (strongly typed networks), found {version}: {INSTALL}"
    return None


def require_tensorrt(what: str = "building TensorRT engines", hint: str = "") -> None:
    """One line and exit 2 (:class:`VskipError`) where TensorRT cannot run here."""
    reason = missing_tensorrt()
    if reason:
        raise VskipError(f"{what} {reason}{hint}")


def tensorrt_version() -> str:
    import tensorrt

    return str(tensorrt.__version__)


# ----------------------------------------------------------------------- the build plan

@dataclass
class BuildPlan:
    """What a build of one graph needs to know, derived without TensorRT."""

    graph: Path
    data_files: dict[str, Path]
    sidecar: object                  # core.sidecar.Sidecar or None
    axes: list[InputAxes]
    outputs: list[InputAxes]
    profiles: list[InputProfile]
    limits: ProfileLimits
    dtype: str
    plan: dict | None                # the plan the graph records (vskip's format), None for a vanilla graph
    row_inputs: list[str] = field(default_factory=list)

    def bounds(self) -> str:
        """What the engine will serve, in words."""
        from .profiles import KINDS

        ranges = self.limits.ranges()
        used = [kind for kind in KINDS if any(kind in a.axes for a in self.axes)]
        return ", ".join(f"{kind} <= {ranges[kind][2]}" for kind in used) or "static shapes"

    def table(self) -> str:
        from .profiles import format_profiles

        return format_profiles(self.axes, self.profiles, self.limits)


def plan_build(graph: str | Path, limits: ProfileLimits | None = None,
               dim_names: dict[str, str] | None = None, outputs: Outputs | None = None) -> BuildPlan:
    """Read ``graph`` (vskip's checks of the file and its external data, weights not loaded),
    its sidecar, and derive its profile. ``outputs`` learns every file read, as an input."""
    from ..core.graph_io import compiled_plan, read_graph, recorded_plan, row_input_names
    from ..core.sidecar import read_sidecar

    graph = input_file(graph, "ONNX model", MAX_GRAPH_BYTES)
    limits = (limits or ProfileLimits()).check()
    model, files = read_graph(graph)
    sidecar = read_sidecar(graph)
    if outputs is not None:
        for path in (graph, *files.values()) + ((sidecar_path(graph),) if sidecar is not None else ()):
            outputs.add_input(path)
    source = str(graph)
    initializers = [t.name for t in model.graph.initializer]
    axes = graph_axes(model.graph.input, sidecar, dim_names, source, initializers)
    profiles = derive_profiles(axes, limits=limits)
    dtype = _float_type(axes, source)
    if sidecar is not None and sidecar.dtype is not None and sidecar.dtype != dtype:
        raise VskipError(f"{source}: takes {dtype} inputs but its sidecar {sidecar.path} says {sidecar.dtype}; "
                         "the sidecar does not describe this graph")
    plan = compiled_plan(model, source)   # as compile recorded it (with the model's family)
    if plan is not None:
        recorded_plan(model, source)          # a damaged record is refused in one line
    out_axes = [InputAxes(o.name, _output_shape(o), (), o.type.tensor_type.elem_type) for o in model.graph.output]
    return BuildPlan(graph, files, sidecar, axes, out_axes, profiles, limits, dtype, plan,
                     row_input_names(model, source))


def _output_shape(info) -> tuple:
    """An output's shape as the graph declares it: ints, dim names, or None where unknown."""
    if not info.type.tensor_type.HasField("shape"):
        return ()
    return tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                 for d in info.type.tensor_type.shape.dim)


def type_name(elem_type: int) -> str:
    """An ONNX element type as numpy names it (float32, int64, bool, bfloat16, ...)."""
    from onnx.helper import tensor_dtype_to_np_dtype

    try:
        return tensor_dtype_to_np_dtype(elem_type).name
    except (KeyError, TypeError, ValueError):
        return f"onnx-type-{elem_type}"


def _float_type(axes: list[InputAxes], source: str) -> str:
    from ..core.dtypes import DTYPES

    kinds = sorted({type_name(a.elem_type) for a in axes} & set(DTYPES))
    if len(kinds) > 1:
        raise VskipError(f"{source}: the graph's float inputs mix {', '.join(kinds)}; a decoder takes one type")
    return kinds[0] if kinds else "float32"


# ----------------------------------------------------------------------- engine sidecar

def engine_sidecar_path(engine: str | Path) -> Path:
    """``ENGINE.json`` beside ``ENGINE`` (``prefill.engine`` -> ``prefill.engine.json``)."""
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def default_engine_path(graph: str | Path) -> Path:
    """``GRAPH.engine`` beside the graph (``prefill.onnx`` -> ``prefill.engine``)."""
    return Path(graph).with_suffix(".engine")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open_input(path, "file to hash") as handle:
        for block in iter(lambda: handle.read(2**24), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class EngineInfo:
    """An engine sidecar, checked (see :func:`read_engine_sidecar`)."""

    engine: str                      # the engine's file name
    tensorrt: str
    source_graph: str                # the graph's absolute path at build time
    source_sha256: str
    dtype: str
    inputs: tuple                    # ((name, shape, dtype), ...)
    outputs: tuple
    profiles: tuple                  # (InputProfile, ...)
    plan: dict | None
    path: str = "the engine sidecar"

    def profile(self, name: str) -> InputProfile | None:
        return next((p for p in self.profiles if p.name == name), None)


def engine_record(plan: BuildPlan, engine: Path, trt_version: str, polygraphy_version: str,
                  graph_sha256: str, seconds: dict) -> dict:
    """The engine sidecar's content (``ENGINE.json``)."""
    from .. import __version__

    return {
        "format": ENGINE_FORMAT, "version": ENGINE_VERSION, "engine": engine.name,
        "tensorrt": trt_version, "polygraphy": polygraphy_version, "vskip": __version__, "strongly_typed": True,
        "source": {"graph": os.path.realpath(plan.graph), "sha256": graph_sha256,
                   "bytes": plan.graph.stat().st_size,
                   "external_data": [{"file": loc, "bytes": p.stat().st_size} for loc, p in plan.data_files.items()]},
        "family": (plan.sidecar.family if plan.sidecar is not None else None)
                  or ((plan.plan or {}).get("model") or {}).get("family"),
        "dtype": plan.dtype, "plan": plan.plan, "row_inputs": plan.row_inputs,
        "limits": plan.limits.to_dict(), "profiles": profiles_to_dict(plan.profiles),
        "inputs": [_tensor_record(a.name, a.axes, a.elem_type) for a in plan.axes],
        "outputs": [_tensor_record(o.name, o.axes, o.elem_type) for o in plan.outputs],
        "seconds": seconds,
    }


def _tensor_record(name: str, shape, elem_type: int) -> dict:
    return {"name": name, "shape": list(shape), "dtype": type_name(elem_type)}


def read_engine_sidecar(engine: str | Path) -> EngineInfo:
    """The sidecar beside ``engine``, every field vskip uses checked; one line where it is
    missing or damaged."""
    engine = Path(engine)
    path = engine_sidecar_path(engine)
    if not os.path.lexists(path):
        raise VskipError(f"{engine}: no {path.name} beside it; vskip runs engines that `vskip build` wrote "
                         "(the sidecar says how the engine was built)")
    return parse_engine_record(read_json(path, "engine sidecar", MAX_JSON_BYTES), str(path), engine.name)


def parse_engine_record(data, where: str, engine_name: str) -> EngineInfo:
    """An engine sidecar's content (parsed JSON) as :class:`EngineInfo`, checked."""
    def fail(problem: str):
        raise VskipError(f"{where}: {problem}")

    if not isinstance(data, dict) or data.get("format") != ENGINE_FORMAT:
        fail(f"not a vskip engine sidecar ('format' must be {ENGINE_FORMAT!r})")
    if data.get("version") != ENGINE_VERSION:
        fail(f"engine sidecar version {str(data.get('version'))[:20]} is not supported; this vskip reads "
             f"version {ENGINE_VERSION} (rebuild with `vskip build`)")
    if data.get("engine") != engine_name:
        fail(f"describes the engine {str(data.get('engine'))[:80]!r}, not {engine_name!r}")
    source = data.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("graph"), str) or \
            not isinstance(source.get("sha256"), str) or len(source["sha256"]) != 64:
        fail("'source' must hold the graph's path and its sha256")
    for key in ("tensorrt", "dtype"):
        if not isinstance(data.get(key), str):
            fail(f"{key!r} must be a string")

    def tensors(key):
        items = data.get(key)
        if not isinstance(items, list) or not items:
            fail(f"{key!r} must list the engine's {key}")
        out = []
        for item in items:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str) or \
                    not isinstance(item.get("shape"), list) or not isinstance(item.get("dtype"), str):
                fail(f"every entry of {key!r} needs a name, a shape and a dtype")
            out.append((item["name"], tuple(item["shape"]), item["dtype"]))
        return tuple(out)

    if not isinstance(data.get("profiles"), list):
        fail("'profiles' must be a list")
    profiles = []
    for item in data["profiles"]:
        shapes = [item.get(k) if isinstance(item, dict) else None for k in ("min", "opt", "max")]
        if not isinstance(item, dict) or not isinstance(item.get("input"), str) or not all(
                isinstance(s, list) and all(type(d) is int and d >= 0 for d in s) for s in shapes):
            fail("every profile entry needs an input name and integer min, opt and max shapes")
        profiles.append(InputProfile(item["input"], *(tuple(s) for s in shapes)))
    plan = data.get("plan")
    if plan is not None and not isinstance(plan, dict):
        fail("'plan' must be a plan object or null")
    return EngineInfo(data["engine"], data["tensorrt"], source["graph"], source["sha256"], data["dtype"],
                      tensors("inputs"), tensors("outputs"), tuple(profiles), plan, where)


def check_engine(info: EngineInfo, trt_version: str | None, graph: str | Path | None = None) -> None:
    """The engine may run here: built by this TensorRT version and, where ``graph`` is given
    (or the recorded source still exists), from that graph as it is now."""
    if trt_version is not None and info.tensorrt != trt_version:
        raise VskipError(f"{info.path}: the engine was built with TensorRT {info.tensorrt[:40]}, this is TensorRT "
                         f"{trt_version}; engines do not move between TensorRT versions: rebuild it with "
                         "`vskip build --force`")
    explicit = graph is not None
    graph = Path(graph) if explicit else Path(info.source_graph)
    if not explicit and not graph.exists():
        return  # a shipped engine without its graph: nothing to compare with
    digest = sha256_file(graph)
    if digest != info.source_sha256:
        raise VskipError(f"{info.path}: the engine was built from a graph with sha256 {info.source_sha256[:12]}..., "
                         f"but {graph} is {digest[:12]}... now; rebuild it: vskip build {graph} -o "
                         f"{Path(info.path).with_suffix('')} --force")


# ------------------------------------------------------------------------------ building

@dataclass
class BuildReport:
    engine: Path
    sidecar: Path
    timing_cache: Path | None
    profiles: list[InputProfile]
    engine_bytes: int
    seconds: dict


def build_engine(graph: str | Path, out: str | Path | None = None, limits: ProfileLimits | None = None,
                 timing_cache: str | Path | None = None, progress: Progress | None = None, force: bool = False,
                 dim_names: dict[str, str] | None = None) -> BuildReport:
    """Build ``graph`` into the TensorRT engine ``out`` (default ``GRAPH.engine``) and its
    sidecar ``out.json``. TensorRT is checked first; both outputs (and the timing cache) are
    claimed before the build, and nothing is written unless the build succeeds."""
    progress = progress or _quiet
    require_tensorrt(hint="; `vskip build GRAPH --print-profiles` shows the profile without it")
    limits = (limits or ProfileLimits()).check()
    graph = input_file(graph, "ONNX model", MAX_GRAPH_BYTES)
    out = Path(out) if out is not None else default_engine_path(graph)
    outputs = Outputs([graph], force=force)
    with outputs:
        if timing_cache is not None:
            outputs.add_input(timing_cache)  # neither the engine nor its sidecar may replace it
        outputs.claim(out, "TensorRT engine")
        sidecar_out = outputs.claim(engine_sidecar_path(out), "engine sidecar")
        plan = plan_build(graph, limits, dim_names, outputs)
        cache_outputs, cache_in = None, None
        if timing_cache is not None:
            timing_cache = Path(timing_cache)
            read = [graph, *plan.data_files.values()] + ([sidecar_path(graph)] if plan.sidecar is not None else [])
            cache_outputs = Outputs([*read, out, sidecar_out], force=True)  # replaced, never an input
            cache_outputs.claim(timing_cache, "timing cache")
            if os.path.lexists(timing_cache):
                cache_in = read_bytes(timing_cache, "timing cache", MAX_TIMING_CACHE_BYTES)
        with cache_outputs if cache_outputs is not None else contextlib.nullcontext():
            start = time.perf_counter()
            digest = sha256_file(graph)
            engine, cache_out, seconds = build_serialized(plan, progress, cache_in, timing_cache is not None)
            import polygraphy

            record = engine_record(plan, out, tensorrt_version(), polygraphy.__version__, digest, seconds)
            outputs.write_with(out, lambda handle: handle.write(engine))
            outputs.write_text(sidecar_out, json.dumps(record, indent=2) + "\n")
            size = memoryview(engine).nbytes
            if cache_outputs is not None:
                cache_outputs.write_bytes(timing_cache, cache_out)
            outputs.commit()
            if cache_outputs is not None:
                cache_outputs.commit()
    seconds["total"] = round(time.perf_counter() - start, 3)
    progress(f"wrote {out} ({size / 2**20:.1f} MiB) and {sidecar_out}"
             + (f"; timing cache {timing_cache}" if timing_cache is not None else ""))
    return BuildReport(out, sidecar_out, timing_cache, plan.profiles, size, seconds)


def build_serialized(plan: BuildPlan, progress: Progress, timing_cache: bytes | None = None,
                     want_cache: bool = False):
    """Parse and build ``plan.graph`` with Polygraphy; returns (serialized engine, the
    timing cache's bytes or None, seconds per step). Needs TensorRT and a GPU."""
    import tensorrt as trt
    from polygraphy.backend.trt import EngineBytesFromNetwork
    from polygraphy.exception import PolygraphyException

    seconds = {}
    with _routed_logs(progress) as log:
        monitor = _progress_monitor(trt, log.say)
        parse, configure = polygraphy_loaders(plan, timing_cache, monitor)
        try:
            log.say(f"parsing {plan.graph} (TensorRT {trt.__version__}, strongly typed)")
            start = time.perf_counter()
            network = parse()
            seconds["parse"] = round(time.perf_counter() - start, 3)
            log.say(f"parsed {network[1].num_layers} layers in {seconds['parse']:.1f} s; building for "
                    f"{plan.bounds()}")
            config = configure(*network[:2])
            start = time.perf_counter()
            engine = EngineBytesFromNetwork(network, config=config)()
            seconds["build"] = round(time.perf_counter() - start, 3)
            cache = None
            if want_cache:
                with config.get_timing_cache().serialize() as buffer:
                    cache = bytes(memoryview(buffer))
        except PolygraphyException as exc:
            if monitor is not None and monitor.interrupted is not None:
                raise monitor.interrupted from None
            detail = log.last_error() or one_line(exc)
            raise VskipError(f"{plan.graph}: TensorRT could not build an engine: {escape(detail)}") from None
        if monitor is not None and monitor.interrupted is not None:
            raise monitor.interrupted
        log.say(f"built the engine in {seconds['build']:.1f} s")
    return engine, cache, seconds


def polygraphy_loaders(plan: BuildPlan, timing_cache: bytes | None = None, monitor=None):
    """Polygraphy's network and config loaders for ``plan`` (made without TensorRT, which
    Polygraphy imports only when they are called): ``NetworkFromOnnxPath`` (from the file
    path, strongly typed) and ``CreateConfig`` with the one profile, the timing cache read
    from bytes (a file object: Polygraphy then neither locks nor writes a path) and the
    progress monitor. No precision flag is passed: the graph's types are the precision."""
    from polygraphy.backend.trt import CreateConfig, NetworkFromOnnxPath, Profile

    profile = Profile()
    for item in plan.profiles:
        profile.add(item.name, min=item.min, opt=item.opt, max=item.max)
    parse = NetworkFromOnnxPath(str(plan.graph), strongly_typed=True)
    configure = CreateConfig(profiles=[profile], load_timing_cache=io.BytesIO(timing_cache) if timing_cache else None,
                             progress_monitor=monitor)
    return parse, configure


def _progress_monitor(trt, say: Progress):
    """A TensorRT progress monitor that reports the build's top-level phases and cancels the
    build on Ctrl-C / SIGTERM (the exception is raised again once the builder returns:
    TensorRT's callbacks must not raise)."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Monitor(base):
        def __init__(self):
            base.__init__(self)
            self.started: dict[str, float] = {}
            self.interrupted: BaseException | None = None

        def phase_start(self, phase_name, parent_phase, num_steps):
            try:
                if parent_phase is None:
                    self.started[phase_name] = time.perf_counter()
                    say(f"  tensorrt: {phase_name} ({num_steps} steps)")
            except BaseException as exc:  # noqa: BLE001
                self.interrupted = self.interrupted or exc

        def step_complete(self, phase_name, step):
            try:
                return self.interrupted is None
            except BaseException as exc:  # noqa: BLE001 - a signal arriving here
                self.interrupted = self.interrupted or exc
                return False

        def phase_finish(self, phase_name):
            try:
                if phase_name in self.started:
                    took = time.perf_counter() - self.started.pop(phase_name)
                    say(f"  tensorrt: {phase_name} done in {took:.1f} s")
            except BaseException as exc:  # noqa: BLE001
                self.interrupted = self.interrupted or exc

    return Monitor()


class _LogLines(io.TextIOBase):
    """Polygraphy's log output, line by line, to ``progress``; keeps the errors.

    Polygraphy prints its log to stdout (and critical lines to stderr); while a build runs
    both are this stream. :meth:`say` reaches the real streams, for vskip's own lines.
    """

    def __init__(self, progress: Progress):
        import sys

        self.progress, self.buffer, self.error_lines = progress, "", []
        self.outer = (sys.stdout, sys.stderr)

    def writable(self) -> bool:
        return True

    def say(self, message: str) -> None:
        with contextlib.redirect_stdout(self.outer[0]), contextlib.redirect_stderr(self.outer[1]):
            self.progress(message)

    def write(self, text: str) -> int:
        self.buffer += text
        *lines, self.buffer = self.buffer.split("\n")
        for line in lines:
            if line.strip():
                if line.startswith(("[E]", "[!]")):
                    self.error_lines.append(line[3:].strip())
                self.say(f"  tensorrt: {line.rstrip()}")
        return len(text)

    def last_error(self) -> str | None:
        return self.error_lines[-1] if self.error_lines else None


@contextlib.contextmanager
def _routed_logs(progress: Progress):
    """Polygraphy (and through it TensorRT) logs warnings and errors only, to ``progress``."""
    from polygraphy.logger import G_LOGGER

    lines = _LogLines(progress)
    previous = G_LOGGER.colors
    G_LOGGER.colors = False
    try:
        with G_LOGGER.verbosity(G_LOGGER.WARNING), contextlib.redirect_stdout(lines), \
                contextlib.redirect_stderr(lines):
            yield lines
    finally:
        G_LOGGER.colors = previous
        if lines.buffer.strip():
            lines.say(f"  tensorrt: {lines.buffer.rstrip()}")


def build_in_memory(graph: str | Path, limits: ProfileLimits | None = None, progress: Progress | None = None,
                    outputs: Outputs | None = None, dim_names: dict[str, str] | None = None):
    """An engine for ``graph`` that lives only in this process (the ``trt`` backend given an
    ONNX graph): (serialized engine, its sidecar record)."""
    progress = progress or _quiet
    require_tensorrt()
    plan = plan_build(graph, limits, dim_names, outputs)
    import polygraphy

    engine, _, seconds = build_serialized(plan, progress)
    record = engine_record(plan, default_engine_path(plan.graph), tensorrt_version(), polygraphy.__version__,
                           sha256_file(plan.graph), seconds)
    return engine, record


# ---------------------------------------------------------------------------- comparing

def compare_runners(runners: list, feeds: list[dict], atol: float, rtol: float = 0.0) -> dict:
    """Polygraphy's comparison of ``runners`` (the first against each other) on ``feeds``:
    ``Comparator.run`` then ``Comparator.compare_accuracy`` with per-output tolerances.

    Runners are Polygraphy's (``OnnxrtRunner``, ``TrtRunner``): each takes from a feed dict
    the inputs it has, so one feed dict with the row inputs serves a vanilla graph, its
    compiled graph and their engines. Returns {"passed": bool, "outputs": {name: {"max_abs",
    "mean_abs", "max_rel", "passed"}}} for the worst iteration of each pair.
    """
    from polygraphy import comparator
    from polygraphy.exception import PolygraphyException

    # SimpleCompareFunc from Polygraphy 0.53 on; CompareFunc.simple before (deprecated since).
    simple = getattr(comparator, "SimpleCompareFunc", None) or comparator.CompareFunc.simple
    report: dict = {"passed": True, "outputs": {}}
    with _routed_logs(_quiet) as log:
        try:
            results = comparator.Comparator.run(runners, data_loader=feeds)
            accuracy = comparator.Comparator.compare_accuracy(results, compare_func=simple(atol=atol, rtol=rtol))
        except PolygraphyException as exc:
            raise VskipError(f"the comparison failed: {escape(log.last_error() or one_line(exc))}") from None
    report["passed"] = bool(accuracy)
    # Polygraphy 0.53 returns AccuracyResults, one AccuracyResult per comparison function;
    # earlier releases the AccuracyResult itself (runner pair -> per-iteration results).
    per_function = [accuracy] if hasattr(accuracy, "items") else list(accuracy)
    for _pair, iterations in (item for result in per_function for item in result.items()):
        for iteration in iterations:
            for name, result in iteration.items():
                entry = report["outputs"].setdefault(name, {"max_abs": 0.0, "mean_abs": 0.0, "max_rel": 0.0,
                                                            "passed": True})
                entry["max_abs"] = max(entry["max_abs"], result.max_absdiff)
                entry["mean_abs"] = max(entry["mean_abs"], result.mean_absdiff)
                entry["max_rel"] = max(entry["max_rel"], result.max_reldiff)
                entry["passed"] = entry["passed"] and bool(result)
    return report
