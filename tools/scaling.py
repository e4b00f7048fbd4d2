"""Scaling study: time and speedup as the number of visual rows grows.

    python tools/scaling.py --model /tmp/big8/onnx/prefill.onnx --plan PLAN.json \
        --visual 256 1024 4096 --text 64 --json docs/scaling.json --plot docs/scaling.png

Runs ``vskip bench`` (vanilla + plan, interleaved rounds) once per visual-row count and
collects median times, measured and ideal speedups into one JSON and one plot.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model")
    parser.add_argument("--plan")
    parser.add_argument("--visual", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--text", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", required=True)
    parser.add_argument("--plot", required=True)
    parser.add_argument("--replot", action="store_true", help="redraw --plot from an existing --json; no timing")
    args = parser.parse_args(argv)
    if args.replot:
        from vskip_compile.core.files import read_json

        _plot(read_json(args.json, "scaling results")["points"], args.plot)
        return 0

    if not (args.model and args.plan):
        parser.error("--model and --plan are required unless --replot")
    from vskip_compile.bench import MAX_ROWS, run_bench
    from vskip_compile.core.visual_rows import workload
    from vskip_compile.core.files import Outputs

    points = []
    for visual in args.visual:
        prefix = args.text // 4  # the layout bench used by default: a quarter of the text before the image
        layout = workload(visual + args.text, f"{prefix}:{prefix + visual}", MAX_ROWS)
        result = run_bench(args.model, [args.plan], visual=layout,
                           threads=args.threads, warmup=args.warmup, rounds=args.rounds,
                           progress=lambda m: print(m, file=sys.stderr))
        plan = result["plans"][0]
        points.append({"visual_rows": visual, "text_rows": args.text,
                       "vanilla_median_s": result["vanilla"]["median_s"], "plan_median_s": plan["median_s"],
                       "speedup": plan["speedup"], "paired_speedup": plan["paired_speedup"]["median"],
                       "ideal_speedup": plan["ideal_speedup"], "realization": plan["realization"],
                       "ideal_source": result.get("ideal_source")})
        print(f"visual {visual}: vanilla {points[-1]['vanilla_median_s']:.3f} s, plan {plan['median_s']:.3f} s, "
              f"speedup {plan['speedup']:.3f} (ideal {plan['ideal_speedup']:.3f})", file=sys.stderr)
    data = {"command": "python tools/scaling.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
            "machine": result["machine"], "versions": result["versions"], "date": result["date"],
            "threads": result["threads"], "points": points}
    with Outputs([args.model, args.plan], force=True) as outputs:  # a tool's own result file: rerun replaces it
        outputs.write_text(args.json, json.dumps(data, indent=2) + "\n")
        outputs.commit()
    _plot(points, args.plot)
    return 0


def _plot(points, path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 3.6))
    left, right = fig.subplots(1, 2)
    xs = [p["visual_rows"] for p in points]
    left.plot(xs, [p["vanilla_median_s"] for p in points], "o-", label="vanilla")
    left.plot(xs, [p["plan_median_s"] for p in points], "s-", label="compiled (plan)")
    left.set(xscale="log", yscale="log", xlabel="visual rows", ylabel="prefill median (s)", title="time")
    left.set_xticks(xs, [str(x) for x in xs], minor=False)
    times = [p[k] for p in points for k in ("vanilla_median_s", "plan_median_s")]
    ticks = [t for t in (0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50) if min(times) / 1.5 <= t <= max(times) * 1.5]
    left.set_yticks(ticks, [f"{t:g}" for t in ticks], minor=False)
    left.minorticks_off()
    left.legend()
    right.plot(xs, [p["speedup"] for p in points], "o-", label="measured")
    right.plot(xs, [p["ideal_speedup"] for p in points], "s--", label="ideal (FLOPs)")
    right.set(xscale="log", xlabel="visual rows", ylabel="speedup", title="speedup")
    right.set_xticks(xs, [str(x) for x in xs], minor=False)
    right.minorticks_off()
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
