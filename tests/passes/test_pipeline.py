"""The pass pipeline: compile runs the list, every pass reports per layer, the CLI prints
every report, and a graph no pass changed is the source graph itself."""

from __future__ import annotations

import json

import onnx

from vskip_compile.cli import main
from vskip_compile.compile import compile_model
from vskip_compile.core.plan import Action, Plan
from vskip_compile.passes import pipeline
from vskip_compile.passes.hidden_states import ExposeHiddenStates
from vskip_compile.passes.nan_guard import MoveNanGuard
from vskip_compile.passes.pipeline import LayerChange, PassReport
from vskip_compile.passes.skip_visual import SkipVisualRows


class Recorder:
    """A pass that changes nothing but says which layers it saw."""

    name = "recorder"

    def __init__(self):
        self.seen = []

    def run(self, structure, plan):
        self.seen.append((len(structure.layers), plan.actions))
        return PassReport(self.name, [LayerChange(i, a, "vskip_text_rows", 0, "looked")
                                      for i, a in enumerate(plan.actions) if a is not Action.FULL])


def test_the_default_pipeline_moves_nan_guards_then_skips():
    assert [type(p) for p in pipeline.default_passes()] == [MoveNanGuard, SkipVisualRows]
    # The hidden-state taps come first, so every rewrite after them moves them along.
    assert [type(p) for p in pipeline.default_passes(hidden_states=True)] == [ExposeHiddenStates, MoveNanGuard,
                                                                               SkipVisualRows]


def test_compile_runs_every_pass_and_the_cli_prints_each(exported, tmp_path, monkeypatch, capsys):
    recorder = Recorder()
    monkeypatch.setattr(pipeline, "default_passes", lambda causal_blocks=0, hidden_states=False: [SkipVisualRows(), recorder])
    plan = {"format": "vskip-plan", "version": 1, "model": {"num_layers": 4}, "layers": {"1": "freeze"}}
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    out = tmp_path / "c.onnx"
    assert main(["compile", str(exported("qwen2_vl", 20) / "prefill.onnx"), "--plan", str(tmp_path / "plan.json"),
                 "-o", str(out), "--json", str(tmp_path / "report.json")]) == 0
    err = capsys.readouterr().err
    assert recorder.seen == [(4, (Action.FULL, Action.FREEZE, Action.FULL, Action.FULL))]
    assert "skip_visual_rows: 1 layers changed (freeze x1);" in err
    assert "recorder: 1 layers changed (freeze x1); 0 nodes added" in err
    report = json.loads((tmp_path / "report.json").read_text())
    assert [p["name"] for p in report["passes"]] == ["skip_visual_rows", "recorder"]
    assert report["passes"][1]["layers"] == [{"layer": 1, "action": "freeze", "rows": "vskip_text_rows",
                                              "nodes_added": 0, "note": "looked"}]
    assert report["passes"][0]["nodes_added"] > 0 and report["nodes_after"] > report["nodes_before"]


def test_a_graph_no_pass_changed_is_the_source_node_for_node(exported, tmp_path):
    source = exported("qwen2_vl", 23) / "prefill.onnx"     # Attention ops: no NaN guard to move
    report = compile_model(source, Plan.empty(4), tmp_path / "c.onnx")
    assert [r.changed for r in report.passes] == [False, False]
    before = onnx.load(str(source), load_external_data=False).graph
    after = onnx.load(str(tmp_path / "c.onnx"), load_external_data=False).graph
    assert [n.SerializeToString() for n in after.node] == [n.SerializeToString() for n in before.node]
    assert [i.name for i in after.input] == [i.name for i in before.input] + ["vskip_text_rows"]
