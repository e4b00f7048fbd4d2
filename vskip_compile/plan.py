"""The skip plan's vocabulary: per-layer actions and the freeze scope.

This is the small leaf that both ``models/`` (the PyTorch reference) and ``passes/``
(the graph rewrite) import; it depends on nothing but the standard library.
Semantics (DESIGN.md section 2), for the visual rows V of a layer with input h:

    full                    V -> normal layer
    skip_visual_attention   V -> h + FFN(norm2(h))      (V rows are not queries)
    skip_visual_ffn         V -> h + Attn(norm1(h))
    freeze                  V -> h
Text rows always get the normal layer; K/V are computed for every row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Action(str, enum.Enum):
    FULL = "full"
    SKIP_ATTENTION = "skip_visual_attention"
    SKIP_FFN = "skip_visual_ffn"
    FREEZE = "freeze"

    @property
    def skips_attention(self) -> bool:
        return self in (Action.SKIP_ATTENTION, Action.FREEZE)

    @property
    def skips_ffn(self) -> bool:
        return self in (Action.SKIP_FFN, Action.FREEZE)


class FreezeScope(str, enum.Enum):
    # Only the visual rows are frozen in freeze layers.
    VISUAL = "visual"
    # Every row up to and including the last visual row is frozen in freeze layers;
    # only the text suffix after the last visual row is updated.
    PREFIX_THROUGH_VISUAL = "prefix_through_visual"


@dataclass(frozen=True)
class Plan:
    """One action per decoder layer plus the freeze scope."""

    actions: tuple[Action, ...]
    freeze_scope: FreezeScope = FreezeScope.VISUAL

    def __post_init__(self):
        object.__setattr__(self, "actions", tuple(Action(a) for a in self.actions))
        object.__setattr__(self, "freeze_scope", FreezeScope(self.freeze_scope))

    @classmethod
    def empty(cls, num_layers: int) -> "Plan":
        return cls((Action.FULL,) * num_layers)

    @classmethod
    def from_layers(cls, num_layers: int, layers: dict[int, Action | str],
                    freeze_scope: FreezeScope | str = FreezeScope.VISUAL) -> "Plan":
        actions = [Action.FULL] * num_layers
        for index, action in layers.items():
            if not 0 <= index < num_layers:
                raise ValueError(f"layer {index} is out of range for a {num_layers}-layer model")
            actions[index] = Action(action)
        return cls(tuple(actions), FreezeScope(freeze_scope))

    @property
    def num_layers(self) -> int:
        return len(self.actions)

    @property
    def is_empty(self) -> bool:
        return all(a is Action.FULL for a in self.actions)
