"""Validate a graph (compiled or vanilla) against the PyTorch skip reference.

The model comes from the export's sidecar next to the graph (``vskip.json``: a checkpoint
directory or ``tiny:<model_type>`` and its seed) or from ``--model``; the plan from
``--plan``, else the plan recorded in a compiled graph, else the empty plan. Inputs are a
generated prompt (text and images in a fixed layout) or given feeds with their visual rows.

Per output, like Polygraphy's comparisons: max and mean absolute and relative error and
the smallest absolute tolerance that would pass; for logits also top-1 agreement.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .compile import compiled_plan, load_graph
from .errors import VskipError
from .plan import Plan, load_plan
from .visual_rows import ROW_INPUTS, parse_ranges, row_feeds, visual_rows_from_ids

DEFAULT_LAYOUT = [6, "image", 5, "image", 8]
DEFAULT_ATOL = 1e-4


@dataclass
class OutputError:
    name: str
    max_abs: float
    mean_abs: float
    max_rel: float
    mean_rel: float
    passes: bool
    top1_agreement: float | None = None


@dataclass
class ValidationReport:
    graph: str
    model: str
    plan: list[str]
    freeze_scope: str
    rows: int
    visual_rows: int
    atol: float
    outputs: list[OutputError] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(o.passes for o in self.outputs)

    @property
    def smallest_passing_atol(self) -> float:
        return max((o.max_abs for o in self.outputs), default=0.0)

    def to_json(self) -> str:
        data = asdict(self)
        data.update(passed=self.passed, smallest_passing_atol=self.smallest_passing_atol)
        return json.dumps(data, indent=2)

    def table(self) -> str:
        lines = [f"{'output':<22} {'max abs':>10} {'mean abs':>10} {'max rel':>10} {'mean rel':>10}  top-1  ok"]
        for o in self.outputs:
            top1 = f"{o.top1_agreement:5.1%}" if o.top1_agreement is not None else "    -"
            lines.append(f"{o.name:<22} {o.max_abs:10.2e} {o.mean_abs:10.2e} {o.max_rel:10.2e} "
                         f"{o.mean_rel:10.2e}  {top1}  {'yes' if o.passes else 'NO'}")
        verdict = "PASS" if self.passed else "FAIL"
        lines.append(f"{verdict}: {len(self.outputs)} outputs within atol {self.atol:g}"
                     if self.passed else f"{verdict}: the smallest passing atol is {self.smallest_passing_atol:.2e}")
        return "\n".join(lines)


def compare_outputs(got: dict[str, np.ndarray], want: dict[str, np.ndarray], atol: float) -> list[OutputError]:
    errors = []
    for name, expected in want.items():
        actual = got[name].astype(np.float64)
        expected = expected.astype(np.float64)
        if actual.shape != expected.shape:
            raise VskipError(f"output {name}: the graph gives shape {actual.shape}, the reference {expected.shape}")
        diff = np.abs(actual - expected)
        rel = diff / np.maximum(np.abs(expected), np.finfo(np.float32).tiny)
        top1 = None
        if name == "logits":
            top1 = float((actual.argmax(-1) == expected.argmax(-1)).mean())
        errors.append(OutputError(name, float(diff.max(initial=0)), float(diff.mean()) if diff.size else 0.0,
                                  float(rel.max(initial=0)), float(rel.mean()) if rel.size else 0.0,
                                  bool(diff.max(initial=0) <= atol), top1))
    return errors


def validate(graph: str | Path, plan: str | Path | None = None, model: str | None = None,
             inputs: str | Path | None = None, visual_rows: str | None = None,
             atol: float = DEFAULT_ATOL, seed: int = 0) -> ValidationReport:
    import torch

    from .sidecar import read_sidecar
    from .models.inputs import prepare_decoder_inputs, synthetic_prompt
    from .models.loading import load_model
    from .models.reference import skip_reference
    from .models.wrappers import PrefillDecoder, prefill_input_names
    from .files import read_npz
    from .runner import make_session, run_session

    graph = Path(graph)
    if not (atol >= 0 and np.isfinite(atol)):
        raise VskipError(f"--atol must be a finite tolerance >= 0, got {atol}")
    proto = load_graph(graph)
    sidecar = read_sidecar(graph)
    if model is None:
        if sidecar is None:
            raise VskipError(f"{graph}: no vskip.json export sidecar beside it; name the model with --model")
        if not sidecar.get("source"):
            raise VskipError(f"{graph.parent / 'vskip.json'}: the sidecar names no 'source' model; name it with --model")
        model, seed = sidecar["source"], sidecar.get("seed") or 0
    loaded = load_model(model, seed=seed)
    family = loaded.family
    num_layers = len(family.decoder_layers(loaded.model))
    plan_obj = _resolve_plan(plan, proto, family.model_type, num_layers, graph)

    session = make_session(graph)
    graph_inputs = [i.name for i in session.get_inputs()]
    if inputs is None:
        prompt = synthetic_prompt(family, loaded.config, DEFAULT_LAYOUT, seed=seed + 1)
        prepared = prepare_decoder_inputs(family, loaded.model, prompt)
        feeds = {k: v.numpy() for k, v in prepared.feeds.items()}
        visual = visual_rows_from_ids(prompt.input_ids.numpy(), family.image_token_id(loaded.config))
    else:
        feeds = read_npz(inputs)
        length = feeds["inputs_embeds"].shape[1] if "inputs_embeds" in feeds else None
        if visual_rows is None or length is None:
            raise VskipError("with --inputs, give --visual-rows (and feeds with inputs_embeds)")
        visual = parse_ranges(visual_rows, length)
    wanted = [n for n in graph_inputs if n in ROW_INPUTS]
    feeds.update(row_feeds(visual, wanted))
    got = run_session(session, {n: feeds[n] for n in graph_inputs})

    all_logits = got["logits"].shape[1] != 1
    names = prefill_input_names(family)
    missing = [n for n in names if n not in feeds]
    if missing:
        raise VskipError(f"the feeds lack the model's inputs {', '.join(missing)}")
    tensors = [torch.from_numpy(np.asarray(feeds[n])) for n in names]
    rows = torch.from_numpy(visual).expand(tensors[0].shape[0], -1)
    with skip_reference(family, loaded.model, plan_obj, rows), torch.no_grad():
        reference = PrefillDecoder(family, loaded.model, all_logits=all_logits)(*tensors)
    want = dict(zip([o.name for o in session.get_outputs()], (r.numpy() for r in reference)))
    return ValidationReport(
        graph=str(graph), model=model, plan=[a.value for a in plan_obj.actions],
        freeze_scope=plan_obj.freeze_scope.value, rows=int(visual.shape[0]), visual_rows=int(visual.sum()),
        atol=atol, outputs=compare_outputs(got, want, atol))


def _resolve_plan(plan, proto, family: str, num_layers: int, graph: Path) -> Plan:
    if plan is not None:
        plan_obj, info = load_plan(plan)
        info.check_model(family, num_layers)
        return plan_obj
    recorded = compiled_plan(proto, graph)
    if recorded is not None:
        plan_obj, info = load_plan(recorded)
        info.check_model(family, num_layers)
        return plan_obj
    return Plan.empty(num_layers)
