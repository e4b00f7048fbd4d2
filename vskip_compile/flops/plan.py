"""The FLOPs a skip plan requires, from the count of the vanilla graph."""

from __future__ import annotations

from ..core.plan import Action, Plan, Rows
from .report import FlopsError, FlopsReport, LayerFlops


def plan_flops(vanilla: FlopsReport, plan: Plan) -> FlopsReport:
    """The FLOPs ``plan`` requires, from the count of the vanilla graph.

    Per layer, K/V projections keep every row; q/o projections and the attention products
    keep the attention-live rows, the FFN the FFN-live rows, as :meth:`Plan.live_rows`
    names them (all S rows, the S - V text rows, or the suffix after the last visual row).
    Every vanilla count of these classes is proportional to its query rows, so the scaling
    is exact; a part on all S rows keeps its visual share V/S, a part on live rows is text.

    This, not the count of a compiled graph, is the ideal speedup's denominator: a compiled
    graph may compute some rows twice (inside a run of freeze layers the live rows' K/V are
    recomputed, see passes/skip_visual.py), and that is overhead the measured time pays.
    """
    if vanilla.plan and any(a != Action.FULL.value for a in vanilla.plan):
        raise FlopsError("plan_flops needs the count of the vanilla graph, not of a compiled one")
    if plan.num_layers != len(vanilla.layers):
        raise FlopsError(f"the plan has {plan.num_layers} layers but the graph has {len(vanilla.layers)}")
    S, V = vanilla.sequence_length, vanilla.visual_rows
    count = {Rows.ALL: S, Rows.TEXT: S - V, Rows.SUFFIX: vanilla.suffix_rows}
    layers = []
    for x in vanilla.layers:
        attention, ffn = plan.live_rows(x.layer)
        if x.qkv and attention is not Rows.ALL:
            raise FlopsError(f"layer {x.layer}: fused q/k/v projections: the query share cannot be separated")
        n_attn, n_ffn = count[attention], count[ffn]
        y = LayerFlops(x.layer, q=x.q * n_attn // S, k=x.k, v=x.v, qkv=x.qkv, o=x.o * n_attn // S,
                       qk=x.qk * n_attn // S, pv=x.pv * n_attn // S, ffn=x.ffn * n_ffn // S)
        every_row = [y.k, y.v, y.qkv] + ([y.q, y.o, y.qk, y.pv] if attention is Rows.ALL else []) \
            + ([y.ffn] if ffn is Rows.ALL else [])
        y.visual = sum(f * V // S for f in every_row)
        y.text = y.total - y.visual
        layers.append(y)
    return FlopsReport(S, V, vanilla.prefix_rows, vanilla.suffix_rows, vanilla.batch, layers, head=vanilla.head,
                       other=vanilla.other, plan=[a.value for a in plan.actions], source=vanilla.source)
