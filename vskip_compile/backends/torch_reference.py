"""The PyTorch skip reference as a backend: the transformers model a graph was exported
from, run under the plan the graph records (or a given one).

A session takes what the graph takes (the prefill inputs and, for a compiled graph, its
row inputs) and gives the graph's outputs by name, so it stands wherever a graph session
stands: validate compares against it, bench times it. The visual rows come from the row
inputs (every row not in ``vskip_text_rows``); the reference computes every row and zeroes
the skipped rows' updates (:mod:`vskip_compile.models.reference`), so its timings of a
plan show the hooks' cost, not a skip speedup.

``torch-skip`` runs the same model and plan computing only the live rows
(:mod:`vskip_compile.models.skipping`): a PyTorch implementation of the plan that saves
the work, which is what the compiled graph's seconds are measured against. Its outputs
are the reference's; validate's reference is always ``torch``.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np

from ..core.dtypes import graph_float_type
from ..core.errors import VskipError
from ..core.files import Outputs, check_threads
from ..core.hidden_states import hidden_state_layer
from ..core.plan import Plan, Rows
from ..core.sidecar import Sidecar, read_sidecar, sidecar_path
from ..core.visual_rows import SUFFIX_ROWS, TEXT_ROWS, live_mask, row_inputs, sequence_length
from .base import Backend, Description, Session, TensorSpec, spec_of

class TorchSession(Session):
    def __init__(self, loaded, plan: Plan, inputs: list[TensorSpec], outputs: list[TensorSpec], all_logits: bool,
                 threads: int | None = None, name: str = "torch", skipping: bool = False):
        import torch

        from ..models.wrappers import PrefillDecoder, prefill_input_names

        self.loaded, self.plan, self.threads, self.skipping = loaded, plan, threads, skipping
        self.names = prefill_input_names(loaded.family)
        self.inputs, self.outputs = inputs, outputs
        self.decoder = PrefillDecoder(loaded.family, loaded.model, all_logits=all_logits)
        self.dtype = next(loaded.model.parameters()).dtype
        self.description = Description(name, "torch", torch.__version__, "CPU",
                                       {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
                                       .get(self.dtype, str(self.dtype)))

    def infer(self, feeds):
        import torch

        from ..models.reference import skip_reference
        from ..models.skipping import skip_rows

        run_plan = skip_rows if self.skipping else skip_reference
        visual = self._visual(feeds)
        tensors = [to_torch(feeds[n], self.dtype) for n in self.names]
        rows = torch.from_numpy(visual).expand(tensors[0].shape[0], -1)
        previous = torch.get_num_threads()
        if self.threads:  # per run, so the process's own setting is left as it was
            torch.set_num_threads(self.threads)
        hidden = [spec for spec in self.outputs if hidden_state_layer(spec.name) is not None]
        plain = [spec for spec in self.outputs if hidden_state_layer(spec.name) is None]
        layers = self.loaded.family.decoder_layers(self.loaded.model)
        if any(hidden_state_layer(spec.name) >= len(layers) for spec in hidden):
            raise VskipError(f"the graph outputs hidden states of {len(hidden)} layers but the model has {len(layers)}; "
                             "is the model the graph's own?")
        states: dict[int, object] = {}
        try:
            with run_plan(self.loaded.family, self.loaded.model, self.plan, rows), torch.no_grad(), \
                    _layer_outputs(layers, {hidden_state_layer(spec.name) for spec in hidden}, states):
                values = self.decoder(*tensors)
        finally:
            torch.set_num_threads(previous)
        if len(values) != len(plain):
            raise VskipError(f"the model gives {len(values)} outputs but the graph has {len(plain)}; "
                             "is the model the graph's own?")
        result = {spec.name: to_numpy(value) for spec, value in zip(plain, values)}
        result.update({spec.name: to_numpy(states[hidden_state_layer(spec.name)]) for spec in hidden})
        return {spec.name: result[spec.name] for spec in self.outputs}

    def _visual(self, feeds) -> np.ndarray:
        """The visual-row mask the row inputs describe (none without row inputs)."""
        length = sequence_length(feeds)
        visual = np.zeros(length, dtype=bool)
        if TEXT_ROWS not in feeds:
            return visual
        visual[:] = True
        visual[np.asarray(feeds[TEXT_ROWS])] = False
        if SUFFIX_ROWS in feeds and not np.array_equal(np.flatnonzero(live_mask(Rows.SUFFIX, visual)),
                                                       np.asarray(feeds[SUFFIX_ROWS])):
            raise VskipError(f"{SUFFIX_ROWS}: must be every row after the last visual row "
                             f"(the rows {TEXT_ROWS} leaves out are the visual ones)")
        return visual


@contextlib.contextmanager
def _layer_outputs(layers, wanted: set[int], states: dict):
    """While inside, ``states[i]`` receives decoder layer i's output (the residual stream
    after it, what a graph's ``hidden_states.{i}`` output holds) for every i in ``wanted``."""
    def keep(index):
        def hook(_module, _args, output):
            states[index] = (output[0] if isinstance(output, (tuple, list)) else output).detach().clone()
        return hook

    handles = [layers[i].register_forward_hook(keep(i)) for i in sorted(wanted)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def to_torch(array: np.ndarray, dtype):
    """A feed as a tensor; float feeds in the model's type (an fp32 model takes a half
    graph's feeds exactly, widened). NumPy's bfloat16 (ml_dtypes) crosses as raw bits."""
    import torch

    array = np.ascontiguousarray(array)
    if array.dtype.name == "bfloat16":
        tensor = torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
    else:
        tensor = torch.from_numpy(array)
    return tensor.to(dtype) if tensor.is_floating_point() else tensor


def to_numpy(tensor) -> np.ndarray:
    """An output as an array of the same type (bfloat16 as ml_dtypes' bfloat16)."""
    import torch

    if tensor.dtype == torch.bfloat16:
        from ..core.dtypes import numpy_dtype

        return tensor.contiguous().view(torch.int16).numpy().view(numpy_dtype("bfloat16"))
    return tensor.numpy()


# One load per model and process, shared by torch and torch-skip: bench opens many graphs
# of one model, and each block leaves the model as it found it.
_MODELS: dict[tuple, object] = {}


class TorchBackend(Backend):
    name = "torch"
    summary = "the PyTorch skip reference (the transformers model the graph was exported from)"
    skipping = False
    # load(plan=...) applies a plan itself, so validate hands it the plan a routable graph is fed
    runs_plan = True


    def unavailable(self) -> str | None:
        try:
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            return "needs torch and transformers: pip install torch==2.13.0 && pip install vskip"
        return None

    def load(self, path: Path, *, threads: int | None = None, outputs: Outputs | None = None,
             sidecar: Sidecar | None = None, progress=None, plan: Plan | None = None,
             dtype: str | None = None) -> TorchSession:
        """The model is the ``source`` of ``sidecar`` (default: the vskip.json beside the
        graph). ``plan``: default the graph's recorded plan, else the empty plan.
        ``dtype``: the type the model runs in; default the graph's own floating type, so
        a half-precision graph is compared with the model in that type."""
        from ..core.graph_io import load_graph, recorded_plan

        path = Path(path)
        graph = load_graph(path, weights_needed=False)
        if outputs is not None:
            outputs.add_input(path)
        if sidecar is None:
            sidecar = read_sidecar(path)
            if sidecar is None:
                raise VskipError(f"{path}: no vskip.json export sidecar beside it, and the PyTorch reference needs "
                                 "the model the graph was exported from (validate: --model; bench: --sidecar)")
            if outputs is not None:
                outputs.add_input(sidecar_path(path))
        if not sidecar.source:
            raise VskipError(f"{sidecar.path}: the sidecar names no 'source' model, which the PyTorch reference "
                             "needs (validate: --model)")
        model, seed = sidecar.source, sidecar.seed or 0
        specs = {i.name: spec_of(i) for i in graph.graph.input}
        loaded = self._model(model, seed, dtype or graph_float_type(specs.values()), progress)
        num_layers = len(loaded.family.decoder_layers(loaded.model))
        if plan is None:
            plan = recorded_plan(graph, path) or Plan.empty(num_layers)
        if plan.num_layers != num_layers:
            raise VskipError(f"the plan has {plan.num_layers} layers but {model} has {num_layers}")
        threads = check_threads(threads)
        from ..models.wrappers import prefill_input_names

        # The row inputs the plan needs (given even to a vanilla graph's reference) or the graph takes.
        rows = [n for n in row_inputs(plan) if n in specs or not plan.is_empty]
        names = prefill_input_names(loaded.family) + rows
        missing = [n for n in names if n not in specs and n not in rows]
        if missing:
            raise VskipError(f"{path}: the graph lacks the model's inputs {', '.join(missing)}; is the model its own?")
        inputs = [specs.get(n) or TensorSpec(n, (f"{n}_count",), np.int64) for n in names]
        outputs_ = [spec_of(o) for o in graph.graph.output]
        logits = next((o for o in outputs_ if o.name == "logits"), None)
        all_logits = logits is None or len(logits.shape) < 2 or logits.shape[1] != 1
        return TorchSession(loaded, plan, inputs, outputs_, all_logits, threads, self.name, self.skipping)

    def _model(self, source: str, seed: int, dtype: str, progress):
        key = (source, seed, dtype)
        if key not in _MODELS:
            from ..models.loading import load_model

            if progress:
                progress(f"loading {source} for PyTorch ({dtype})")
            _MODELS[key] = load_model(source, seed=seed, dtype=dtype)
        return _MODELS[key]


class TorchSkipBackend(TorchBackend):
    name = "torch-skip"
    summary = "the same model, computing only the plan's live rows (PyTorch's speed on the plan)"
    skipping = True


TORCH = TorchBackend()
TORCH_SKIP = TorchSkipBackend()
