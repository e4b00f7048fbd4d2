"""Where a prefill's time goes: ONNX Runtime per op type against PyTorch eager per op.

    python tools/profile_prefill.py GRAPH.onnx [--runs 3] [--threads 2] [--rows 1088 --visual-rows 16:1040]
    python tools/profile_prefill.py GRAPH.onnx --torch      # also the PyTorch model of its vskip.json
    python tools/profile_prefill.py COMPILED.onnx --torch --torch-backend torch-skip   # PyTorch, live rows only

ONNX Runtime: its own profiler (``SessionOptions.enable_profiling``) over ``--runs`` runs
after one warm-up; node events are summed per op type (the kernel time, not the session
overhead around it), averaged per run. PyTorch: ``torch.profiler`` over the same number
of runs of the PyTorch model (the vanilla graph's semantics), self CPU time per aten op.
Both get the random feeds ``vskip bench`` makes for this prompt. Prints two tables, the
top op types by time with their share; ``--json PATH`` writes them. A measurement tool:
nothing here is a test.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np


def ort_profile(graph: Path, feeds: dict, runs: int, threads: int, options: dict | None = None) -> dict:
    """op type -> mean milliseconds per run, plus "_wall_ms" (median wall time of a run)."""
    import onnxruntime as ort

    settings = ort.SessionOptions()
    settings.intra_op_num_threads = threads
    settings.log_severity_level = 3
    for key, value in (options or {}).items():
        settings.add_session_config_entry(key, str(value))
    with tempfile.TemporaryDirectory(prefix="vskip-profile-") as scratch:
        settings.enable_profiling = True
        settings.profile_file_prefix = os.path.join(scratch, "ort")
        session = ort.InferenceSession(str(graph), settings, providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        session.run(None, {n: feeds[n] for n in names})  # warm-up
        walls = []
        for _ in range(runs):
            start = time.perf_counter()
            session.run(None, {n: feeds[n] for n in names})
            walls.append(time.perf_counter() - start)
        events = json.loads(Path(session.end_profiling()).read_text())
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            per_op[event["args"]["op_name"]] += event["dur"] / 1e3
    # the warm-up run is in the profile too: runs + 1 runs in all
    table = {op: ms / (runs + 1) for op, ms in per_op.items()}
    table["_wall_ms"] = float(np.median(walls)) * 1e3
    return table


def torch_profile(graph: Path, feeds: dict, runs: int, threads: int, backend: str = "torch") -> dict:
    """aten op -> mean self-CPU milliseconds per run of the PyTorch model, plus "_wall_ms"."""
    import torch

    from vskip_compile.backends import open_session
    from vskip_compile.core.sidecar import read_sidecar

    session = open_session(graph, backend, sidecar=read_sidecar(graph), threads=threads)
    wanted = {s.name: feeds[s.name] for s in session.inputs}
    session.infer(wanted)  # warm-up
    walls = []
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(runs):
            start = time.perf_counter()
            session.infer(wanted)
            walls.append(time.perf_counter() - start)
    table = {e.key: e.self_cpu_time_total / 1e3 / runs for e in prof.key_averages()}
    table["_wall_ms"] = float(np.median(walls)) * 1e3
    return table


def format_table(title: str, table: dict, top: int = 15) -> str:
    wall = table["_wall_ms"]
    ops = sorted(((k, v) for k, v in table.items() if not k.startswith("_")), key=lambda kv: -kv[1])
    total = sum(v for _, v in ops)
    lines = [f"{title}: {wall:.1f} ms per run (median wall), {total:.1f} ms in ops",
             f"  {'op':<36} {'ms/run':>9} {'share':>7}"]
    lines += [f"  {k:<36} {v:9.1f} {v / total:7.1%}" for k, v in ops[:top]]
    rest = sum(v for _, v in ops[top:])
    if rest:
        lines.append(f"  {'(the rest)':<36} {rest:9.1f} {rest / total:7.1%}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path, help="a prefill graph (vanilla or compiled) with its vskip.json")
    parser.add_argument("--runs", type=int, default=3, help="profiled runs after one warm-up (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--rows", type=int, help="prompt rows (default 1088)")
    parser.add_argument("--visual-rows", help="visual rows as ranges (default 16:1040)")
    parser.add_argument("--torch", action="store_true", help="also profile the PyTorch model")
    parser.add_argument("--torch-backend", default="torch", choices=["torch", "torch-skip"],
                        help="the PyTorch run: the skip reference (every row) or torch-skip (live rows only)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="an ONNX Runtime session config entry, e.g. session.intra_op.allow_spinning=0")
    parser.add_argument("--json", type=Path, help="write the tables here")
    args = parser.parse_args(argv)

    from vskip_compile.backends import open_session
    from vskip_compile.bench.inputs import model_sidecar
    from vskip_compile.bench.workload import MAX_ROWS, config_feeds, synthesize_feeds
    from vskip_compile.core.visual_rows import workload

    visual = workload(args.rows, args.visual_rows, MAX_ROWS)
    specs = open_session(args.graph).inputs
    base, _ = synthesize_feeds(specs, visual, model_sidecar(args.graph, None).hidden_size, seed=0)
    feeds = config_feeds(specs, base, visual, str(args.graph))   # bench's feeds, row inputs included
    options = dict(entry.split("=", 1) for entry in args.option)
    result = {"ort": ort_profile(args.graph, feeds, args.runs, args.threads, options)}
    print(format_table(f"ONNX Runtime {args.graph.name}", result["ort"]))
    if args.torch:
        result["torch"] = torch_profile(args.graph, feeds, args.runs, args.threads, args.torch_backend)
        print(format_table(f"PyTorch eager, {args.torch_backend} (the model of vskip.json)", result["torch"]))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
