"""FLOPs accounting: exact counts against formulas written from the shapes, never from the counter.

Every expectation below is 2 x (multiply-adds) worked out from the graph's dims or the tiny
config (DESIGN.md section 6): a projection of n rows from width a to width b is 2*n*a*b, an
attention product of n_q query rows over S keys is 2*n_q*S*(heads*head_dim) per product.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import tiny_model
from vskip_compile.compile import compile_model
from vskip_compile.flops import FlopsError, count_flops, format_comparison, ideal_speedup, plan_flops, save_plot
from vskip_compile.flops.count import _matmul_flops
from vskip_compile.core.plan import Action, FreezeScope, Plan

# ----------------------------------------------------------------------- a hand-built layer

D, DQ, M, VOCAB = 16, 8, 32, 10  # hidden, single-head q/k/v width, FFN width, vocabulary


def one_layer_decoder(head_gemm: bool = True) -> onnx.ModelProto:
    """x -> q/k/v -> Softmax(q k^T) v -> o_proj -> +x -> gate*up -> down -> +mid -> LM head.

    K and V are graph outputs (the KV cache); the LM head is a Gemm on [B*S, D] rows.
    """
    rng = np.random.default_rng(0)

    def weight(name, shape):  # raw data, so that it can move to an external file
        return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)

    inits = [weight("wq", [D, DQ]), weight("wk", [D, DQ]), weight("wv", [D, DQ]), weight("wo", [DQ, D]),
             weight("wg", [D, M]), weight("wu", [D, M]), weight("wd", [M, D]),
             numpy_helper.from_array(np.array([-1, D], np.int64), "flat")]
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="q_proj"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="k_proj"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="v_proj"),
        helper.make_node("Transpose", ["k"], ["kt"], perm=[0, 2, 1], name="kt"),
        helper.make_node("MatMul", ["q", "kt"], ["scores"], name="scores"),
        helper.make_node("Softmax", ["scores"], ["probs"], axis=-1, name="softmax"),
        helper.make_node("MatMul", ["probs", "v"], ["ctx"], name="pv"),
        helper.make_node("MatMul", ["ctx", "wo"], ["attn"], name="o_proj"),
        helper.make_node("Add", ["x", "attn"], ["mid"], name="attn_add"),
        helper.make_node("MatMul", ["mid", "wg"], ["g"], name="gate"),
        helper.make_node("MatMul", ["mid", "wu"], ["u"], name="up"),
        helper.make_node("Mul", ["g", "u"], ["gu"], name="act"),
        helper.make_node("MatMul", ["gu", "wd"], ["down"], name="down"),
        helper.make_node("Add", ["mid", "down"], ["out"], name="ffn_add"),
        helper.make_node("Reshape", ["out", "flat"], ["rows"], name="flatten"),
    ]
    if head_gemm:
        inits.append(weight("wh", [VOCAB, D]))
        nodes.append(helper.make_node("Gemm", ["rows", "wh"], ["logits"], transB=1, name="lm_head"))
    else:
        inits.append(weight("wh", [D, VOCAB]))
        nodes.append(helper.make_node("MatMul", ["rows", "wh"], ["logits"], name="lm_head"))
    graph = helper.make_graph(
        nodes, "one_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence", D])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("k", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("v", TensorProto.FLOAT, None)],
        inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def hand_expected(B, S):
    return {"q": 2 * B * S * D * DQ, "k": 2 * B * S * D * DQ, "v": 2 * B * S * D * DQ, "o": 2 * B * S * DQ * D,
            "qk": 2 * B * S * S * DQ, "pv": 2 * B * S * S * DQ, "ffn": 3 * 2 * B * S * D * M,
            "head": 2 * B * S * D * VOCAB}


@pytest.mark.parametrize("B,S,V", [(1, 7, 3), (3, 12, 0), (2, 5, 4)])
def test_hand_built_layer_exact(B, S, V):
    report = count_flops(one_layer_decoder(), S, V, batch=B)
    exp = hand_expected(B, S)
    (layer,) = report.layers
    for role in ("q", "k", "v", "o", "qk", "pv", "ffn"):
        assert getattr(layer, role) == exp[role], role
    assert report.head == exp["head"] and report.other == 0
    layer_total = sum(exp[r] for r in ("q", "k", "v", "o", "qk", "pv", "ffn"))
    assert report.total == layer_total + exp["head"]
    # Every layer node sees all S rows, so the V visual rows hold exactly V/S of the work.
    assert layer.visual * S == layer_total * V and layer.text == layer_total - layer.visual


def test_matmul_head_and_broadcast_shapes():
    report = count_flops(one_layer_decoder(head_gemm=False), 4, 1, batch=2)
    assert report.head == hand_expected(2, 4)["head"]
    # numpy broadcasting of the batch dims: [2,1] x [3] -> 6 products of 4x5 by 5x7
    assert _matmul_flops((2, 1, 4, 5), (3, 5, 7)) == 2 * 6 * 4 * 5 * 7
    assert _matmul_flops((5,), (5, 7)) == 2 * 5 * 7


def test_weights_external_and_not_loaded(tmp_path):
    expected = count_flops(one_layer_decoder(), 9, 4).total
    # Every tensor external, even the Reshape target: small ones are read from the path's directory.
    path = tmp_path / "all" / "layer.onnx"
    path.parent.mkdir()
    onnx.save_model(one_layer_decoder(), str(path), save_as_external_data=True, location="layer.data",
                    size_threshold=0)
    assert count_flops(path, 9, 4).total == expected
    # As exporters write them (shape constants inline), with the weight file gone: dims are enough.
    path = tmp_path / "weights" / "layer.onnx"
    path.parent.mkdir()
    onnx.save_model(one_layer_decoder(), str(path), save_as_external_data=True, location="layer.data",
                    size_threshold=100)
    (path.parent / "layer.data").unlink()
    assert count_flops(path, 9, 4).total == expected
    assert count_flops(onnx.load(str(path), load_external_data=False), 9, 4).total == expected


def test_refuses_what_it_cannot_count():
    with pytest.raises(FlopsError, match="at least one text row"):
        count_flops(one_layer_decoder(), 5, 5)
    with pytest.raises(FlopsError, match="suffix_rows"):
        count_flops(one_layer_decoder(), 5, 2, suffix_rows=4)
    model = one_layer_decoder()
    model.graph.node.append(helper.make_node("Einsum", ["x", "x"], ["e"], equation="bsd,btd->bst", name="ein"))
    with pytest.raises(FlopsError, match="Einsum"):
        count_flops(model, 5, 2)
    model = one_layer_decoder()
    model.graph.input.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, ["mystery", D]))
    with pytest.raises(FlopsError, match="dims="):
        count_flops(model, 5, 2)
    assert count_flops(model, 5, 2, dims={"mystery": 3}).total == count_flops(one_layer_decoder(), 5, 2).total


# ----------------------------------------------------------------------- tiny exports

CASES = [("qwen2_vl", 20), ("qwen2_vl", 23), ("qwen3_vl", 20)]


def dims_of(family):
    tc = tiny_model(family).text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return dict(d=tc.hidden_size, dq=tc.num_attention_heads * head_dim, dkv=tc.num_key_value_heads * head_dim,
                m=tc.intermediate_size, vocab=tc.vocab_size)


def expected_layer(dims, B, S, V, n_attn, n_ffn):
    """A layer whose attention queries (and q/o projections) cover n_attn rows and whose FFN
    covers n_ffn rows; K/V always cover all S rows. Visual share: V/S of whatever covers S."""
    d, dq, dkv, m = dims["d"], dims["dq"], dims["dkv"], dims["m"]
    parts = {"q": 2 * B * n_attn * d * dq, "k": 2 * B * S * d * dkv, "v": 2 * B * S * d * dkv,
             "o": 2 * B * n_attn * dq * d, "qk": 2 * B * n_attn * S * dq, "pv": 2 * B * n_attn * S * dq,
             "ffn": 6 * B * n_ffn * d * m}
    rows = {"q": n_attn, "k": S, "v": S, "o": n_attn, "qk": n_attn, "pv": n_attn, "ffn": n_ffn}
    visual = sum(parts[r] * V // S for r in parts if rows[r] == S)
    return parts, visual


def live_rows(action, S, V, U, scope):
    T = S - V
    frozen = U if scope is FreezeScope.PREFIX_THROUGH_VISUAL else T
    return {Action.FULL: (S, S), Action.SKIP_ATTENTION: (T, S), Action.SKIP_FFN: (S, T),
            Action.FREEZE: (frozen, frozen)}[action]


def check_report(report, dims, plan, B, S, V, U):
    assert len(report.layers) == plan.num_layers
    for layer, action in zip(report.layers, plan.actions):
        parts, visual = expected_layer(dims, B, S, V, *live_rows(action, S, V, U, plan.freeze_scope))
        got = {r: getattr(layer, r) for r in parts}
        assert got == parts, f"layer {layer.layer} ({action.value})"
        assert layer.visual == visual and layer.text == layer.total - visual, f"layer {layer.layer}"
    assert report.head == 2 * B * dims["d"] * dims["vocab"]  # logits of the last position only
    assert report.total == sum(x.total for x in report.layers) + report.head + report.other


@pytest.mark.parametrize("family,opset", CASES)
def test_vanilla_matches_design_formula(exported, family, opset):
    dims = dims_of(family)
    S, V = 20, 8
    graph = exported(family, opset, decode=False) / "prefill.onnx"
    report = count_flops(graph, S, V)
    check_report(report, dims, Plan.empty(len(report.layers)), 1, S, V, S - V)
    # DESIGN.md section 6, with n = S rows (the graph computes the full, masked S x S product)
    d, dkv, m, n = dims["d"], dims["dkv"], dims["m"], S
    assert dims["dq"] == d
    for layer in report.layers:
        assert layer.total == 2 * n * (2 * d * d + 2 * d * dkv) + 6 * n * d * m + 4 * n * n * d


@pytest.mark.parametrize("family,opset", CASES)
@pytest.mark.parametrize("scope", list(FreezeScope))
def test_compiled_matches_skip_semantics(exported, tmp_path, family, opset, scope):
    dims = dims_of(family)
    B, S, V, U = 2, 20, 8, 5  # rows: 7 text, 8 visual, 5 text
    source = exported(family, opset, decode=False) / "prefill.onnx"
    plan = Plan((Action.SKIP_ATTENTION, Action.FREEZE, Action.SKIP_FFN, Action.FULL), scope)
    compile_model(source, plan, tmp_path / "compiled.onnx")
    compiled = count_flops(tmp_path / "compiled.onnx", S, V, batch=B, suffix_rows=U)
    vanilla = count_flops(source, S, V, batch=B, suffix_rows=U)
    check_report(compiled, dims, plan, B, S, V, U)
    assert compiled.plan == [a.value for a in plan.actions]
    assert ideal_speedup(vanilla, compiled) == vanilla.total / compiled.total > 1
    assert "ideal speedup" in format_comparison(vanilla, compiled)


@pytest.mark.parametrize("scope", list(FreezeScope))
def test_plan_flops_is_the_skip_semantics(exported, scope):
    """What a plan requires, derived from the vanilla count, equals the DESIGN.md formula."""
    dims = dims_of("qwen2_vl")
    B, S, V, U = 2, 20, 8, 5
    vanilla = count_flops(exported("qwen2_vl", 20, decode=False) / "prefill.onnx", S, V, batch=B, suffix_rows=U)
    for actions in [(Action.FULL,) * 4, (Action.FREEZE,) * 4,
                    (Action.SKIP_ATTENTION, Action.FREEZE, Action.SKIP_FFN, Action.FULL)]:
        plan = Plan(actions, scope)
        required = plan_flops(vanilla, plan)
        check_report(required, dims, plan, B, S, V, U)
        assert required.plan == [a.value for a in actions]
    with pytest.raises(FlopsError, match="vanilla graph"):
        plan_flops(required, plan)
    with pytest.raises(FlopsError, match="3 layers"):
        plan_flops(vanilla, Plan((Action.FULL,) * 3))


@pytest.mark.parametrize("opset", [20, 23])
def test_frozen_runs_recompute_only_the_live_rows_kv(exported, tmp_path, opset):
    """Inside a run of freeze layers the compiled graph computes K/V over every row of the
    run's input and again for the live rows: exactly that, and nothing else, beyond the
    plan's FLOPs; the ideal speedup uses the plan's FLOPs."""
    dims = dims_of("qwen2_vl")
    B, S, V = 1, 20, 8
    source = exported("qwen2_vl", opset, decode=False) / "prefill.onnx"
    plan = Plan((Action.FREEZE, Action.FREEZE, Action.FULL, Action.FREEZE))  # runs {0, 1} and {3}
    compile_model(source, plan, tmp_path / "c.onnx")
    vanilla = count_flops(source, S, V, batch=B)
    compiled = count_flops(tmp_path / "c.onnx", S, V, batch=B)
    required = plan_flops(vanilla, plan)
    recomputed = 2 * (2 * B * (S - V) * dims["d"] * dims["dkv"])  # K and V of the live rows, layer 1 only
    assert compiled.total - required.total == recomputed
    assert [c.k - r.k for c, r in zip(compiled.layers, required.layers)] == [0, recomputed // 2, 0, 0]
    text = format_comparison(vanilla, compiled, required)
    assert f"ideal speedup {vanilla.total / required.total:.3f}x" in text and "beyond it" in text


def test_report_outputs(exported, tmp_path):
    source = exported("qwen2_vl", 20, decode=False) / "prefill.onnx"
    compile_model(source, Plan((Action.FREEZE,) * 4), tmp_path / "c.onnx")
    vanilla, compiled = count_flops(source, 30, 20), count_flops(tmp_path / "c.onnx", 30, 20)
    data = json.loads(compiled.to_json())
    assert data["total"] == compiled.total == sum(data["by_class"].values())
    assert data["visual"] + data["text"] == sum(x["total"] for x in data["layers"])
    table = compiled.format_table()
    assert table.count("\n") == len(compiled.layers) + 4 and "freeze" in table
    png = save_plot(vanilla, compiled, tmp_path / "flops.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FlopsError, match="different prompt layouts"):
        ideal_speedup(vanilla, count_flops(source, 30, 10))
