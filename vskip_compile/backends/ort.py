"""ONNX Runtime: the CPU provider, and the CUDA and TensorRT execution providers of
``onnxruntime-gpu``.

One class, three registry entries (:data:`ORT_CPU`, :data:`ORT_CUDA`, :data:`ORT_TRT`)
that differ in the execution providers they ask for. ONNX Runtime quietly runs on the CPU
when a requested GPU provider fails to initialise; here that is an error, so a GPU
result is never a CPU result in disguise. Nodes a GPU provider does not support still
run on the CPU provider inside the same session (ONNX Runtime's partitioning), as they
would for any user of that provider.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.dtypes import numpy_dtype
from ..core.errors import VskipError
from ..core.files import Outputs, check_threads, one_line
from ..core.sidecar import Sidecar
from .base import Backend, Description, Session, TensorSpec, check_feeds, precision_of

_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
           "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_,
           "tensor(bfloat16)": numpy_dtype("bfloat16").type}


class OrtSession(Session):
    def __init__(self, session, backend: str):
        import onnxruntime

        self.session = session
        self.inputs = [_spec(i) for i in session.get_inputs()]
        self.outputs = [_spec(o) for o in session.get_outputs()]
        device = "CPU" if session.get_providers()[0] == "CPUExecutionProvider" else "GPU"
        self.description = Description(backend, "onnxruntime", onnxruntime.__version__,
                                       f"{device} ({', '.join(session.get_providers())})",
                                       precision_of(self.inputs))

    def infer(self, feeds):
        names = [o.name for o in self.outputs]
        try:
            values = self.session.run(names, feeds)
        except Exception as exc:  # ORT raises its own exception types for run-time failures
            raise VskipError(f"ONNX Runtime failed to run the graph: {one_line(exc)}") from None
        return dict(zip(names, values))


    def run_kept(self, feeds, keep):
        """With I/O binding: kept outputs stay OrtValues that ONNX Runtime allocated, and
        OrtValues among the feeds are bound as they are, so a decode step's cache goes from
        one run to the next without passing through numpy."""
        import onnxruntime as ort

        names = [spec.name for spec in self.inputs]
        missing = [n for n in names if n not in feeds]
        extra = [n for n in feeds if n not in names]
        if missing or extra:
            check_feeds(self.inputs, feeds)  # the one wording for wrong names
        binding = self.session.io_binding()
        for name in names:
            value = feeds[name]
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        device = "cuda" if self.description.device.startswith("GPU") else "cpu"
        outputs = [spec.name for spec in self.outputs]
        for name in outputs:
            binding.bind_output(name, device if name in keep else "cpu")
        try:
            self.session.run_with_iobinding(binding)
        except Exception as exc:
            raise VskipError(f"ONNX Runtime failed to run the graph: {one_line(exc)}") from None
        values = dict(zip(outputs, binding.get_outputs()))
        return ({n: v.numpy() for n, v in values.items() if n not in keep}, {n: values[n] for n in keep})


def _spec(arg) -> TensorSpec:
    return TensorSpec(arg.name, tuple(arg.shape), _DTYPES.get(arg.type))


class OrtBackend(Backend):
    def __init__(self, name: str, providers: list[str], summary: str, install: str):
        self.name, self.providers, self.summary, self.install = name, providers, summary, install

    def unavailable(self) -> str | None:
        try:
            import onnxruntime
        except ImportError:
            return f"needs onnxruntime: {self.install}"
        offered = onnxruntime.get_available_providers()
        if self.providers[0] not in offered:
            return (f"needs ONNX Runtime's {self.providers[0]}, which this onnxruntime "
                    f"{onnxruntime.__version__} does not offer (it offers {', '.join(offered)}): {self.install}")
        return None

    def load(self, path: Path, *, threads: int | None = None, outputs: Outputs | None = None,
             sidecar: Sidecar | None = None, progress=None, optimize: bool = True) -> OrtSession:
        """The graph alone is enough (``sidecar`` is not needed). ``optimize=False`` turns
        ONNX Runtime's graph optimizer off (tests measure the graph as written)."""
        import onnxruntime as ort

        from ..core.graph_io import read_graph

        path = Path(path)
        _, files = read_graph(path)  # vskip's checks of the file and its external data, before ORT reads it
        if outputs is not None:
            for read in (path, *files.values()):
                outputs.add_input(read)
        threads = check_threads(threads)
        settings = ort.SessionOptions()
        if threads:
            settings.intra_op_num_threads = threads
        if not optimize:
            settings.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        # Denormal floats are slow on x86 CPUs and carry nothing a decoder's outputs keep:
        # flushing them made the compiled OpSkip-like benchmark graph 7.6% faster on an Intel
        # Xeon with bit-identical outputs (docs/benchmarks.md, tools/ort_settings.py).
        settings.add_session_config_entry("session.set_denormal_as_zero", "1")
        settings.log_severity_level = 3
        try:
            session = ort.InferenceSession(str(path), settings, providers=self.providers)
        except Exception as exc:  # ORT raises its own exception types for bad or truncated files
            hint = ""
            if "NOT_IMPLEMENTED" in str(exc) and _takes_bfloat16(path):
                hint = ("; ONNX Runtime's CPU provider has no bfloat16 arithmetic: run bf16 graphs with "
                        "--backend onnx-ref (exact, tiny graphs only) or on a GPU (ort-cuda, trt)")
            raise VskipError(f"{path}: ONNX Runtime cannot load it: {one_line(exc)}{hint}") from None
        if session.get_providers()[0] != self.providers[0]:
            raise VskipError(f"{path}: ONNX Runtime fell back to {session.get_providers()[0]} instead of "
                             f"{self.providers[0]}; check the CUDA / TensorRT installation (backend {self.name})")
        return OrtSession(session, self.name)


def _takes_bfloat16(path: Path) -> bool:
    """Whether the graph has a bfloat16 input (read without its weights)."""
    from onnx import TensorProto

    from ..core.graph_io import load_graph

    return any(i.type.tensor_type.elem_type == TensorProto.BFLOAT16
               for i in load_graph(path, weights_needed=False).graph.input)


_GPU = "pip install 'vskip[gpu]' (onnxruntime-gpu) on a machine with an NVIDIA GPU and CUDA"
ORT_CPU = OrtBackend("ort-cpu", ["CPUExecutionProvider"], "ONNX Runtime, CPU provider",
                     "pip install onnxruntime")
ORT_CUDA = OrtBackend("ort-cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"],
                      "ONNX Runtime, CUDA execution provider (onnxruntime-gpu)", _GPU)
ORT_TRT = OrtBackend("ort-trt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
                     "ONNX Runtime, TensorRT execution provider (onnxruntime-gpu with TensorRT)",
                     _GPU + ", with TensorRT's libraries")
