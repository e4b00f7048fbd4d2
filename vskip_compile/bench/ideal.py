"""Ideal speedups: FLOPs(vanilla) / FLOPs(plan) per plan, and where they came from.

Three sources, tried in this order, the first that answers wins:

1. the caller's function ``ideal(plan, visual_mask, compiled_graph)``;
2. the matrix-product FLOPs counted on the vanilla graph by :mod:`vskip_compile.flops`,
   scaled to what the plan requires (``plan_flops``). Not the compiled graph's own count:
   work a compiled graph does beyond the plan is overhead the measured speedup has to pay;
3. when the counter refuses the graph, the analytic formula of DESIGN.md section 6
   (:func:`vskip_compile.flops.analytic_flops`) from the sidecar's dimensions, with the
   counter's reason recorded in the source string.

The speedups are computed before any timing, so a failing counter costs no benchmark time.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..core.errors import VskipError
from ..core.plan import Plan

IDEAL_GIVEN = "given by the caller"
IDEAL_FLOPS_MODULE = "vskip_compile.flops (matrix products counted on the vanilla graph, those the plan skips removed)"
IDEAL_ANALYTIC = "analytic formula (DESIGN.md section 6) from the sidecar dims"

# An ideal speedup: (plan, visual-row mask [S], the plan's compiled graph) -> FLOPs ratio.
IdealFn = Callable[[Plan, np.ndarray, Path], float]


def analytic_ideal(dims: dict) -> IdealFn:
    """The analytic formula's FLOPs(vanilla) / FLOPs(plan) for the model dimensions ``dims``."""
    def ideal(plan: Plan, visual: np.ndarray, graph: Path | None = None) -> float:
        from ..flops import analytic_flops

        return analytic_flops(dims, Plan.empty(plan.num_layers), visual) / analytic_flops(dims, plan, visual)

    return ideal


def counted_ideal(model: Path) -> IdealFn:
    """FLOPs counted on the vanilla graph ``model`` (once per prompt layout) over those
    each plan requires."""
    vanilla: dict = {}

    def ideal(plan: Plan, visual: np.ndarray, graph: Path | None = None) -> float:
        from ..flops import count_flops, ideal_speedup, mask_layout, plan_flops  # onnx: not at start-up

        key = visual.tobytes()
        if key not in vanilla:
            vanilla[key] = count_flops(model, **mask_layout(visual))
        return float(ideal_speedup(vanilla[key], plan_flops(vanilla[key], plan)))

    return ideal


def ideal_speedups(ideal: IdealFn | None, model: Path, dims: dict, plans: list[tuple[str, Plan, str]],
                   graphs: list[Path], visual: np.ndarray,
                   progress: Callable[[str], None] | None = None) -> tuple[dict[str, float], str]:
    """Ideal speedup per plan label (``plans``: (label, plan, source), ``graphs`` their
    compiled graphs) and the source string saying where they came from."""
    def apply(fn: IdealFn) -> dict[str, float]:
        return {label: float(fn(plan, visual, graph)) for (label, plan, _), graph in zip(plans, graphs)}

    if ideal is not None:
        return apply(ideal), IDEAL_GIVEN
    try:
        return apply(counted_ideal(model)), IDEAL_FLOPS_MODULE
    except VskipError as exc:
        if progress:
            progress(f"FLOPs counter: {exc}; using the analytic formula")
        return apply(analytic_ideal(dims)), f"{IDEAL_ANALYTIC} (vskip_compile.flops refused the graphs: {exc})"
