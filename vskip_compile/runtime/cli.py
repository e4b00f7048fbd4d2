"""``vskip generate``: the command around :class:`~.generate.Runtime`."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import numpy as np

from ..core.errors import VskipError
from ..core.files import check_threads, read_npz
from ..core.visual_rows import format_ranges
from .generate import Generation, Runtime, compiled_on_the_fly
from .processor import load_processor, processor_inputs


def generate_command(args, progress) -> int:
    from ..cli import Report

    if (args.inputs is None) == (args.prompt is None):
        raise VskipError("give the prompt either as --prompt TEXT (with --image IMG) or as --inputs MODEL_INPUTS.npz")
    if args.inputs is not None and args.image:
        raise VskipError("--image goes with --prompt; with --inputs the pixels are in the .npz")
    threads = check_threads(args.threads)
    report = Report(args.json, [args.inputs, args.compiled, args.plan, *args.image], args.force)
    quiet = report.to_stdout
    say = (lambda message: None) if quiet else progress
    routes = _routes(args)
    with contextlib.ExitStack() as stack:
        compiled = args.compiled
        if args.plan is not None and compiled is None:
            if args.engines:
                raise VskipError("--engines with --plan: the plan is compiled for this run and has no engine; "
                                 "compile it (vskip-compile), build it (vskip build) and pass --compiled GRAPH.onnx")
            compiled = stack.enter_context(compiled_on_the_fly(args.export, args.plan, say))
        runtime = Runtime(args.export, compiled=compiled, backend=args.backend, threads=threads,
                          engines=args.engines)
        plan = _run_time_plan(args, runtime, routes)
        processor = load_processor(runtime.directory, runtime.sidecar)
        if args.inputs is not None:
            inputs, processing = read_npz(args.inputs), 0.0
        else:
            if processor is None:
                raise VskipError(f"{args.export}: the export has no processor files, so it cannot read a text prompt; "
                                 "pass the model's inputs with --inputs MODEL_INPUTS.npz")
            inputs, processing = processor_inputs(processor, args.prompt, args.image)
        batch = np.shape(inputs.get("input_ids", np.zeros((0, 0))))[0] if "input_ids" in inputs else 0
        stream = _Stream(processor, quiet or batch != 1)
        if runtime.plan_description:
            say(f"plan: {runtime.plan_description}")
        result = runtime.generate(inputs, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                                  top_p=args.top_p, seed=args.seed, span=args.span, on_token=stream.token, plan=plan)
        result.timings.processor = processing
        stream.end()
    result.text = _texts(processor, result)
    if not quiet:
        rows = "span of the image tokens" if args.span else "the image tokens"
        say(f"visual rows ({rows}): {format_ranges(result.visual_rows[0])}" if result.visual_rows.any()
            else "no visual rows")
        if batch != 1:
            for b, tokens in enumerate(result.token_ids):
                print(f"[{b}] {result.text[b] if result.text else ' '.join(map(str, tokens))}")
        if args.profile:
            print(_profile_table(result))
    report.emit(_report(result, runtime, args))
    return 0


def task_plans(items: list[str]) -> dict[str, str]:
    """--plan-for TASK=PLAN.json pairs as a dict, refused in one line when malformed."""
    routes = {}
    for item in items:
        task, sep, path = item.partition("=")
        if not sep or not task or not path:
            raise VskipError(f"--plan-for {item}: give TASK=PLAN.json")
        if task in routes:
            raise VskipError(f"--plan-for: task {task!r} is given twice")
        routes[task] = path
    return routes


def _routes(args) -> dict[str, str]:
    """--plan-for pairs, checked against the other options before anything loads."""
    routes = task_plans(args.plan_for)
    if routes and args.plan is not None:
        raise VskipError("give --plan or --plan-for, not both")
    if routes and args.compiled is None:
        raise VskipError("--plan-for routes requests through a routable prefill: compile one with "
                         "vskip-compile --routable and pass it as --compiled")
    if args.task is not None and not routes:
        raise VskipError("--task chooses among --plan-for plans; give them")
    if routes and args.task is None:
        raise VskipError(f"--plan-for needs --task, one of {', '.join(routes)}")
    if routes and args.task not in routes:
        raise VskipError(f"--task {args.task}: no --plan-for plan for it (have {', '.join(routes)})")
    return routes


def _run_time_plan(args, runtime: Runtime, routes: dict[str, str]):
    """The plan a routable prefill applies to this request, or None."""
    from ..core.plan import load_plan

    path = routes.get(args.task) if routes else (args.plan if args.compiled is not None else None)
    if runtime.routable_layers is None:
        if path is not None:
            raise VskipError(f"{args.compiled}: not a routable graph, so it applies its own plan; --plan with "
                             "--compiled needs one from vskip-compile --routable")
        return None
    if path is None:
        return None
    plan, info = load_plan(path)
    info.check_model(runtime.sidecar.family, runtime.sidecar.num_layers)
    return plan


class _Stream:
    """Prints a single prompt's new tokens as they come: text where there is a tokenizer."""

    def __init__(self, processor, silent: bool):
        self.tokenizer = getattr(processor, "tokenizer", None)
        self.silent = silent
        self.tokens: list[int] = []
        self.shown = ""

    def token(self, row: int, token: int) -> None:
        if self.silent:
            return
        self.tokens.append(token)
        if self.tokenizer is None:
            sys.stdout.write(("" if len(self.tokens) == 1 else " ") + str(token))
        else:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=True)
            sys.stdout.write(text[len(self.shown):])
            self.shown = text
        sys.stdout.flush()

    def end(self) -> None:
        if not self.silent and self.tokens:
            sys.stdout.write("\n")


def _texts(processor, result: Generation) -> list[str] | None:
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is None:
        return None
    return [tokenizer.decode(tokens, skip_special_tokens=True) for tokens in result.token_ids]


def _profile_table(result: Generation) -> str:
    t = result.timings
    rate = f"{t.tokens_per_second:.1f} tokens/s" if t.tokens_per_second else "-"
    lines = [("processor", t.processor), ("vision", t.vision), ("prefill", t.prefill),
             ("first token", t.first_token), (f"decode ({t.steps} steps, {rate})", t.decode),
             ("total", t.first_token + t.decode)]
    return "\n".join(f"{name:<32} {seconds * 1000:10.1f} ms" for name, seconds in lines)


def _report(result: Generation, runtime: Runtime, args) -> dict:
    data = {"export": str(Path(args.export)), "backend": str(runtime.prefill.description),
            "token_ids": result.token_ids, "timings": result.timings.to_dict(),
            "visual_rows": [format_ranges(row) if row.any() else "" for row in result.visual_rows],
            "span": bool(args.span), "plan": result.plan}
    if result.text is not None:
        data["text"] = result.text
    return data
