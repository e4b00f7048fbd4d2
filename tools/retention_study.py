"""Retention against FLOPs cut on the trained testbed: calibrated plans against baselines.

    python tools/retention_study.py                      # testbed:vqa; writes docs/retention.{md,json,png}
    python tools/retention_study.py --samples 100 --calibration-samples 20 --random-seeds 5

For each question type of the testbed task, and for all types together ("shared"), plans
are chosen on --calibration-samples validation samples and scored on --samples test
samples per type, in PyTorch through the skip reference (the ONNX graphs give the same
answers on fp32: tests/test_evaluate.py holds the two answer for answer):

- ``vskip``: V-Skip calibration (skip visual attention in the N layers of lowest gain),
  N = 0 .. all layers;
- ``operators``: operator calibration (no retention bar) at FLOPs cuts of 10% .. 60%;
- ``uniform``: skip visual attention in the deepest N layers, and freeze the deepest N;
- ``random``: --random-seeds random plans at each operator cut, merged option by option
  in a seeded random order until the cut is reached (mean and worst retention);
- ``opskip``: OpSkip's Qwen3-VL-8B preset 20 scaled to the testbed's depth (each layer takes
  the action of the preset's layer at the same relative depth).

Per type, also the shared plans (calibrated on all types) against the per-type ones at
equal budgets. Retention = accuracy / vanilla accuracy on the same test samples; FLOPs cut
by the analytic formula at those samples' token mix.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OPERATOR_CUTS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
PRESET = ROOT / "vskip_compile" / "plans" / "opskip_qwen3vl8b_preset20.json"


def scaled_preset(num_layers: int):
    """OpSkip's preset 20 (36 layers) at ``num_layers``: each layer's action is that of the
    preset layer at the centre of the same relative depth."""
    from vskip_compile.core.plan import Plan, load_plan

    preset, _ = load_plan(PRESET)
    source = preset.num_layers
    picks = [min(source - 1, int((j + 0.5) * source / num_layers)) for j in range(num_layers)]
    return Plan(tuple(preset.actions[i] for i in picks), preset.freeze_scope)


def deepest(num_layers: int, n: int, action):
    from vskip_compile.core.plan import Plan

    return Plan.from_layers(num_layers, {layer: action for layer in range(num_layers - n, num_layers)})


def random_plan(num_layers: int, dims, visual_rows, cut: float, seed: int):
    from vskip_compile.calibrate import OPTIONS, flops_cut, merged
    from vskip_compile.core.plan import Plan

    rng = np.random.default_rng(seed)
    candidates = [(layer, option) for layer in range(num_layers) for option in OPTIONS]
    plan = Plan.empty(num_layers)
    for index in rng.permutation(len(candidates)):
        if flops_cut(dims, plan, visual_rows) >= cut:
            break
        plan = merged(plan, *candidates[index])
    return plan


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="testbed:vqa")
    parser.add_argument("--samples", type=int, default=100, help="test samples per question type")
    parser.add_argument("--calibration-samples", type=int, default=20, help="validation samples per calibration")
    parser.add_argument("--random-seeds", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "docs" / "retention"), help="writes OUT.json, OUT.md, OUT.png")
    args = parser.parse_args()

    import torch

    from vskip_compile.calibrate import calibrate, calibration_set, flops_cut
    from vskip_compile.core.plan import Action
    from vskip_compile.evaluate import _checkpoint_side, prepare
    from vskip_compile.testbed.tasks import QUESTION_TYPES, samples

    torch.manual_seed(0)
    started = time.perf_counter()
    answers, dims, processor, image_token, family, num_layers, _ = _checkpoint_side(args.model, None)
    answer = answers["vanilla"]
    loaded = answer.loaded
    tasks = (*QUESTION_TYPES, "all")
    tests = {kind: prepare(processor, samples("test", args.samples, 0, (kind,)), image_token) for kind in QUESTION_TYPES}
    truth = {kind: prepared.answers for kind, prepared in tests.items()}
    vanilla = {kind: float((answer(prepared, None) == truth[kind]).mean()) for kind, prepared in tests.items()}
    print(f"vanilla test accuracy: {vanilla}", file=sys.stderr)

    def score(plan, kind):
        prepared = tests[kind]
        accuracy = float((answer(prepared, {kind: plan}) == truth[kind]).mean())
        return {"accuracy": accuracy, "retention": accuracy / vanilla[kind],
                "flops_cut": flops_cut(dims, plan, prepared.visual_rows), "plan": [a.value for a in plan.actions]}

    calibrations = {}
    for task in tasks:
        types = QUESTION_TYPES if task == "all" else (task,)
        calib = calibration_set(prepare(processor, samples("validation", args.calibration_samples, 0, types),
                                        image_token))
        vskip_plans = [calibrate(loaded.family, loaded.model, dims, calib, "vskip", layers=n).plan
                       for n in range(num_layers + 1)]
        operator_runs = [calibrate(loaded.family, loaded.model, dims, calib, "operators", target_cut=c)
                         for c in OPERATOR_CUTS]
        calibrations[task] = {"vskip": vskip_plans, "operators": [r.plan for r in operator_runs],
                              "seconds": operator_runs[0].seconds, "gains": operator_runs[0].gains.tolist()}
        print(f"calibrated {task}", file=sys.stderr)

    results = {}
    for kind in QUESTION_TYPES:
        test_rows = tests[kind].visual_rows
        entry = {"vanilla_accuracy": vanilla[kind]}
        for name in ("vskip", "operators"):
            entry[name] = [score(p, kind) for p in calibrations[kind][name]]
            entry[f"shared_{name}"] = [score(p, kind) for p in calibrations["all"][name]]
        entry["uniform_attention"] = [score(deepest(num_layers, n, Action.SKIP_ATTENTION), kind)
                                      for n in range(num_layers + 1)]
        entry["uniform_freeze"] = [score(deepest(num_layers, n, Action.FREEZE), kind) for n in range(num_layers + 1)]
        entry["random"] = []
        for cut in OPERATOR_CUTS:
            runs = [score(random_plan(num_layers, dims, test_rows, cut, seed), kind) for seed in range(args.random_seeds)]
            entry["random"].append({"target_cut": cut, "flops_cut": float(np.mean([r["flops_cut"] for r in runs])),
                                    "retention": float(np.mean([r["retention"] for r in runs])),
                                    "worst_retention": float(min(r["retention"] for r in runs))})
        entry["opskip_scaled"] = score(scaled_preset(num_layers), kind)
        results[kind] = entry
        print(f"scored {kind}", file=sys.stderr)

    report = {"model": args.model, "samples_per_type": args.samples, "calibration_samples": args.calibration_samples,
              "random_seeds": args.random_seeds, "operator_cuts": list(OPERATOR_CUTS), "results": results,
              "calibration_seconds": {t: c["seconds"] for t, c in calibrations.items()},
              "seconds": time.perf_counter() - started,
              "command": "python tools/retention_study.py " + " ".join(sys.argv[1:])}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".png").write_bytes(_plot(report))
    print(json.dumps({k: v["opskip_scaled"] for k, v in results.items()}), file=sys.stderr)
    print(f"wrote {out}.json and .png in {report['seconds']:.0f} s", file=sys.stderr)
    return 0


def _plot(report) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    kinds = list(report["results"])
    fig = Figure(figsize=(4.2 * len(kinds), 4.0), dpi=110)
    FigureCanvasAgg(fig)
    for i, kind in enumerate(kinds):
        ax = fig.add_subplot(1, len(kinds), i + 1)
        entry = report["results"][kind]
        for name, style in (("vskip", "o-"), ("operators", "s-"), ("shared_operators", "s--"),
                            ("uniform_attention", "^:"), ("uniform_freeze", "v:")):
            points = entry[name]
            ax.plot([100 * p["flops_cut"] for p in points], [100 * p["retention"] for p in points], style,
                    label=name, markersize=4)
        ax.plot([100 * p["flops_cut"] for p in entry["random"]], [100 * p["retention"] for p in entry["random"]],
                "x-", color="grey", label="random (mean)")
        ax.plot([100 * entry["opskip_scaled"]["flops_cut"]], [100 * entry["opskip_scaled"]["retention"]], "*",
                markersize=12, color="red", label="OpSkip preset, scaled")
        ax.set_title(f"{kind} (vanilla {entry['vanilla_accuracy']:.0%})", fontsize=10)
        ax.set_xlabel("prefill FLOPs cut (%)")
        ax.set_ylabel("retention (%)")
        ax.set_ylim(0, 110)
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


if __name__ == "__main__":
    sys.exit(main())
