"""A benchmark's result: per-config statistics, per-plan comparisons, and their reports.

:func:`summarize` turns timed configs into the JSON-ready rows and plan entries; the
result dict (format "vskip-bench") feeds :func:`format_table`, :func:`to_markdown` and
the JSON report alike, so a saved JSON file can be turned into a table later. Backends
are names in the result, never cases here: the first backend's speedups sit at the top
of each plan entry, every backend's under ``backends``, and the first backend's time
over each other's under ``ratios``.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

from .. import __version__
from ..core.plan import Action, Plan
from .timing import VANILLA, Config, ratio, speedup_block, stats


def backend_order(configs: list[Config]) -> list[str]:
    """The backends of ``configs``, in the order they first appear (the first is the base)."""
    return list(dict.fromkeys(c.backend for c in configs))


def ratio_key(first: str, other: str) -> str:
    return f"{first}/{other}"


def summarize(configs: list[Config], ideals: dict[str, float | None]) -> tuple[list[dict], list[dict], dict]:
    """Per-config statistics, per-plan comparisons and the vanilla block, JSON-ready.

    Each plan entry holds the first backend's block (median, speedup, paired speedup,
    realizations) at its top level, every backend's block under ``backends``, and under
    ``ratios["<first>/<other>"]`` the first backend's time over each other backend's.
    """
    rows = []
    for config in configs:
        s = stats(config.times)
        rows.append({"name": config.name, "backend": config.backend, "plan": config.plan, "graph": config.graph,
                     **{f"{k}_s" if k != "n" else k: v for k, v in s.items()},
                     "times_s": config.times, "warmup_s": config.warmup_times})
    by_key = {(c.backend, c.plan): c for c in configs}
    backends = backend_order(configs)
    first, others = backends[0], backends[1:]

    def ratios(label: str) -> dict:
        return {ratio_key(first, other): ratio(by_key[(first, label)], by_key[(other, label)])
                for other in others if (first, label) in by_key and (other, label) in by_key}

    vanilla: dict = {"median_s": stats(by_key[(first, VANILLA)].times)["median"],
                     "backends": {b: {"median_s": stats(by_key[(b, VANILLA)].times)["median"]}
                                  for b in backends if (b, VANILLA) in by_key}}
    vanilla["ratios"] = ratios(VANILLA)
    plans = []
    for label, ideal in ideals.items():
        entry: dict = {"name": label, "ideal_speedup": ideal}
        blocks = {b: speedup_block(by_key[(b, VANILLA)], by_key[(b, label)], ideal)
                  for b in backends if (b, VANILLA) in by_key and (b, label) in by_key}
        entry.update(blocks.get(first, {}))
        entry["backends"] = blocks
        entry["ratios"] = ratios(label)
        plans.append(entry)
    return rows, plans, vanilla


def action_counts(plan: Plan) -> dict[str, int]:
    return {a.value: plan.actions.count(a) for a in Action if plan.actions.count(a)}


def describe_plan(plan: Plan) -> str:
    """'1 full, 2 freeze of 3 layers': a plan in one phrase, for reports."""
    return ", ".join(f"{n} {a}" for a, n in action_counts(plan).items()) + f" of {plan.num_layers} layers"


# ----------------------------------------------------------------------------- machine

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


def peak_rss_mib() -> float | None:
    """This process's peak resident memory: every session holds its own weights."""
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ----------------------------------------------------------------------------- tables

def _f(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def _rows(result: dict) -> list[tuple]:
    """(config, median, p25-p75, speedup, paired median [p25-p75], ideal, realization) per config."""
    plans = {p["name"]: p for p in result["plans"]}
    lines = []
    for row in result["configs"]:
        entry = plans.get(row["plan"])
        block = entry["backends"].get(row["backend"]) if entry is not None else None
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
    """A plain-text table for the terminal, with the backends' time ratios below it."""
    lines = [_HEADER, *_rows(result)]
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(_HEADER))]
    text = ["  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
            for line in lines]
    text += _ratio_lines(result)
    text += _routable_lines(result)
    text.append(f"S = {result['sequence_length']} ({result['layout']}), {result['threads']} threads, "
                f"{result['warmup']} warm-up + {result['rounds']} interleaved rounds; ideal speedup: "
                f"{result['ideal_source']}")
    return "\n".join(text)


def _ratio_lines(result: dict) -> list[str]:
    """'<first> / <other> time (median): vanilla 0.52, plan 0.31' per other backend, and
    which configs the other backend runs faster on this host, said in words."""
    lines = []
    for key, value in result["vanilla"].get("ratios", {}).items():
        first, other = key.split("/", 1)
        ratios = [(VANILLA, value["ratio_of_medians"])]
        ratios += [(p["name"], p["ratios"][key]["ratio_of_medians"]) for p in result["plans"]
                   if key in p.get("ratios", {})]
        line = f"{first} / {other} time (median): " + ", ".join(f"{name} {r:.2f}" for name, r in ratios)
        faster = [name for name, r in ratios if r > 1]
        if faster:
            line += f"; {other} is faster than {first} on this host for {', '.join(faster)}"
        lines.append(line)
    return lines


def _routable_lines(result: dict) -> list[str]:
    """'routable on <backend>: +0.8% over vanilla, +1.1% over opskip_like' (median, paired)."""
    lines = []
    for backend, entries in result.get("routable", {}).items():
        parts = [f"{e['overhead']:+.1%} over {'the vanilla graph' if label == VANILLA else label} "
                 f"(paired {e['paired_overhead']:+.1%})" for label, e in entries.items()]
        lines.append(f"routable graph on {backend}: " + ", ".join(parts))
    return lines


def _backend_text(result: dict) -> str:
    described = [f"{d['backend']} ({d['runtime']} {d['version']}, {d['device']}, {d['precision']})"
                 for d in result.get("backends", [])]
    return "; ".join(described) or "-"


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
           f"- backends: {_backend_text(result)}",
           f"- workload: S = {result['sequence_length']} ({result['layout']}), batch 1",
           f"- method: {result['warmup']} warm-up + {result['rounds']} rounds, every config once per round, "
           "order rotating between rounds; speedup = vanilla median / plan median on the same backend, "
           "paired = per-round ratio; realized = (speedup - 1) / (ideal - 1)",
           f"- ideal speedup: {result['ideal_source']}"]
    if result.get("vanilla_graph"):
        out.append(f"- vanilla: {result['vanilla_graph']}")
    if result.get("causal_blocks"):
        out.append(f"- causal blocks: {result['causal_blocks']} (the vanilla graph and every plan compiled here; "
                   "--compiled graphs as they were compiled)")
    out.append("")
    out.append("| " + " | ".join(_HEADER) + " |")
    out.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(_HEADER))) + "|")
    out += ["| " + " | ".join(f"`{c}`" if i == 0 else str(c) for i, c in enumerate(line)) + " |"
            for line in _rows(result)]
    out += [""] + [line + "  " for line in _routable_lines(result)] if result.get("routable") else []
    ratios = _ratio_lines(result)
    if ratios:
        out += [""] + [line + "  " for line in ratios[:-1]] + [
            ratios[-1] + " (the same graph and plan on each backend)"]
        if any(d["backend"] == "torch" for d in result.get("backends", [])):
            out += ["", "The `torch` backend is the PyTorch skip reference: it computes every row and zeroes the "
                    "skipped ones, so its plan rows show its hooks' cost, not a speedup; `torch-skip` computes "
                    "only the live rows."]
    return "\n".join(out) + "\n"
