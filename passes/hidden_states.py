"""Expose every decoder layer's output (the residual stream after it) as a graph output.

    h_i ── Identity ──► hidden_states.{i}      (one output per layer, [B, S, D])

``vskip validate --per-layer`` compares each layer's K/V with the PyTorch reference; K/V
are computed from the stream entering a layer, so they find a drift one layer late and
never see the last layer's. The stream itself, exposed by this pass
(``vskip-compile --hidden-states``, or on a vanilla graph with the empty plan), is
compared with the reference's decoder-layer outputs, so a drift is found in the layer
where it starts. An engine built from such a graph has the outputs too (``vskip build``).

The pass runs first, before the skip pass, on the located layers: the taps read each
layer's output tensor, and when the skip pass rewrites a layer it moves every consumer of
that tensor, the tap included, to the layer's new output, which holds every row (a
skipped row passes through on the residual). What the taps read after compiling is
checked numerically (``tests/passes/test_hidden_states.py``) against the reference on
every family, opset and hypothesis plan.

Costs one more [B, S, D] output per layer; a graph for deployment is compiled without it.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from vskip_compile.core.plan import Plan

from vskip_compile.core.hidden_states import hidden_state_name

from .locate import DecoderStructure
from .pipeline import LayerChange, PassReport


class ExposeHiddenStates:
    """The pass: an Identity from each layer's output to the graph output ``hidden_states.{i}``."""

    name = "expose_hidden_states"

    def run(self, structure: DecoderStructure, plan: Plan) -> PassReport:
        report = PassReport(self.name)
        graph = structure.graph
        taken = {t.name for t in graph.outputs}
        for layer in structure.layers:
            name = hidden_state_name(layer.index)
            if name in taken:
                report.skipped.append((layer.index, f"the graph already has an output {name}"))
                continue
            tap = gs.Variable(name, dtype=layer.output.dtype, shape=layer.output.shape)
            graph.nodes.append(gs.Node("Identity", name=f"vskip_{name}", inputs=[layer.output], outputs=[tap]))
            graph.outputs.append(tap)
            report.layers.append(LayerChange(layer.index, "exposed", "-", 1, f"output {name}"))
        return report
