"""Calibration: how much skipping each layer's visual operators changes the answer, and
the plans that follow from it.

The score of an option o (skip visual attention, skip visual FFN, freeze) at layer l is
V-Skip's Visual Information Gain, on a few calibration samples whose answer is one token::

    G(l, o) = mean over the samples of KL( P(y | x) || P_{l,o}(y | x) )

where P is the model's next-token distribution after the prompt (the answer token) and
P_{l,o} the same with option o applied at layer l alone, through the PyTorch skip
reference (:func:`vskip_compile.models.reference.skip_reference`, batched; a batch may mix
prompt layouts). A small G says the layer's visual operator barely moves the answer.

Two methods:

- ``vskip`` (V-Skip): only "skip visual attention" is scored (L + 1 forwards per sample).
  The plan skips visual attention in the N layers of lowest G: N given, or the largest N
  whose plan keeps ``retention`` of the vanilla accuracy on the calibration samples (every
  N of the nested plans is checked, one forward each).
- ``operators`` (OpSkip-style): all three options are scored (3L + 1 forwards). Candidates
  are taken in increasing order of G per FLOP saved (FLOPs by the analytic formula at the
  calibration samples' own token mix); each is merged into the plan (attention + FFN of one
  layer = freeze) and kept only if the combined plan still keeps ``retention`` on the
  calibration samples (a recheck, one forward), until the plan's FLOPs cut reaches the
  target. If the candidates run out first, the result says how far it got.

How ``operators`` relates to OpSkip: OpSkip's search code is not released; its paper scores
each operator by a first-order (gradient x activation) estimate of its influence on the
answer tokens. This module measures the same target exactly, at zeroth order: the answer
distribution's KL when the operator is actually removed, one forward per option instead of
a backward pass, and rechecks interactions by running the combined plan instead of adding
the estimates.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .core.errors import VskipError
from .core.plan import Action, Plan

OPTIONS = (Action.SKIP_ATTENTION, Action.SKIP_FFN, Action.FREEZE)
DEFAULT_SAMPLES = 20  # V-Skip's few-shot count
METHODS = ("vskip", "operators")


@dataclass
class CalibrationSet:
    """Batches of model inputs (torch tensors), their visual-row masks [B, S] and answer
    token ids [B]; and each sample's visual rows, in batch order (for FLOPs)."""

    batches: list[tuple[dict, "object", "object"]]
    visual_rows: list[np.ndarray]

    @property
    def size(self) -> int:
        return len(self.visual_rows)


def calibration_set(prepared) -> CalibrationSet:
    """From :func:`vskip_compile.evaluate.prepare`'s batches (unpadded, one prompt length
    each): torch inputs, the image tokens' rows as visual, the answers."""
    import torch

    batches = []
    for indices, inputs in prepared.batches:
        feeds = {k: torch.from_numpy(v) for k, v in inputs.items()}
        visual = torch.from_numpy(np.stack([prepared.visual_rows[i] for i in indices]))
        batches.append((feeds, visual, torch.from_numpy(prepared.answers[indices])))
    return CalibrationSet(batches, [prepared.visual_rows[i] for indices, _ in prepared.batches for i in indices])


# The answer token of each prompt in a --data file (beside the model's inputs).
ANSWERS = "answer_ids"
MAX_DATA_FILES = 1000


def data_set(files: Sequence, image_token_id: int, vocab_size: int, accepted=None, modality=None) -> CalibrationSet:
    """A calibration set from ``--data`` files: each an .npz of the full model's inputs
    under transformers' names (as ``vskip generate --inputs`` takes them: ``input_ids``,
    ``attention_mask``, ``pixel_values``, ``image_grid_thw``, ...) and ``answer_ids`` [B],
    the token each prompt's answer starts with. One file is one batch (left-padded to one
    length); the image tokens' rows are the visual rows. ``accepted``: the input names the
    model's forward takes (others are refused), None to take any. ``modality(input_ids,
    attention_mask)``: the family's modality inputs (``mm_token_type_ids``, ...), derived
    from the ids where a file has none, as ``vskip generate`` derives them."""
    import torch

    from .core.files import read_npz
    from .evaluate import MAX_SAMPLES

    if not 1 <= len(files) <= MAX_DATA_FILES:
        raise VskipError(f"--data: give 1-{MAX_DATA_FILES} files, got {len(files)}")
    batches, visual_rows = [], []
    for path in files:
        arrays = read_npz(path)
        ids, answers = arrays.get("input_ids"), arrays.pop(ANSWERS, None)
        if ids is None or ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer) or ids.shape[1] == 0:
            raise VskipError(f"{path}: needs input_ids, a [batch, length] integer array (the model's inputs, as "
                             "vskip generate --inputs takes them)")
        if answers is None or answers.shape != ids.shape[:1] or not np.issubdtype(answers.dtype, np.integer) \
                or not ((answers >= 0) & (answers < vocab_size)).all():
            raise VskipError(f"{path}: needs {ANSWERS}, one token id in 0-{vocab_size - 1} per prompt "
                             f"([{ids.shape[0]}] integers): the token each answer starts with")
        mask = arrays.get("attention_mask", np.ones_like(ids))
        if mask.shape != ids.shape or (mask[:, -1] == 0).any():
            raise VskipError(f"{path}: attention_mask must be input_ids' shape {list(ids.shape)} and pad on the left "
                             "(the answer is read at each prompt's last position)")
        visual = ids == image_token_id
        if not visual.any():
            raise VskipError(f"{path}: no prompt has an image token ({image_token_id}): there are no visual rows to "
                             "calibrate on")
        unknown = sorted(set(arrays) - set(accepted)) if accepted is not None else []
        if unknown:
            raise VskipError(f"{path}: the model takes no input {', '.join(unknown[:3])}; give its inputs under "
                             f"transformers' names and {ANSWERS}")
        feeds = {name: torch.from_numpy(np.ascontiguousarray(
            value.astype(np.float32) if np.issubdtype(value.dtype, np.floating) else value))
            for name, value in arrays.items()}
        feeds["attention_mask"] = torch.from_numpy(np.ascontiguousarray(mask))
        for name, value in (modality(feeds["input_ids"], feeds["attention_mask"]) if modality else {}).items():
            feeds.setdefault(name, value)
        batches.append((feeds, torch.from_numpy(visual), torch.from_numpy(answers.astype(np.int64))))
        visual_rows.extend(visual)
        if len(visual_rows) > MAX_SAMPLES:
            raise VskipError(f"--data: more than {MAX_SAMPLES} prompts")
    return CalibrationSet(batches, visual_rows)


class Scorer:
    """The model's answer distributions on a calibration set, vanilla and under plans."""

    def __init__(self, family, model, samples: CalibrationSet):
        self.family, self.model, self.samples = family, model, samples
        self.forwards = 0
        self.vanilla = self.log_probs(None)

    def log_probs(self, plan: Plan | None) -> list:
        import contextlib

        import torch

        from .models.reference import skip_reference

        out = []
        for inputs, visual, _ in self.samples.batches:
            context = (skip_reference(self.family, self.model, plan, visual) if plan is not None and not plan.is_empty
                       else contextlib.nullcontext())
            with torch.no_grad(), context:
                logits = self.model(**inputs, logits_to_keep=1).logits[:, -1]
            # In float64: a layer that barely matters moves the answer by KL ~1e-6, below
            # what float32 log-probabilities resolve.
            out.append(torch.log_softmax(logits.double(), dim=-1))
            self.forwards += 1
        return out

    def divergence(self, log_probs: list) -> float:
        """Mean KL(vanilla || ``log_probs``) over the samples."""
        total = sum(float((p.exp() * (p - q)).sum()) for p, q in zip(self.vanilla, log_probs))
        return total / self.samples.size

    def accuracy(self, log_probs: list) -> float:
        right = sum(int((p.argmax(-1) == answers).sum()) for p, (_, _, answers) in zip(log_probs, self.samples.batches))
        return right / self.samples.size


def flops_cut(dims: dict, plan: Plan | Sequence[Plan], visual_rows: Sequence[np.ndarray]) -> float:
    """1 - FLOPs(plan) / FLOPs(vanilla), summed over the samples' own token mixes; ``plan``
    is one plan for every sample or one per sample (per-task routing)."""
    from .flops import analytic_flops

    plans = [plan] * len(visual_rows) if isinstance(plan, Plan) else list(plan)
    vanilla = Plan.empty(plans[0].num_layers)
    full = sum(analytic_flops(dims, vanilla, rows) for rows in visual_rows)
    return 1.0 - sum(analytic_flops(dims, p, rows) for p, rows in zip(plans, visual_rows)) / full


def merged(plan: Plan, layer: int, option: Action) -> Plan:
    """``plan`` with ``option`` added at ``layer``: what it skipped there stays skipped."""
    current = plan.actions[layer]
    attention = current.skips_attention or option.skips_attention
    ffn = current.skips_ffn or option.skips_ffn
    action = {(False, False): Action.FULL, (True, False): Action.SKIP_ATTENTION, (False, True): Action.SKIP_FFN,
              (True, True): Action.FREEZE}[(attention, ffn)]
    actions = list(plan.actions)
    actions[layer] = action
    return Plan(tuple(actions), plan.freeze_scope)


@dataclass
class Calibration:
    """What a calibration found: the plan, the per-layer gains and how the plan was chosen."""

    method: str
    plan: Plan
    options: tuple[Action, ...]
    gains: np.ndarray                 # [layers, options]: G(l, o)
    samples: int
    vanilla_accuracy: float
    accuracy: float                   # the plan's, on the calibration samples
    divergence: float                 # the plan's mean KL from vanilla
    flops_cut: float                  # at the calibration samples' token mix
    seconds: float
    forwards: int                     # batched forwards run
    steps: list[dict] = field(default_factory=list)
    note: str | None = None

    @property
    def retention(self) -> float:
        return self.accuracy / self.vanilla_accuracy if self.vanilla_accuracy else None

    def to_dict(self) -> dict:
        return {"method": self.method, "plan": [a.value for a in self.plan.actions],
                "options": [o.value for o in self.options],
                "gains": {o.value: [float(g) for g in self.gains[:, i]] for i, o in enumerate(self.options)},
                "samples": self.samples, "vanilla_accuracy": self.vanilla_accuracy, "accuracy": self.accuracy,
                "retention": self.retention, "divergence": self.divergence, "flops_cut": self.flops_cut,
                "seconds": self.seconds, "seconds_per_sample": self.seconds / self.samples,
                "forwards": self.forwards, "steps": self.steps, "note": self.note}

    def table(self) -> str:
        """The per-layer gain table, then the plan and what it keeps."""
        width = max(len(o.value) for o in self.options) + 2
        lines = ["layer " + "".join(f"{o.value:>{width}}" for o in self.options) + "   plan"]
        for layer in range(self.plan.num_layers):
            gains = "".join(f"{self.gains[layer, i]:>{width}.3g}" for i in range(len(self.options)))
            lines.append(f"{layer:>5} {gains}   {self.plan.actions[layer].value}")
        kept = f"{self.retention:.1%}" if self.retention is not None else "-"
        lines.append(f"{self.method}: accuracy {self.accuracy:.3f} of vanilla {self.vanilla_accuracy:.3f} "
                     f"(retention {kept}), KL {self.divergence:.4f}, FLOPs cut {self.flops_cut:.1%} "
                     f"on {self.samples} samples; {self.seconds:.1f} s ({self.seconds / self.samples:.2f} s per "
                     f"sample, {self.forwards} batched forwards)")
        if self.note:
            lines.append(self.note)
        return "\n".join(lines)


def calibrate(family, model, dims: dict, samples: CalibrationSet, method: str = "vskip", *,
              layers: int | None = None, retention: float | None = None, target_cut: float | None = None,
              progress: Callable[[str], None] | None = None) -> Calibration:
    """Score the options of ``method`` on ``samples`` and choose a plan (module docstring).

    ``vskip``: ``layers`` (N) or ``retention``; ``operators``: ``target_cut`` (a FLOPs cut
    in (0, 1)), optionally ``retention`` as the recheck's bar (default: keep every
    candidate).
    """
    if method not in METHODS:
        raise VskipError(f"unknown calibration method {method!r}: choose {', '.join(METHODS)}")
    if samples.size == 0:
        raise VskipError("no calibration samples")
    if retention is not None and not 0 < retention <= 1.5:
        raise VskipError(f"--retention {retention}: give the share of vanilla accuracy to keep, e.g. 0.99")
    num_layers = len(family.decoder_layers(model))
    if method == "vskip":
        if (layers is None) == (retention is None):
            raise VskipError("--method vskip takes --layers N or --retention R (one of them)")
        if layers is not None and not 0 <= layers <= num_layers:
            raise VskipError(f"--layers {layers}: the model has {num_layers} layers")
    elif target_cut is None or not 0 < target_cut < 1:
        raise VskipError("--method operators needs --flops-cut C with 0 < C < 1 (e.g. 0.3 for 30%)")
    start = time.perf_counter()
    say = progress or (lambda message: None)
    scorer = Scorer(family, model, samples)
    vanilla_accuracy = scorer.accuracy(scorer.vanilla)
    options = (Action.SKIP_ATTENTION,) if method == "vskip" else OPTIONS
    gains = np.zeros((num_layers, len(options)))
    for layer in range(num_layers):
        for i, option in enumerate(options):
            gains[layer, i] = scorer.divergence(scorer.log_probs(Plan.from_layers(num_layers, {layer: option})))
        say(f"layer {layer}: " + ", ".join(f"{o.value} {gains[layer, i]:.3g}" for i, o in enumerate(options)))

    def keeps(probs) -> bool:
        return retention is None or scorer.accuracy(probs) >= retention * vanilla_accuracy

    if method == "vskip":
        order = [int(i) for i in np.argsort(gains[:, 0], kind="stable")]
        plan, steps, note = _vskip_choice(scorer, order, num_layers, layers, keeps, vanilla_accuracy, say)
    else:
        plan, steps, note = _operator_choice(scorer, gains, options, dims, samples, target_cut, keeps, say)
    probs = scorer.log_probs(plan)
    return Calibration(method, plan, options, gains, samples.size, vanilla_accuracy, scorer.accuracy(probs),
                       scorer.divergence(probs), flops_cut(dims, plan, samples.visual_rows),
                       time.perf_counter() - start, scorer.forwards, steps, note)


def _vskip_choice(scorer: Scorer, order: list[int], num_layers: int, layers: int | None, keeps, vanilla_accuracy,
                  say):
    def plan_of(n: int) -> Plan:
        return Plan.from_layers(num_layers, {layer: Action.SKIP_ATTENTION for layer in order[:n]})

    if layers is not None:
        return plan_of(layers), [], None
    steps, best = [], 0
    for n in range(1, num_layers + 1):
        probs = scorer.log_probs(plan_of(n))
        accuracy = scorer.accuracy(probs)
        steps.append({"layers": n, "skipped": sorted(order[:n]), "accuracy": accuracy})
        say(f"{n} layers skipped: accuracy {accuracy:.3f} (vanilla {vanilla_accuracy:.3f})")
        if keeps(probs):
            best = n
    return plan_of(best), steps, None


def _operator_choice(scorer: Scorer, gains, options, dims, samples: CalibrationSet, target_cut: float, keeps, say):
    num_layers = gains.shape[0]
    empty = Plan.empty(num_layers)
    saved = np.array([[flops_cut(dims, Plan.from_layers(num_layers, {layer: o}), samples.visual_rows)
                       for o in options] for layer in range(num_layers)])
    candidates = sorted(((gains[layer, i] / saved[layer, i], layer, o) for layer in range(num_layers)
                         for i, o in enumerate(options) if saved[layer, i] > 0), key=lambda c: (c[0], c[1]))
    plan, cut, steps = empty, 0.0, []
    for ratio, layer, option in candidates:
        if cut >= target_cut:
            break
        trial = merged(plan, layer, option)
        if trial == plan:
            continue
        probs = scorer.log_probs(trial)
        kept = keeps(probs)
        trial_cut = flops_cut(dims, trial, samples.visual_rows)
        steps.append({"layer": layer, "option": option.value, "gain_per_cut": float(ratio), "kept": kept,
                      "accuracy": scorer.accuracy(probs), "flops_cut": trial_cut})
        say(f"layer {layer} {option.value}: {'kept' if kept else 'rejected'}, FLOPs cut {trial_cut:.1%}, "
            f"accuracy {scorer.accuracy(probs):.3f}")
        if kept:
            plan, cut = trial, trial_cut
    note = None if cut >= target_cut else (
        f"the candidates ran out at a {cut:.1%} FLOPs cut, short of the {target_cut:.0%} asked for, within the "
        "retention bar")
    return plan, steps, note


def heatmap_png(result: Calibration, title: str) -> bytes:
    """PNG: G(l, o) per layer (x) and option (y), log-coloured; the plan's choices marked."""
    import io

    from .flops.plot import require_matplotlib

    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.colors import LogNorm
    from matplotlib.figure import Figure

    values = np.maximum(result.gains.T, 1e-9)
    fig = Figure(figsize=(max(5.0, 0.45 * result.plan.num_layers + 2.5), 1.2 + 0.6 * len(result.options)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    image = ax.imshow(values, aspect="auto", cmap="viridis", norm=LogNorm(vmin=values.min(), vmax=values.max()))
    fig.colorbar(image, ax=ax, label="KL of the answer (G)")
    for layer, action in enumerate(result.plan.actions):
        for i, option in enumerate(result.options):
            if action is option:
                ax.text(layer, i, "x", ha="center", va="center", color="white", fontsize=9)
    ax.set_yticks(range(len(result.options)), [o.value for o in result.options], fontsize=8)
    ax.set_xticks(range(result.plan.num_layers), [str(i) for i in range(result.plan.num_layers)], fontsize=8)
    ax.set_xlabel("decoder layer (x: the plan's action)")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def calibrate_checkpoint(source: str, task: str, samples: int, method: str, *, seed: int = 0,
                         batch_size: int | None = None, progress: Callable[[str], None] | None = None,
                         **choice) -> tuple[Calibration, dict]:
    """:func:`calibrate` on ``samples`` validation samples of the testbed task's question
    type ``task`` (``all``: every type, for one shared plan), for the checkpoint SOURCE in
    PyTorch. Returns the calibration and what was calibrated (model, task, samples)."""
    from .evaluate import DEFAULT_BATCH, _checkpoint_side, check_counts, prepare
    from .testbed.tasks import QUESTION_TYPES, samples as draw

    if task != "all" and task not in QUESTION_TYPES:
        raise VskipError(f"unknown task {task!r}: choose a question type ({', '.join(QUESTION_TYPES)}) or all")
    batch_size = DEFAULT_BATCH if batch_size is None else batch_size
    check_counts(samples, batch_size)
    answers, dims, processor, image_token, family, layers, name = _checkpoint_side(source, None)
    loaded = answers["vanilla"].loaded
    types = QUESTION_TYPES if task == "all" else (task,)
    drawn = draw("validation", samples, seed, types)
    prepared = prepare(processor, drawn, image_token, batch_size)
    result = calibrate(loaded.family, loaded.model, dims, calibration_set(prepared), method, progress=progress,
                       **choice)
    return result, {"model": name, "family": family, "task": task, "split": "validation", "seed": seed}


def calibrate_data(source: str, files: Sequence, method: str, *, progress: Callable[[str], None] | None = None,
                   **choice) -> tuple[Calibration, dict]:
    """:func:`calibrate` on the model's own samples (``--data`` files, see :func:`data_set`)
    for the checkpoint SOURCE in PyTorch."""
    from .models.export import describe
    from .models.loading import load_model

    import inspect

    from .core.files import one_line

    loaded = load_model(source)
    dims = describe(loaded, 20, False, decode=False).dims()
    accepted = [name for name in inspect.signature(loaded.model.forward).parameters if name != "kwargs"]
    samples = data_set(list(files), loaded.family.image_token_id(loaded.config), loaded.text_config.vocab_size,
                       accepted, lambda ids, mask: loaded.family.model_kwargs(ids, mask, loaded.config))
    try:
        result = calibrate(loaded.family, loaded.model, dims, samples, method, progress=progress, **choice)
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        # Inputs that do not fit the model (an image of another size, a grid that does not
        # match the pixels) fail inside transformers: the user's data, not a vskip bug.
        raise VskipError(f"--data: the model fails on these inputs: {one_line(exc)}") from None
    return result, {"model": source, "family": loaded.family.model_type, "task": None,
                    "data": [str(f) for f in files]}
