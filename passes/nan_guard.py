"""Move a decomposed attention core's NaN guard from the probabilities to the output.

PyTorch's ONNX export of scaled-dot-product attention with a boolean mask (the opset-20
graphs) guards the softmax against fully masked query rows, whose probabilities are NaN
(every score -inf)::

    before:  P = Softmax(scores + mask);  P' = Where(IsNaN(P), 0, P);  O = P' x V
    after:   P = Softmax(scores + mask);  O' = P x V;  O = Where(IsNaN(O'), 0, O')

Both select over every element they see, and P is [B, H, S, S] while O is [B, H, S, dh]:
for S = 1088 and dh = 64 the guard reads 17x less. On ONNX Runtime CPU the S x S Where and
IsNaN were 24% of a vanilla opset-20 prefill (docs/benchmarks.md).

Exact for finite queries, keys and values and a mask whose entries are finite or -inf (the
exporters' 0 / -inf). Then a row of P is NaN exactly when every key of that query is masked
(-inf), and then wholly NaN: the
old guard makes that row of P zero, so its row of O is zero; the new one finds that row of
O NaN (NaN x V) and makes it zero. Every other row has no NaN and passes both guards
unchanged, with the same P x V product. Only a NaN or Inf already in Q, K or V (a failure
either way) is told apart.

Layer-independent: the pass runs for every plan, the empty one included, before the skip
pass, which then restricts the moved guard with the rest of the query path. It rewrites a
guard only when the pattern is exactly this: the Where's fill is a constant zero, its
condition is IsNaN of the same Softmax output, and the guarded probabilities feed nothing
but the P x V MatMul; anything else is left as it is. P may be the Cast back to half that
follows an fp32 softmax island.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from vskip_compile.core.plan import Plan

from .graph_queries import const_values
from .locate import DecoderStructure
from .pipeline import LayerChange, PassReport


class MoveNanGuard:
    """The pass: every located softmax core's guard moved after its P x V product."""

    name = "move_nan_guard"

    def run(self, structure: DecoderStructure, plan: Plan) -> PassReport:
        report = PassReport(self.name)
        for layer in structure.layers:
            if layer.attention.kind != "softmax":
                continue
            moved = move_guard(structure.graph, layer.attention.nodes)
            if moved is not None:
                layer.attention.nodes = moved
                report.layers.append(LayerChange(layer.index, plan.actions[layer.index], "-", 0,
                                                 "NaN guard after P x V"))
        if report.changed:
            structure.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return report


def probabilities(graph: gs.Graph, softmax: gs.Node) -> gs.Tensor:
    """P: the softmax's output, or its one Cast back to half precision where the softmax
    is an fp32 island of a typed graph (:mod:`vskip_compile.core.islands`); a Cast keeps
    NaN, so the guard reads the same rows either way."""
    probs = softmax.outputs[0]
    if (len(probs.outputs) == 1 and probs.outputs[0].op == "Cast"
            and id(probs) not in {id(t) for t in graph.outputs}):
        return probs.outputs[0].outputs[0]
    return probs


def guard_of(graph: gs.Graph, softmax: gs.Node) -> tuple[gs.Node, gs.Node, gs.Node] | None:
    """(IsNaN, Where, P x V MatMul) when ``softmax`` is guarded exactly as the module says."""
    outputs = {id(t) for t in graph.outputs}
    probs = probabilities(graph, softmax)
    isnan = next((n for n in probs.outputs if n.op == "IsNaN"), None)
    where = next((n for n in probs.outputs if n.op == "Where"), None)
    if isnan is None or where is None or len(probs.outputs) != 2 or id(probs) in outputs:
        return None
    condition, fill, kept = where.inputs
    if condition is not isnan.outputs[0] or kept is not probs or not _is_zero(fill):
        return None
    if len(isnan.outputs[0].outputs) != 1:
        return None
    guarded = where.outputs[0]
    if len(guarded.outputs) != 1 or id(guarded) in outputs:
        return None
    pv = guarded.outputs[0]
    if pv.op != "MatMul" or pv.inputs[0] is not guarded:
        return None
    return isnan, where, pv


def move_guard(graph: gs.Graph, core: list[gs.Node]) -> list[gs.Node] | None:
    """Rewrite the guard of the softmax in ``core`` (see the module docstring); returns
    the core's new node list, or None when there is no such guard."""
    softmax = next((n for n in core if n.op == "Softmax"), None)
    found = guard_of(graph, softmax) if softmax is not None else None
    if found is None:
        return None
    isnan, where, pv = found
    fill = where.inputs[1]
    output = pv.outputs[0]
    raw = gs.Variable(f"{output.name}_unguarded", dtype=output.dtype, shape=output.shape)
    pv.inputs[0] = probabilities(graph, softmax)
    pv.outputs = [raw]
    is_nan = gs.Variable(f"{output.name}_isnan", dtype=np.bool_, shape=output.shape)
    new_isnan = gs.Node("IsNaN", f"{pv.name}_isnan", inputs=[raw], outputs=[is_nan])
    new_where = gs.Node("Where", f"{pv.name}_guard", inputs=[is_nan, fill, raw], outputs=[output])
    isnan.outputs, where.outputs = [], []   # the old guard is dead: cleanup removes it
    graph.nodes.extend([new_isnan, new_where])
    return [n for n in core if n is not isnan and n is not where] + [new_isnan, new_where]


def _is_zero(tensor) -> bool:
    values = const_values(tensor)
    return values is not None and values.size == 1 and float(values.reshape(-1)[0]) == 0.0
