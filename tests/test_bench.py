"""The side-by-side benchmark: schedule, statistics, FLOPs, JSON and errors.

Timing is measured, never asserted: the schedule and statistics are checked on a fake
clock, and the run on tiny:qwen2_vl checks only the structure of what it reports.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from vskip_compile import bench
from vskip_compile.bench import (Config, GraphInput, analytic_flops, analytic_ideal, layout, measure,
                                 paired_ratios, realization, round_order, run_bench, stats, summarize,
                                 synthesize_feeds)
from vskip_compile.compile import compile_model
from vskip_compile.errors import VskipError
from vskip_compile.plan import Action, FreezeScope, Plan, load_plan

PLANS = Path(bench.__file__).parent / "plans"
TOOLS = Path(__file__).resolve().parent.parent / "tools"


class FakeClock:
    """perf_counter stand-in: time moves only when a config 'runs'."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_configs(clock: FakeClock, durations: dict[str, list[float]], calls: list[str]) -> list[Config]:
    """Configs whose n-th run takes durations[name][n] on ``clock`` and logs its name."""

    def runner(name):
        def run():
            clock.now += durations[name][sum(c == name for c in calls)]
            calls.append(name)
        return run

    return [Config(name, name.split(":")[0], name.split(":")[1], runner(name)) for name in durations]


# ----------------------------------------------------------------------------- schedule

def test_round_order_rotates_so_every_config_takes_every_place():
    orders = [round_order(4, r) for r in range(4)]
    assert orders == [[0, 1, 2, 3], [1, 2, 3, 0], [2, 3, 0, 1], [3, 0, 1, 2]]
    for place in range(4):
        assert sorted(order[place] for order in orders) == [0, 1, 2, 3]


def test_measure_interleaves_warmup_and_rounds_on_a_fake_clock():
    clock, calls = FakeClock(), []
    durations = {"ort:vanilla": [9, 8, 1, 2, 3], "ort:a": [7, 6, 4, 5, 6], "ort:b": [5, 5, 7, 8, 9]}
    configs = fake_configs(clock, durations, calls)
    log = []
    measure(configs, warmup=2, rounds=3, clock=clock, progress=log.append)

    v, a, b = "ort:vanilla", "ort:a", "ort:b"
    assert calls == [v, a, b, a, b, v,            # warm-up 1 and 2
                     b, v, a, v, a, b, a, b, v]   # rounds 1-3 continue the rotation
    assert configs[0].warmup_times == [9, 8] and configs[0].times == [1, 2, 3]
    assert configs[1].times == [4, 5, 6] and configs[2].times == [7, 8, 9]
    assert len(log) == 15 and log[0].startswith("warm-up 1/2: ort:vanilla")
    assert log[6].startswith("round 1/3: ort:b")


# ----------------------------------------------------------------------------- statistics

def test_stats_of_a_known_sample():
    s = stats([5.0, 1.0, 4.0, 2.0, 3.0])
    assert s == {"median": 3.0, "min": 1.0, "max": 5.0, "p25": 2.0, "p75": 4.0, "iqr": 2.0, "mean": 3.0, "n": 5}


def test_summary_speedup_paired_ratios_and_realization():
    clock, calls = FakeClock(), []
    durations = {"ort:vanilla": [2.0, 4.0, 6.0], "ort:p": [1.0, 2.0, 2.0],
                 "torch:vanilla": [8.0, 8.0, 8.0], "torch:p": [4.0, 8.0, 2.0]}
    configs = fake_configs(clock, durations, calls)
    measure(configs, warmup=0, rounds=3, clock=clock)
    rows, plans = summarize(configs, {"p": 3.0})

    assert [r["name"] for r in rows] == list(durations)
    assert rows[0]["median_s"] == 4.0 and rows[0]["times_s"] == [2.0, 4.0, 6.0] and rows[0]["n"] == 3
    (plan,) = plans
    assert plan["median_s"] == 2.0
    assert plan["speedup"] == 2.0                                   # 4 / 2
    assert plan["paired_speedup"]["median"] == 2.0                  # median of 2, 2, 3
    assert plan["paired_speedup"]["max"] == 3.0
    assert plan["realization"] == pytest.approx(0.5)                # (2 - 1) / (3 - 1)
    assert plan["torch"]["speedup"] == 2.0                          # 8 / 4
    assert plan["torch"]["paired_speedup"]["median"] == 2.0         # median of 2, 1, 4
    assert plan["ort_over_torch"]["ratio_of_medians"] == 0.5        # 2 / 4
    assert plan["ort_over_torch"]["paired"]["median"] == 0.25       # median of 0.25, 0.25, 1


def test_paired_ratios_need_the_same_rounds():
    assert paired_ratios([2, 6], [1, 3]) == [2, 2]
    with pytest.raises(ValueError):
        paired_ratios([1, 2], [1])


def test_realization_formula():
    assert realization(1.5, 2.0) == pytest.approx(0.5)
    assert realization(2.0, 2.0) == pytest.approx(1.0)
    assert realization(0.9, 2.0) == pytest.approx(-0.1)   # slower than vanilla: negative
    assert realization(1.1, 1.0) is None                   # nothing to realise (empty plan)
    assert realization(None, 2.0) is None


# ----------------------------------------------------------------------------- FLOPs

DIMS = {"num_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
        "intermediate_size": 16, "vocab_size": 10}


def _layer(n, q, f, d=8, d_kv=4, m=16):
    return 2 * n * 2 * d * d_kv + 2 * q * 2 * d * d + 4 * q * n * d + 6 * f * d * m


def test_analytic_flops_follow_the_design_formula():
    visual = layout(6, 4, prefix_rows=1)            # 1 text, 6 visual, 3 text
    head = 2 * 8 * 10
    assert analytic_flops(DIMS, Plan.empty(2), visual) == 2 * _layer(10, 10, 10) + head
    plan = Plan((Action.SKIP_ATTENTION, Action.SKIP_FFN))
    assert analytic_flops(DIMS, plan, visual) == _layer(10, 4, 10) + _layer(10, 10, 4) + head
    frozen = Plan((Action.FREEZE,) * 2, FreezeScope.PREFIX_THROUGH_VISUAL)   # only the 3 suffix rows live
    assert analytic_flops(DIMS, frozen, visual) == 2 * _layer(10, 3, 3) + head
    ideal = analytic_ideal(DIMS)
    assert ideal(Plan.empty(2), visual) == 1.0
    assert ideal(frozen, visual) > ideal(Plan((Action.FREEZE,) * 2), visual) > ideal(plan, visual) > 1.0


# ----------------------------------------------------------------------------- inputs

def test_layout_puts_the_image_after_a_text_prefix():
    visual = layout(8, 8)
    assert visual.tolist() == [False] * 2 + [True] * 8 + [False] * 6
    assert layout(0, 3).sum() == 0
    with pytest.raises(VskipError, match="--text-rows"):
        layout(8, 0)
    with pytest.raises(VskipError, match="prefix"):
        layout(8, 4, prefix_rows=4)


def test_synthesized_feeds_cover_the_family_inputs():
    visual = layout(6, 4)
    inputs = [GraphInput("inputs_embeds", ("batch", "seq", 8), np.float32),
              GraphInput("attention_mask", ("batch", "seq"), np.int64),
              GraphInput("position_ids", (3, "batch", "seq"), np.int64),
              GraphInput("visual_pos_masks", ("batch", "seq"), np.bool_),
              GraphInput("deepstack_visual_embeds", (2, "visual", 8), np.float32),
              GraphInput("vskip_text_rows", ("n",), np.int64)]
    feeds, notes = synthesize_feeds(inputs, visual, 8)
    assert feeds["inputs_embeds"].shape == (1, 10, 8) and feeds["inputs_embeds"].dtype == np.float32
    assert feeds["position_ids"].shape == (3, 1, 10) and feeds["position_ids"][2, 0, -1] == 9
    assert feeds["visual_pos_masks"][0].tolist() == visual.tolist()
    assert feeds["deepstack_visual_embeds"].shape == (2, 6, 8)
    assert "vskip_text_rows" not in feeds and set(notes) == set(feeds)
    with pytest.raises(VskipError, match="pixel_values"):
        synthesize_feeds([GraphInput("pixel_values", (1, 3, 8, 8), np.float32)], visual, 8)


# ----------------------------------------------------------------------------- tiny model

def test_bench_on_tiny_qwen2_vl_reports_every_field(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    suffix_plan = Plan((Action.FULL, Action.SKIP_ATTENTION, Action.FREEZE, Action.FREEZE),
                       FreezeScope.PREFIX_THROUGH_VISUAL)
    log = []
    result = run_bench(model, [PLANS / "example_tiny.json", suffix_plan], visual_rows=24, text_rows=8,
                       warmup=1, rounds=2, threads=1, pytorch=True, command="vskip bench test", progress=log.append,
                       json_path=tmp_path / "bench.json", markdown_path=tmp_path / "bench.md")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]   # no temp file left
    assert not list(model.parent.glob(".*bench*"))                           # compiled graphs removed

    for key in ("command", "date", "machine", "versions", "threads", "rounds", "warmup", "sequence_length",
                "visual_rows", "ideal_source", "vanilla", "plans", "configs"):
        assert key in data, key
    assert data["command"] == "vskip bench test" and data["threads"] == 1 and data["rounds"] == 2
    assert data["sequence_length"] == 32 and data["visual_rows"] == 24
    assert data["layout"] == "2 text + 24 visual + 6 text"
    assert {"cpu", "cores"} <= set(data["machine"])
    assert {"onnxruntime", "torch", "onnx", "vskip"} <= set(data["versions"])
    flops_installed = importlib.util.find_spec("vskip_compile.flops") is not None
    assert data["ideal_source"] == (bench.IDEAL_FLOPS_MODULE if flops_installed else bench.IDEAL_ANALYTIC)
    assert data["vanilla"]["median_s"] > 0 and data["vanilla"]["ort_over_torch"] > 0
    assert [c["name"] for c in data["configs"]] == ["ort:vanilla", "ort:example_tiny", "ort:plan1",
                                                    "torch:vanilla", "torch:example_tiny", "torch:plan1"]
    assert all(len(c["times_s"]) == 2 and len(c["warmup_s"]) == 1 for c in data["configs"])
    for plan in data["plans"]:
        for key in ("median_s", "speedup", "paired_speedup", "ideal_speedup", "realization", "torch",
                    "ort_over_torch", "actions"):
            assert key in plan, key
        assert plan["ideal_speedup"] > 1
        assert plan["realization"] == pytest.approx((plan["speedup"] - 1) / (plan["ideal_speedup"] - 1))
    assert data["plans"][1]["freeze_scope"] == "prefix_through_visual"
    # The FLOPs counted on the graphs (vskip_compile.flops) agree with DESIGN.md's formula.
    analytic = analytic_ideal(bench.read_dims(model, None))
    for plan, entry in zip([load_plan(PLANS / "example_tiny.json")[0], suffix_plan], data["plans"]):
        assert entry["ideal_speedup"] == pytest.approx(analytic(plan, layout(24, 8)), rel=1e-9)
    rounds = [line.split(":")[0] for line in log if line.startswith(("warm-up", "round"))]
    assert rounds == ["warm-up 1/1"] * 6 + ["round 1/2"] * 6 + ["round 2/2"] * 6

    table = bench.format_table(data)
    assert "ort:plan1" in table and "ONNX Runtime / PyTorch" in table
    markdown = bench.to_markdown(data)
    assert (tmp_path / "bench.md").read_text() == markdown
    assert "vskip bench test" in markdown and data["machine"]["cpu"] in markdown
    assert "onnxruntime" in markdown and data["date"] in markdown and "| `torch:plan1` |" in markdown


def test_bench_keeps_compiled_graphs_in_workdir_and_takes_a_given_ideal(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    result = run_bench(model, [PLANS / "example_tiny.json"], visual_rows=8, text_rows=4, warmup=0, rounds=1,
                       workdir=tmp_path / "work", ideal=lambda plan, visual, graph: 2.0)
    assert (tmp_path / "work" / "prefill.example_tiny.onnx").is_file()
    assert result["ideal_source"] == bench.IDEAL_GIVEN and result["plans"][0]["ideal_speedup"] == 2.0
    assert "torch" not in result["plans"][0] and "ort_over_torch" not in result["vanilla"]


def test_workdir_gets_one_copy_of_external_weights(exported, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    export = exported("qwen2_vl")
    shutil.copy(export / "vskip.json", source / "vskip.json")
    onnx.save(onnx.load(str(export / "prefill.onnx")), str(source / "prefill.onnx"), save_as_external_data=True,
              location="prefill.onnx.data")
    work = tmp_path / "work"
    plans = [PLANS / "example_tiny.json", Plan((Action.FREEZE,) * 4)]
    result = run_bench(source / "prefill.onnx", plans, visual_rows=8, text_rows=4, warmup=0, rounds=1, workdir=work)
    # One staged copy of the source and its weights, shared by every compiled plan.
    assert sorted(p.name for p in work.iterdir()) == ["prefill.bench-source.onnx", "prefill.bench-source.onnx.data",
                                                      "prefill.example_tiny.onnx", "prefill.plan1.onnx"]
    assert [c["graph"] for c in result["configs"]][1:] == [str(work / "prefill.example_tiny.onnx"),
                                                         str(work / "prefill.plan1.onnx")]


# ----------------------------------------------------------------------------- errors

def test_bad_input_is_refused_in_one_line(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    example = PLANS / "example_tiny.json"
    cases = [
        (dict(model=tmp_path / "missing.onnx"), "no such file"),
        (dict(plans=[PLANS / "bench24_vskip_like.json"]), "24-layer"),
        (dict(plans=[tmp_path / "nope.json"]), "no such file"),
        (dict(rounds=0), "--rounds"),
        (dict(threads=0), "--threads"),
        (dict(text_rows=0), "--text-rows"),
        (dict(sidecar={"num_layers": 4}), "hidden_size"),
        (dict(json_path=tmp_path / "no" / "out.json"), "no such directory"),
    ]
    for change, message in cases:
        kwargs = dict(model=model, plans=[example], visual_rows=8, text_rows=4, warmup=0, rounds=1)
        kwargs.update(change)
        with pytest.raises(VskipError, match=message) as info:
            run_bench(kwargs.pop("model"), kwargs.pop("plans"), **kwargs)
        assert "\n" not in str(info.value)

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model, bare / "prefill.onnx")
    with pytest.raises(VskipError, match="no vskip.json beside it.*--sidecar"):
        run_bench(bare / "prefill.onnx", [example], visual_rows=8, text_rows=4)

    compiled = tmp_path / "compiled.onnx"
    compile_model(model, example, compiled)
    with pytest.raises(VskipError, match="already compiled"):
        run_bench(compiled, [example], visual_rows=8, text_rows=4)
    with pytest.raises(VskipError, match="not compiled by vskip.*--plan"):
        run_bench(model, [], compiled_graphs=[model], visual_rows=8, text_rows=4)
    other = tmp_path / "three_layers.onnx"
    compile_model(model, Plan((Action.FREEZE,) * 4), other)
    recorded = onnx.load(str(other))
    for entry in recorded.metadata_props:
        if entry.key == "vskip.plan":
            entry.value = json.dumps({"format": "vskip-plan", "version": 1, "model": {"num_layers": 3},
                                      "layers": {"0-2": "freeze"}})
    onnx.save(recorded, str(other))
    with pytest.raises(VskipError, match="3 layers but the model has 4"):
        run_bench(model, [], compiled_graphs=[other], visual_rows=8, text_rows=4)


def test_bench_times_given_compiled_graphs_under_their_recorded_plan(exported, tmp_path):
    """--compiled: a graph compiled earlier (e.g. by another vskip version) is timed as it is."""
    model = exported("qwen2_vl") / "prefill.onnx"
    given = tmp_path / "before.onnx"
    frozen = Plan((Action.FREEZE,) * 4)
    compile_model(model, frozen, given)
    stamp = given.stat().st_mtime_ns
    result = run_bench(model, [frozen], compiled_graphs=[given], visual_rows=8, text_rows=4, warmup=0, rounds=1,
                       threads=1)
    assert [p["name"] for p in result["plans"]] == ["plan0", "before"]
    assert result["plans"][1]["file"] == str(given) and result["plans"][1]["actions"] == {"freeze": 4}
    assert result["plans"][0]["ideal_speedup"] == result["plans"][1]["ideal_speedup"] > 1
    assert [c["graph"] for c in result["configs"]][2] == str(given)
    assert given.stat().st_mtime_ns == stamp  # left in place, untouched


# ----------------------------------------------------------------------------- shipped plans

def test_shipped_bench_plans_match_the_tool():
    spec = importlib.util.spec_from_file_location("bench_plans", TOOLS / "bench_plans.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    plans = tool.bench_plans(24)
    assert set(plans) == {"empty", "vskip_like", "opskip_like", "freeze_after2"}
    for name, (plan, _) in plans.items():
        assert load_plan(PLANS / f"bench24_{name}.json")[0] == plan, name

    S, F, A = Action.SKIP_ATTENTION, Action.FREEZE, Action.FULL
    assert plans["empty"][0].is_empty
    assert plans["vskip_like"][0].actions == (A,) * 10 + (S,) * 14
    opskip = plans["opskip_like"][0].actions
    assert [i for i, a in enumerate(opskip) if a is S] == [1, 11, 12, 13, 14, 15]
    assert opskip[16:] == (F,) * 8                                  # the last third
    assert plans["freeze_after2"][0].actions == (A,) * 3 + (F,) * 21
