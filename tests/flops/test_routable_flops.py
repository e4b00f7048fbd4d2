"""vskip flops on a routable graph: fed a plan, it counts what the static compile of that
plan counts, layer by layer and operator by operator; without a plan it is refused."""

from __future__ import annotations

import dataclasses
import json

import pytest

from vskip_compile.cli import main
from vskip_compile.compile import compile_model
from vskip_compile.core.plan import Action, FreezeScope, Plan, to_json
from vskip_compile.core.sidecar import read_sidecar
from vskip_compile.flops import FlopsError, count_flops

# 40 rows: 6 text, 16 visual, 18 text (the suffix).
S, V, U = 40, 16, 18


def _plan(layers: int, scope: FreezeScope) -> Plan:
    cycle = (Action.SKIP_ATTENTION, Action.FULL, Action.SKIP_FFN, Action.FREEZE)
    return Plan(tuple(cycle[i % len(cycle)] for i in range(layers)), scope)


@pytest.mark.parametrize("scope", [FreezeScope.VISUAL, FreezeScope.PREFIX_THROUGH_VISUAL])
@pytest.mark.parametrize("family, opset", [("qwen2_vl", 20), ("qwen3_vl", 23), ("gemma3", 20)])
def test_a_routable_graph_counts_as_the_static_compile_of_its_plan(exported, tmp_path, family, opset, scope):
    source = exported(family, opset) / "prefill.onnx"
    plan = _plan(read_sidecar(source).num_layers, scope)
    routable, static = tmp_path / "r.onnx", tmp_path / "s.onnx"
    compile_model(source, None, routable, routable=True)
    compile_model(source, plan, static)
    got, want = (count_flops(g, S, V, suffix_rows=U, **kw) for g, kw in ((routable, {"plan": plan}), (static, {})))
    assert [dataclasses.asdict(layer) for layer in got.layers] == [dataclasses.asdict(layer) for layer in want.layers]
    assert got.head == want.head and got.plan == want.plan
    vanilla = count_flops(source, S, V, suffix_rows=U)
    empty = count_flops(routable, S, V, suffix_rows=U, plan=Plan.empty(plan.num_layers))
    assert [layer.total for layer in empty.layers] == [layer.total for layer in vanilla.layers]


def test_plans_and_graphs_must_agree(exported, tmp_path, capsys):
    source = exported("qwen2_vl", 20) / "prefill.onnx"
    routable = tmp_path / "r.onnx"
    compile_model(source, None, routable, routable=True)
    plan = _plan(4, FreezeScope.VISUAL)
    with pytest.raises(FlopsError, match="is routable: its FLOPs are those of the plan it is fed"):
        count_flops(routable, S, V)
    with pytest.raises(FlopsError, match="is not routable"):
        count_flops(source, S, V, plan=plan)
    with pytest.raises(FlopsError, match="the plan has 3 layers but the routable graph has 4"):
        count_flops(routable, S, V, plan=Plan((Action.FULL,) * 3))
    plan_file = tmp_path / "plan.json"
    plan_file.write_text(to_json(plan, family="qwen2_vl"))
    assert main(["flops", str(routable), "--plan", str(plan_file), "--rows", "40", "--visual-rows", "6:22",
                 "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["plan"] == [a.value for a in plan.actions]
    assert main(["flops", str(source), "--plan", str(plan_file)]) == 2
    assert "is not routable" in capsys.readouterr().err
