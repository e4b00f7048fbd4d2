"""Routable graphs: every layer's live rows as runtime inputs, computed on the host.

A graph compiled with ``vskip-compile --routable`` takes, for each decoder layer i, two
1-D int64 inputs (ascending row numbers, shared by the batch):

- ``vskip_layer{i}_attention_rows``: the rows that are queries of layer i's attention and
  get its update (K/V are still computed from every row);
- ``vskip_layer{i}_ffn_rows``: the rows that get layer i's FFN update.

So one graph (one TensorRT engine) serves every plan: the plan is applied by what the host
feeds. :func:`routing_feeds` is the one place that turns a plan and the visual rows into
these inputs, with the meaning of an action taken from :func:`vskip_compile.core.plan.live_rows`
(full = every row, a skipped branch = the text rows, freeze with ``prefix_through_visual`` =
the suffix) and the row sets, and their checks, from
:func:`vskip_compile.core.visual_rows.row_feeds`. :func:`routing_layers` tells from a
graph's (or an engine's) input names whether it is routable and how many layers it has;
:func:`vskip_compile.core.graph_io.recorded_routable` reads the same from an ONNX file's
metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np

from .errors import VskipError
from .plan import Plan, Rows
from .visual_rows import ROW_INPUT, row_feeds, row_inputs

ATTENTION_ROWS = "vskip_layer{}_attention_rows"
FFN_ROWS = "vskip_layer{}_ffn_rows"
_NAME = re.compile(r"vskip_layer(\d{1,6})_(attention|ffn)_rows")


def attention_rows_input(layer: int) -> str:
    return ATTENTION_ROWS.format(layer)


def ffn_rows_input(layer: int) -> str:
    return FFN_ROWS.format(layer)


def routing_inputs(num_layers: int) -> list[str]:
    """The routing inputs of a routable graph with ``num_layers`` layers, in the graph's
    order: layer 0's attention rows, layer 0's FFN rows, layer 1's, ..."""
    return [name for i in range(num_layers) for name in (attention_rows_input(i), ffn_rows_input(i))]


def is_routing_input(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


def routing_layers(names: Iterable[str]) -> int | None:
    """The layer count of a routable graph from its input names (any of them; others are
    ignored), or None when it takes no routing input. A graph with some layers' inputs
    missing is refused in one line: it cannot be fed any plan."""
    found = {name for name in names if is_routing_input(name)}
    if not found:
        return None
    count = 1 + max(int(_NAME.fullmatch(name)[1]) for name in found)
    missing = [name for name in routing_inputs(count) if name not in found]
    if missing:
        raise VskipError(f"the graph takes routing inputs for {count} layers but lacks {', '.join(missing[:3])}"
                         + (" ..." if len(missing) > 3 else "") + "; it is not a graph vskip-compile --routable wrote")
    return count


def routing_feeds(plan: Plan, visual: np.ndarray, names: Iterable[str]) -> dict[str, np.ndarray]:
    """The routing inputs among ``names`` (a routable graph's input names; others are
    ignored) that apply ``plan`` to a prompt whose visual rows are ``visual`` (bool [S]).

    Each value is a 1-D int64 array: every row (0..S-1) for a branch the plan runs in
    full, else the rows :func:`vskip_compile.core.plan.live_rows` keeps (the text rows, or
    the suffix after the last visual row). Raises VskipError (one line) when the graph is
    not routable, when the plan's layer count differs from the graph's, and where
    :func:`vskip_compile.core.visual_rows.row_feeds` would: every row visual, or no text
    row after the last visual one under ``prefix_through_visual``. The empty plan feeds
    every row to every layer: the vanilla graph's outputs.
    """
    names = list(names)
    layers = routing_layers(names)
    if layers is None:
        raise VskipError("not a routable graph: it takes no per-layer row inputs "
                         f"({attention_rows_input(0)}, ...); compile it with vskip-compile --routable")
    if plan.num_layers != layers:
        raise VskipError(f"the plan has {plan.num_layers} layers but the routable graph has {layers}; "
                         "use a plan made for this model")
    visual = np.asarray(visual)
    if visual.ndim != 1 or visual.dtype != bool:
        raise VskipError(f"the visual rows must be a 1-D boolean mask, got {visual.dtype} with shape {visual.shape}")
    by_name = row_feeds(visual, row_inputs(plan))
    rows = {Rows.ALL: np.arange(visual.size, dtype=np.int64)}
    rows.update({kind: by_name[name] for kind, name in ROW_INPUT.items() if name in by_name})
    feeds = {}
    for layer in range(layers):
        attention, ffn = plan.live_rows(layer)
        feeds[attention_rows_input(layer)] = rows[attention]
        feeds[ffn_rows_input(layer)] = rows[ffn]
    return {name: feeds[name] for name in names if name in feeds}
