"""The names of a graph's per-layer hidden-state outputs (``vskip-compile --hidden-states``).

``hidden_states.{i}`` is decoder layer i's output, the residual stream after it, [B, S, D]
(:mod:`passes.hidden_states` adds them; the PyTorch reference gives the same tensors).
"""

from __future__ import annotations

PREFIX = "hidden_states."


def hidden_state_name(layer: int) -> str:
    return f"{PREFIX}{layer}"


def hidden_state_layer(name: str) -> int | None:
    """The layer of a ``hidden_states.{i}`` output, else None."""
    index = name[len(PREFIX):] if name.startswith(PREFIX) else ""
    return int(index) if index.isdigit() and len(index) < 7 else None
