"""vskip-compile --hidden-states: every layer's output as a graph output, equal to the
PyTorch reference's decoder-layer outputs under the same plan, on every family and opset;
and validate --per-layer finds a drift in the layer where it starts."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest

import vskip_compile
from conftest import FAMILIES
from vskip_compile.cli import main
from vskip_compile.compile import compile_model
from vskip_compile.core.plan import Action, FreezeScope, Plan
from vskip_compile.core.sidecar import read_sidecar
from vskip_compile.validate import validate

PLANS = Path(vskip_compile.__file__).parent / "plans"
# Every action, the first layer full: each rewrite of the skip pass moves a tap.
CYCLE = (Action.FULL, Action.SKIP_ATTENTION, Action.SKIP_FFN, Action.FREEZE)


def _plan(layers: int, scope=FreezeScope.VISUAL) -> Plan:
    return Plan(tuple(CYCLE[i % len(CYCLE)] for i in range(layers)), scope)


def _compiled(exported, tmp_path, family, opset, plan):
    source = exported(family, opset) / "prefill.onnx"
    sidecar = read_sidecar(source)
    out = tmp_path / f"{family}-{opset}.onnx"
    compile_model(source, plan(sidecar.num_layers), out, hidden_states=True)
    return out, sidecar


@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", FAMILIES)
def test_hidden_states_equal_the_reference_under_the_plan(exported, tmp_path, family, opset):
    scope = FreezeScope.PREFIX_THROUGH_VISUAL if family == "gemma3" else FreezeScope.VISUAL
    graph, sidecar = _compiled(exported, tmp_path, family, opset, lambda n: _plan(n, scope))
    names = [o.name for o in onnx.load(str(graph), load_external_data=False).graph.output]
    assert names[-sidecar.num_layers:] == [f"hidden_states.{i}" for i in range(sidecar.num_layers)]
    report = validate(graph, model=sidecar.source, seed=sidecar.seed or 0)
    hidden = [o for o in report.outputs if o.name.startswith("hidden_states.")]
    assert len(hidden) == sidecar.num_layers and report.passed, report.table()
    assert all(o.max_abs <= 1e-4 and o.nonfinite == 0 for o in hidden)


def test_per_layer_finds_the_drift_in_the_layer_where_it_starts(exported, tmp_path, capsys):
    """Validated against the empty plan, the compiled graph differs from layer 1 on (it skips
    visual attention there). K/V cannot tell: layer 1's are computed from layer 0's output,
    which is unchanged, so they first differ at layer 2; the exposed outputs say layer 1."""
    graph, sidecar = _compiled(exported, tmp_path, "qwen2_vl", 20, _plan)
    empty = tmp_path / "empty.json"
    empty.write_text('{"format": "vskip-plan", "version": 1, "model": {"family": "qwen2_vl", "num_layers": 4}, '
                     '"freeze_scope": "visual", "layers": {"0": "full", "1": "full", "2": "full", "3": "full"}}')
    assert sidecar.seed in (None, 0)
    assert main(["validate", str(graph), "--plan", str(empty), "--model", sidecar.source, "--per-layer"]) == 1
    out = capsys.readouterr().out
    assert "the drift starts at layer 1" in out
    report = validate(graph, plan=empty, model=sidecar.source, seed=sidecar.seed or 0)
    failing = {o.name for o in report.outputs if not o.passes}
    assert "hidden_states.0" not in failing and "hidden_states.1" in failing
    assert not {"present.1.key", "present.1.value"} & failing and "present.2.key" in failing


def test_flops_refuse_hidden_state_graphs(exported, tmp_path, capsys):
    """The last layer's FFN, read by an output, would pass for the LM head: refused, and
    refused before anything is written when asked together."""
    graph, _ = _compiled(exported, tmp_path, "qwen2_vl", 20, _plan)
    source = str(exported("qwen2_vl", 20) / "prefill.onnx")
    for argv in (["flops", str(graph)],
                 ["compile", source, "--plan", str(PLANS / "example_tiny.json"), "-o", str(tmp_path / "r.onnx"),
                  "--hidden-states", "--report"]):
        assert main(argv) == 2
        assert "hidden" in capsys.readouterr().err
    assert not (tmp_path / "r.onnx").exists()
