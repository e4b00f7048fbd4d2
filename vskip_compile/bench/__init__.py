"""Side-by-side prefill benchmark: the vanilla graph against one compiled graph per plan,
on one or more backends.

    vskip bench out/q2/prefill.onnx --plan a.json --plan b.json --backend ort-cpu --backend torch

Everything runs in one process, every backend through the one interface of
:mod:`vskip_compile.backends` (never a case per backend name here):

1. the sidecar (``vskip.json`` beside the graph) gives the model's dimensions
   (:mod:`.inputs`);
2. each plan is compiled into its own graph, beside the source by default (sharing its
   external weights, removed afterwards), or into ``workdir`` (kept) (:mod:`.staging`);
   the vanilla graph is the source compiled with the empty plan, so the compiler's
   plan-independent rewrites (e.g. moved NaN guards) are in the baseline too;
3. every backend loads the vanilla graph and every compiled graph once, with a fixed
   thread count;
4. random inputs are made once, from the first backend's vanilla session inputs, over
   the prompt's visual-row mask (default 16 text + 1024 visual + 48 text rows)
   (:mod:`.workload`);
5. every config ("<backend>:<plan>") runs ``warmup`` times, then ``rounds`` rounds in
   which every config runs once, in an order that rotates between rounds (:mod:`.timing`).

Per config: median, min, max, p25, p75, IQR, mean of the timed rounds. Per plan and
backend: ``speedup`` = that backend's vanilla median / plan median; the paired speedup
(vanilla time / plan time within each round) with its median and spread;
``ideal_speedup`` = FLOPs(vanilla) / FLOPs(plan) (:mod:`.ideal`); ``realization`` =
(speedup - 1) / (ideal_speedup - 1), undefined (None) when the ideal speedup is 1. The
first backend's numbers sit at the top of each plan entry, every backend's under
``backends``, the first backend's time over each other's under ``ratios``. The result is
one JSON-ready dict (``format`` "vskip-bench", version 2) that feeds
:func:`format_table`, :func:`to_markdown` and the JSON report (:mod:`.report`). Timing
is measured, never judged here.
"""

from __future__ import annotations

import datetime
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..backends import DEFAULT, check_engines, check_feeds, engine_options, get_backend
from ..core.errors import VskipError
from ..core.files import Outputs, input_file, usable_cores
from ..core.plan import Plan
from ..core.sidecar import Sidecar
from .ideal import IDEAL_ANALYTIC, IDEAL_FLOPS_MODULE, IDEAL_GIVEN, IdealFn, analytic_ideal, ideal_speedups
from .inputs import is_compiled, load_plans, model_sidecar, recorded, sidecar_files
from .report import (action_counts, format_table, machine_info, peak_rss_mib, summarize, to_markdown,
                     versions)
from .staging import compile_plans, prepare
from .timing import VANILLA, Config, config_name, measure, paired_ratios, realization, round_order, stats
from .workload import (MAX_ROUNDS, MAX_ROWS, check_visual, config_feeds, default_visual, record,
                       synthesize_feeds)

FORMAT = "vskip-bench"
VERSION = 2
DEFAULT_WARMUP = 3
DEFAULT_ROUNDS = 10
DEFAULT_BACKENDS = (DEFAULT,)

__all__ = ["DEFAULT_BACKENDS", "DEFAULT_ROUNDS", "DEFAULT_WARMUP", "FORMAT", "IDEAL_ANALYTIC", "IDEAL_FLOPS_MODULE",
           "IDEAL_GIVEN", "MAX_ROUNDS", "MAX_ROWS", "VANILLA", "VERSION", "Config", "IdealFn", "analytic_ideal",
           "config_feeds", "default_threads", "default_visual", "format_table", "machine_info", "measure",
           "model_sidecar", "paired_ratios", "realization", "round_order", "run_bench", "stats", "summarize",
           "synthesize_feeds", "to_markdown", "versions"]


def default_threads() -> int:
    return usable_cores()


def run_bench(model: str | Path, plans: Sequence[str | Path | Plan], *, visual: np.ndarray | None = None,
              backends: Sequence[str] = DEFAULT_BACKENDS, threads: int | None = None,
              warmup: int = DEFAULT_WARMUP, rounds: int = DEFAULT_ROUNDS, workdir: str | Path | None = None,
              sidecar: Sidecar | str | Path | None = None, ideal: IdealFn | None = None, seed: int = 0,
              command: str | None = None, json_path: str | Path | None = None,
              markdown_path: str | Path | None = None, progress: Callable[[str], None] | None = None,
              clock: Callable[[], float] = time.perf_counter, compiled_graphs: Sequence[str | Path] = (),
              force: bool = False, causal_blocks: int = 0, routable: bool = False, engines: bool = False) -> dict:
    """Time MODEL.onnx against each plan's compiled graph on every backend; returns the
    JSON-ready result.

    ``visual``: the prompt's visual-row mask [S] (default :func:`default_visual`).
    ``backends``: registry names (:data:`vskip_compile.backends.BACKENDS`); the first is
    the base of the ``ratios`` and its random feeds' source. All are checked before any
    work, so one that cannot run here costs nothing.
    ``compiled_graphs`` are graphs vskip already compiled from MODEL.onnx (for instance by
    an earlier version, to measure a change of the compiler): each is timed as it is, under
    the plan it records, and left in place.
    ``ideal(plan, visual_mask, compiled_graph)`` gives ideal speedups; by default they are
    counted by ``vskip_compile.flops``, else the analytic formula (see
    :func:`.ideal.ideal_speedups`); the result's ``ideal_source`` says which was used.
    ``command`` is recorded as the command line (default: this process's argv).
    ``json_path`` / ``markdown_path``: where to write the result (checked before any work).
    ``force``: replace existing report files and, in ``workdir``, compiled graphs; never
    one of the inputs. ``causal_blocks``: compile the vanilla graph and every plan with
    that many causal blocks (``vskip-compile --causal-blocks``; 0: off).
    ``routable``: also compile MODEL once with ``--routable`` and time it fed the empty
    plan (config ``routable/vanilla``) and every plan (``routable/<plan>``); the result's
    ``routable`` block gives its overhead against the vanilla graph and each static graph.
    ``engines``: on the trt backend, every config's graph runs the engine `vskip build`
    wrote beside it (``GRAPH.engine``, checked to be built from that very graph) instead of
    one built in memory. The graphs compiled here are then those of a ``workdir`` from an
    earlier run (compiling is deterministic: the same plan gives the same bytes, so the
    engines built for them still match), or ``compiled_graphs``.
    """
    model = input_file(model, "ONNX model")
    threads = default_threads() if threads is None else threads
    for name, value, low, high in (("--threads", threads, 1, usable_cores()), ("--rounds", rounds, 1, MAX_ROUNDS),
                                   ("--warmup", warmup, 0, MAX_ROUNDS)):
        if type(value) is not int or not low <= value <= high:
            raise VskipError(f"{name} must be an integer in {low}-{high}, got {value}")
    visual = default_visual() if visual is None else check_visual(visual)
    from ..passes.causal_blocks import check_blocks  # onnx-graphsurgeon: not at start-up

    check_blocks(causal_blocks)
    if routable and causal_blocks:
        raise VskipError("--routable and --causal-blocks do not combine: a routable graph's query rows are inputs")
    check_engines(backends, engines)
    if engines and workdir is None:
        raise VskipError("--engines runs the engine built beside each graph, and the vanilla graph and every plan's are "
                         "compiled for this run: keep them with --workdir DIR, build an engine for each graph there "
                         "(vskip build), and run again with the same --workdir and --force")
    runners = _backends(backends)
    plan_files = [p for p in plans if not isinstance(p, Plan)]
    reports = Outputs([model, *plan_files, *compiled_graphs, *sidecar_files(model, sidecar)], force=force)
    for path in (json_path, markdown_path):
        if path is not None:
            reports.claim(path, "report")
    if is_compiled(model):
        raise VskipError(f"{model}: already compiled by vskip; bench the original graph, the plans are compiled here")
    info = model_sidecar(model, sidecar)
    dims = info.dims()
    given = [recorded(Path(g), info.num_layers) for g in compiled_graphs]
    loaded_plans = load_plans([*plans, *given], info)
    # The vanilla config is the source compiled with the empty plan: the plan-independent
    # passes (passes/nan_guard.py) change it as they change every plan's graph, so a
    # speedup is the skipping's alone.
    vanilla = (VANILLA, Plan.empty(info.num_layers), "")
    labels = [label for label, _, _ in [vanilla, *loaded_plans]] + ([ROUTABLE] if routable else [])
    staging = prepare(model, labels, [None] * (1 + len(plans)) + [g.path for g in given] + [None] * routable,
                      workdir, reports)
    to_compile = [vanilla, *loaded_plans] + ([(ROUTABLE, None, "")] if routable else [])

    with compile_plans(staging, to_compile, force=force, progress=progress,
                       causal_blocks=causal_blocks) as compiled:
        vanilla_graph, graphs = compiled[0], compiled[1:1 + len(loaded_plans)]
        # Before any timing, so a failing FLOPs counter costs no benchmark time.
        ideals, ideal_source = ideal_speedups(ideal, model, dims, loaded_plans, graphs, visual, progress)
        configs, descriptions, notes = _configs(runners, vanilla_graph, loaded_plans, graphs, visual, info, threads,
                                                seed, progress, engines)
        if routable:
            configs += _routed_configs(runners, compiled[-1], [vanilla, *loaded_plans], visual, info, threads, seed,
                                       progress, engines)
            ideals.update({routed_label(VANILLA): 1.0,
                           **{routed_label(label): ideals[label] for label, _, _ in loaded_plans}})
        measure(configs, warmup, rounds, clock, progress)

    rows, plan_rows, vanilla = summarize(configs, ideals)
    for entry, (label, plan, source) in zip(plan_rows, loaded_plans):
        entry.update(file=source, freeze_scope=plan.freeze_scope.value, actions=action_counts(plan))
    for entry in plan_rows[len(loaded_plans):]:
        entry.update(graph="routable")
    result = {
        "format": FORMAT, "version": VERSION,
        "command": command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": versions(), "backends": descriptions,
        "model": str(model), "vanilla_graph": VANILLA_GRAPH, "family": info.family, "num_layers": info.num_layers, "hidden_size": info.hidden_size,
        **record(visual),
        "inputs": notes, "causal_blocks": causal_blocks, "threads": threads, "warmup": warmup, "rounds": rounds,
        "order": "rotating: round r starts with config r mod k",
        "ideal_source": ideal_source,
        "peak_rss_mib": peak_rss_mib(),
        "vanilla": vanilla,
        "plans": plan_rows, "configs": rows,
    }
    if routable:
        result["routable"] = routable_overheads(configs, [VANILLA, *(label for label, _, _ in loaded_plans)])
    with reports:
        if json_path is not None:
            reports.write_text(json_path, json.dumps(result, indent=2) + "\n")
        if markdown_path is not None:
            reports.write_text(markdown_path, to_markdown(result))
        reports.commit()
    return result


VANILLA_GRAPH = "the source compiled with the empty plan"


def _backends(names: Sequence[str]) -> list:
    """The backends called ``names``, each able to run here, none twice."""
    if isinstance(names, str):
        names = [names]
    if not names:
        raise VskipError(f"no backend to time on; give at least one --backend (e.g. {DEFAULT})")
    seen: list[str] = []
    for name in names:
        if name in seen:
            raise VskipError(f"--backend {name} is given twice; each backend is timed once")
        seen.append(name)
    return [get_backend(name) for name in names]


def _configs(runners: list, vanilla_graph: Path, plans: list[tuple[str, Plan, str]], graphs: list[Path],
             visual: np.ndarray, info: Sidecar, threads: int, seed: int,
             progress, engines: bool = False) -> tuple[list[Config], list[dict], dict]:
    """One config per backend and graph (the vanilla graph first), every session loaded
    once; the shared feeds come from the first backend's vanilla session."""
    configs, descriptions = [], []
    base = notes = None
    for backend in runners:
        if progress:
            progress(f"loading {1 + len(graphs)} graphs on {backend.name} ({threads} threads)")
        for label, graph in [(VANILLA, vanilla_graph), *((label, g) for (label, _, _), g in zip(plans, graphs))]:
            session = backend.load(graph, threads=threads, sidecar=info, progress=progress,
                                   **engine_options(backend, graph, engines))
            if base is None:
                base, notes = synthesize_feeds(session.inputs, visual, info.hidden_size, seed)
            if label == VANILLA:
                descriptions.append(session.description.to_dict())
            feeds = check_feeds(session.inputs, config_feeds(session.inputs, base, visual, str(graph)))
            configs.append(Config(config_name(backend.name, label), backend.name, label,
                                  _timed(session, feeds), str(graph)))
    return configs, descriptions, notes


ROUTABLE = "routable"


def routed_label(label: str) -> str:
    """The config label of the routable graph fed ``label``'s plan."""
    return f"{ROUTABLE}/{label}"


def routable_overheads(configs: list[Config], labels: list[str]) -> dict:
    """Per backend and plan: the routable graph's median over the static graph's (the
    vanilla graph for the empty plan), less 1; and the same from the paired rounds."""
    by_key = {(c.backend, c.plan): c for c in configs}
    out: dict = {}
    for (backend, label), config in by_key.items():
        if label.startswith(f"{ROUTABLE}/"):
            continue
        routed = by_key.get((backend, routed_label(label)))
        if routed is None:
            continue
        paired = [r / s for r, s in zip(routed.times, config.times)]
        out.setdefault(backend, {})[label] = {
            "static_median_s": stats(config.times)["median"], "routable_median_s": stats(routed.times)["median"],
            "overhead": stats(routed.times)["median"] / stats(config.times)["median"] - 1,
            "paired_overhead": stats(paired)["median"] - 1}
    return out


def _routed_configs(runners: list, graph: Path, plans: list[tuple[str, Plan, str]], visual: np.ndarray,
                    info: Sidecar, threads: int, seed: int, progress, engines: bool = False) -> list[Config]:
    """The routable graph, loaded once per backend, fed every plan (the vanilla one first)."""
    from ..core.routing import is_routing_input, routing_feeds

    configs = []
    for backend in runners:
        session = backend.load(graph, threads=threads, sidecar=info, progress=progress,
                               **engine_options(backend, graph, engines))
        base, _ = synthesize_feeds([s for s in session.inputs if not is_routing_input(s.name)], visual,
                                   info.hidden_size, seed)
        names = [s.name for s in session.inputs if is_routing_input(s.name)]
        plain = [s for s in session.inputs if not is_routing_input(s.name)]
        for label, plan, _ in plans:
            feeds = config_feeds(plain, base, visual, str(graph))
            feeds.update(routing_feeds(plan, visual, names))
            configs.append(Config(config_name(backend.name, routed_label(label)), backend.name,
                                  routed_label(label), _timed(session, check_feeds(session.inputs, feeds)),
                                  f"{graph} (routable)"))
    return configs


def _timed(session, feeds: dict) -> Callable[[], object]:
    def run():
        return session.infer(feeds)

    return run
