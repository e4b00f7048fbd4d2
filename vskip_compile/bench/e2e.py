"""``vskip bench --e2e``: whole generations, stage by stage, vanilla against plans.

Every config generates ``max_new_tokens`` tokens (EOS ignored, so every config decodes
as many steps) for the same model inputs: from a .npz of the model's inputs, or from text
prompts and image files run through the export's processor before every generation (its
seconds are the processor stage, part of the first token). The configs are, per backend:

- an ONNX backend (``ort-cpu``, ...): :class:`~vskip_compile.runtime.generate.Runtime` on
  the export, with the vanilla prefill and with each plan's compiled prefill;
- ``torch``: transformers' own ``generate`` on the model in PyTorch eager, vanilla, and
  with each plan applied to its prefill by :func:`~vskip_compile.models.skipping.skip_rows`
  (only the live rows computed: what PyTorch's seconds on the plan are). Its stages come
  from forward hooks: vision from the vision tower's, the first token when the first
  forward of the model ends, decode from there to the last.

Warm-up generations, then rounds in which every config runs once, in an order that
rotates between rounds (these VMs run the first iterations 2-3x slower). Reported per
config: the medians of each stage; per plan: the time-to-first-token speedup, and the
ideal one: processor and vision unchanged, the prefill's share shrunk by the plan's FLOPs
ratio (``(processor + vision + prefill) / (processor + vision + prefill / ideal_prefill)``),
measured on the vanilla config's own stage times, and the share realized.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..core.errors import VskipError
from ..core.files import Outputs, read_npz
from ..core.plan import Plan
from .ideal import analytic_ideal
from .inputs import load_plans, model_sidecar
from .staging import compile_plans, prepare
from .timing import round_order, stats

VANILLA = "vanilla"
STAGES = ("processor_s", "vision_s", "prefill_s", "first_token_s", "decode_s", "decode_tokens_per_s", "total_s")
ONNX_BACKENDS = ("ort-cpu", "ort-cuda", "ort-trt", "onnx-ref", "trt")


@dataclass
class E2EConfig:
    name: str
    backend: str
    plan: str
    run: Callable[[], dict]
    samples: list[dict] = field(default_factory=list)

    def medians(self) -> dict:
        return {k: stats([s[k] for s in self.samples if s.get(k) is not None])["median"]
                for k in STAGES if any(s.get(k) is not None for s in self.samples)}


class PromptSource:
    """Each generation's model inputs: a .npz read once (no processor stage), or the
    export's processor run on ``prompts`` and ``images`` every time (timed)."""

    def __init__(self, directory: Path, sidecar, inputs_path: str | Path | None, prompts: Sequence[str] = (),
                 images: Sequence[str] = ()):
        if (inputs_path is None) == (not prompts):
            raise VskipError("--e2e needs the prompt either as --inputs MODEL_INPUTS.npz or as --prompt TEXT "
                             "(with --image IMG)")
        if inputs_path is not None and images:
            raise VskipError("--image goes with --prompt; with --inputs the pixels are in the .npz")
        self.prompts, self.images = list(prompts), list(images)
        self.fixed = read_npz(inputs_path) if inputs_path is not None else None
        self.processor = None
        if self.fixed is None:
            from ..runtime.processor import load_processor

            self.processor = load_processor(directory, sidecar)
            if self.processor is None:
                raise VskipError(f"{directory}: the export has no processor files, so it cannot read a text "
                                 "prompt; pass the model's inputs with --inputs MODEL_INPUTS.npz")
        self.sample, _ = self()  # also refuses a bad prompt or image before anything is timed

    def __call__(self) -> tuple[dict, float | None]:
        """The model's inputs and the processor's seconds (None: no processor ran)."""
        if self.fixed is not None:
            return self.fixed, None
        from ..runtime.processor import processor_inputs

        return processor_inputs(self.processor, self.prompts, self.images)


def _with_processor(timings: dict, seconds: float | None) -> dict:
    """A generation's stage times with the processor's before them (it delays the first token)."""
    if seconds is None:
        return {**timings, "processor_s": None}
    return {**timings, "processor_s": seconds, "first_token_s": timings["first_token_s"] - timings["processor_s"]
            + seconds, "total_s": timings["total_s"] - timings["processor_s"] + seconds}


def run_e2e(model: str | Path, plans: Sequence[str | Path], inputs_path: str | Path | None = None, *,
            prompts: Sequence[str] = (), images: Sequence[str] = (), backends: Sequence[str] = ("ort-cpu", "torch"), max_new_tokens: int = 32, warmup: int = 1,
            rounds: int = 5, threads: int | None = None, workdir: str | Path | None = None, force: bool = False,
            progress: Callable[[str], None] | None = None) -> dict:
    """Time whole generations on the export that ``model`` (its prefill.onnx) belongs to,
    for the model inputs in ``inputs_path`` or for ``prompts`` with ``images``."""
    model = Path(model)
    sidecar = model_sidecar(model, None)
    loaded_plans = load_plans(list(plans), sidecar)
    source = PromptSource(model.parent, sidecar, inputs_path, prompts, images)
    inputs = source.sample
    if warmup < 0 or rounds < 1:
        raise VskipError("--warmup must be >= 0 and --rounds >= 1")
    unknown = [b for b in backends if b != "torch" and b not in ONNX_BACKENDS]
    if unknown:
        raise VskipError(f"--e2e runs on {', '.join(ONNX_BACKENDS)} or torch, not {', '.join(unknown)}")
    outputs = Outputs([model, *([inputs_path] if inputs_path is not None else images), *plans], force=force)
    staging = prepare(model, [label for label, _, _ in loaded_plans], [None] * len(loaded_plans), workdir, outputs)
    with outputs, compile_plans(staging, loaded_plans, force=force, progress=progress) as graphs, \
            contextlib.ExitStack() as stack:
        configs: list[E2EConfig] = []
        for backend in backends:
            if backend == "torch":
                configs += _torch_configs(sidecar, loaded_plans, source, max_new_tokens, threads, progress, stack)
            else:
                configs += _runtime_configs(model.parent, backend, loaded_plans, graphs, source, max_new_tokens,
                                            threads, progress)
        for index in range(warmup + rounds):
            for position in round_order(len(configs), index):
                config = configs[position]
                sample = config.run()
                if index >= warmup:
                    config.samples.append(sample)
                if progress:
                    label = f"warm-up {index + 1}" if index < warmup else f"round {index - warmup + 1}/{rounds}"
                    progress(f"{label}: {config.name} first token {sample['first_token_s']:.3f} s, "
                             f"total {sample['total_s']:.3f} s")
    visual = _visual_rows(inputs, sidecar.image_token_id)
    ideal = analytic_ideal(sidecar.dims())
    return _summary(configs, {label: float(ideal(plan, visual)) for label, plan, _ in loaded_plans},
                    loaded_plans, max_new_tokens, warmup, rounds, inputs, visual, source.processor is not None)


def _visual_rows(inputs: dict, image_token_id: int) -> np.ndarray:
    ids = np.asarray(inputs.get("input_ids"))
    if ids.ndim != 2:
        raise VskipError("the inputs' input_ids must be [batch, length]")
    return ids[0] == image_token_id


def _runtime_configs(directory: Path, backend: str, plans, graphs, source, new_tokens, threads, progress):
    from ..runtime.generate import Runtime

    configs = []
    for label, graph in [(VANILLA, None), *((p[0], g) for p, g in zip(plans, graphs))]:
        runtime = Runtime(directory, compiled=graph, backend=backend, threads=threads, progress=progress)

        def run(runtime=runtime):
            inputs, processing = source()
            timings = runtime.generate(inputs, max_new_tokens=new_tokens, ignore_eos=True).timings.to_dict()
            return _with_processor(timings, processing)

        configs.append(E2EConfig(f"{backend}:{label}", backend, label, run))
    return configs


def _torch_configs(sidecar, plans, source, new_tokens, threads, progress, stack):
    import torch

    from ..models.loading import load_model
    from ..models.reference import plan_on_prefill

    if threads:
        torch.set_num_threads(threads)
    if progress:
        progress(f"loading {sidecar.source} for PyTorch ({sidecar.float_type})")
    loaded = load_model(sidecar.source, seed=sidecar.seed or 0, dtype=sidecar.float_type)
    visual = torch.from_numpy(np.asarray(source.sample["input_ids"]) == sidecar.image_token_id)
    clock = _StageClock(loaded)
    stack.callback(clock.remove)

    def generate(plan: Plan | None):
        def run():
            inputs, processing = source()
            feeds = {k: torch.from_numpy(np.asarray(v)) for k, v in inputs.items()}
            clock.reset()
            start = time.perf_counter()
            with torch.no_grad(), (plan_on_prefill(loaded.family, loaded.model, plan, visual, live_rows_only=True)
                                   if plan is not None else contextlib.nullcontext()):
                loaded.model.generate(**feeds, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                      do_sample=False, num_beams=1)
            return _with_processor(clock.timings(start), processing)
        return run

    return [E2EConfig(f"torch:{label}", "torch", label, generate(plan))
            for label, plan in [(VANILLA, None), *((p[0], p[1]) for p in plans)]]


class _StageClock:
    """Forward hooks that time a transformers ``generate``: the vision tower's calls, and
    the end of every forward of the whole model (the first one is the first token)."""

    def __init__(self, loaded):
        self.handles = []
        tower = _vision_tower(loaded.model)
        if tower is not None:
            self.handles += [tower.register_forward_pre_hook(lambda *a: self._mark("vision_start")),
                             tower.register_forward_hook(lambda *a: self._mark("vision_end"))]
        self.handles.append(loaded.model.register_forward_hook(lambda *a: self.ends.append(time.perf_counter())))
        self.reset()

    def _mark(self, key: str) -> None:
        self.marks.setdefault(key, time.perf_counter())

    def reset(self) -> None:
        self.marks: dict[str, float] = {}
        self.ends: list[float] = []

    def timings(self, start: float) -> dict:
        vision = self.marks.get("vision_end", 0.0) - self.marks.get("vision_start", 0.0)
        first, last = self.ends[0] - start, self.ends[-1] - start
        steps = len(self.ends) - 1
        return {"processor_s": 0.0, "vision_s": vision, "prefill_s": first - vision, "first_token_s": first,
                "decode_s": last - first, "decode_steps": steps,
                "decode_tokens_per_s": steps / (last - first) if steps and last > first else None, "total_s": last}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


def _vision_tower(model):
    """The module the full model calls to encode pixels, by the attribute transformers
    gives it in each family (``visual``, ``vision_tower``, ``vision_model``)."""
    inner = getattr(model, "model", model)
    for name in ("visual", "vision_tower", "vision_model"):
        module = getattr(inner, name, None)
        if module is not None:
            return module
    return None


def _summary(configs, ideals, plans, new_tokens, warmup, rounds, inputs, visual, processed: bool) -> dict:
    from .report import machine_info, versions

    rows = [{"config": c.name, "backend": c.backend, "plan": c.plan, **c.medians()} for c in configs]
    by_name = {c.name: c for c in configs}
    speedups = []
    for config in configs:
        if config.plan == VANILLA:
            continue
        vanilla = by_name[f"{config.backend}:{VANILLA}"].medians()
        planned = config.medians()
        ideal_prefill = ideals[config.plan]
        before = vanilla.get("processor_s", 0.0) + vanilla["vision_s"]
        ideal_first = (before + vanilla["prefill_s"]) / (before + vanilla["prefill_s"] / ideal_prefill)
        measured = vanilla["first_token_s"] / planned["first_token_s"]
        speedups.append({"config": config.name, "first_token_speedup": measured,
                         "ideal_first_token_speedup": ideal_first, "ideal_prefill_speedup": ideal_prefill,
                         "share_of_ideal": measured / ideal_first,
                         "total_speedup": vanilla["total_s"] / planned["total_s"]})
    return {"kind": "e2e", "max_new_tokens": new_tokens, "warmup": warmup, "rounds": rounds,
            "prompt": {"rows": int(visual.size), "visual_rows": int(visual.sum()),
                       "batch": int(np.asarray(inputs["input_ids"]).shape[0]), "through_processor": processed},
            "plans": {label: source for label, _, source in plans},
            "configs": rows, "speedups": speedups, "machine": machine_info(), "versions": versions()}


def format_e2e(result: dict) -> str:
    """The result as a table: a row per config, then a line per plan."""
    header = (f"{'config':<36} {'processor':>10} {'vision':>9} {'prefill':>9} {'1st token':>10} {'decode':>9} "
              f"{'tok/s':>8} {'total':>9}")
    lines = [header]
    for row in result["configs"]:
        def ms(key):
            return f"{row[key] * 1000:8.1f}ms" if key in row else f"{'-':>10}"
        rate = f"{row['decode_tokens_per_s']:8.1f}" if "decode_tokens_per_s" in row else f"{'-':>8}"
        lines.append(f"{row['config']:<36} {ms('processor_s'):>10} {ms('vision_s')} {ms('prefill_s')} "
                     f"{ms('first_token_s'):>10} "
                     f"{ms('decode_s')} {rate} {ms('total_s')}")
    for s in result["speedups"]:
        lines.append(f"{s['config']}: first token {s['first_token_speedup']:.3f}x (ideal {s['ideal_first_token_speedup']:.3f}x "
                     f"from the prefill's {s['ideal_prefill_speedup']:.3f}x: {s['share_of_ideal']:.1%} of it), "
                     f"end to end {s['total_speedup']:.3f}x")
    prompt = result["prompt"]
    source = "through the processor" if prompt.get("through_processor") else "pre-tokenized (no processor stage)"
    lines.append(f"{prompt['batch']} prompt(s) {source} of {prompt['rows']} rows ({prompt['visual_rows']} visual), "
                 f"{result['max_new_tokens']} new tokens, medians of {result['rounds']} rounds after "
                 f"{result['warmup']} warm-up")
    return "\n".join(lines)
