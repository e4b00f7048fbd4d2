"""Which decoder layer and role each counted node of a graph has.

The attention cores (Softmax cores or ``Attention`` ops, found by the graph queries that
``passes/locate.py`` matches layers with) are numbered along the data flow: a tensor's
*level* is the number of cores upstream of it, so layer i's q/k/v projections and layer
i-1's o_proj/FFN read level-i tensors. A projection (a MatMul with a 2-D constant
weight) is q, k or v of core i when it is the nearest projection behind that core's
query, key or value input; o_proj when it is the nearest one after the core's output;
otherwise FFN of the layer whose o_proj precedes it, except after the last layer, where
a projection whose output reaches a graph output without another projection in between
is the LM head. For graphs ``locate_layers`` can read (vanilla exports) the result is
cross-checked against it; compiled graphs, where the residual Adds act on gathered rows,
rely on the level walk alone.
"""

from __future__ import annotations

import onnx_graphsurgeon as gs

from ..passes.graph_queries import AttentionCore, GraphQueries
from .report import FlopsError

COUNTED = {"MatMul", "Gemm", "Attention"}  # the matrix products a count includes


def where(node: gs.Node) -> str:
    return f"{node.op} node {node.name!r}"


def attribute(graph: gs.Graph) -> dict[int, tuple[int | None, str]]:
    """id(node) -> (layer or None, role) for every counted node of ``graph`` (topologically
    sorted); see the module docstring. Raises FlopsError where the structure is not one."""
    queries = GraphQueries(graph)
    cores = _cores(queries, graph)
    level = _levels(graph, cores)
    roles: dict[int, tuple[int | None, str]] = {}
    for i, core in enumerate(cores):
        if core.kind == "attention_op":
            roles[id(core.nodes[0])] = (i, "attention")
        else:
            roles[id(core.nodes[0])] = (i, "qk")
            roles[id(core.nodes[-1])] = (i, "pv")
        found = {}
        for role, tensor in (("q", core.query), ("k", core.key), ("v", core.value)):
            for proj in queries.nearest_projections(tensor, backward=True):
                found[id(proj)] = "qkv" if id(proj) in found and found[id(proj)] != role else role
        for node_id, role in found.items():
            roles[node_id] = (i, role)
        missing = {"q", "k", "v"} - {r for r in found.values()}
        if missing and "qkv" not in found.values():
            raise FlopsError(f"layer {i}: no {'/'.join(sorted(missing))} projection (a MatMul with a 2-D constant "
                             f"weight) found behind the attention core {where(core.nodes[0])}")
        o_proj = queries.nearest_projections(core.output, backward=False)
        if len(o_proj) != 1:
            raise FlopsError(f"layer {i}: expected one o_proj after the attention core {where(core.nodes[-1])}, "
                             f"found {len(o_proj)}")
        roles[id(o_proj[0])] = (i, "o")
    last = len(cores)
    for node in graph.nodes:
        if node.op not in COUNTED or id(node) in roles:
            continue
        if not queries.is_projection(node):
            roles[id(node)] = (None, "other")
            continue
        lvl = max(level.get(id(t), 0) for t in node.inputs if t is not None)
        if lvl == 0:
            roles[id(node)] = (None, "other")  # before the first layer
        elif lvl == last and queries.reaches_output(node):
            roles[id(node)] = (None, "head")
        else:
            roles[id(node)] = (lvl - 1, "ffn")
    _cross_check(graph, roles)
    return roles


def _cores(queries: GraphQueries, graph: gs.Graph) -> list[AttentionCore]:
    cores = []
    for node in queries.all_cores():
        if node.op == "Attention":
            cores.append(queries.attention_op_core(node))
            continue
        pv = queries.pv_after(node)  # all_cores found it: a Softmax feeding a PV MatMul
        core, why = queries.softmax_core(pv, node)
        if core is None:
            raise FlopsError(f"{where(node)}: {why}")
        cores.append(core)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    cores.sort(key=lambda c: order[id(c.nodes[0])])
    return cores


def _levels(graph: gs.Graph, cores: list[AttentionCore]) -> dict[int, int]:
    """id(tensor) -> number of attention cores upstream of it (graph in topological order)."""
    ends = {id(core.nodes[-1]) for core in cores}
    level: dict[int, int] = {}
    for node in graph.nodes:
        inp = max((level.get(id(t), 0) for t in node.inputs if t is not None), default=0)
        out = inp + 1 if id(node) in ends else inp
        for tensor in node.outputs:
            level[id(tensor)] = out
    seen = [max(level.get(id(t), 0) for t in (c.query, c.key, c.value)) for c in cores]
    if seen != list(range(len(cores))):
        raise FlopsError(f"the attention cores do not form one chain along the stream (levels {seen}); "
                         "parallel attention blocks are not handled")
    return level


def _cross_check(graph: gs.Graph, roles: dict[int, tuple[int | None, str]]) -> None:
    """Where the compiler's locator reads the graph (vanilla exports), it must agree."""
    from ..passes.locate import LocateError, locate_layers

    try:
        structure = locate_layers(graph, require_cache=False)
    except LocateError:
        return  # compiled graphs: the row Gathers hide the residual Adds from the locator
    for layer in structure.layers:
        expected = [(layer.o_proj, "o"), (layer.down_proj, "ffn")]
        expected += [(n, roles.get(id(n), (None, ""))[1]) for n in layer.attention.nodes if n.op in COUNTED]
        for node, role in expected:
            if roles.get(id(node)) != (layer.index, role):
                raise FlopsError(f"internal: {where(node)} is layer {layer.index} {role} for the locator but "
                                 f"{roles.get(id(node))} for the FLOPs walk")
