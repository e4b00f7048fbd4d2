"""Measurement: one prefill graph under ONNX Runtime session settings, side by side.

    python tools/ort_settings.py GRAPH.onnx [--rounds 6] [--warmup 2] [--variant NAME ...]

Every variant is one CPU session on the same graph and the same random feeds ``vskip
bench`` makes (1088 rows, visual 16:1040), with 2 intra-op threads; all variants are
timed once per round, the order rotating between rounds, and the median is printed with
the ratio to ``default`` (ONNX Runtime's defaults with the thread count; vskip's
``ort-cpu`` backend is ``default`` plus ``denormals-zero``, which this tool measured). Each variant's outputs are compared with
the default session's (max |diff| over every output), so a setting that changes the
numbers shows. Sessions are alive together, so memory is about the weights times the
variants. A measurement tool: nothing here is a test.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np


def _variants(ort) -> dict:
    level = ort.GraphOptimizationLevel

    def options(**config):
        def apply(settings):
            for key, value in config.items():
                settings.add_session_config_entry(key, value)
        return apply

    def attribute(name, value):
        return lambda settings: setattr(settings, name, value)

    return {
        "default": lambda settings: None,                  # ORT_ENABLE_ALL, arena on, spinning on, prepacking on
        "extended": attribute("graph_optimization_level", level.ORT_ENABLE_EXTENDED),
        "basic": attribute("graph_optimization_level", level.ORT_ENABLE_BASIC),
        "no-arena": attribute("enable_cpu_mem_arena", False),
        "no-spinning": options(**{"session.intra_op.allow_spinning": "0"}),
        "no-prepacking": options(**{"session.disable_prepacking": "1"}),
        "affinity": options(**{"session.intra_op_thread_affinities": "2"}),
        "denormals-zero": options(**{"session.set_denormal_as_zero": "1"}),
    }


def main(argv=None) -> int:
    import onnxruntime as ort

    from vskip_compile.backends import open_session
    from vskip_compile.bench.inputs import model_sidecar
    from vskip_compile.bench.workload import config_feeds, default_visual, synthesize_feeds

    variants = _variants(ort)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("graph", type=Path)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", choices=list(variants),
                        help="a variant to time (repeatable; default: all; default is always included)")
    parser.add_argument("--sidecar", type=Path, help="the export's vskip.json (default: beside the graph)")
    args = parser.parse_args(argv)

    chosen = ["default"] + [v for v in (args.variant or variants) if v != "default"]
    visual = default_visual()
    specs = open_session(args.graph).inputs
    base, _ = synthesize_feeds(specs, visual, model_sidecar(args.graph, args.sidecar).hidden_size, seed=0)
    wanted = config_feeds(specs, base, visual, str(args.graph))   # bench's feeds, row inputs included
    sessions = {}
    for name in chosen:
        settings = ort.SessionOptions()
        settings.intra_op_num_threads = args.threads
        settings.log_severity_level = 3
        variants[name](settings)
        sessions[name] = ort.InferenceSession(str(args.graph), settings, providers=["CPUExecutionProvider"])
        print(f"loaded {name}", file=sys.stderr)
    reference = sessions["default"].run(None, wanted)
    diffs = {name: max(float(np.abs(a - b).max()) for a, b in zip(session.run(None, wanted), reference))
             for name, session in sessions.items()}
    times = {name: [] for name in chosen}
    for index in range(args.warmup + args.rounds):
        order = chosen[index % len(chosen):] + chosen[:index % len(chosen)]
        for name in order:
            start = time.perf_counter()
            sessions[name].run(None, wanted)
            if index >= args.warmup:
                times[name].append(time.perf_counter() - start)
        print(f"round {index + 1}/{args.warmup + args.rounds}", file=sys.stderr)
    base = float(np.median(times["default"]))
    print(f"{args.graph.name}: {args.threads} threads, {args.warmup} warm-up + {args.rounds} interleaved rounds")
    print(f"  {'variant':<16} {'median s':>9} {'p25-p75 s':>15} {'/ default':>9} {'max |diff|':>10}")
    for name in chosen:
        t = np.array(times[name])
        print(f"  {name:<16} {np.median(t):9.3f} {np.percentile(t, 25):7.3f}-{np.percentile(t, 75):.3f} "
              f"{np.median(t) / base:9.3f} {diffs[name]:10.1e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
