"""Route every decoder layer's rows through runtime inputs: one graph for every plan.

For layer i with input h, ``a`` its attention branch and ``f`` its FFN branch, and two new
graph inputs, A = ``vskip_layer{i}_attention_rows`` and F = ``vskip_layer{i}_ffn_rows``
(1-D int64, ascending; names from ``vskip_compile.core.routing``)::

    before:   h --+-- a(h) --> mid = h + a --+-- f(mid) --> out = mid + f

    after:    h_A   = Gather(h, A)
              a_A   = a restricted to the queries A      (query path, core, o_proj: rows A;
              mid   = ScatterND(h, A, h_A + a_A)          K/V, present.* still from every row of h)
              mid_F = Gather(mid, F)
              out   = ScatterND(mid, F, mid_F + f(mid_F))

What the host feeds decides the plan (``core.routing.routing_feeds``): A = F = every row
is the normal layer; A = the text rows skips visual attention; F = the text rows skips the
visual FFN; both is freeze; the suffix after the last visual row is freeze with
``prefix_through_visual``. The rows outside A (F) pass through on the residual, exactly
as the static pass (``skip_visual.py``) computes them, with the same restriction
machinery (``rows.py``).

Every layer pays two gathers and two scatters of the stream even when fed every row: the
static pass's reuse of live rows between consecutive skipping layers and its frozen-run
K/V trick depend on which layers skip, which is now known only at run time. For the same
reason the causal blocking pass (``causal_blocks.py``, which cuts all-row queries into
causal chunks by position) does not apply: the queries of every core are a runtime row set
whose chunks cannot be proven causal by structure, so ``--causal-blocks`` with
``--routable`` is refused.

Requires: a ``DecoderStructure`` from ``locate.py``, not compiled before. Does not handle:
row sets that differ between batch rows (the inputs are shared by the whole batch).
"""

from __future__ import annotations

from vskip_compile.core.plan import Plan
from vskip_compile.core.routing import attention_rows_input, ffn_rows_input

from .locate import DecoderStructure, LayerMatch
from .pipeline import LayerChange, PassReport
from .rows import Builder, RowSubset
from .skip_visual import LayerRewrite, RewriteError

ROUTED = "routed"  # what the pass reports for each layer (it applies no plan's action)


class RouteRows:
    """The pass: every layer takes its attention and FFN rows as inputs (module docstring).
    The plan it is given is ignored: a routable graph takes its plan at run time."""

    name = "route_rows"

    def run(self, structure: DecoderStructure, plan: Plan) -> PassReport:
        return route_rows(structure)


def route_rows(structure: DecoderStructure) -> PassReport:
    """Rewrite ``structure.graph`` in place; returns one change per layer."""
    graph = structure.graph
    if not structure.layers:
        raise RewriteError("the graph has no decoder layer to route")
    builder = Builder(graph, "vskip")
    rewrite = LayerRewrite(graph, builder, structure)
    result = PassReport(RouteRows.name)
    for layer in structure.layers:
        attention = RowSubset(graph, builder, attention_rows_input(layer.index))
        ffn = RowSubset(graph, builder, ffn_rows_input(layer.index))
        before = builder.nodes_added
        _route_layer(rewrite, layer, attention, ffn)
        result.layers.append(LayerChange(layer.index, ROUTED, f"{attention.name}, {ffn.name}",
                                         builder.nodes_added - before))
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return result


def _route_layer(rewrite: LayerRewrite, layer: LayerMatch, attention: RowSubset, ffn: RowSubset) -> None:
    rewrite.graph.toposort()
    b = rewrite.b
    h = rewrite.current(layer.input)
    residual = rewrite.current(layer.attn_residual)
    mid = layer.mid
    attention_rows = rewrite.attention_rows(layer, h, attention)
    mid_rows = b.op("Add", [attention.gather(residual, 1), attention_rows], dtype=mid.dtype)
    new_mid = attention.scatter(residual, mid_rows)
    # The FFN region is cloned from the original mid, still wired to the original attention
    # Add; only afterwards does every reader of mid move to the scattered stream.
    ffn_rows, ffn_residual_rows = rewrite.ffn_rows(layer, mid, ffn.gather(new_mid, 1), ffn)
    out_rows = b.op("Add", [ffn_residual_rows, ffn_rows], dtype=layer.output.dtype)
    rewrite.replace(mid, new_mid)
    rewrite.replace(layer.output, ffn.scatter(rewrite.current(layer.ffn_residual), out_rows))
