"""vskip bench end to end on tiny exports: what it reports, where it writes, what it refuses.

Timing is measured, never asserted: the schedule and statistics are checked on a fake
clock in tests/bench/, and the runs here check only the structure of what they report.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

import vskip_compile
from vskip_compile import bench
from vskip_compile.backends import get_backend
from vskip_compile.bench import MAX_ROWS, analytic_ideal, model_sidecar, run_bench
from vskip_compile.compile import compile_model
from vskip_compile.core.errors import VskipError
from vskip_compile.core.graph_io import recorded_plan
from vskip_compile.core.plan import Action, FreezeScope, Plan, load_plan
from vskip_compile.core.sidecar import Sidecar
from vskip_compile.core.visual_rows import workload

PLANS = Path(vskip_compile.__file__).parent / "plans"
TOOLS = Path(__file__).resolve().parent.parent / "tools"
SMALL = workload(12, "2:8", MAX_ROWS)          # 2 text + 6 visual + 4 text rows


def test_bench_on_tiny_qwen2_vl_with_two_backends_reports_every_field(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    suffix_plan = Plan((Action.FULL, Action.SKIP_ATTENTION, Action.FREEZE, Action.FREEZE),
                       FreezeScope.PREFIX_THROUGH_VISUAL)
    visual = workload(20, "2:14", MAX_ROWS)    # 2 text + 12 visual + 6 text
    log = []
    result = run_bench(model, [PLANS / "example_tiny.json", suffix_plan], visual=visual,
                       backends=("ort-cpu", "torch"), warmup=1, rounds=2, threads=1, command="vskip bench test",
                       progress=log.append, json_path=tmp_path / "bench.json", markdown_path=tmp_path / "bench.md")
    data = json.loads((tmp_path / "bench.json").read_text())
    assert data == json.loads(json.dumps(result))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.md"]   # no temp file left
    assert not list(model.parent.glob(".*bench*"))                           # compiled graphs removed

    assert data["format"] == "vskip-bench" and data["version"] == 2
    for key in ("command", "date", "machine", "versions", "backends", "threads", "rounds", "warmup",
                "sequence_length", "visual_rows", "visual_ranges", "ideal_source", "vanilla", "plans", "configs"):
        assert key in data, key
    assert data["command"] == "vskip bench test" and data["threads"] == 1 and data["rounds"] == 2
    assert data["sequence_length"] == 20 and data["visual_rows"] == 12 and data["text_rows"] == 8
    assert data["layout"] == "2 text + 12 visual + 6 text" and data["visual_ranges"] == "2:14"
    assert {"cpu", "cores"} <= set(data["machine"])
    assert {"onnxruntime", "torch", "onnx", "vskip"} <= set(data["versions"])
    assert [d["backend"] for d in data["backends"]] == ["ort-cpu", "torch"]
    assert [d["runtime"] for d in data["backends"]] == ["onnxruntime", "torch"]
    assert data["ideal_source"] == bench.IDEAL_FLOPS_MODULE

    assert [c["name"] for c in data["configs"]] == ["ort-cpu:vanilla", "ort-cpu:example_tiny", "ort-cpu:plan1",
                                                    "torch:vanilla", "torch:example_tiny", "torch:plan1"]
    assert [c["backend"] for c in data["configs"]] == ["ort-cpu"] * 3 + ["torch"] * 3
    assert all(len(c["times_s"]) == 2 and len(c["warmup_s"]) == 1 for c in data["configs"])
    vanilla = data["vanilla"]
    assert vanilla["median_s"] == vanilla["backends"]["ort-cpu"]["median_s"] > 0
    assert vanilla["backends"]["torch"]["median_s"] > 0
    assert vanilla["ratios"]["ort-cpu/torch"]["ratio_of_medians"] == pytest.approx(
        vanilla["median_s"] / vanilla["backends"]["torch"]["median_s"])
    for plan in data["plans"]:
        for key in ("median_s", "speedup", "paired_speedup", "ideal_speedup", "realization", "paired_realization",
                    "backends", "ratios", "actions", "file", "freeze_scope"):
            assert key in plan, key
        assert set(plan["backends"]) == {"ort-cpu", "torch"} and set(plan["ratios"]) == {"ort-cpu/torch"}
        assert plan["speedup"] == plan["backends"]["ort-cpu"]["speedup"]
        assert plan["ideal_speedup"] > 1
        assert plan["realization"] == pytest.approx((plan["speedup"] - 1) / (plan["ideal_speedup"] - 1))
        torch_block = plan["backends"]["torch"]
        assert plan["ratios"]["ort-cpu/torch"]["ratio_of_medians"] == pytest.approx(
            plan["median_s"] / torch_block["median_s"])
    assert data["plans"][1]["freeze_scope"] == "prefix_through_visual"
    # The FLOPs counted on the graphs (vskip_compile.flops) agree with DESIGN.md's formula.
    analytic = analytic_ideal(model_sidecar(model, None).dims())
    for plan, entry in zip([load_plan(PLANS / "example_tiny.json")[0], suffix_plan], data["plans"]):
        assert entry["ideal_speedup"] == pytest.approx(analytic(plan, visual), rel=1e-9)
    rounds = [line.split(":")[0] for line in log if line.startswith(("warm-up", "round"))]
    assert rounds == ["warm-up 1/1"] * 6 + ["round 1/2"] * 6 + ["round 2/2"] * 6

    table = bench.format_table(data)
    assert "ort-cpu:plan1" in table and "torch:plan1" in table and "ort-cpu / torch time (median)" in table
    markdown = bench.to_markdown(data)
    assert (tmp_path / "bench.md").read_text() == markdown
    assert "vskip bench test" in markdown and data["machine"]["cpu"] in markdown
    assert "onnxruntime" in markdown and data["date"] in markdown and "| `torch:plan1` |" in markdown


def test_bench_keeps_compiled_graphs_in_workdir_and_takes_a_given_ideal(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    result = run_bench(model, [PLANS / "example_tiny.json"], visual=SMALL, warmup=0, rounds=1,
                       workdir=tmp_path / "work", ideal=lambda plan, visual, graph: 2.0)
    assert (tmp_path / "work" / "prefill.example_tiny.onnx").is_file()
    assert result["ideal_source"] == bench.IDEAL_GIVEN and result["plans"][0]["ideal_speedup"] == 2.0
    assert [c["name"] for c in result["configs"]] == ["ort-cpu:vanilla", "ort-cpu:example_tiny"]
    assert set(result["plans"][0]["backends"]) == {"ort-cpu"} and result["plans"][0]["ratios"] == {}
    assert result["vanilla"]["ratios"] == {}


def test_torch_runs_workdir_graphs_with_the_models_sidecar(exported, tmp_path):
    """Compiled graphs in a workdir have no vskip.json beside them: the model's sidecar is passed on."""
    model = exported("qwen2_vl") / "prefill.onnx"
    result = run_bench(model, [Plan((Action.FREEZE,) * 4)], visual=SMALL, backends=["torch"], warmup=0,
                       rounds=1, threads=1, workdir=tmp_path / "work")
    assert [c["name"] for c in result["configs"]] == ["torch:vanilla", "torch:plan0"]
    assert result["configs"][1]["graph"] == str(tmp_path / "work" / "prefill.plan0.onnx")
    assert not (tmp_path / "work" / "vskip.json").exists()
    assert result["backends"][0]["backend"] == "torch" and set(result["inputs"]) >= {"inputs_embeds"}


def test_workdir_gets_one_copy_of_external_weights(exported, tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    export = exported("qwen2_vl")
    shutil.copy(export / "vskip.json", source / "vskip.json")
    onnx.save(onnx.load(str(export / "prefill.onnx")), str(source / "prefill.onnx"), save_as_external_data=True,
              location="prefill.onnx.data")
    work = tmp_path / "work"
    plans = [PLANS / "example_tiny.json", Plan((Action.FREEZE,) * 4)]
    result = run_bench(source / "prefill.onnx", plans, visual=SMALL, warmup=0, rounds=1, workdir=work)
    # One staged copy of the source and its weights, shared by every compiled plan.
    assert sorted(p.name for p in work.iterdir()) == ["prefill.bench-source.onnx", "prefill.bench-source.onnx.data",
                                                      "prefill.example_tiny.onnx", "prefill.plan1.onnx",
                                                      "prefill.vanilla.onnx"]
    assert [c["graph"] for c in result["configs"]] == [str(work / "prefill.vanilla.onnx"),
                                                       str(work / "prefill.example_tiny.onnx"),
                                                       str(work / "prefill.plan1.onnx")]
    # Run again into the same workdir: every graph is compiled to the same bytes, so engines
    # built for the first run's graphs still match them (bench --engines checks the sha256).
    first = {p.name: p.read_bytes() for p in work.iterdir()}
    run_bench(source / "prefill.onnx", plans, visual=SMALL, warmup=0, rounds=1, workdir=work, force=True)
    assert {p.name: p.read_bytes() for p in work.iterdir()} == first


def test_engines_need_the_trt_backend_and_a_workdir(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    with pytest.raises(VskipError, match="--engines runs prebuilt TensorRT engines: it goes with --backend trt"):
        run_bench(model, [], visual=SMALL, engines=True)
    with pytest.raises(VskipError, match="keep them with --workdir DIR, build an engine for each graph there"):
        run_bench(model, [], visual=SMALL, backends=["trt"], engines=True)


def test_the_vanilla_config_is_the_empty_plan_compile(exported, tmp_path):
    """The moved NaN guards of an opset-20 graph are in the baseline, not in the speedup."""
    model = exported("qwen2_vl") / "prefill.onnx"
    result = run_bench(model, [Plan((Action.FREEZE,) * 4)], visual=SMALL, warmup=0, rounds=1,
                       workdir=tmp_path / "work")
    vanilla = onnx.load(result["configs"][0]["graph"], load_external_data=False)
    assert recorded_plan(vanilla, Path(result["configs"][0]["graph"])) == Plan.empty(4)
    softmax = {o for n in vanilla.graph.node if n.op_type == "Softmax" for o in n.output}
    assert not any(n.op_type == "Where" and set(n.input) & softmax for n in vanilla.graph.node)
    assert result["vanilla_graph"] == "the source compiled with the empty plan"
    assert "- vanilla: the source compiled with the empty plan" in bench.to_markdown(result)


# ----------------------------------------------------------------------------- errors

def _unavailable_here(name: str) -> bool:
    try:
        get_backend(name)
    except VskipError:
        return True
    return False


@pytest.mark.skipif(not _unavailable_here("ort-cuda"), reason="this machine has ONNX Runtime's CUDA provider")
def test_an_unavailable_backend_costs_nothing(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    before = sorted(p.name for p in model.parent.iterdir())
    with pytest.raises(VskipError, match="backend ort-cuda is not available: .*pip install") as info:
        run_bench(model, [PLANS / "example_tiny.json"], visual=SMALL, backends=("ort-cpu", "ort-cuda"),
                  workdir=tmp_path / "work", json_path=tmp_path / "bench.json", warmup=0, rounds=1)
    assert "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []                                    # no workdir, no report
    assert sorted(p.name for p in model.parent.iterdir()) == before           # nothing compiled beside it


def test_bad_input_is_refused_in_one_line(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    example = PLANS / "example_tiny.json"
    cases = [
        (dict(model=tmp_path / "missing.onnx"), "no such file"),
        (dict(plans=[PLANS / "bench24_vskip_like.json"]), "24-layer"),
        (dict(plans=[tmp_path / "nope.json"]), "no such file"),
        (dict(rounds=0), "--rounds"),
        (dict(threads=0), "--threads"),
        (dict(visual=np.array([False, True])), "must end with a text row"),
        (dict(visual=[False, True, False]), "numpy bool array"),
        (dict(backends=["nope"]), "unknown backend 'nope'; backends are ort-cpu, "),
        (dict(backends=["ort-cpu", "ort-cpu"]), "ort-cpu is given twice"),
        (dict(backends=[]), "at least one --backend"),
        (dict(sidecar=Sidecar(num_layers=4)), "hidden_size"),
        (dict(sidecar=tmp_path / "none.json"), "no such file"),
        (dict(json_path=tmp_path / "no" / "out.json"), "no such directory"),
    ]
    for change, message in cases:
        kwargs = dict(model=model, plans=[example], visual=SMALL, warmup=0, rounds=1)
        kwargs.update(change)
        with pytest.raises(VskipError, match=message) as info:
            run_bench(kwargs.pop("model"), kwargs.pop("plans"), **kwargs)
        assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())

    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(model, bare / "prefill.onnx")
    with pytest.raises(VskipError, match="no vskip.json beside it.*--sidecar"):
        run_bench(bare / "prefill.onnx", [example], visual=SMALL)

    compiled = tmp_path / "compiled.onnx"
    compile_model(model, example, compiled)
    with pytest.raises(VskipError, match="already compiled"):
        run_bench(compiled, [example], visual=SMALL)
    with pytest.raises(VskipError, match="not compiled by vskip.*--plan"):
        run_bench(model, [], compiled_graphs=[model], visual=SMALL)
    other = tmp_path / "three_layers.onnx"
    compile_model(model, Plan((Action.FREEZE,) * 4), other)
    recorded = onnx.load(str(other))
    for entry in recorded.metadata_props:
        if entry.key == "vskip.plan":
            entry.value = json.dumps({"format": "vskip-plan", "version": 1, "model": {"num_layers": 3},
                                      "layers": {"0-2": "freeze"}})
    onnx.save(recorded, str(other))
    with pytest.raises(VskipError, match="3 layers but the model has 4"):
        run_bench(model, [], compiled_graphs=[other], visual=SMALL)


def test_bench_times_given_compiled_graphs_under_their_recorded_plan(exported, tmp_path):
    """--compiled: a graph compiled earlier (e.g. by another vskip version) is timed as it is."""
    model = exported("qwen2_vl") / "prefill.onnx"
    given = tmp_path / "before.onnx"
    frozen = Plan((Action.FREEZE,) * 4)
    compile_model(model, frozen, given)
    stamp = given.stat().st_mtime_ns
    result = run_bench(model, [frozen], compiled_graphs=[given], visual=SMALL, warmup=0, rounds=1, threads=1)
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


def test_bench_compiles_every_graph_with_the_causal_blocks_it_is_given(exported, tmp_path):
    model = exported("qwen2_vl") / "prefill.onnx"
    with pytest.raises(VskipError, match="--causal-blocks must be 0 .off. or an integer in 2-64, got 1"):
        run_bench(model, [Plan((Action.FREEZE,) * 4)], visual=SMALL, warmup=0, rounds=1, causal_blocks=1,
                  workdir=tmp_path / "refused")
    assert not (tmp_path / "refused").exists()                        # refused before any work
    result = run_bench(model, [Plan((Action.SKIP_FFN,) * 4)], visual=SMALL, warmup=0, rounds=1, causal_blocks=4,
                       workdir=tmp_path / "work")
    assert result["causal_blocks"] == 4 and "- causal blocks: 4" in bench.to_markdown(result)
    for config in result["configs"]:                                  # vanilla and the plan: every layer blocked
        graph = onnx.load(config["graph"], load_external_data=False)
        assert sum(n.op_type == "Softmax" for n in graph.graph.node) == 4 * 4, config["name"]


def test_bench_times_one_routable_graph_under_every_plan(exported, tmp_path):
    """--routable: one graph, fed the empty plan and each plan; its overheads are the
    ratios of the medians (and of the paired rounds) to the static configs'."""
    from vskip_compile.bench.timing import stats

    model = exported("qwen2_vl") / "prefill.onnx"
    plan = Plan((Action.FULL, Action.SKIP_ATTENTION, Action.FREEZE, Action.SKIP_FFN))
    result = run_bench(model, [plan], visual=SMALL, warmup=0, rounds=2, threads=1, routable=True,
                       markdown_path=tmp_path / "bench.md", workdir=tmp_path / "work")
    configs = {c["plan"]: c for c in result["configs"]}
    label = result["plans"][0]["name"]
    assert set(configs) == {"vanilla", label, "routable/vanilla", f"routable/{label}"}
    assert configs["routable/vanilla"]["graph"] == configs[f"routable/{label}"]["graph"]   # one graph for both
    graph = onnx.load(configs["routable/vanilla"]["graph"].removesuffix(" (routable)"), load_external_data=False)
    assert sum(i.name.endswith("_rows") for i in graph.graph.input) == 8       # every layer's two row inputs
    overheads = result["routable"]["ort-cpu"]
    for static, routed in (("vanilla", "routable/vanilla"), (label, f"routable/{label}")):
        times = configs[static]["times_s"], configs[routed]["times_s"]
        assert overheads[static]["overhead"] == pytest.approx(stats(times[1])["median"] / stats(times[0])["median"] - 1)
        assert overheads[static]["paired_overhead"] == pytest.approx(
            stats([r / s for r, s in zip(times[1], times[0])])["median"] - 1)
    routed_plan = next(p for p in result["plans"] if p["name"] == f"routable/{label}")
    assert routed_plan["ideal_speedup"] == result["plans"][0]["ideal_speedup"]
    assert "routable graph on ort-cpu" in (tmp_path / "bench.md").read_text()
    with pytest.raises(VskipError, match="--routable and --causal-blocks do not combine"):
        run_bench(model, [plan], visual=SMALL, routable=True, causal_blocks=4)
