"""Vanilla against compiled: the one comparison behind ``vskip flops --compare`` and
``vskip-compile --report``.

Both graphs are counted for the prompt layout a visual-row mask gives (S rows, V visual,
the suffix after the last visual row), and the plan's own FLOPs are derived from the
vanilla count (:func:`plan_flops`), so the ideal speedup is FLOPs(vanilla) / FLOPs(plan)
and the compiled graph's extra work, if any, is reported beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..core.graph_io import load_graph, recorded_plan
from ..core.plan import Plan
from .count import count_flops, mask_layout
from .plan import plan_flops
from .plot import plot_png
from .report import FlopsError, FlopsReport, _check_same_layout, ideal_speedup as _speedup, units


def format_comparison(vanilla: FlopsReport, compiled: FlopsReport, required: FlopsReport | None = None) -> str:
    """Per layer: FLOPs before and after, and the saving; then the totals.

    With ``required`` (``plan_flops`` of the compiled graph's plan), the ideal speedup is
    vanilla / required, and the compiled graph's extra work, if any, is shown beside it.
    """
    _check_same_layout(vanilla, compiled)
    if len(vanilla.layers) != len(compiled.layers):
        raise FlopsError(f"the graphs have {len(vanilla.layers)} and {len(compiled.layers)} layers")
    scale, unit = units(vanilla.total)
    lines = [f"{'layer':>5}  {'action':<22}  {'vanilla':>10}  {'compiled':>10}  {'saved':>7}"]
    for a, b in zip(vanilla.layers, compiled.layers):
        action = compiled.plan[b.layer] if compiled.plan else "-"
        lines.append(f"{a.layer:>5}  {action:<22}  {a.total / scale:>10.3f}  {b.total / scale:>10.3f}  "
                     f"{1 - b.total / a.total:>7.1%}")
    saved = 1 - compiled.total / vanilla.total
    line = f"total {unit} {vanilla.total / scale:.3f} -> {compiled.total / scale:.3f}: -{saved:.1%}"
    if required is None:
        lines.append(f"{line}, ideal speedup {_speedup(vanilla, compiled):.3f}x")
    else:
        extra = compiled.total - required.total
        lines.append(f"{line}; the plan requires {required.total / scale:.3f} {unit}: ideal speedup "
                     f"{_speedup(vanilla, required):.3f}x (the compiled graph computes "
                     f"{extra / scale:+.3f} {unit}, {extra / required.total:+.2%}, beyond it)")
    return "\n".join(lines)


@dataclass
class FlopsComparison:
    """Counts of a vanilla and a compiled graph for one layout, and what the plan requires
    (None for a compiled graph that records no plan)."""

    vanilla: FlopsReport
    compiled: FlopsReport
    required: FlopsReport | None = None
    workload: dict | None = None   # what the caller asked for, echoed in the JSON

    @property
    def ideal_speedup(self) -> float:
        """FLOPs(vanilla) / FLOPs the plan requires (the compiled graph's own count without a plan)."""
        return _speedup(self.vanilla, self.required or self.compiled)

    @property
    def executed_speedup(self) -> float:
        """FLOPs(vanilla) / FLOPs the compiled graph computes."""
        return _speedup(self.vanilla, self.compiled)

    def table(self) -> str:
        return format_comparison(self.vanilla, self.compiled, self.required)

    def to_dict(self) -> dict:
        data = {"workload": self.workload} if self.workload is not None else {}
        data.update({"ideal_speedup": self.ideal_speedup, "executed_speedup": self.executed_speedup,
                     "vanilla": self.vanilla.to_dict(), "compiled": self.compiled.to_dict(),
                     "required": self.required.to_dict() if self.required else None})
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def plot_png(self) -> bytes:
        """Per layer, vanilla and compiled bars (:func:`vskip_compile.flops.plot_png`)."""
        return plot_png(self.vanilla, self.compiled)


def compare_flops(vanilla_path: str | Path | onnx.ModelProto, compiled_path: str | Path | onnx.ModelProto,
                  visual: np.ndarray, plan: Plan | None = None, workload: dict | None = None) -> FlopsComparison:
    """Count both graphs for the layout of the visual-row mask ``visual`` [S]: S rows, V =
    ``visual.sum()`` visual, the suffix = the rows after the last visual one.

    ``required`` is what ``plan`` requires, else what the compiled graph's recorded plan
    does (a damaged record is refused), else None. ``workload`` is echoed in the JSON.
    """
    layout = mask_layout(visual)
    vanilla = count_flops(vanilla_path, **layout)
    source = None
    if not isinstance(compiled_path, onnx.ModelProto):
        source = str(compiled_path)
        compiled_path = load_graph(source, weights_needed=False)
    if plan is None:
        plan = recorded_plan(compiled_path, source or "graph")
    compiled = count_flops(compiled_path, **layout, source=source)
    required = None if plan is None else plan_flops(vanilla, plan)
    return FlopsComparison(vanilla, compiled, required, workload)
