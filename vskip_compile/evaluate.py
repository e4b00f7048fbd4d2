"""``vskip eval``: accuracy per question type on the testbed's task, vanilla and under a
plan, hence the plan's retention, with the plan's FLOPs cut at the evaluated token mix.

SOURCE is either

- a checkpoint (``testbed:vqa`` or a directory with its processor files): the model runs
  in PyTorch, a plan through the skip reference (``--backend torch``, the default); or
- an export directory (``vskip export``): its graphs run through ``vskip generate``'s
  runtime on any ONNX backend, a plan compiled for the run (``--plan``) or a prefill
  compiled earlier (``--compiled``). This is the retention a deployed graph has. A routable
  prefill (``vskip-compile --routable``) as ``--compiled`` is fed ``--plan`` at run time.

``--plan-for TYPE=PLAN.json`` (one per question type) routes each sample to its type's
plan, V-Skip's per-task routing: on a checkpoint through the reference, on an export
through a routable ``--compiled`` prefill, which applies each plan at run time.

Each sample's answer is the greedy first new token after the prompt (every testbed answer
is one token). The samples are :func:`vskip_compile.testbed.tasks.samples` of a split (the
test split by default: calibration draws from validation). Each prompt is processed on its
own and prompts of one question type and length are batched, unpadded, so a batch shares its visual rows
(what a compiled graph needs) and both paths see exactly the same inputs: on fp32 they
must agree answer for answer (tests/test_evaluate.py).

Retention = accuracy with the plan / vanilla accuracy, per question type and overall.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .core.errors import VskipError
from .core.plan import Plan

DEFAULT_SAMPLES = 50  # per question type
DEFAULT_BATCH = 32
# Far beyond any split a study needs; each sample is an image and a processed prompt in memory.
MAX_SAMPLES = 100_000
MAX_BATCH = 4096


def check_counts(samples: int, batch_size: int) -> None:
    """--samples and --batch-size in range, before anything is drawn or loaded."""
    if not 1 <= samples <= MAX_SAMPLES or not 1 <= batch_size <= MAX_BATCH:
        raise VskipError(f"--samples must be in 1-{MAX_SAMPLES} and --batch-size in 1-{MAX_BATCH}, got "
                         f"{samples} and {batch_size}")


@dataclass
class Prepared:
    """Samples processed into model inputs, grouped into batches of one prompt length."""

    samples: list
    answers: np.ndarray                       # [N] answer token ids
    batches: list[tuple[list[int], dict]]     # (sample indices, numpy model inputs): one type each
    visual_rows: list[np.ndarray]             # per sample, [S] bool


def prepare(processor, samples: Sequence, image_token_id: int, batch_size: int = DEFAULT_BATCH) -> Prepared:
    from .testbed.tasks import prompt

    tokenizer = processor.tokenizer
    marker = getattr(processor, "image_token", None) or "<image>"
    singles = []
    for sample in samples:
        inputs = processor(text=[prompt(sample.question, marker)], images=[sample.image], return_tensors="np")
        singles.append({k: np.asarray(v) for k, v in dict(inputs).items()})
    answers = np.array(tokenizer.convert_tokens_to_ids([s.answer for s in samples]), dtype=np.int64)
    if tokenizer.unk_token_id is not None and (answers == tokenizer.unk_token_id).any():
        raise VskipError("the model's tokenizer has no token for some answers: is SOURCE the testbed's model?")
    # One question type per batch: a routed evaluation gives each type its own plan.
    groups: dict[tuple[str, int], list[int]] = defaultdict(list)
    for index, (sample, inputs) in enumerate(zip(samples, singles)):
        groups[sample.question_type, inputs["input_ids"].shape[1]].append(index)
    batches = []
    for key in sorted(groups):
        indices = groups[key]
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            batches.append((chunk, {k: np.concatenate([singles[i][k] for i in chunk]) for k in singles[chunk[0]]}))
    visual = [s["input_ids"][0] == image_token_id for s in singles]
    return Prepared(list(samples), answers, batches, visual)


class TorchAnswers:
    """Greedy first tokens in PyTorch, a plan through the skip reference."""

    backend = "torch"

    def __init__(self, loaded):
        self.loaded = loaded

    def __call__(self, prepared: Prepared, plans: dict | None) -> np.ndarray:
        import torch

        from .models.reference import skip_reference

        family, model = self.loaded.family, self.loaded.model
        out = np.zeros(len(prepared.samples), dtype=np.int64)
        image_token = family.image_token_id(self.loaded.config)
        for indices, inputs in prepared.batches:
            plan = plans.get(prepared.samples[indices[0]].question_type) if plans else None
            feeds = {k: torch.from_numpy(v) for k, v in inputs.items()}
            visual = feeds["input_ids"] == image_token
            context = (skip_reference(family, model, plan, visual) if plan is not None and not plan.is_empty
                       else contextlib.nullcontext())
            with torch.no_grad(), context:
                logits = model(**feeds, logits_to_keep=1).logits[:, -1]
            out[indices] = logits.argmax(-1).numpy()
        return out


class RuntimeAnswers:
    """Greedy first tokens from an export's graphs through :class:`~.runtime.generate.Runtime`."""

    def __init__(self, runtime, backend: str):
        self.runtime, self.backend = runtime, backend

    def __call__(self, prepared: Prepared, plans: dict | None) -> np.ndarray:
        """A routable prefill is fed each batch's plan; a static one applies its own."""
        out = np.zeros(len(prepared.samples), dtype=np.int64)
        routed = self.runtime.routable_layers is not None
        for indices, inputs in prepared.batches:
            plan = plans.get(prepared.samples[indices[0]].question_type) if plans and routed else None
            result = self.runtime.generate(inputs, max_new_tokens=1, plan=plan)
            out[indices] = [tokens[0] for tokens in result.token_ids]
        return out


@dataclass
class Evaluation:
    source: str
    backend: str
    split: str
    question_types: tuple[str, ...]
    types: list[str]                        # per sample
    answers: list[int]
    vanilla: list[int]                      # the vanilla answers
    planned: list[int] | None               # the answers under the plan, if any
    plan: str | None                        # its description
    flops_cut: dict[str, float] = field(default_factory=dict)

    def scores(self) -> dict[str, dict]:
        out = {}
        for kind in (*self.question_types, "all"):
            picked = [i for i, t in enumerate(self.types) if kind in ("all", t)]
            right = np.array(self.answers)[picked]
            vanilla = float((np.array(self.vanilla)[picked] == right).mean())
            entry = {"samples": len(picked), "vanilla_accuracy": vanilla}
            if self.planned is None:
                entry["accuracy"] = vanilla
            else:
                accuracy = float((np.array(self.planned)[picked] == right).mean())
                entry.update(accuracy=accuracy, retention=accuracy / vanilla if vanilla else None,
                             flops_cut=self.flops_cut[kind])
            out[kind] = entry
        return out

    def to_dict(self) -> dict:
        return {"source": self.source, "backend": self.backend, "split": self.split, "plan": self.plan,
                "question_types": self.scores(), "answers": self.answers, "vanilla_predictions": self.vanilla,
                "plan_predictions": self.planned}

    def table(self) -> str:
        planned = self.planned is not None
        lines = [f"{'question type':<14} {'samples':>7} {'vanilla':>8}"
                 + (f" {'plan':>8} {'retention':>10} {'FLOPs cut':>10}" if planned else "")]
        for kind, s in self.scores().items():
            line = f"{kind:<14} {s['samples']:>7} {s['vanilla_accuracy']:>8.3f}"
            if planned:
                retention = f"{s['retention']:>10.1%}" if s["retention"] is not None else f"{'-':>10}"
                line += f" {s['accuracy']:>8.3f} {retention} {s['flops_cut']:>10.1%}"
            lines.append(line)
        lines.append(f"{self.source} on {self.backend}, {self.split} split" + (f"; plan: {self.plan}" if planned else ""))
        return "\n".join(lines)


def evaluate(source: str | Path, *, plan: str | Path | None = None, compiled: str | Path | None = None,
             plan_for: dict[str, str | Path] | None = None, backend: str | None = None, samples_per_type: int = DEFAULT_SAMPLES, split: str = "test",
             seed: int = 0, question_types: Sequence[str] | None = None, batch_size: int = DEFAULT_BATCH,
             threads: int | None = None, progress: Callable[[str], None] | None = None) -> Evaluation:
    """Score SOURCE on the testbed task (module docstring)."""
    from .testbed.tasks import QUESTION_TYPES, samples

    check_counts(samples_per_type, batch_size)
    types = tuple(question_types or QUESTION_TYPES)
    unknown = [t for t in types if t not in QUESTION_TYPES]
    if unknown:
        raise VskipError(f"--type {unknown[0]}: not a question type ({', '.join(QUESTION_TYPES)})")
    if plan_for:
        if plan is not None:
            raise VskipError("give --plan (one plan) or --plan-for (one per question type), not both")
        unknown = [t for t in plan_for if t not in QUESTION_TYPES]
        if unknown:
            raise VskipError(f"--plan-for {unknown[0]}=...: not a question type ({', '.join(QUESTION_TYPES)})")
        missing = [t for t in types if t not in plan_for]
        if missing:
            raise VskipError(f"--plan-for has no plan for {', '.join(missing)}: give one per question type")
    drawn = samples(split, samples_per_type * len(types), seed, types)
    say = progress or (lambda message: None)
    with contextlib.ExitStack() as stack:
        if _is_export(source):
            answer, dims, processor, image_token, family, layers, name = _export_side(
                Path(source), plan, compiled, plan_for, backend or "ort-cpu", threads, stack, say)
        else:
            if compiled is not None:
                raise VskipError("--compiled needs an export directory as SOURCE (a checkpoint runs in PyTorch)")
            answer, dims, processor, image_token, family, layers, name = _checkpoint_side(str(source), backend)
        plans = _plans(plan, compiled, plan_for, types, family, layers, answer["planned"])
        say(f"processing {len(drawn)} {split} samples")
        prepared = prepare(processor, drawn, image_token, batch_size)
        say(f"vanilla answers on {answer['vanilla'].backend}")
        vanilla = answer["vanilla"](prepared, None)
        planned = None
        if plans is not None:
            say(f"answers under the plan{'s' if plan_for else ''} on {answer['planned'].backend}")
            planned = answer["planned"](prepared, plans)
    from .calibrate import flops_cut

    sample_types = [s.question_type for s in drawn]
    cuts, description = {}, None
    if plans is not None:
        for kind in (*types, "all"):
            picked = [i for i, t in enumerate(sample_types) if kind in ("all", t)]
            cuts[kind] = flops_cut(dims, [plans[sample_types[i]] for i in picked],
                                   [prepared.visual_rows[i] for i in picked])
        description = "; ".join(f"{t}: {_describe(plans[t])}" for t in types) if plan_for else _describe(plans[types[0]])
    return Evaluation(name, answer["vanilla"].backend, split, types, sample_types, prepared.answers.tolist(),
                      vanilla.tolist(), None if planned is None else planned.tolist(), description, cuts)


def _is_export(source) -> bool:
    from .core.sidecar import SIDECAR

    path = Path(str(source))
    return path.is_dir() and (path / SIDECAR).is_file()


def _plans(plan, compiled, plan_for, types, family: str, layers: int, planned) -> dict | None:
    """The plan of each question type, or None for a vanilla evaluation."""
    from .core.graph_io import load_graph, recorded_plan
    from .core.plan import load_plan

    def loaded(path) -> Plan:
        plan_, info = load_plan(path)
        info.check_model(family, layers)
        return plan_

    if plan_for:
        return {t: loaded(plan_for[t]) for t in types}
    if plan is not None:
        return dict.fromkeys(types, loaded(plan))
    if compiled is None:
        return None
    if getattr(planned, "runtime", None) is not None and planned.runtime.routable_layers is not None:
        return dict.fromkeys(types, Plan.empty(layers))  # a routable prefill fed nothing: vanilla
    recorded = recorded_plan(load_graph(compiled, weights_needed=False), compiled)
    if recorded is None:
        raise VskipError(f"{compiled}: records no plan; give a graph vskip-compile wrote")
    return dict.fromkeys(types, recorded)


def _describe(plan: Plan) -> str:
    from .bench.report import describe_plan

    return describe_plan(plan)


def _checkpoint_side(source: str, backend: str | None):
    from .models.export import describe
    from .models.loading import checkpoint_directory, load_model
    from .models.processors import load_processor

    if backend not in (None, "torch"):
        raise VskipError(f"--backend {backend}: a checkpoint runs in PyTorch (--backend torch); export it with "
                         "`vskip export` to evaluate its graphs on an ONNX backend")
    directory = checkpoint_directory(source)
    if directory is None:
        raise VskipError(f"{source}: a tiny preset has random weights and no task to answer; evaluate testbed:vqa "
                         "or a checkpoint trained on the task")
    loaded = load_model(source)
    try:
        processor = load_processor(str(directory))
    except VskipError:
        raise
    except Exception as exc:  # transformers raises many types for missing or bad processor files
        from .core.files import one_line

        raise VskipError(f"{source}: cannot load its processor ({one_line(exc)})") from None
    answers = TorchAnswers(loaded)
    dims = describe(loaded, 20, False, decode=False).dims()
    layers = loaded.text_config.num_hidden_layers
    return ({"vanilla": answers, "planned": answers}, dims, processor, loaded.family.image_token_id(loaded.config),
            loaded.family.model_type, layers, source)


def _export_side(directory: Path, plan, compiled, plan_for, backend: str, threads, stack, say):
    from .runtime.generate import Runtime, compiled_on_the_fly
    from .runtime.processor import load_processor

    vanilla = Runtime(directory, backend=backend, threads=threads, progress=say)
    processor = load_processor(directory, vanilla.sidecar)
    if processor is None:
        raise VskipError(f"{directory}: the export has no processor files, so the task's prompts cannot be read")
    planned = None
    if compiled is not None:
        planned = Runtime(directory, compiled=compiled, backend=backend, threads=threads, progress=say)
        routable = planned.routable_layers is not None
        if (plan is not None or plan_for) and not routable:
            raise VskipError(f"{compiled}: not a routable graph, so it applies its own plan; --plan or --plan-for "
                             "with --compiled needs one from vskip-compile --routable")
    elif plan_for:
        raise VskipError("--plan-for on an export routes through a routable prefill: compile one with "
                         "vskip-compile --routable and pass it as --compiled")
    elif plan is not None:
        graph = stack.enter_context(compiled_on_the_fly(directory, plan, say))
        planned = Runtime(directory, compiled=graph, backend=backend, threads=threads, progress=say)
    sidecar = vanilla.sidecar
    answers = {"vanilla": RuntimeAnswers(vanilla, backend),
               "planned": RuntimeAnswers(planned, backend) if planned is not None else None}
    return (answers, sidecar.dims(), processor, sidecar.image_token_id, sidecar.family, sidecar.num_layers,
            str(directory))
