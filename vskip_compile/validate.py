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

from .backends import DEFAULT as DEFAULT_BACKEND
from .core.errors import VskipError
from .core.plan import load_plan
from .core.visual_rows import ROW_INPUTS, parse_ranges, row_feeds, sequence_length, visual_rows_from_ids

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
    backend: dict            # the graph's session: backends.Description.to_dict()
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
        lines.append(f"graph on {self.backend['backend']} ({self.backend['runtime']} {self.backend['version']}, "
                     f"{self.backend['device']}) vs the PyTorch reference; {self.rows} rows, "
                     f"{self.visual_rows} visual")
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
             atol: float = DEFAULT_ATOL, seed: int = 0, backend: str = DEFAULT_BACKEND) -> ValidationReport:
    """Run ``graph`` on ``backend`` and the PyTorch skip reference on the same feeds; compare.

    ``model`` (a checkpoint directory or tiny preset, with ``seed``) overrides the export's
    sidecar; ``plan`` (a file) overrides the plan the graph records.
    """
    from .backends import TORCH, get_backend
    from .core.files import read_npz
    from .core.sidecar import Sidecar, read_sidecar
    from .models.inputs import prepare_decoder_inputs, synthetic_prompt

    graph = Path(graph)
    if not (atol >= 0 and np.isfinite(atol)):
        raise VskipError(f"--atol must be a finite tolerance >= 0, got {atol}")
    if backend == TORCH.name:
        raise VskipError("--backend torch is the PyTorch reference itself; validate the graph on an ONNX "
                         "backend (ort-cpu, ort-cuda, ort-trt), or PyTorch's live-rows run on torch-skip")
    runner = get_backend(backend)  # an unavailable backend costs nothing: checked first
    if inputs is not None and visual_rows is None:
        raise VskipError("with --inputs, give --visual-rows (the visual rows of those feeds)")
    if visual_rows is not None and inputs is None:
        raise VskipError("--visual-rows describes the rows of --inputs; add --inputs FEEDS.npz")
    plan_obj, info = load_plan(plan) if plan is not None else (None, None)
    sidecar = Sidecar(source=model, seed=seed, path="--model") if model is not None else read_sidecar(graph)
    reference = TORCH.load(graph, sidecar=sidecar, plan=plan_obj)
    loaded, plan_obj = reference.loaded, reference.plan
    family = loaded.family
    if info is not None:
        info.check_model(family.model_type, plan_obj.num_layers)
    session = runner.load(graph, sidecar=sidecar)
    if inputs is None:
        prompt = synthetic_prompt(family, loaded.config, DEFAULT_LAYOUT, seed=(sidecar.seed or 0) + 1)
        prepared = prepare_decoder_inputs(family, loaded.model, prompt)
        feeds = {k: v.numpy() for k, v in prepared.feeds.items()}
        visual = visual_rows_from_ids(prompt.input_ids.numpy(), family.image_token_id(loaded.config))
    else:
        feeds = read_npz(inputs)
        visual = parse_ranges(visual_rows, sequence_length(feeds))
    feeds = {k: v for k, v in feeds.items() if k not in ROW_INPUTS}  # the rows come from the visual rows alone
    wanted = [spec.name for spec in session.inputs + reference.inputs if spec.name in ROW_INPUTS]
    feeds.update(row_feeds(visual, list(dict.fromkeys(wanted))))
    # Each session takes its own inputs; one it lacks is named by its feed check.
    got = session.run({spec.name: feeds[spec.name] for spec in session.inputs if spec.name in feeds})
    want = reference.run({spec.name: feeds[spec.name] for spec in reference.inputs if spec.name in feeds})
    return ValidationReport(
        graph=str(graph), model=sidecar.source, backend=session.description.to_dict(),
        plan=[a.value for a in plan_obj.actions], freeze_scope=plan_obj.freeze_scope.value,
        rows=int(visual.shape[0]), visual_rows=int(visual.sum()), atol=atol,
        outputs=compare_outputs(got, want, atol))
