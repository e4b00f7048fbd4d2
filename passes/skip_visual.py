"""Skip the visual rows' attention and/or FFN in decoder layers, as a plan says.

For a layer with input h, ``a`` its attention branch and ``f`` its FFN branch, and T the
rows that stay live (a graph input, ``vskip_text_rows``: every row that is not visual)::

    before:   h --+-- a(h) --> mid = h + a --+-- f(mid) --> out = mid + f
    
    skip visual attention:
              h_T = Gather(h, T);  a_T = a restricted to T     (queries, o_proj: T only;
              mid = ScatterND(h, T, h_T + a_T)             K/V still from every row of h)
              out = mid + f(mid)                                (FFN on every row)
    skip visual FFN:
              mid as before;  mid_T = Gather(mid, T)
              out = ScatterND(mid, T, mid_T + f(mid_T))
    freeze:   mid_T = h_T + a_T;  out = ScatterND(h, T, mid_T + f(mid_T))

Skipped rows pass through on the residual; keys and values, and so the ``present.*``
outputs, are still computed from every row of the layer's input, in the original row
order. Between consecutive skipping layers the live rows are reused straight from the
scatter's update instead of being gathered again.

A run of consecutive freeze layers (nothing between them, e.g. no DeepStack add) leaves
the skipped rows of its input ``h_a`` untouched, so inside the run the live rows travel
alone and the full stream is only rebuilt once, after the run::

    layer l > a:  K/V path(h_a)  with the live rows' K/V (the same path on the live rows
                                 of h_l) scattered into its present K/V
                  out_l = ScatterND(h_a, T, out_T)     (dead unless l ends the run)

which removes a full-width write-back per layer and leaves every frozen layer's all-row
work reading the same tensor. With ``freeze_scope`` =
``prefix_through_visual``, freeze layers use a second input, ``vskip_suffix_rows``: the
rows after the last visual row.

Requires: a ``DecoderStructure`` from ``locate.py``. Does not handle: row sets that differ
between batch rows (the row inputs are shared by the whole batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_graphsurgeon as gs

from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, Plan, Rows
from vskip_compile.core.visual_rows import ROW_INPUT, row_inputs

from .locate import DecoderStructure, LayerMatch
from .pipeline import LayerChange, PassReport
from .rows import Builder, RestrictError, Restricted, RowSubset, restrict_region


class RewriteError(VskipError):
    """A located layer that this pass cannot rewrite as the plan says (the message says why)."""


class SkipVisualRows:
    """The pass: every skipping layer of the plan rewritten (see the module docstring)."""

    name = "skip_visual_rows"

    def run(self, structure: DecoderStructure, plan: Plan) -> PassReport:
        if plan.is_empty:  # nothing to skip: the graph is left exactly as it was
            return PassReport(self.name)
        return skip_visual_rows(structure, plan)


def skip_visual_rows(structure: DecoderStructure, plan: Plan) -> PassReport:
    """Rewrite ``structure.graph`` in place per ``plan``; returns what changed per layer."""
    graph = structure.graph
    if plan.num_layers != len(structure.layers):
        raise RewriteError(f"the plan has {plan.num_layers} layers but the graph has {len(structure.layers)}")
    builder = Builder(graph, "vskip")
    names = row_inputs(plan)
    subsets = {name: RowSubset(graph, builder, name) for name in names}
    result = PassReport(SkipVisualRows.name)
    rewrite = LayerRewrite(graph, builder, structure)
    previous: tuple[LayerMatch, Action] | None = None
    for layer, action in zip(structure.layers, plan.actions):
        continues_run = (previous is not None and previous[1] is Action.FREEZE and action is Action.FREEZE
                         and layer.input is previous[0].output)
        previous = (layer, action)
        if not continues_run:
            rewrite.run = None
        if action is Action.FULL:
            continue
        # One row set per layer: the rewrite gathers the live rows once for both branches.
        kind = next(rows for rows in plan.live_rows(layer.index) if rows is not Rows.ALL)
        name = ROW_INPUT[kind]
        before = builder.nodes_added
        note = rewrite.layer(layer, action, subsets[name])
        result.layers.append(LayerChange(layer.index, action, name, builder.nodes_added - before, note))
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    return result


@dataclass
class _FrozenRun:
    """The run of freeze layers being rewritten: its input stream and residual base."""

    input: gs.Tensor     # h_a: the first layer's input, whose skipped rows the run keeps
    base: gs.Tensor      # the first layer's residual operand: the write-backs go into it


class LayerRewrite:
    """The row surgery on located layers, shared with the routable pass (passes/routable.py)."""

    def __init__(self, graph: gs.Graph, builder: Builder, structure: DecoderStructure):
        self.graph = graph
        self.b = builder
        self.scopes = structure.scopes
        self.subst: dict[int, gs.Tensor] = {}  # id(original tensor) -> tensor that now stands for it
        self.run: _FrozenRun | None = None      # set while inside a run of freeze layers

    def current(self, tensor: gs.Tensor) -> gs.Tensor:
        return self.subst.get(id(tensor), tensor)

    def describe(self, node: gs.Node) -> str:
        scope = self.scopes.get(node.name)
        return f"{node.op} node '{node.name}'" + (f" ({scope})" if scope else "")

    def layer(self, layer: LayerMatch, action: Action, rows: RowSubset) -> str:
        """Rewrite one skipping layer; returns a note on how (empty when nothing to say)."""
        self.graph.toposort()
        h = self.current(layer.input)
        residual = self.current(layer.attn_residual)
        mid = layer.attn_add.outputs[0]
        if action.skips_attention:
            attn_rows = self.attention_rows(layer, h, rows)
            mid_rows = self.b.op("Add", [rows.gather(residual, 1), attn_rows], dtype=mid.dtype)
            if action is Action.SKIP_ATTENTION:
                self.replace(mid, rows.scatter(residual, mid_rows))
                return ""
            ffn_rows, ffn_residual_rows = self.ffn_rows(layer, mid, mid_rows, rows)
            out_rows = self.b.op("Add", [ffn_residual_rows, ffn_rows], dtype=layer.output.dtype)
            follows = self.run is not None
            if not follows:
                self.run = _FrozenRun(input=h, base=residual)
            self.replace(layer.output, rows.scatter(self.run.base, out_rows))
            return self._kv_from_run_input(layer, h, rows) if follows else ""
        # skip visual FFN: attention as before, FFN on the live rows only
        mid_rows = rows.gather(mid, 1)
        ffn_rows, ffn_residual_rows = self.ffn_rows(layer, mid, mid_rows, rows)
        out_rows = self.b.op("Add", [ffn_residual_rows, ffn_rows], dtype=layer.output.dtype)
        self.replace(layer.output, rows.scatter(self.current(layer.ffn_residual), out_rows))
        return ""

    def attention_rows(self, layer: LayerMatch, h: gs.Tensor, rows: RowSubset) -> gs.Tensor:
        """The attention branch for the live rows: query path, core and o_proj, restricted."""
        query, branch = layer.attention.query, layer.attn_branch
        region = (_ancestors(query) & _descendants(h)) | (_descendants(query) & _ancestors(branch))
        if not region:
            raise RewriteError(f"layer {layer.index}: the attention query does not come from the layer input")
        state = restrict_region(rows, self.b, self._ordered(region), [Restricted(h, rows.gather(h, 1), 1)],
                                self.describe)
        return self._take(state, branch, layer, "attention branch")

    def ffn_rows(self, layer: LayerMatch, mid: gs.Tensor, mid_rows: gs.Tensor, rows: RowSubset):
        """The FFN branch and its residual operand for the live rows."""
        branch, residual = layer.ffn_branch, layer.ffn_residual
        region = _descendants(mid) & (_ancestors(branch) | _ancestors(residual))
        state = restrict_region(rows, self.b, self._ordered(region), [Restricted(mid, mid_rows, 1)], self.describe)
        residual_rows = mid_rows if residual is mid else self._take(state, residual, layer, "FFN residual")
        return self._take(state, branch, layer, "FFN branch"), residual_rows

    def _kv_from_run_input(self, layer: LayerMatch, h: gs.Tensor, rows: RowSubset) -> str:
        """Inside a frozen run: K/V over every row from the run's input, live rows from ``h``.

        The K/V path (input norm up to the present K/V) is row-wise, and the skipped rows
        of ``h`` equal those of the run's input, so running the path on the run input and
        overwriting the live rows with the path run on the live rows of ``h`` gives the
        same K/V. ``h`` (the previous write-back) is then no longer read, which removes
        that write-back. Left as it is (reading ``h``: correct, one write-back more) when the
        present K/V are not graph outputs or the path does not follow the rows; the returned
        note says which happened.
        """
        presents = [self.current(t) for t in (layer.present_key, layer.present_value) if t is not None]
        if len(presents) != 2:
            return "K/V from the layer input: the present K/V are not graph outputs"
        region = _descendants(h) & (_ancestors(presents[0]) | _ancestors(presents[1]))
        nodes = self._ordered(region)
        live = _live_nodes(self.graph)
        exits = []  # tensors the path hands to the rest of the graph
        for node in nodes:
            for out in node.outputs:
                outside = [c for c in out.outputs if id(c) not in region and id(c) in live]
                if outside or out in self.graph.outputs:
                    exits.append((out, outside))
        try:
            state = restrict_region(rows, self.b, nodes, [Restricted(h, rows.gather(h, 1), 1)], self.describe)
        except RestrictError as exc:
            return f"K/V from the layer input: {exc}"
        restricted = [state.restricted.get(id(out)) for out, _ in exits]
        if any(r is None for r in restricted):
            return "K/V from the layer input: a K/V path output does not follow the rows"
        for node in nodes:
            for i, tensor in enumerate(node.inputs):
                if tensor is h:
                    node.inputs[i] = self.run.input
        for (out, consumers), r in zip(exits, restricted):
            self.replace(out, rows.scatter_along(out, r.tensor, r.axis), consumers)
        return "K/V from the run's input"

    def _take(self, state, tensor: gs.Tensor, layer: LayerMatch, what: str) -> gs.Tensor:
        restricted = state.restricted.get(id(tensor))
        if restricted is None or restricted.axis != 1:
            raise RewriteError(f"layer {layer.index}: the {what} does not follow the rows of the layer input")
        return restricted.tensor

    def _ordered(self, region: set[int]) -> list[gs.Node]:
        return [n for n in self.graph.nodes if id(n) in region]

    def replace(self, old: gs.Tensor, new: gs.Tensor, consumers: list[gs.Node] | None = None) -> None:
        """Every consumer of ``old`` (or those given) reads ``new`` instead; a graph output keeps its name."""
        for node in list(old.outputs) if consumers is None else consumers:
            for i, tensor in enumerate(node.inputs):
                if tensor is old:
                    node.inputs[i] = new
        for position, output in enumerate(self.graph.outputs):
            if output is old:
                new.name, old.name = old.name, f"{old.name}_vskip_replaced"
                self.graph.outputs[position] = new
        self.subst[id(old)] = new


def _live_nodes(graph: gs.Graph) -> set[int]:
    """Nodes the graph outputs depend on (rewritten-away nodes linger until cleanup)."""
    live: set[int] = set()
    for output in graph.outputs:
        live |= _ancestors(output)
    return live


def _descendants(tensor: gs.Tensor) -> set[int]:
    return _reach(tensor, forward=True)


def _ancestors(tensor: gs.Tensor) -> set[int]:
    return _reach(tensor, forward=False)


def _reach(tensor: gs.Tensor, forward: bool) -> set[int]:
    """ids of the nodes downstream (``forward``) or upstream of ``tensor``."""
    seen: set[int] = set()
    stack = [tensor]
    while stack:
        current = stack.pop()
        for node in (current.outputs if forward else current.inputs):
            if id(node) not in seen:
                seen.add(id(node))
                stack.extend(t for t in (node.outputs if forward else node.inputs) if t is not None)
    return seen
