"""Graph queries (passes/graph_queries.py) on hand-built graphs whose answers are known by
construction: which nodes are projections, where the attention core is, what each search finds.

    x ─ Cast ─ xc ─ Mul(xc, 1/sqrt(mean(xc²))) = n ─┬─ q_proj (weight Transpose(wq_t)) ─ q
                                                   ├─ k_proj ─ k ─ Transpose ─ kt      k, v: graph outputs
                                                   └─ v_proj ─ v
    scores = q @ kt ─ Softmax ─ Where(nan, 0, ·) ─ pv = · @ v ─ o_proj ─ + xc = mid
    mid ─ gate, up ─ Mul ─ down ─ + mid = out ─ lm_head ─ logits
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from vskip_compile.passes.graph_queries import GraphQueries

D, DQ, M, VOCAB = 16, 8, 32, 10


def _init(name, shape):
    return numpy_helper.from_array(np.ones(shape, np.float32), name)


def decomposed_layer() -> gs.Graph:
    inits = [_init("wq_t", [DQ, D]), _init("wk", [D, DQ]), _init("wv", [D, DQ]), _init("wo", [DQ, D]),
             _init("wg", [D, M]), _init("wu", [D, M]), _init("wd", [M, D]), _init("wh", [D, VOCAB]),
             _init("zero", [1]), _init("c1", [D, D]), _init("c2", [D, D])]
    nodes = [
        helper.make_node("Cast", ["x"], ["xc"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["xc", "xc"], ["sq"], name="square"),
        helper.make_node("ReduceMean", ["sq"], ["ms"], keepdims=1, name="mean"),
        helper.make_node("Sqrt", ["ms"], ["rms"], name="sqrt"),
        helper.make_node("Reciprocal", ["rms"], ["inv"], name="inv"),
        helper.make_node("Mul", ["xc", "inv"], ["n"], name="norm"),
        helper.make_node("Transpose", ["wq_t"], ["wq"], perm=[1, 0], name="wq_transpose"),
        helper.make_node("MatMul", ["n", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["n", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["n", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("IsNaN", ["probs"], ["nan"], name="isnan"),
        helper.make_node("Where", ["nan", "zero", "probs"], ["guarded"], name="nan_guard"),
        helper.make_node("MatMul", ["guarded", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "wo"], ["attn"], name="o_proj"),
        helper.make_node("Add", ["xc", "attn"], ["mid"], name="attn_add"),
        helper.make_node("MatMul", ["mid", "wg"], ["g"], name="gate"),
        helper.make_node("MatMul", ["mid", "wu"], ["u"], name="up"),
        helper.make_node("Mul", ["g", "u"], ["gu"], name="act"),
        helper.make_node("MatMul", ["gu", "wd"], ["down"], name="down"),
        helper.make_node("Add", ["mid", "down"], ["out"], name="ffn_add"),
        helper.make_node("MatMul", ["out", "wh"], ["logits"], name="lm_head"),
        # a constant product and a Softmax that feeds no PV MatMul: near misses
        helper.make_node("MatMul", ["c1", "c2"], ["cc"], name="const_product"),
        helper.make_node("Softmax", ["logits"], ["token_probs"], axis=-1, name="token_softmax"),
    ]
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", D])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("token_probs", "k", "v", "cc")],
        inits)
    return gs.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]))


def _nodes(graph):
    return {n.name: n for n in graph.nodes}


def test_constants_weights_and_projections():
    graph = decomposed_layer()
    q, nodes, t = GraphQueries(graph), _nodes(graph), graph.tensors()
    assert q.is_const(t["wk"]) and q.is_const(t["wq"]) and q.is_const(t["cc"])
    assert not q.is_const(t["x"]) and not q.is_const(t["n"])
    assert q.weight_shape(t["wq"]) == (DQ, D)            # the initializer behind the Transpose
    assert q.weight_shape(t["kt"]) is None               # a computed tensor is no weight
    projections = {name for name, node in nodes.items() if q.is_projection(node)}
    assert projections == {"q_proj", "k_proj", "v_proj", "o_proj", "gate", "up", "down", "lm_head"}
    assert [x.name for x in q.variable_operands(nodes["nan_guard"])] == ["nan", "probs"]


def test_searches_along_the_data_flow():
    graph = decomposed_layer()
    q, nodes, t = GraphQueries(graph), _nodes(graph), graph.tensors()
    assert [x.name for x in q.aliases(t["x"])] == ["x", "xc"]
    assert q.derives(t["q"], {id(t["xc"])})[0] and not q.derives(t["q"], {id(t["mid"])})[0]
    assert q.pick_data_operand(nodes["norm"]) is t["xc"]  # x * rsqrt(mean(x^2)) carries x
    assert q.pick_data_operand(nodes["act"]) is None       # gate * up: neither derives from the other
    proj, why = q.branch_projection(t["attn"])
    assert proj is nodes["o_proj"] and why == ""
    proj, why = q.branch_projection(t["gu"])
    assert proj is None and "Mul 'act'" in why
    assert [n.name for n in q.nearest_projections(t["scores"], backward=True)] == ["q_proj", "k_proj"]
    assert [n.name for n in q.nearest_projections(t["ctx"], backward=False)] == ["o_proj"]
    assert q.reaches_output(nodes["lm_head"])              # through the token Softmax only
    assert not q.reaches_output(nodes["gate"])             # down_proj, lm_head on the way


def test_the_decomposed_attention_core():
    graph = decomposed_layer()
    q, nodes, t = GraphQueries(graph), _nodes(graph), graph.tensors()
    assert q.all_cores() == [nodes["softmax"]]             # token_softmax feeds no PV MatMul
    assert q.pv_after(nodes["softmax"]) is nodes["pv"] and q.pv_after(nodes["token_softmax"]) is None
    assert q.softmax_before(t["guarded"]) is nodes["softmax"]
    core, why = q.find_core(t["ctx"])
    assert why == "" and core.kind == "softmax"
    assert (core.query, core.key, core.value, core.output) == (t["q"], t["kt"], t["v"], t["ctx"])
    assert [n.name for n in core.nodes] == ["scores", "softmax", "isnan", "nan_guard", "pv"]
    assert q.cache_output(core.key) is t["k"] and q.cache_output(core.value) is t["v"]
    assert q.cache_output(core.query) is None
    core, why = q.find_core(t["gu"])                       # gate * up: two data operands
    assert core is None and "reached Mul 'act', not an attention core" in why
    core, why = q.find_core(t["mid"])
    assert core is None and "reached Add 'attn_add' before any Softmax or Attention node" in why


def test_the_onnx_attention_op_core():
    inits = [_init("wq", [D, DQ]), _init("wk", [D, DQ]), _init("wv", [D, DQ]), _init("wo", [DQ, D])]
    nodes = [helper.make_node("MatMul", ["x", w], [w[1]], name=f"{w[1]}_proj") for w in ("wq", "wk", "wv")]
    nodes += [helper.make_node("Attention", ["q", "k", "v"], ["ctx"], q_num_heads=1, kv_num_heads=1, name="attn"),
              helper.make_node("Reshape", ["ctx", "shape"], ["merged"], name="merge"),
              helper.make_node("MatMul", ["merged", "wo"], ["o"], name="o_proj")]
    graph = helper.make_graph(
        nodes, "attention", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, D]),
                             helper.make_tensor_value_info("shape", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in ("o", "k", "v")], inits)
    graph = gs.import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))
    q, t = GraphQueries(graph), graph.tensors()
    (attention,) = q.all_cores()
    core, why = q.find_core(t["merged"])
    assert why == "" and core.kind == "attention_op" and core.nodes == [attention]
    assert (core.query, core.key, core.value, core.masks) == (t["q"], t["k"], t["v"], [])


def test_names_decorate_messages_only():
    graph = decomposed_layer()
    nodes = _nodes(graph)
    plain = GraphQueries(graph)
    scoped = GraphQueries(graph, {"o_proj": "model.layers.0.self_attn.o_proj", "down": "model.layers.0.mlp.down"})
    assert plain.where(nodes["o_proj"]) == "MatMul 'o_proj'"
    assert scoped.where(nodes["o_proj"]) == "MatMul 'o_proj' (model.layers.0.self_attn.o_proj)"
    assert scoped.module_path(nodes["o_proj"], nodes["down"]) == "model.layers.0"
    assert scoped.module_path(nodes["o_proj"]) == "model.layers.0.self_attn"
    assert plain.module_path(nodes["o_proj"]) is None
    # the answers do not depend on the names
    assert [n.name for n in scoped.all_cores()] == [n.name for n in plain.all_cores()]
