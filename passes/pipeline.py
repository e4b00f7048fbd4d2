"""The compile pipeline's passes: a list, each behind one small interface.

A pass takes the located decoder (:class:`passes.locate.DecoderStructure`, whose graph it
may rewrite in place) and the plan, and returns a :class:`PassReport`: per layer, what it
changed. ``compile_model`` locates the layers once, runs :data:`PASSES` in order and the
CLI prints every report, so a new pass (a precision pass, a routing pass) is one new file
plus one line here. Like onnxscript's rule sets, the list is data, not control flow.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vskip_compile.core.plan import Action, Plan

from .locate import DecoderStructure


@dataclass
class LayerChange:
    """What a pass did to one decoder layer."""

    index: int
    action: Action | str  # a plan's action, or what a plan-independent pass did ("routed")
    rows: str            # the row input(s) the layer keeps live
    nodes_added: int
    note: str = ""       # e.g. where a frozen run's K/V come from

    @property
    def label(self) -> str:
        return self.action.value if isinstance(self.action, Action) else self.action


@dataclass
class PassReport:
    name: str
    layers: list[LayerChange] = field(default_factory=list)
    skipped: list[tuple[int, str]] = field(default_factory=list)   # (layer, why) a pass looked at and left

    @property
    def changed(self) -> bool:
        return bool(self.layers)

    @property
    def nodes_added(self) -> int:
        return sum(layer.nodes_added for layer in self.layers)

    def counts(self) -> str:
        """One line: how many layers the pass changed, by action, and the nodes it added."""
        if not self.layers:
            return f"{self.name}: no layer changed"
        actions: dict[str, int] = {}
        for layer in self.layers:
            actions[layer.label] = actions.get(layer.label, 0) + 1
        by_action = ", ".join(f"{name} x{count}" for name, count in actions.items())
        return f"{self.name}: {len(self.layers)} layers changed ({by_action}); {self.nodes_added} nodes added"

    def to_dict(self) -> dict:
        return {"name": self.name, "nodes_added": self.nodes_added,
                "layers": [{"layer": c.index, "action": c.label, "rows": c.rows,
                            "nodes_added": c.nodes_added, "note": c.note} for c in self.layers],
                "skipped": [{"layer": index, "why": why} for index, why in self.skipped]}


class Pass(Protocol):
    """A graph rewrite over located decoder layers."""

    name: str

    def run(self, structure: DecoderStructure, plan: Plan) -> PassReport:
        """Rewrite ``structure.graph`` in place as ``plan`` says; report per layer."""


def default_passes(causal_blocks: int = 0, hidden_states: bool = False) -> list[Pass]:
    """The passes ``compile`` runs, in order; ``causal_blocks`` >= 2 adds the opt-in
    causal blocking (passes/causal_blocks.py) after the skip pass; ``hidden_states`` puts
    the hidden-state taps (passes/hidden_states.py) first, so they follow every rewrite."""
    from .hidden_states import ExposeHiddenStates
    from .nan_guard import MoveNanGuard
    from .skip_visual import SkipVisualRows

    passes: list[Pass] = [ExposeHiddenStates()] if hidden_states else []
    passes += [MoveNanGuard(), SkipVisualRows()]
    if causal_blocks:  # CausalBlocks refuses a count outside 2-64 (VskipError, one line)
        from .causal_blocks import CausalBlocks

        passes.append(CausalBlocks(causal_blocks))
    return passes


def routable_passes() -> list[Pass]:
    """The passes ``compile --routable`` runs: the NaN guard move, then every layer's rows
    as runtime inputs (passes/routable.py). Causal blocking needs all-row queries, which a
    routable graph never has, so it has no place here."""
    from .nan_guard import MoveNanGuard
    from .routable import RouteRows

    return [MoveNanGuard(), RouteRows()]


def run_passes(structure: DecoderStructure, plan: Plan, passes: list[Pass] | None = None) -> list[PassReport]:
    return [p.run(structure, plan) for p in (default_passes() if passes is None else passes)]
