"""Validate a graph (compiled or vanilla) against the PyTorch skip reference.

The model comes from the export's sidecar next to the graph (``vskip.json``: a checkpoint
directory or ``tiny:<model_type>`` and its seed) or from ``--model``; the plan from
``--plan``, else the plan recorded in a compiled graph, else the empty plan. A routable
graph (``vskip-compile --routable``) records none: it is fed that plan's per-layer rows
(:func:`vskip_compile.core.routing.routing_feeds`). Inputs are a generated prompt (text and
images in a fixed layout) or given feeds with their visual rows.

Per output, like Polygraphy's comparisons: max, mean and 99th-percentile absolute error,
max and mean relative error, cosine similarity and NaN/Inf counts; for logits also top-1
agreement. The gates depend on the graph's floating type (:data:`DEFAULT_GATES`): fp32
graphs must equal the fp32 model within 1e-4; fp16 and bf16 graphs must stay as close to
it as the PyTorch model in their type does. Non-finite outputs always fail, and the
report says in which layer they start.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .backends import DEFAULT as DEFAULT_BACKEND
from .core.errors import VskipError
from .core.plan import load_plan
from .backends.torch_reference import to_numpy
from .core.dtypes import SHORT
from .core.hidden_states import hidden_state_layer
from .core.visual_rows import ROW_INPUTS, parse_ranges, row_feeds, sequence_length, visual_rows_from_ids

DEFAULT_LAYOUT = [6, "image", 5, "image", 8]
DEFAULT_ATOL = 1e-4
# Prompts per validation of a half-precision graph: top-1 agreement of last-position
# logits needs more than one prompt to mean anything.
HALF_BATCH = 8


@dataclass(frozen=True)
class Gates:
    """When a graph passes. fp32: every output within ``atol`` of the fp32 reference.
    fp16/bf16: every output finite, its cosine similarity with the fp32 reference at least
    ``min_cosine`` and the logits' top-1 agreement with it at least ``min_top1``: a graph
    in half precision cannot equal fp32, only stay as close to it as the PyTorch model in
    that type does. The defaults come from that distance, measured over the tiny presets
    (``python tools/dtype_drift.py``, docs/validation.md)."""

    dtype: str
    atol: float | None = None
    min_cosine: float | None = None
    min_top1: float | None = None

    def describe(self) -> str:
        if self.atol is not None:
            return f"atol {self.atol:g}"
        return f"cosine >= {self.min_cosine:g}, top-1 >= {self.min_top1:.0%} against fp32, all finite"


# Each half gate allows ten times the cosine deficit of the worst tiny preset in that type
# (fp16 0.9999982, bf16 0.9998982) and two top-1 flips in validate's eight prompts (the worst
# preset flips one: 87.5%). Measured with tools/dtype_drift.py, recorded in docs/validation.md.
DEFAULT_GATES = {
    "float32": Gates("float32", atol=DEFAULT_ATOL),
    "float16": Gates("float16", min_cosine=0.99998, min_top1=0.75),
    "bfloat16": Gates("bfloat16", min_cosine=0.998, min_top1=0.75),
}


@dataclass
class OutputError:
    """One output against one reference."""

    name: str
    max_abs: float
    mean_abs: float
    p99_abs: float           # the 99th percentile of the absolute error
    max_rel: float
    mean_rel: float
    cosine: float            # of the flattened tensors, in float64
    nonfinite: int           # NaN or Inf elements in the graph's output
    passes: bool
    top1_agreement: float | None = None


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two tensors, flattened, in float64 (1 for two zero tensors)."""
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    if norms == 0:
        return 1.0 if not a.any() and not b.any() else 0.0
    return float(a @ b / norms)


def top1_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """The share of positions whose largest logit is the same token."""
    return float((a.argmax(-1) == b.argmax(-1)).mean())


def compare_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray], gates: Gates) -> list[OutputError]:
    """Every output of ``want`` against ``got``, each judged by ``gates``."""
    errors = []
    for name, expected in want.items():
        actual = np.asarray(got[name]).astype(np.float64)
        expected = np.asarray(expected).astype(np.float64)
        if actual.shape != expected.shape:
            raise VskipError(f"output {name}: the graph gives shape {actual.shape}, the reference {expected.shape}")
        nonfinite = int((~np.isfinite(actual)).sum())
        with np.errstate(invalid="ignore"):
            diff = np.abs(actual - expected)
            diff[~np.isfinite(diff)] = np.inf  # NaN compares as no error; count it as the worst one
        rel = diff / np.maximum(np.abs(expected), np.finfo(np.float32).tiny)
        finite = nonfinite == 0 and bool(np.isfinite(expected).all())
        cos = cosine(actual, expected) if finite else float("nan")
        top1 = top1_agreement(actual, expected) if name == "logits" else None
        if gates.atol is not None:
            passes = finite and bool(diff.max(initial=0) <= gates.atol)
        else:
            passes = finite and cos >= gates.min_cosine and (top1 is None or top1 >= gates.min_top1)
        errors.append(OutputError(name, float(diff.max(initial=0)), float(diff.mean()) if diff.size else 0.0,
                                  float(np.quantile(diff, 0.99, method="higher")) if diff.size else 0.0,
                                  float(rel.max(initial=0)), float(rel.mean()) if rel.size else 0.0,
                                  cos, nonfinite, passes, top1))
    return errors


def first_nonfinite_layer(outputs: dict[str, np.ndarray]) -> str | None:
    """Where non-finite values start, in words; None if every output is finite.

    Layer i's present K/V are computed from the residual stream entering it, so the first
    layer with non-finite K/V says the stream overflowed in the layer before it (or in the
    inputs); finite K/V everywhere put it in the last layer or the LM head.
    """
    bad = {name for name, value in outputs.items() if not np.isfinite(np.asarray(value, np.float64)).all()}
    if not bad:
        return None
    layers = sorted({_layer_of(n) for n in bad} - {None})
    if not layers:
        return f"{', '.join(sorted(bad))} non-finite with every layer's K/V finite: the last layer or the LM head"
    first = layers[0]
    where = "in the inputs" if first == 0 else f"in layer {first - 1} (the first layer whose output is non-finite)"
    return f"present.{first}.key/value are the first non-finite K/V: the residual stream overflowed {where}"


@dataclass
class ValidationReport:
    graph: str
    model: str
    backend: dict            # the graph's session: backends.Description.to_dict()
    plan: list[str]
    freeze_scope: str
    rows: int
    visual_rows: int
    dtype: str
    gates: dict
    outputs: list[OutputError] = field(default_factory=list)   # against the fp32 reference
    same_dtype: list[OutputError] = field(default_factory=list)  # half graphs: against the model in their type
    reference_drift: list[OutputError] = field(default_factory=list)  # that model against fp32
    nonfinite: str | None = None            # where the graph's outputs turn non-finite
    reference_nonfinite: str | None = None  # where the PyTorch model in the graph's type does
    range_islands: int = 0                  # tensors `vskip cast --range-check` kept in fp32
    routable: bool = False                  # the graph took the plan as per-layer row inputs

    @property
    def passed(self) -> bool:
        # A half model that overflows in PyTorch overflows in a strictly typed engine too,
        # even where this backend (ONNX Runtime CPU, fp32 inside fp16 chains) hides it.
        # A graph that keeps its out-of-range tensors in fp32 (vskip cast --range-check) is
        # judged by its own outputs.
        return all(o.passes for o in self.outputs) and not (self.reference_nonfinite and not self.range_islands)

    @property
    def smallest_passing_atol(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def to_json(self) -> str:
        data = asdict(self)
        data.update(passed=self.passed, smallest_passing_atol=self.smallest_passing_atol,
                    first_failing_layer=self.first_failing_layer())
        return json.dumps(_finite(data), indent=2)

    def first_failing_layer(self) -> int | None:
        """The first layer whose present K or V, or exposed hidden state, fails its gate:
        where a drift starts."""
        failing = [_layer_of(o.name) for o in self.outputs if not o.passes and _layer_of(o.name) is not None]
        return min(failing, default=None)

    def layer_table(self) -> str:
        """One line per layer: its K and V (and its output, where the graph exposes
        ``hidden_states.{i}``) against the fp32 model (and, for a half graph, against the
        model in the graph's type), and where the first failure is."""
        half = self.dtype != "float32"
        by_layer: dict[int, dict] = {}
        for o in self.outputs:
            if _layer_of(o.name) is not None:
                kind = "hidden" if hidden_state_layer(o.name) is not None else o.name.rsplit(".", 1)[-1]
                by_layer.setdefault(_layer_of(o.name), {})[kind] = o
        hidden = any("hidden" in entry for entry in by_layer.values())
        same = {o.name: o for o in self.same_dtype}
        lines = [f"{'layer':>5} {'K max abs':>10} {'K cosine':>10} {'V max abs':>10} {'V cosine':>10}"
                 + (f" {'H max abs':>10} {'H cosine':>10}" if hidden else "") + "  ok"
                 + (f"   vs {SHORT[self.dtype]} torch: K cosine, V cosine" + (", H cosine" if hidden else "")
                    if half else "")]
        for layer in sorted(by_layer):
            k, v, h = (by_layer[layer].get(kind) for kind in ("key", "value", "hidden"))
            if k is None or v is None:
                continue
            shown = [k, v] + ([h] if h is not None else [])
            line = (f"{layer:>5} {k.max_abs:10.2e} {k.cosine:10.7f} {v.max_abs:10.2e} {v.cosine:10.7f}"
                    + (f" {h.max_abs:10.2e} {h.cosine:10.7f}" if h is not None else " " * 22 if hidden else "")
                    + f"  {'yes' if all(o.passes for o in shown) else 'NO '}")
            if half and all(o.name in same for o in shown):
                line += "   " + " ".join(f"{same[o.name].cosine:10.7f}" for o in shown)
            lines.append(line)
        first = self.first_failing_layer()
        what = "K/V and outputs" if hidden else "K/V"
        lines.append(f"every layer's {what} within the gate" if first is None else
                     f"the drift starts at layer {first}: its {what} are the first outside the gate")
        if not hidden:
            lines.append("(the graph exposes no hidden states: vskip-compile --hidden-states adds every layer's "
                         "output, compared here too)")
        return "\n".join(lines)

    def table(self) -> str:
        half = self.dtype != "float32"
        lines = [f"{'output':<22} {'max abs':>10} {'mean abs':>10} {'p99 abs':>10} {'max rel':>10} "
                 f"{'cosine':>10}  top-1  ok" + ("   vs " + SHORT[self.dtype] + " torch: max abs, cosine" if half
                                                  else "")]
        extra = {o.name: o for o in self.same_dtype}
        for o in self.outputs:
            top1 = f"{o.top1_agreement:5.1%}" if o.top1_agreement is not None else "    -"
            line = (f"{o.name:<22} {o.max_abs:10.2e} {o.mean_abs:10.2e} {o.p99_abs:10.2e} {o.max_rel:10.2e} "
                    f"{o.cosine:10.7f}  {top1}  {'yes' if o.passes else 'NO '}")
            if o.name in extra:
                line += f"   {extra[o.name].max_abs:10.2e} {extra[o.name].cosine:10.7f}"
            lines.append(line)
        lines.append(f"graph on {self.backend['backend']} ({self.backend['runtime']} {self.backend['version']}, "
                     f"{self.backend['device']}, {self.backend['precision']}) vs the fp32 PyTorch reference; "
                     f"{self.rows} rows, {self.visual_rows} visual"
                     + ("; the routable graph fed the plan's rows" if self.routable else ""))
        if half and self.reference_drift:
            worst = min(o.cosine for o in self.reference_drift)
            logits = next((o for o in self.reference_drift if o.top1_agreement is not None), None)
            if np.isfinite(worst):
                lines.append(f"the PyTorch model in {self.dtype} against fp32: lowest cosine {worst:.7f}"
                             + (f", top-1 {logits.top1_agreement:.1%}" if logits else ""))
        advice = "; fp16 holds at most 65504: export with --dtype bfloat16" if self.dtype == "float16" else ""
        if self.nonfinite and self.reference_nonfinite:
            lines.append(f"non-finite outputs, as in the PyTorch model in {self.dtype}: {self.nonfinite}{advice}")
        elif self.nonfinite:
            lines.append(f"non-finite outputs: {self.nonfinite}{advice}")
        elif self.reference_nonfinite and self.range_islands:
            lines.append(f"the PyTorch model in {self.dtype} overflows ({self.reference_nonfinite}); this graph keeps "
                         f"{self.range_islands} tensors beyond fp16's range in fp32 and is judged by its own outputs")
        elif self.reference_nonfinite:
            lines.append(f"the PyTorch model in {self.dtype} overflows: {self.reference_nonfinite}{advice}"
                         + ("" if self.nonfinite else f" (this backend keeps the graph finite, a strictly "
                                                      f"typed {SHORT[self.dtype]} engine will not)"))
        gates = Gates(**self.gates).describe()
        if self.passed:
            lines.append(f"PASS: {len(self.outputs)} outputs within {gates}")
        elif half:
            outside = sum(not o.passes for o in self.outputs)
            lines.append(f"FAIL: {outside} outputs outside {gates}" if outside else
                         f"FAIL: the outputs are within {gates}, but the model overflows in {self.dtype}")
        else:
            lines.append(f"FAIL: the smallest passing atol is {self.smallest_passing_atol:.2e} ({gates})")
        return "\n".join(lines)


def _layer_of(name: str) -> int | None:
    """The layer of a ``present.{i}.key`` / ``present.{i}.value`` or ``hidden_states.{i}``
    output, else None."""
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "present" and parts[1].isdigit():
        return int(parts[1])
    return hidden_state_layer(name)


def _finite(value):
    """JSON has no NaN or Inf: such a number is written as null (``nonfinite`` counts them)."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def validate(graph: str | Path, plan: str | Path | None = None, model: str | None = None,
             inputs: str | Path | None = None, visual_rows: str | None = None,
             atol: float | None = None, seed: int = 0, backend: str = DEFAULT_BACKEND,
             min_cosine: float | None = None, min_top1: float | None = None) -> ValidationReport:
    """Run ``graph`` on ``backend`` and the PyTorch skip reference on the same feeds; compare.

    ``model`` (a checkpoint directory or tiny preset, with ``seed``) overrides the export's
    sidecar; ``plan`` (a file) overrides the plan the graph records. A graph in fp16 or
    bf16 is compared with the fp32 model (the gates) and with the model in its own type
    (how much of the distance is the type's own); ``atol`` / ``min_cosine`` / ``min_top1``
    override the :data:`DEFAULT_GATES` of the graph's type.
    """
    from .backends import TORCH, get_backend
    from .core.dtypes import DTYPES
    from .core.files import read_npz
    from .core.graph_io import load_graph, recorded_routable
    from .core.routing import is_routing_input, routing_feeds
    from .core.sidecar import Sidecar, read_sidecar

    graph, engine = Path(graph), None
    if graph.suffix != ".onnx":  # an engine: the reference comes from the graph it was built from
        if backend != "trt":
            raise VskipError(f"{graph}: not an .onnx graph; a TensorRT engine from `vskip build` runs on --backend trt")
        from .trt.build import read_engine_sidecar

        engine, graph = graph, Path(read_engine_sidecar(graph).source_graph)
    for flag, value in (("--atol", atol), ("--min-cosine", min_cosine), ("--min-top1", min_top1)):
        if value is not None and not (value >= 0 and np.isfinite(value)):
            raise VskipError(f"{flag} must be a finite number >= 0, got {value}")
    if backend == TORCH.name:
        raise VskipError("--backend torch is the PyTorch reference itself; validate the graph on an ONNX "
                         "backend (ort-cpu, ort-cuda, ort-trt, onnx-ref), or PyTorch's live-rows run on torch-skip")
    runner = get_backend(backend)  # an unavailable backend costs nothing: checked first
    if inputs is not None and visual_rows is None:
        raise VskipError("with --inputs, give --visual-rows (the visual rows of those feeds)")
    if visual_rows is not None and inputs is None:
        raise VskipError("--visual-rows describes the rows of --inputs; add --inputs FEEDS.npz")
    plan_obj, info = load_plan(plan) if plan is not None else (None, None)
    sidecar = Sidecar(source=model, seed=seed, path="--model") if model is not None else read_sidecar(graph)
    reference = TORCH.load(graph, sidecar=sidecar, plan=plan_obj)  # in the graph's own type
    loaded, plan_obj = reference.loaded, reference.plan
    dtype = {short: name for name, short in SHORT.items()}.get(reference.description.precision)
    if dtype not in DTYPES:
        raise VskipError(f"{graph}: takes {reference.description.precision} inputs; vskip validates "
                         f"{', '.join(DTYPES)} graphs")
    gates = _gates(dtype, atol, min_cosine, min_top1)
    family = loaded.family
    if info is not None:
        info.check_model(family.model_type, plan_obj.num_layers)
    routable = recorded_routable(load_graph(graph, weights_needed=False), graph) is not None
    extra = {"engine": engine} if engine else {}
    if routable and getattr(runner, "runs_plan", False):
        extra["plan"] = plan_obj  # a backend that runs the plan itself reads no routing rows
    session = runner.load(graph, sidecar=sidecar, **extra)
    if inputs is None:
        batch = 1 if dtype == "float32" else HALF_BATCH
        feeds, visual = sample_feeds(loaded, sidecar.seed or 0, batch)
    else:
        feeds = read_npz(inputs)
        visual = parse_ranges(visual_rows, sequence_length(feeds))
    feeds = {k: v for k, v in feeds.items() if k not in ROW_INPUTS}  # the rows come from the visual rows alone
    wanted = [spec.name for spec in session.inputs + reference.inputs if spec.name in ROW_INPUTS]
    feeds.update(row_feeds(visual, list(dict.fromkeys(wanted))))
    routed = [spec.name for spec in session.inputs if is_routing_input(spec.name)]
    if routed:
        feeds.update(routing_feeds(plan_obj, visual, routed))

    def run(on):  # each session takes its own inputs; one it lacks is named by its feed check
        return on.run({spec.name: feeds[spec.name] for spec in on.inputs if spec.name in feeds})

    got, same = run(session), run(reference)
    report = ValidationReport(
        graph=str(engine or graph), model=sidecar.source, backend=session.description.to_dict(),
        plan=[a.value for a in plan_obj.actions], freeze_scope=plan_obj.freeze_scope.value,
        rows=int(visual.shape[0]), visual_rows=int(visual.sum()), dtype=dtype, gates=asdict(gates),
        nonfinite=first_nonfinite_layer(got), range_islands=_range_islands(graph), routable=routable)
    if dtype == "float32":
        report.outputs = compare_outputs(got, same, gates)
        return report
    fp32 = run(TORCH.load(graph, sidecar=sidecar, plan=plan_obj, dtype="float32"))
    report.outputs = compare_outputs(got, fp32, gates)
    report.same_dtype = compare_outputs(got, same, gates)
    report.reference_drift = compare_outputs(same, fp32, gates)
    report.reference_nonfinite = first_nonfinite_layer(same)
    return report


def sample_feeds(loaded, seed: int, batch: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """validate's own prompts for ``loaded`` (a LoadedModel): ``batch`` rows of
    :data:`DEFAULT_LAYOUT`, as decoder feeds in the model's type, and their visual rows."""
    from .models.inputs import prepare_decoder_inputs, synthetic_prompt

    prompt = synthetic_prompt(loaded.family, loaded.config, DEFAULT_LAYOUT, batch=batch, seed=seed + 1)
    feeds = {k: to_numpy(v) for k, v in prepare_decoder_inputs(loaded.family, loaded.model, prompt).feeds.items()}
    return feeds, visual_rows_from_ids(prompt.input_ids.numpy(), loaded.family.image_token_id(loaded.config))


def _range_islands(graph: Path) -> int:
    from .core.graph_io import load_graph, recorded_range_islands

    return recorded_range_islands(load_graph(graph, weights_needed=False), graph)


def _gates(dtype: str, atol, min_cosine, min_top1) -> Gates:
    """The graph type's default gates with the user's overrides; a gate of the other kind is an error."""
    default = DEFAULT_GATES[dtype]
    if dtype == "float32":
        if min_cosine is not None or min_top1 is not None:
            raise VskipError("--min-cosine and --min-top1 gate fp16/bf16 graphs; an fp32 graph is gated by --atol")
        return Gates(dtype, atol=DEFAULT_ATOL if atol is None else atol)
    if atol is not None:
        raise VskipError(f"--atol gates fp32 graphs; this graph is {dtype}: use --min-cosine / --min-top1")
    return Gates(dtype, min_cosine=default.min_cosine if min_cosine is None else min_cosine,
                 min_top1=default.min_top1 if min_top1 is None else min_top1)
