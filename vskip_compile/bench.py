"""Side-by-side prefill benchmark: the vanilla graph against one compiled graph per plan.

    vskip bench out/q2/prefill.onnx --plan a.json --plan b.json --json bench.json

Everything runs in one process on ONNX Runtime CPU (and, with ``torch=True``, on the
PyTorch skip reference too):

1. the sidecar (``vskip.json`` beside the graph) gives the model's dimensions;
2. each plan is compiled into its own graph (beside the source by default, so external
   weights are shared, and removed afterwards; into ``workdir`` when given, and kept);
3. one ONNX Runtime session per graph is created once, with a fixed intra-op thread count;
4. random inputs are made once: ``inputs_embeds`` [1, S, hidden], a ones mask, arange
   positions ([1, S], or [3, 1, S] for M-RoPE) and the family extras it can make; the
   sequence is ``P`` text rows, ``V`` visual rows, then the remaining text rows;
5. every config runs ``warmup`` times, then ``rounds`` rounds in which every config runs
   once. The order rotates by one config per round (round r starts with config r mod k),
   so the slow first iterations of these VMs and any drift of the machine hit every
   config alike, and each config is timed right next to the vanilla graph.

Per config: median, min, max, p25, p75, IQR, mean of the timed rounds. Per plan:
``speedup`` = vanilla median / plan median; the paired speedup (vanilla time / plan time
within each round) with its median and spread; ``ideal_speedup`` = FLOPs(vanilla) /
FLOPs(plan); ``realization`` = (speedup - 1) / (ideal_speedup - 1), undefined (None) when
the ideal speedup is 1. The result is one JSON-ready dict (``format`` "vskip-bench"); the
same dict feeds :func:`format_table`, :func:`to_markdown` and the JSON report, so a
saved JSON file can be turned into a table later. Timing is measured, never judged here.

The PyTorch configs run the skip reference, which computes every row and zeroes the
skipped rows' updates with hooks: its plan timings show the hooks' cost, not a skip
speedup, and serve as the absolute baseline for ONNX Runtime (``ort_over_torch``).
Rounds that are a multiple of the number of configs put every config in every place of
the order equally often (the defaults: 10 rounds, 5 or 10 configs).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

import numpy as np

from . import __version__
from .errors import VskipError
from .files import (Outputs, check_directory, input_file, output_directory, register_temp, release_temp,
                    usable_cores)
from .plan import Action, FreezeScope, Plan, load_plan
from .sidecar import DIM_FIELDS  # the fields the FLOPs formula needs (vskip export writes them all)
from .visual_rows import ROW_INPUTS, row_feeds

FORMAT = "vskip-bench"
VERSION = 1
DEFAULT_VISUAL_ROWS = 1024
DEFAULT_TEXT_ROWS = 64
DEFAULT_WARMUP = 3
DEFAULT_ROUNDS = 10
VANILLA = "vanilla"

IDEAL_GIVEN = "given by the caller"
IDEAL_FLOPS_MODULE = "vskip_compile.flops (matrix products counted on the vanilla graph, those the plan skips removed)"
IDEAL_ANALYTIC = "analytic formula (DESIGN.md section 6) from the sidecar dims"

# An ideal speedup: (plan, visual-row mask [S], the plan's compiled graph) -> FLOPs ratio.
IdealFn = Callable[[Plan, np.ndarray, Path], float]


# ----------------------------------------------------------------------------- workload

# Bounds on a benchmark's size, checked before anything is allocated: the prompt's rows
# (its embeddings alone are rows x hidden floats) and the timed repetitions.
MAX_ROWS = 2**17
MAX_ROUNDS = 10_000


def layout(visual_rows: int, text_rows: int, prefix_rows: int | None = None) -> np.ndarray:
    """Visual-row mask [S]: ``prefix_rows`` text rows, the visual block, the other text rows.

    The default prefix is a quarter of the text rows (a chat template's system and user
    header); at least one text row always follows the image, as a question would, and
    as ``freeze_scope`` ``prefix_through_visual`` needs.
    """
    if not 0 <= visual_rows <= MAX_ROWS:
        raise VskipError(f"--visual-rows must be in 0-{MAX_ROWS}, got {visual_rows}")
    if not 1 <= text_rows <= MAX_ROWS:
        raise VskipError(f"--text-rows must be in 1-{MAX_ROWS} (a prompt needs a text row after the image), "
                         f"got {text_rows}")
    prefix = text_rows // 4 if prefix_rows is None else prefix_rows
    if not 0 <= prefix < text_rows:
        raise VskipError(f"the text prefix must be 0 to {text_rows - 1} rows (one text row must follow "
                         f"the image), got {prefix}")
    mask = np.zeros(visual_rows + text_rows, dtype=bool)
    mask[prefix:prefix + visual_rows] = True
    return mask


_ORT_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
               "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(bool)": np.bool_}


@dataclass(frozen=True)
class GraphInput:
    """What the input synthesiser needs to know about one graph input."""

    name: str
    shape: tuple            # ints for fixed axes, strings or None for dynamic ones
    dtype: type


def graph_inputs(session) -> list[GraphInput]:
    return [GraphInput(i.name, tuple(i.shape), _ORT_DTYPES.get(i.type, object)) for i in session.get_inputs()]


def synthesize_feeds(inputs: list[GraphInput], visual: np.ndarray, hidden_size: int,
                     seed: int = 0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """Random prefill feeds for a batch of one over the rows of ``visual``.

    Returns the feeds and a note per input saying what it holds (for the report). The
    row inputs of compiled graphs are left out (see :func:`config_feeds`); any other
    input this cannot make is refused by name.
    """
    rng = np.random.default_rng(seed)
    length = int(visual.shape[0])
    positions = np.arange(length, dtype=np.int64)
    feeds, notes, unknown = {}, {}, []
    for spec in inputs:
        name, rank = spec.name, len(spec.shape)
        if name in ROW_INPUTS:
            continue
        if name == "inputs_embeds":
            feeds[name] = rng.standard_normal((1, length, hidden_size)).astype(spec.dtype)
            notes[name] = f"standard normal [1, {length}, {hidden_size}]"
        elif name == "attention_mask":
            feeds[name] = np.ones((1, length), dtype=spec.dtype)
            notes[name] = "ones"
        elif name == "position_ids" and rank in (2, 3):
            # Text-style positions on every M-RoPE axis: the rotation costs the same
            # whatever the values, and a benchmark needs no image grid.
            shape = (1, length) if rank == 2 else (spec.shape[0] if isinstance(spec.shape[0], int) else 3, 1, length)
            feeds[name] = np.broadcast_to(positions, shape).astype(spec.dtype)
            notes[name] = f"arange {list(shape)}"
        elif name == "visual_pos_masks":  # Qwen3-VL: where DeepStack features are added
            feeds[name] = visual[None, :].copy()
            notes[name] = "the visual rows"
        elif name == "deepstack_visual_embeds" and rank == 3 and isinstance(spec.shape[0], int):
            feeds[name] = rng.standard_normal((spec.shape[0], int(visual.sum()), hidden_size)).astype(spec.dtype)
            notes[name] = f"standard normal [{spec.shape[0]}, {int(visual.sum())}, {hidden_size}]"
        elif name in ("full_attention_mask", "sliding_attention_mask") and rank == 4:
            # Gemma3's prepared masks. The sliding window is not in the sidecar; a dense
            # masked attention costs the same whatever the mask holds, so causal stands in.
            feeds[name] = np.tril(np.ones((length, length), dtype=bool))[None, None]
            notes[name] = "causal (no sliding window: dense attention costs the same)"
        else:
            unknown.append(f"{name} {list(spec.shape)}")
    if unknown:
        raise VskipError(f"cannot synthesise the graph input(s) {', '.join(unknown)}; bench makes "
                         "inputs_embeds, attention_mask, position_ids and the Qwen3-VL / Gemma3 extras")
    return feeds, notes


def config_feeds(inputs: list[GraphInput], base: dict[str, np.ndarray], visual: np.ndarray) -> dict:
    """Exactly one graph's feeds: the shared random inputs plus its row inputs."""
    rows = [i.name for i in inputs if i.name in ROW_INPUTS]
    feeds = {i.name: base[i.name] for i in inputs if i.name not in ROW_INPUTS}
    feeds.update(row_feeds(visual, rows))
    return feeds


# ----------------------------------------------------------------------------- FLOPs

def analytic_flops(dims: dict, plan: Plan, visual: np.ndarray) -> float:
    """Prefill FLOPs of a plan by DESIGN.md section 6, with live-row counts per layer.

    Per layer with n rows, q attention-live rows and f FFN-live rows (multiply-add = 2):
    K/V projections 2n * 2 d d_kv (every row, always), Q/O projections 2q * 2 d d_q,
    scores and weighted sum 4 q n d_q (live queries against every key), SwiGLU FFN
    6 f d m; plus the LM head on the last row (every row with ``logits`` "all").
    d_q = heads x head_dim (= d for the families here, as the formula assumes).
    """
    n = int(visual.shape[0])
    d, m = dims["hidden_size"], dims["intermediate_size"]
    d_q = dims["num_attention_heads"] * dims["head_dim"]
    d_kv = dims["num_key_value_heads"] * dims["head_dim"]
    visual_count = int(visual.sum())
    # prefix_through_visual freeze layers leave every row up to the last visual one.
    through_last = int(np.flatnonzero(visual)[-1]) + 1 if visual_count else 0
    total = 0.0
    for action in plan.actions:
        skipped = (through_last if action is Action.FREEZE and plan.freeze_scope is FreezeScope.PREFIX_THROUGH_VISUAL
                   else visual_count)
        q = n - skipped if action.skips_attention else n
        f = n - skipped if action.skips_ffn else n
        total += 2 * n * 2 * d * d_kv + 2 * q * 2 * d * d_q + 4 * q * n * d_q + 6 * f * d * m
    head_rows = n if dims.get("logits") == "all" else 1
    return total + 2 * head_rows * d * dims.get("vocab_size", 0)


def analytic_ideal(dims: dict) -> IdealFn:
    def ideal(plan: Plan, visual: np.ndarray, graph: Path | None = None) -> float:
        return analytic_flops(dims, Plan.empty(plan.num_layers), visual) / analytic_flops(dims, plan, visual)

    return ideal


def _flops_module_ideal(model: Path) -> IdealFn | None:
    """FLOPs counted on the vanilla graph by ``vskip_compile.flops`` over those the plan
    requires (``flops.plan_flops``), when that module is installed, else None. The one place
    that knows its calling convention. Not the compiled graph's own count: work a compiled
    graph does beyond the plan is overhead the measured speedup has to pay for.
    """
    try:
        from . import flops
    except ImportError:
        return None
    vanilla: dict = {}  # one count of the vanilla graph per layout

    def count(graph: Path, visual: np.ndarray):
        where = np.flatnonzero(visual)
        suffix = int(visual.size - where[-1] - 1) if where.size else int(visual.size)
        return flops.count_flops(graph, sequence_length=int(visual.size), visual_rows=int(where.size),
                                 suffix_rows=suffix)

    def ideal(plan: Plan, visual: np.ndarray, graph: Path) -> float:
        key = visual.tobytes()
        if key not in vanilla:
            vanilla[key] = count(model, visual)
        return float(flops.ideal_speedup(vanilla[key], flops.plan_flops(vanilla[key], plan)))

    return ideal


def ideal_speedups(ideal: IdealFn | None, model: Path, dims: dict, plans: list[tuple[str, Plan, str]],
                   graphs: list[Path], visual: np.ndarray, progress=None) -> tuple[dict[str, float], str]:
    """Ideal speedup per plan label and where it came from: ``ideal`` when given, else the
    FLOPs counted on the graphs by ``vskip_compile.flops``, else (module missing, or it
    refuses a graph) the analytic formula, the reason recorded in the source string."""
    def apply(fn: IdealFn) -> dict[str, float]:
        return {label: float(fn(plan, visual, graph)) for (label, plan, _), graph in zip(plans, graphs)}

    if ideal is not None:
        return apply(ideal), IDEAL_GIVEN
    note = ""
    counted = _flops_module_ideal(model)
    if counted is not None:
        try:
            return apply(counted), IDEAL_FLOPS_MODULE
        except VskipError as exc:
            note = f" (vskip_compile.flops refused the graphs: {exc})"
            if progress:
                progress(f"FLOPs counter: {exc}; using the analytic formula")
    return apply(analytic_ideal(dims)), IDEAL_ANALYTIC + note


def realization(speedup: float | None, ideal: float | None) -> float | None:
    """(measured - 1) / (ideal - 1): the share of the ideal gain that was measured.

    None when the ideal speedup is 1 (nothing to realise, e.g. an empty plan).
    """
    if speedup is None or ideal is None or abs(ideal - 1.0) < 1e-9:
        return None
    return (speedup - 1.0) / (ideal - 1.0)


# ----------------------------------------------------------------------------- timing

@dataclass
class Config:
    """One thing to time: a graph on ONNX Runtime or the PyTorch reference under a plan."""

    name: str                       # "ort:<plan>" or "torch:<plan>"
    backend: str                    # "ort" or "torch"
    plan: str                       # a plan label, VANILLA for the source graph / no plan
    run: Callable[[], object]
    graph: str | None = None
    times: list[float] = field(default_factory=list)
    warmup_times: list[float] = field(default_factory=list)


def round_order(num_configs: int, round_index: int) -> list[int]:
    """Config indices for one round: the list rotated left by ``round_index``."""
    start = round_index % num_configs
    return list(range(start, num_configs)) + list(range(start))


def measure(configs: list[Config], warmup: int, rounds: int, clock: Callable[[], float] = time.perf_counter,
            progress: Callable[[str], None] | None = None) -> None:
    """Fill each config's ``warmup_times`` and ``times``; warm-up rounds rotate too."""
    total = warmup + rounds
    for index in range(total):
        warming = index < warmup
        label = f"warm-up {index + 1}/{warmup}" if warming else f"round {index - warmup + 1}/{rounds}"
        for position in round_order(len(configs), index):
            config = configs[position]
            start = clock()
            config.run()
            elapsed = clock() - start
            (config.warmup_times if warming else config.times).append(elapsed)
            if progress:
                progress(f"{label}: {config.name} {elapsed:.3f} s")


def stats(values: list[float]) -> dict:
    """Median and spread of a sample (numpy's linear-interpolation percentiles)."""
    array = np.asarray(values, dtype=np.float64)
    p25, median, p75 = np.percentile(array, [25, 50, 75])
    return {"median": float(median), "min": float(array.min()), "max": float(array.max()),
            "p25": float(p25), "p75": float(p75), "iqr": float(p75 - p25), "mean": float(array.mean()),
            "n": int(array.size)}


def paired_ratios(numerator: list[float], denominator: list[float]) -> list[float]:
    """Round-by-round ratios of two configs timed in the same rounds."""
    if len(numerator) != len(denominator):
        raise ValueError("paired ratios need the same number of rounds")
    return [a / b for a, b in zip(numerator, denominator)]


def summarize(configs: list[Config], ideals: dict[str, float | None]) -> tuple[list[dict], list[dict]]:
    """Per-config statistics and per-plan comparisons, JSON-ready."""
    rows = []
    for config in configs:
        s = stats(config.times)
        rows.append({"name": config.name, "backend": config.backend, "plan": config.plan, "graph": config.graph,
                     **{f"{k}_s" if k != "n" else k: v for k, v in s.items()},
                     "times_s": config.times, "warmup_s": config.warmup_times})
    by_name = {c.name: c for c in configs}
    plans = []
    for label, ideal in ideals.items():
        entry: dict = {"name": label, "ideal_speedup": ideal}
        for backend in ("ort", "torch"):
            base, this = by_name.get(f"{backend}:{VANILLA}"), by_name.get(f"{backend}:{label}")
            if base is None or this is None:
                continue
            speedup = float(np.median(base.times) / np.median(this.times))
            paired = stats(paired_ratios(base.times, this.times))
            block = {"median_s": float(np.median(this.times)), "speedup": speedup, "paired_speedup": paired,
                     "realization": realization(speedup, ideal),
                     "paired_realization": realization(paired["median"], ideal)}
            if backend == "ort":
                entry.update(block)
            else:
                entry["torch"] = block
        if "torch" in entry:
            entry["ort_over_torch"] = _ort_over_torch(by_name, label)
        plans.append(entry)
    return rows, plans


def _ort_over_torch(by_name: dict[str, Config], label: str) -> dict:
    ort, torch_ = by_name[f"ort:{label}"], by_name[f"torch:{label}"]
    return {"ratio_of_medians": float(np.median(ort.times) / np.median(torch_.times)),
            "paired": stats(paired_ratios(ort.times, torch_.times))}


# ----------------------------------------------------------------------------- setup

def read_dims(model: Path, sidecar: dict | str | Path | None) -> dict:
    """The model's dimensions: ``sidecar`` (a dict or JSON file) or vskip.json beside the graph."""
    from .sidecar import check_sidecar, load_sidecar_file, read_sidecar, require

    if sidecar is None:
        found = read_sidecar(model)
        if found is None:
            raise VskipError(f"{model}: no vskip.json beside it; export the model with `vskip export`, or pass "
                             f"--sidecar FILE.json with its {', '.join(DIM_FIELDS)}")
        return require(found, DIM_FIELDS, f"{model.parent / 'vskip.json'}")
    if isinstance(sidecar, dict):
        return require(check_sidecar(sidecar, "the sidecar"), DIM_FIELDS, "the sidecar")
    return require(load_sidecar_file(sidecar), DIM_FIELDS, str(sidecar))


class _Recorded:
    """The plan a given compiled graph records, labelled by the graph's file name."""

    def __init__(self, path: Path, plan: Plan):
        self.path, self.plan = path, plan


def _recorded(path: Path, dims: dict) -> _Recorded:
    from .compile import compiled_plan, load_graph

    recorded = compiled_plan(load_graph(path), path)
    if recorded is None:
        raise VskipError(f"{path}: not compiled by vskip (it records no plan); pass its plan with --plan instead")
    plan, _ = load_plan(recorded)
    if plan.num_layers != dims["num_layers"]:
        raise VskipError(f"{path}: its plan has {plan.num_layers} layers but the model has {dims['num_layers']}")
    return _Recorded(path, plan)


def _load_plans(plans: list, dims: dict) -> list[tuple[str, Plan, str]]:
    """(unique label, Plan, source) per plan; labels are file stems, numbered on clashes."""
    loaded, used = [], {VANILLA}
    for index, item in enumerate(plans):
        if isinstance(item, _Recorded):
            plan, label, source = item.plan, item.path.stem, str(item.path)
        elif isinstance(item, Plan):
            plan, label, source = item, f"plan{index}", "<plan>"
            if plan.num_layers != dims["num_layers"]:
                raise VskipError(f"plan {index} has {plan.num_layers} layers but the model has {dims['num_layers']}")
        else:
            plan, info = load_plan(item)
            # A sidecar given by hand may lack the family: then only the layer count is checked.
            info.check_model(dims.get("family") or info.family or "decoder", dims["num_layers"])
            label, source = Path(item).stem, str(item)
        unique, number = label, 2
        while unique in used:
            unique, number = f"{label}-{number}", number + 1
        used.add(unique)
        loaded.append((unique, plan, source))
    return loaded


def _ort_config(label: str, graph: Path, threads: int, visual: np.ndarray, base: dict | None,
                dims: dict, seed: int) -> tuple[Config, dict, dict]:
    from .runner import make_session

    session = make_session(graph, threads)
    inputs = graph_inputs(session)
    notes = {}
    if base is None:  # the vanilla graph defines the shared inputs
        base, notes = synthesize_feeds(inputs, visual, dims["hidden_size"], seed)
    missing = [i.name for i in inputs if i.name not in ROW_INPUTS and i.name not in base]
    if missing:
        raise VskipError(f"{graph}: takes inputs the vanilla graph does not ({', '.join(missing)})")
    feeds = config_feeds(inputs, base, visual)

    def run():
        return session.run(None, feeds)

    return Config(f"ort:{label}", "ort", label, run, str(graph)), base, notes


def _torch_configs(dims: dict, plans: list[tuple[str, Plan, str]], base: dict, visual: np.ndarray,
                   progress) -> list[Config]:
    import torch

    from .models.loading import load_model
    from .models.reference import skip_reference
    from .models.wrappers import PrefillDecoder, prefill_input_names

    source = dims.get("source")
    if not source:
        raise VskipError("the sidecar has no 'source' (checkpoint directory or tiny preset): --torch needs the model")
    if progress:
        progress(f"loading {source} for PyTorch")
    loaded = load_model(source, seed=dims.get("seed") or 0)
    names = prefill_input_names(loaded.family)
    missing = [n for n in names if n not in base]
    if missing:
        raise VskipError(f"the graph does not take the model's inputs {', '.join(missing)}; is the sidecar its own?")
    tensors = [torch.from_numpy(np.ascontiguousarray(base[n])) for n in names]
    rows = torch.from_numpy(visual)[None, :]
    decoder = PrefillDecoder(loaded.family, loaded.model, all_logits=dims.get("logits") == "all")

    def runner(plan: Plan):
        def run():
            with skip_reference(loaded.family, loaded.model, plan, rows), torch.no_grad():
                return decoder(*tensors)
        return run

    configs = [Config(f"torch:{VANILLA}", "torch", VANILLA, runner(Plan.empty(dims["num_layers"])))]
    configs += [Config(f"torch:{label}", "torch", label, runner(plan)) for label, plan, _ in plans]
    return configs


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": cpu, "cores": cores, "platform": platform.platform(), "python": platform.python_version()}


def versions() -> dict:
    found = {"vskip": __version__}
    for package in ("onnxruntime", "onnx", "torch", "transformers", "numpy"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = None
    return found


def default_threads() -> int:
    return usable_cores()


# ----------------------------------------------------------------------------- the benchmark

def run_bench(model: str | Path, plans: list[str | Path | Plan], *, visual_rows: int = DEFAULT_VISUAL_ROWS,
              text_rows: int = DEFAULT_TEXT_ROWS, prefix_rows: int | None = None, threads: int | None = None,
              warmup: int = DEFAULT_WARMUP, rounds: int = DEFAULT_ROUNDS, pytorch: bool = False,
              workdir: str | Path | None = None, sidecar: dict | str | Path | None = None,
              ideal: IdealFn | None = None, seed: int = 0, command: str | None = None,
              json_path: str | Path | None = None, markdown_path: str | Path | None = None,
              progress: Callable[[str], None] | None = None,
              clock: Callable[[], float] = time.perf_counter,
              compiled_graphs: list[str | Path] = (), force: bool = False) -> dict:
    """Time MODEL.onnx against each plan's compiled graph; returns the JSON-ready result.

    ``compiled_graphs`` are graphs vskip already compiled from MODEL.onnx (for instance by
    an earlier version, to measure a change of the compiler): each is timed as it is, under
    the plan it records, and left in place.

    ``ideal(plan, visual_mask, compiled_graph)`` gives ideal speedups; by default they are
    counted by ``vskip_compile.flops``, else :func:`analytic_ideal` (see :func:`ideal_speedups`);
    the result's ``ideal_source`` says which was used.
    ``command`` is recorded as the command line (default: this process's argv).
    ``json_path`` / ``markdown_path``: where to write the result (checked before any work).
    ``force``: replace existing report files and, in ``workdir``, compiled graphs; never
    one of the inputs.
    """
    from .compile import compile_model, compiled_plan, load_graph

    model = input_file(model, "ONNX model")
    threads = default_threads() if threads is None else threads
    for name, value, low, high in (("--threads", threads, 1, usable_cores()), ("--rounds", rounds, 1, MAX_ROUNDS),
                                   ("--warmup", warmup, 0, MAX_ROUNDS)):
        if type(value) is not int or not low <= value <= high:
            raise VskipError(f"{name} must be an integer in {low}-{high}, got {value}")
    visual = layout(visual_rows, text_rows, prefix_rows)
    plan_files = [p for p in plans if not isinstance(p, Plan)]
    sidecar_file = [sidecar] if isinstance(sidecar, (str, os.PathLike)) else []
    reports = Outputs([model, *plan_files, *compiled_graphs, *sidecar_file], force=force)
    for path in (json_path, markdown_path):
        if path is not None:
            reports.claim(path, "report")
    if compiled_plan(load_graph(model), model) is not None:
        raise VskipError(f"{model}: already compiled by vskip; bench the original graph, the plans are compiled here")
    dims = read_dims(model, sidecar)
    loaded_plans = _load_plans(list(plans) + [_recorded(Path(g), dims) for g in compiled_graphs], dims)
    prebuilt = [None] * len(plans) + [Path(g) for g in compiled_graphs]

    keep = workdir is not None
    directory = Path(workdir) if keep else model.parent
    if keep:
        _make_workdir(directory)
    else:
        try:
            check_directory(directory)
        except VskipError:
            raise VskipError(f"{directory}: not writable, and the compiled graphs go beside the source by default; "
                             "pass --workdir DIR") from None
    targets = []
    for (label, _, _), given in zip(loaded_plans, prebuilt):
        if given is not None:
            targets.append(given)
        elif keep:  # claimed now: never over an input (a --compiled graph), never over a file without --force
            targets.append(reports.claim(directory / f"{model.stem}.{label}.onnx", "compiled graph"))
        else:
            targets.append(directory / f".{model.stem}.bench-{os.getpid()}.{label}.onnx")
    compiled: list[Path] = []
    previous_threads = None
    source = model
    try:
        if keep:
            source = _stage_source(model, directory, force, progress)
        for (label, plan, _), given, output in zip(loaded_plans, prebuilt, targets):
            if given is not None:
                compiled.append(given)
                continue
            if progress:
                progress(f"compiling {label} -> {output}")
            if not keep:
                register_temp(output)  # hidden beside the source: removed on any exit, signals included
            compiled.append(output)
            compile_model(source, plan, output, force=force, progress=progress)
        # Before any timing, so a failing FLOPs counter costs no benchmark time.
        ideals, ideal_source = ideal_speedups(ideal, model, dims, loaded_plans, compiled, visual, progress)

        if progress:
            progress(f"creating {1 + len(compiled)} ONNX Runtime sessions ({threads} threads)")
        vanilla, base, notes = _ort_config(VANILLA, model, threads, visual, None, dims, seed)
        configs = [vanilla]
        for (label, _, _), path in zip(loaded_plans, compiled):
            configs.append(_ort_config(label, path, threads, visual, base, dims, seed)[0])
        if pytorch:
            import torch as torch_module

            previous_threads = torch_module.get_num_threads()
            torch_module.set_num_threads(threads)
            configs += _torch_configs(dims, loaded_plans, base, visual, progress)
        measure(configs, warmup, rounds, clock, progress)
    finally:
        if previous_threads is not None:
            import torch as torch_module

            torch_module.set_num_threads(previous_threads)
        if not keep:
            for path, given in zip(compiled, prebuilt):
                if given is None:
                    release_temp(path, remove=True)

    rows, plan_rows = summarize(configs, ideals)
    for entry, (label, plan, source) in zip(plan_rows, loaded_plans):
        entry.update(file=source, freeze_scope=plan.freeze_scope.value, actions=_action_counts(plan))
    prefix = int(np.argmax(visual)) if visual.any() else int(visual.size)
    result = {
        "format": FORMAT, "version": VERSION,
        "command": command if command is not None else shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(), "versions": versions(),
        "model": str(model), "family": dims.get("family"), "num_layers": dims["num_layers"],
        "hidden_size": dims["hidden_size"],
        "sequence_length": int(visual.size), "visual_rows": int(visual.sum()), "text_rows": int((~visual).sum()),
        "layout": f"{prefix} text + {int(visual.sum())} visual + {int(visual.size - prefix - visual.sum())} text",
        "inputs": notes, "threads": threads, "warmup": warmup, "rounds": rounds,
        "order": "rotating: round r starts with config r mod k",
        "ideal_source": ideal_source,
        "peak_rss_mib": _peak_rss_mib(),
        "vanilla": _vanilla_block(rows),
        "plans": plan_rows, "configs": rows,
    }
    with reports:
        if json_path is not None:
            reports.write_text(json_path, json.dumps(result, indent=2) + "\n")
        if markdown_path is not None:
            reports.write_text(markdown_path, to_markdown(result))
        reports.commit()
    return result


def _make_workdir(directory: Path) -> None:
    if not output_directory(directory, "--workdir"):
        try:
            directory.mkdir()
        except OSError as exc:
            raise VskipError(f"{directory}: cannot create it: {exc.strerror or exc}") from None


def _stage_source(model: Path, directory: Path, force: bool, progress) -> Path:
    """The graph to compile into ``directory`` from.

    A compiled graph needs its external weights in its own directory; compiled beside one
    staged copy of the source, every plan's graph shares that copy's weights instead of
    owning a copy each. The staged graph ``MODEL.bench-source.onnx`` and its weights
    ``MODEL.bench-source.onnx.data`` stay in the workdir with the compiled graphs.
    """
    from .compile import claim_weight_copies, read_graph, write_graph

    graph, files = read_graph(model)
    staged = directory / f"{model.stem}.bench-source.onnx"
    with Outputs([model, *files.values()], force=force) as staging:
        copies = claim_weight_copies(staging, model, staged, files)
        if not copies:  # no external weights, or the workdir is the source's own directory
            return model
        staging.claim(staged, "staged source graph")
        write_graph(staging, graph, staged, files, copies, progress)
        staging.commit()
    return staged


def _peak_rss_mib() -> float | None:
    """This process's peak resident memory: every session holds its own weights."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _action_counts(plan: Plan) -> dict[str, int]:
    return {a.value: plan.actions.count(a) for a in Action if plan.actions.count(a)}


def _vanilla_block(rows: list[dict]) -> dict:
    by_name = {r["name"]: r for r in rows}
    block = {"median_s": by_name[f"ort:{VANILLA}"]["median_s"]}
    if f"torch:{VANILLA}" in by_name:
        block["torch_median_s"] = by_name[f"torch:{VANILLA}"]["median_s"]
        block["ort_over_torch"] = block["median_s"] / block["torch_median_s"]
    return block


# ----------------------------------------------------------------------------- reports

def _f(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _rows(result: dict) -> list[tuple]:
    """(config, median, p25-p75, speedup, paired median [p25-p75], ideal, realization) per config."""
    plans = {p["name"]: p for p in result["plans"]}
    lines = []
    for row in result["configs"]:
        entry = plans.get(row["plan"])
        block = None
        if entry is not None:
            block = entry if row["backend"] == "ort" else entry.get("torch")
        spread = f"{row['p25_s']:.3f}-{row['p75_s']:.3f}"
        if block is None:
            lines.append((row["name"], f"{row['median_s']:.3f}", spread, "1 (base)", "-", "-", "-"))
            continue
        paired = block["paired_speedup"]
        lines.append((row["name"], f"{row['median_s']:.3f}", spread, f"{block['speedup']:.3f}",
                      f"{paired['median']:.3f} [{paired['p25']:.3f}-{paired['p75']:.3f}]",
                      _f(entry["ideal_speedup"], ".3f"), _f(block["realization"], ".0%")))
    return lines


_HEADER = ("config", "median s", "p25-p75 s", "speedup", "paired speedup [p25-p75]", "ideal", "realized")


def format_table(result: dict) -> str:
    """A plain-text table for the terminal, with the ORT / PyTorch time ratios below it."""
    lines = [_HEADER, *_rows(result)]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(_HEADER))]
    text = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    text += _torch_ratio_lines(result)
    text.append(f"S = {result['sequence_length']} ({result['layout']}), {result['threads']} threads, "
                f"{result['warmup']} warm-up + {result['rounds']} interleaved rounds; ideal speedup: "
                f"{result['ideal_source']}")
    return "\n".join(text)


def _torch_ratio_lines(result: dict) -> list[str]:
    vanilla = result["vanilla"]
    if "ort_over_torch" not in vanilla:
        return []
    parts = [f"{VANILLA} {vanilla['ort_over_torch']:.2f}"]
    parts += [f"{p['name']} {p['ort_over_torch']['ratio_of_medians']:.2f}" for p in result["plans"]
              if "ort_over_torch" in p]
    return ["ONNX Runtime / PyTorch time (median): " + ", ".join(parts)]


def to_markdown(result: dict) -> str:
    """A section for docs/benchmarks.md: the command, machine, versions, date and the table."""
    machine, v = result["machine"], result["versions"]
    version_text = ", ".join(f"{k} {val}" for k, val in v.items() if val)
    out = [f"### Prefill: {Path(result['model']).name} ({result.get('family') or 'decoder'}, "
           f"{result['num_layers']} layers, hidden {result['hidden_size']})", "",
           "```bash", result["command"], "```", "",
           f"- date: {result['date']}",
           f"- machine: {machine['cpu']}, {machine['cores']} cores; {result['threads']} threads",
           f"- versions: {version_text}",
           f"- workload: S = {result['sequence_length']} ({result['layout']}), batch 1, fp32",
           f"- method: {result['warmup']} warm-up + {result['rounds']} rounds, every config once per round, "
           "order rotating between rounds; speedup = vanilla median / plan median, paired = per-round "
           "ratio; realized = (speedup - 1) / (ideal - 1)",
           f"- ideal speedup: {result['ideal_source']}", ""]
    out.append("| " + " | ".join(_HEADER) + " |")
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(_HEADER))) + "|")
    out += ["| " + " | ".join(f"`{c}`" if i == 0 else str(c) for i, c in enumerate(line)) + " |"
            for line in _rows(result)]
    ratios = _torch_ratio_lines(result)
    if ratios:
        out += ["", ratios[0] + " (the PyTorch skip reference computes every row and zeroes the skipped "
                "ones, so its plan rows show the hooks' cost, not a speedup)"]
    return "\n".join(out) + "\n"
