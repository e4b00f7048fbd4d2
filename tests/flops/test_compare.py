"""compare_flops: the one vanilla-against-compiled comparison (vskip flops --compare,
vskip-compile --report): the layout it reads from a visual-row mask, its JSON, its table."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from vskip_compile.compile import compile_model
from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, Plan
from vskip_compile.flops import FlopsComparison, FlopsError, compare_flops, count_flops, mask_layout

A = Action
PLAN = Plan((A.SKIP_ATTENTION, A.FREEZE, A.FREEZE, A.SKIP_FFN))  # a freeze run: the graph does extra K/V work
MASK = np.r_[np.zeros(3, bool), np.ones(8, bool), np.zeros(5, bool)]  # 3 text, 8 visual, 5 text


@pytest.fixture(scope="module")
def graphs(exported, tmp_path_factory):
    source = exported("qwen2_vl", 20, decode=False) / "prefill.onnx"
    out = tmp_path_factory.mktemp("compare") / "c.onnx"
    compile_model(source, PLAN, out)
    return source, out


def test_json_has_the_report_keys_and_the_ideal_speedup_is_vanilla_over_required(graphs):
    source, out = graphs
    comparison = compare_flops(source, out, MASK)
    data = json.loads(comparison.to_json())
    assert list(data) == ["ideal_speedup", "executed_speedup", "vanilla", "compiled", "required"]
    assert data["ideal_speedup"] == data["vanilla"]["total"] / data["required"]["total"] > 1
    assert data["executed_speedup"] == data["vanilla"]["total"] / data["compiled"]["total"]
    # the recorded plan was read back from the compiled graph
    assert data["required"]["plan"] == data["compiled"]["plan"] == [a.value for a in PLAN.actions]
    # inside the freeze run the compiled graph recomputes the live rows' K/V: more than required
    assert data["compiled"]["total"] > data["required"]["total"]
    # the layout is the mask's: 16 rows, 8 visual, 5 after the last visual row
    for report in ("vanilla", "compiled", "required"):
        layout = {k: data[report][k] for k in ("sequence_length", "visual_rows", "prefix_rows", "suffix_rows")}
        assert layout == {"sequence_length": 16, "visual_rows": 8, "prefix_rows": 3, "suffix_rows": 5}
    assert data["compiled"]["source"] == str(out) and data["vanilla"]["source"] == str(source)


def test_workload_leads_the_json_and_a_given_plan_is_used(graphs):
    source, out = graphs
    workload = {"sequence_length": 16, "visual_rows": 8, "text_rows": 8}
    other = Plan((A.FULL, A.FULL, A.FULL, A.SKIP_FFN))
    data = compare_flops(source, out, MASK, plan=other, workload=workload).to_dict()
    assert list(data)[0] == "workload" and data["workload"] == workload
    assert data["required"]["plan"] == ["full", "full", "full", "skip_visual_ffn"]


def test_a_graph_without_a_recorded_plan_is_its_own_requirement(graphs):
    source, _ = graphs
    comparison = compare_flops(source, source, MASK)
    assert comparison.required is None and comparison.to_dict()["required"] is None
    assert comparison.ideal_speedup == comparison.executed_speedup == 1.0
    assert "ideal speedup 1.000x" in comparison.table()


def test_table_and_plot(graphs):
    source, out = graphs
    comparison = compare_flops(source, out, MASK)
    assert isinstance(comparison, FlopsComparison)
    text = comparison.table()
    vanilla, required = comparison.vanilla.total, comparison.required.total
    assert f"ideal speedup {vanilla / required:.3f}x" in text and "beyond it" in text
    assert len(text.splitlines()) == 1 + PLAN.num_layers + 1
    assert comparison.plot_png()[:8] == b"\x89PNG\r\n\x1a\n"


def test_counts_equal_count_flops_for_the_same_layout(graphs):
    source, out = graphs
    comparison = compare_flops(source, out, MASK)
    assert comparison.vanilla.to_dict() == count_flops(source, 16, 8, suffix_rows=5).to_dict()
    assert comparison.compiled.to_dict() == count_flops(out, 16, 8, suffix_rows=5).to_dict()
    # no visual rows: every row is text and the suffix
    empty = compare_flops(source, out, np.zeros(16, bool))
    assert (empty.vanilla.visual_rows, empty.vanilla.suffix_rows, empty.vanilla.prefix_rows) == (0, 16, 0)


def test_a_damaged_recorded_plan_is_refused(graphs, tmp_path):
    source, out = graphs
    model = onnx.load(str(out), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == "vskip.plan":
            entry.value = json.dumps({"format": "vskip-plan", "version": 1, "model": {"num_layers": 4},
                                      "layers": {"0": "melt"}})
    with pytest.raises(VskipError, match="damaged"):
        compare_flops(source, model, MASK)


def test_mask_layout():
    assert mask_layout(MASK) == {"sequence_length": 16, "visual_rows": 8, "suffix_rows": 5}
    # two images: 2 text, 3 visual, 4 text, 2 visual, 1 text -> the suffix is the last row only
    two = np.array([0, 0, 1, 1, 1, 0, 0, 0, 0, 1, 1, 0], dtype=bool)
    assert mask_layout(two) == {"sequence_length": 12, "visual_rows": 5, "suffix_rows": 1}
    assert mask_layout(np.zeros(4, bool)) == {"sequence_length": 4, "visual_rows": 0, "suffix_rows": 4}
    with pytest.raises(FlopsError, match="one row per position"):
        mask_layout(np.zeros((1, 4), bool))
