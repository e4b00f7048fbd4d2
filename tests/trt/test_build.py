"""`vskip build`: optimization profiles from every family's graphs, the limits, the one-line
errors, the missing-TensorRT line, the guarded writes of ENGINE + ENGINE.json, the engine
sidecar the trt backend reads, and Polygraphy's Comparator on ONNX Runtime runners.

Tests that need TensorRT and an NVIDIA GPU (an actual build, running an engine) are at
the end; they skip with that reason where TensorRT does not import.
"""

from __future__ import annotations

import json
import re
import shutil
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import FAMILIES
from vskip_compile.backends import BACKENDS, get_backend, open_session
from vskip_compile.backends.tensorrt import check_profile, engine_specs
from vskip_compile.cli import main
from vskip_compile.compile import compile_model
from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, FreezeScope, Plan
from vskip_compile.core.sidecar import read_sidecar
from vskip_compile.core.visual_rows import row_feeds
from vskip_compile.trt import build
from vskip_compile.trt.profiles import ProfileLimits, derive_profiles, graph_axes, parse_dim_names

# Distinct numbers, so every axis shows which limit it took.
LIMITS = ProfileLimits(max_batch=3, max_seq=96, max_visual_rows=80, opt_batch=2, opt_seq=40, opt_visual_rows=32,
                       max_images=4, opt_images=2)
QWEN_MROPE = {"qwen2_vl", "qwen2_5_vl", "qwen3_vl"}
NEEDS_TRT = "needs TensorRT and an NVIDIA GPU"


def _one_line_error(capsys, argv, expect):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err, err
    return err


def _ok(capsys, argv):
    """Run the CLI, expect success, and clear what it printed."""
    assert main(argv) == 0
    return capsys.readouterr()


def _plan(num_layers: int) -> Plan:
    """A plan whose compiled graph takes both row inputs (a prefix freeze needs the suffix rows)."""
    actions = [Action.FULL, Action.SKIP_ATTENTION] + [Action.FREEZE] * (num_layers - 2)
    return Plan(tuple(actions[:num_layers]), FreezeScope.PREFIX_THROUGH_VISUAL)


@pytest.fixture(scope="module")
def graphs(exported, tmp_path_factory):
    """graphs(family, opset, compiled) -> (graph path, its sidecar)."""
    made = {}
    root = tmp_path_factory.mktemp("trt-graphs")

    def get(family, opset, compiled):
        key = (family, opset, compiled)
        if key not in made:
            source = exported(family, opset) / "prefill.onnx"
            sidecar = read_sidecar(source)
            path = source
            if compiled:
                path = root / f"{family}-{opset}.onnx"
                compile_model(source, _plan(sidecar.num_layers), path)
            made[key] = (path, sidecar)
        return made[key]

    return get


def _profiles(path, sidecar, limits=LIMITS):
    model = onnx.load(str(path), load_external_data=False)
    return {p.name: p for p in derive_profiles(model.graph.input, sidecar, limits, source=str(path))}


# ------------------------------------------------------------------- profile derivation

@pytest.mark.parametrize("compiled", [False, True], ids=["vanilla", "compiled"])
@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", FAMILIES)
def test_profiles_of_every_family(graphs, family, opset, compiled):
    path, sidecar = graphs(family, opset, compiled)
    profiles = _profiles(path, sidecar)
    model = onnx.load(str(path), load_external_data=False)
    assert list(profiles) == [i.name for i in model.graph.input]  # every input of a decoder is dynamic
    d = sidecar.hidden_size
    assert profiles["inputs_embeds"][1:] == ((1, 1, d), (2, 40, d), (3, 96, d))
    assert profiles["attention_mask"][1:] == ((1, 1), (2, 40), (3, 96))
    positions = profiles["position_ids"][1:]
    if family in QWEN_MROPE:
        assert positions == ((3, 1, 1), (3, 2, 40), (3, 3, 96))
    else:
        assert positions == ((1, 1), (2, 40), (3, 96))
    if family == "qwen3_vl":
        layers = profiles["deepstack_visual_embeds"].min[0]
        assert profiles["visual_pos_masks"][1:] == ((1, 1), (2, 40), (3, 96))
        assert profiles["deepstack_visual_embeds"][1:] == ((layers, 0, d), (layers, 32, d), (layers, 80, d))
    if family == "gemma3":
        for mask in ("full_attention_mask", "sliding_attention_mask"):
            assert profiles[mask][1:] == ((1, 1, 1, 1), (2, 1, 40, 40), (3, 1, 96, 96))
    if compiled:
        # text rows = S - V: at least one, all S rows when there is no image; opt = 40 - 32
        for rows in ("vskip_text_rows", "vskip_suffix_rows"):
            assert profiles[rows][1:] == ((1,), (8,), (96,))
    else:
        assert not {"vskip_text_rows", "vskip_suffix_rows"} & set(profiles)


def _feeds_of_shapes(profiles, which, rng):
    """Feeds of each input's ``which`` profile shape (0: min, 1: opt): one text-only prompt."""
    feeds = {}
    for name, profile in profiles.items():
        shape = profile[1 + which]
        if name in ("vskip_text_rows", "vskip_suffix_rows"):
            feeds[name] = np.arange(shape[0], dtype=np.int64)
        elif name.endswith("attention_mask") and len(shape) == 4:
            feeds[name] = np.ones(shape, bool)  # Gemma3's masks: True attends
        elif name == "attention_mask":
            feeds[name] = np.ones(shape, np.int64)
        elif name == "visual_pos_masks":
            feeds[name] = np.zeros(shape, bool)
        elif name == "position_ids":
            feeds[name] = np.zeros(shape, np.int64)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_smallest_profile_shapes_are_a_prompt_the_graphs_run(graphs, family, opset):
    """min: one text row, no image (DeepStack [L, 0, D]); the compiled graph then updates
    every row and gives the vanilla graph's outputs (ONNX Runtime)."""
    compiled, sidecar = graphs(family, opset, True)
    vanilla = graphs(family, opset, False)[0]
    profiles = _profiles(compiled, sidecar)
    feeds = _feeds_of_shapes(profiles, 0, np.random.default_rng(0))
    assert feeds["inputs_embeds"].shape[:2] == (1, 1)
    got = open_session(compiled).run(feeds)
    want = open_session(vanilla).run({k: v for k, v in feeds.items() if not k.startswith("vskip_")})
    for name in want:
        assert np.isfinite(got[name]).all() and np.abs(got[name] - want[name]).max() <= 1e-5, name


def test_the_opt_shapes_are_one_coherent_prompt(graphs):
    """opt: 40 rows, 32 of them visual, 8 text; every input agrees on batch and sequence."""
    profiles = _profiles(*graphs("qwen3_vl", 20, True))
    assert profiles["inputs_embeds"].opt[:2] == profiles["visual_pos_masks"].opt == (2, 40)
    assert profiles["position_ids"].opt[1:] == (2, 40)
    text, visual = profiles["vskip_text_rows"].opt[0], profiles["deepstack_visual_embeds"].opt[1]
    assert text + visual == 40


def test_default_limits_and_their_clipping():
    default = ProfileLimits().check()
    assert (default.max_batch, default.max_seq, default.opt_seq, default.opt_visual_rows) == (1, 4096, 1088, 1024)
    small = ProfileLimits.within(max_seq=512).check()  # defaults not given move inside the given maxima
    assert (small.opt_seq, small.max_visual_rows, small.opt_visual_rows) == (512, 512, 448)
    tiny = ProfileLimits.within(max_seq=16).check()
    assert (tiny.opt_seq, tiny.opt_visual_rows) == (16, 0)
    assert ProfileLimits.within(max_batch=8).opt_batch == 1
    with pytest.raises(VskipError, match="--opt-seq 2000 is above --max-seq 512"):
        ProfileLimits.within(max_seq=512, opt_seq=2000).check()  # an explicit value is never changed


@pytest.mark.parametrize("limits, message", [
    (dict(max_seq=0), "--max-seq must be an integer in 1-"),
    (dict(max_batch=-2), "--max-batch must be an integer in 1-"),
    (dict(max_visual_rows=-1), "--max-visual-rows must be an integer in 0-"),
    (dict(max_seq=2**30), "--max-seq must be an integer in 1-1048576"),
    (dict(max_seq=100, opt_seq=200), "--opt-seq 200 is above --max-seq 100"),
    (dict(max_batch=2, opt_batch=4), "--opt-batch 4 is above --max-batch 2"),
    (dict(max_seq=100, max_visual_rows=101), "--max-visual-rows 101 is above --max-seq 100"),
    (dict(opt_seq=64, opt_visual_rows=64), "leaves no text row"),
    (dict(max_visual_rows=10, opt_visual_rows=20), "--opt-visual-rows 20 is above --max-visual-rows 10"),
])
def test_bad_limits_are_one_line_errors(limits, message):
    with pytest.raises(VskipError, match=re.escape(message)) as caught:
        ProfileLimits.within(**limits).check()
    assert "\n" not in str(caught.value)


def test_bad_limits_from_the_command_line(graphs, capsys):
    path = str(graphs("qwen2_vl", 20, False)[0])
    _one_line_error(capsys, ["build", path, "--print-profiles", "--max-seq", "0"], "--max-seq must be")
    _one_line_error(capsys, ["build", path, "--print-profiles", "--max-seq", "64", "--max-visual-rows", "65"],
                    "above --max-seq 64")
    _one_line_error(capsys, ["build", path, "--print-profiles", "--max-seq", "64", "--opt-seq", "128"],
                    "--opt-seq 128 is above --max-seq 64")
    _one_line_error(capsys, ["build", path, "--print-profiles", "-o", "x.engine"], "writes nothing; drop -o")


def _tiny_graph(tmp_path, dims, name="g.onnx"):
    """A one-node graph whose input x has the axes ``dims`` (ints, names, or None for unnamed)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))  # None: an unnamed dynamic axis
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 20)])
    path = tmp_path / name
    onnx.save(model, str(path))
    return path


def test_an_axis_vskip_cannot_attribute_is_named_in_one_line(tmp_path, capsys):
    path = _tiny_graph(tmp_path, ["batch", "s29", 8])
    err = _one_line_error(capsys, ["build", str(path), "--print-profiles"],
                          "input 'x' axis 1 is dynamic ('s29') and vskip cannot tell what it counts")
    assert "--dim s29=KIND" in err
    assert main(["build", str(path), "--print-profiles", "--dim", "s29=sequence", "--max-seq", "64"]) == 0
    out = capsys.readouterr().out
    assert "[1, 1, 8]" in out and "[1, 64, 8]" in out
    unnamed = _tiny_graph(tmp_path, ["batch", None, 8], "unnamed.onnx")
    _one_line_error(capsys, ["build", str(unnamed), "--print-profiles"], "axis 1 is dynamic and has no name")


def test_a_size_written_as_a_name_stays_fixed(tmp_path):
    """transformers' exporter writes some sizes as dim names ("64"): fixed, yet in the profile."""
    model = onnx.load(str(_tiny_graph(tmp_path, ["batch", "sequence", "64"])))
    (profile,) = derive_profiles(model.graph.input, None, LIMITS)
    assert profile.min == (1, 1, 64) and profile.max == (3, 96, 64)


@pytest.mark.parametrize("value, message", [("s29", "give NAME=KIND"), ("s29=rows", "KIND must be one of"),
                                            ("=batch", "give NAME=KIND")])
def test_bad_dim_names(value, message):
    with pytest.raises(VskipError, match=message):
        parse_dim_names([value])
    with pytest.raises(VskipError, match="names 's1' twice"):
        parse_dim_names(["s1=batch", "s1=sequence"])


def test_the_sidecar_must_describe_the_graph(graphs, exported, tmp_path, capsys):
    path, sidecar = graphs("qwen2_vl", 20, False)
    model = onnx.load(str(path), load_external_data=False)
    from dataclasses import replace

    with pytest.raises(VskipError, match=r"position_ids are \[B, S\] but the graph takes \[3, batch, sequence\]"):
        graph_axes(model.graph.input, replace(sidecar, position_rank=1), source=str(path))
    with pytest.raises(VskipError, match="gives hidden size 65"):
        graph_axes(model.graph.input, replace(sidecar, hidden_size=65), source=str(path))


# ------------------------------------------------------------------- decode graphs

def _decode_feeds(profiles, which, rng):
    """Feeds of each decode input's ``which`` profile shape (0 min, 1 opt, 2 max): one step."""
    feeds = {}
    for name, profile in profiles.items():
        shape = profile[1 + which]
        if name == "attention_mask":
            feeds[name] = np.ones(shape, np.int64)
        elif name == "position_ids":  # the step's position: after the past rows
            past = profiles["past_key_values.0.key"][1 + which][2]
            feeds[name] = np.full(shape, past, np.int64)
        else:
            feeds[name] = rng.standard_normal(shape).astype(np.float32)
    return feeds


@pytest.mark.parametrize("family", FAMILIES)
def test_decode_profiles_of_every_family(exported, family):
    """A decode graph's unnamed axes (s10, s0, ...) are attributed by what each input is;
    min, opt and max are each one step the graph runs: one new token on a cache one row
    shorter than the mask (ONNX Runtime runs all three)."""
    decode = exported(family, 20, decode=True) / "decode.onnx"
    sidecar = read_sidecar(exported(family, 20, decode=True) / "prefill.onnx")
    model = onnx.load(str(decode), load_external_data=False)
    profiles = {p.name: p for p in derive_profiles(model.graph.input, sidecar, LIMITS, source=str(decode))}
    assert list(profiles) == [i.name for i in model.graph.input]
    d, heads, head_dim = sidecar.hidden_size, sidecar.num_key_value_heads, sidecar.head_dim
    assert profiles["inputs_embeds"][1:] == ((1, 1, d), (2, 1, d), (3, 1, d))
    assert profiles["attention_mask"][1:] == ((1, 2), (2, 41), (3, 96))
    for layer in range(sidecar.num_layers):
        for kind in ("key", "value"):
            assert profiles[f"past_key_values.{layer}.{kind}"][1:] == (
                (1, heads, 1, head_dim), (2, heads, 40, head_dim), (3, heads, 95, head_dim))
    positions = profiles["position_ids"][1:]
    assert positions == (((3, 1, 1), (3, 2, 1), (3, 3, 1)) if family in QWEN_MROPE else ((1, 1), (2, 1), (3, 1)))
    session = open_session(decode)
    for which, past in ((0, 1), (1, 40), (2, 95)):
        got = session.run(_decode_feeds(profiles, which, np.random.default_rng(which)))
        assert got["present.0.key"].shape[2] == past + 1
        assert all(np.isfinite(v).all() for v in got.values())


def test_decode_profiles_from_the_command_line(exported, capsys):
    decode = str(exported("qwen2_vl", 20, decode=True) / "decode.onnx")
    out = _ok(capsys, ["build", decode, "--print-profiles", "--max-seq", "96", "--opt-seq", "40"]).out
    assert "past_sequence 1/40/95" in out and "context 2/41/96" in out and "new_tokens 1/1/1" in out
    _one_line_error(capsys, ["build", decode, "--print-profiles", "--max-seq", "1"], "leaves no room for a past row")
    # The lint bounds the same axes: nothing of the decode graph is left unbounded.
    assert main(["lint", decode, "--target", "trt11", "--max-seq", "96", "--json", "-"]) == 0
    assert json.loads(capsys.readouterr().out)["notes"] == []


@pytest.mark.parametrize("family", FAMILIES)
def test_vision_profiles_of_every_family(exported, family):
    """A vision graph takes images (fixed-size families) or image tokens (Qwen): min, opt
    and max each run on ONNX Runtime and give one feature row per token."""
    directory = exported(family, 20, decode=True)
    vision = directory / "vision.onnx"
    model = onnx.load(str(vision), load_external_data=False)
    inputs = graph_axes(model.graph.input, source=str(vision))
    kinds = {a for i in inputs for a in i.axes if isinstance(a, str)}
    assert kinds == ({"image_tokens"} if family in QWEN_MROPE else {"images"})
    profiles = derive_profiles(inputs, limits=LIMITS)
    assert [p.name for p in profiles] == [i.name for i in model.graph.input]
    session = open_session(vision)
    types = {s.name: s.dtype for s in session.inputs}
    for which, count in enumerate((1, 32, 80) if "image_tokens" in kinds else (1, 2, 4)):
        feeds = {}
        for p in profiles:
            shape = p[1 + which]
            assert shape[0] == count, p
            kind = np.dtype(types[p.name])
            feeds[p.name] = (np.zeros(shape, kind) if kind.kind in "iub"
                             else np.random.default_rng(which).standard_normal(shape).astype(kind))
        features = next(iter(session.run(feeds).values()))
        assert np.isfinite(features).all()
        if "image_tokens" in kinds:
            assert features.shape[0] == count


def test_engines_are_the_files_vskip_build_writes_beside_each_graph(tmp_path):
    """--engines (generate, bench): the trt backend gets GRAPH.engine; a missing one is one
    line with the command that builds it; other backends are not touched."""
    from vskip_compile.backends import engine_options

    graph = tmp_path / "decode.onnx"
    graph.write_bytes(b"")
    trt = BACKENDS["trt"]
    with pytest.raises(VskipError, match=f"there is no decode.engine; build it: vskip build {re.escape(str(graph))}"):
        engine_options(trt, graph, True)
    (tmp_path / "decode.engine").write_bytes(b"")
    assert engine_options(trt, graph, True) == {"engine": tmp_path / "decode.engine"}
    assert engine_options(trt, graph, False) == {} and engine_options(BACKENDS["ort-cpu"], graph, True) == {}


def test_generate_engines_need_the_trt_backend(exported, capsys):
    export = str(exported("qwen2_vl", 20, decode=True))
    _one_line_error(capsys, ["generate", export, "--prompt", "hi", "--engines"], "it goes with --backend trt")


def test_a_decode_engine_refuses_a_context_past_its_profile(exported, capsys):
    decode = exported("qwen2_vl", 20, decode=True) / "decode.onnx"
    plan = build.plan_build(decode, LIMITS)
    assert plan.bounds() == "batch <= 3, new_tokens <= 1, past_sequence <= 95, context <= 96"
    info = build.parse_engine_record(build.engine_record(plan, decode.with_suffix(".engine"), "10.9.0", "0.49",
                                                         "0" * 64, {}), "decode.engine.json", "decode.engine")
    feeds = _decode_feeds({p.name: p for p in plan.profiles}, 2, np.random.default_rng(0))
    check_profile(info, feeds)  # the largest step fits
    feeds["attention_mask"] = np.ones((3, 97), np.int64)
    with pytest.raises(VskipError, match=r"axis 1 \(context\) is 97, the engine takes 2-96; rebuild the engine "
                                         "with a larger --max-seq"):
        check_profile(info, feeds)


def test_print_profiles_runs_without_tensorrt(graphs, capsys):
    path = str(graphs("gemma3", 23, True)[0])
    assert main(["build", path, "--print-profiles", "--max-seq", "96", "--opt-seq", "40", "--opt-visual-rows", "32",
                 "--max-batch", "3", "--opt-batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "full_attention_mask" in out and "[3, 1, 96, 96]" in out and "[2, 1, 40, 40]" in out
    assert "vskip_text_rows" in out and "text_rows 1/8/96" in out


# --------------------------------------------------------------------- missing TensorRT

def test_build_without_tensorrt_is_one_line_and_exit_2(graphs, tmp_path, capsys, monkeypatch):
    """Here TensorRT is not installed; where it is, the same line comes when it cannot import."""
    if build.missing_tensorrt() is not None:  # the real situation on this machine
        err = _one_line_error(capsys, ["build", str(graphs("qwen2_vl", 20, False)[0]), "-o",
                                       str(tmp_path / "e.engine")], "pip install 'vskip[trt]'")
        assert "NVIDIA GPU" in err and "--print-profiles" in err
        assert not list(tmp_path.iterdir())
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt raises ImportError
    err = _one_line_error(capsys, ["build", str(graphs("qwen2_vl", 20, False)[0]), "-o",
                                   str(tmp_path / "e.engine")], "needs TensorRT and an NVIDIA GPU")
    assert err.startswith("vskip build: error: building TensorRT engines needs")
    assert not list(tmp_path.iterdir())
    assert "vskip[trt]" in BACKENDS["trt"].unavailable()
    with pytest.raises(VskipError, match="backend trt is not available: needs TensorRT"):
        get_backend("trt")


def test_running_an_engine_without_tensorrt(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    np.savez(tmp_path / "feeds.npz", x=np.zeros(1))
    (tmp_path / "e.engine").write_bytes(b"engine")
    err = _one_line_error(capsys, ["run", str(tmp_path / "e.engine"), "--inputs", str(tmp_path / "feeds.npz"),
                                   "-o", str(tmp_path / "o.npz"), "--backend", "trt"], "pip install 'vskip[trt]'")
    assert "backend trt is not available" in err and not (tmp_path / "o.npz").exists()


# --------------------------------------------- the write path (the builder stood in for)

@pytest.fixture
def fake_tensorrt(monkeypatch):
    """TensorRT present as far as vskip can tell, and a builder that returns fixed bytes:
    everything around the build (claims, sidecar, timing cache, atomic writes) runs."""
    calls = []

    def fake_build(plan, progress, timing_cache=None, want_cache=False):
        calls.append({"plan": plan, "timing_cache": timing_cache, "want_cache": want_cache})
        progress("fake build")
        return b"ENGINE-BYTES", (b"CACHE-" + (timing_cache or b"")) if want_cache else None, {"parse": 0.1,
                                                                                          "build": 0.2}

    monkeypatch.setattr(build, "missing_tensorrt", lambda: None)
    monkeypatch.setattr(build, "tensorrt_version", lambda: "10.99.1")
    monkeypatch.setattr(build, "build_serialized", fake_build)
    return calls


def _copy_export(exported, tmp_path, family="qwen2_vl"):
    """A private copy of an export (graph + vskip.json), so outputs may land beside it."""
    source = exported(family, 20)
    for name in ("prefill.onnx", "vskip.json"):
        shutil.copy(source / name, tmp_path / name)
    return tmp_path / "prefill.onnx"


def test_build_writes_the_engine_and_its_sidecar(fake_tensorrt, graphs, tmp_path, capsys):
    path, sidecar = graphs("qwen2_vl", 20, True)
    engine = tmp_path / "c.engine"
    assert main(["build", str(path), "-o", str(engine), "--max-seq", "96", "--opt-seq", "40",
                 "--opt-visual-rows", "32", "--max-batch", "3", "--opt-batch", "2"]) == 0
    assert engine.read_bytes() == b"ENGINE-BYTES"
    record = json.loads((tmp_path / "c.engine.json").read_text())
    assert record["format"] == "vskip-engine" and record["tensorrt"] == "10.99.1" and record["strongly_typed"]
    assert record["source"]["sha256"] == build.sha256_file(path) and record["dtype"] == "float32"
    assert record["plan"]["freeze_scope"] == "prefix_through_visual" and record["family"] == "qwen2_vl"
    assert record["row_inputs"] == ["vskip_text_rows", "vskip_suffix_rows"]
    expected = _profiles(path, sidecar)
    assert {p["input"]: (tuple(p["min"]), tuple(p["opt"]), tuple(p["max"])) for p in record["profiles"]} == \
        {name: tuple(p[1:]) for name, p in expected.items()}
    assert [i["name"] for i in record["inputs"]][-2:] == ["vskip_text_rows", "vskip_suffix_rows"]
    assert record["outputs"][0]["name"] == "logits"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.engine", "c.engine.json"]  # no temp left
    captured = capsys.readouterr()
    assert "fake build" in captured.err and "c.engine: TensorRT engine" in captured.out
    # the trt backend's view of that sidecar
    info = build.read_engine_sidecar(engine)
    build.check_engine(info, "10.99.1", graph=path)
    inputs, outputs = engine_specs(info)
    assert inputs[0].name == "inputs_embeds" and inputs[0].dtype is np.float32 and inputs[-1].dtype is np.int64
    assert outputs[0].name == "logits"


def test_the_claim_rules(fake_tensorrt, exported, tmp_path, capsys):
    graph = _copy_export(exported, tmp_path)
    before = graph.read_bytes()
    _one_line_error(capsys, ["build", str(graph), "-o", str(graph)], "would overwrite the command's own input")
    _one_line_error(capsys, ["build", str(graph), "-o", str(graph), "--force"], "own input")
    _one_line_error(capsys, ["build", str(graph), "-o", str(tmp_path / "vskip.json"), "--force"], "own input")
    assert graph.read_bytes() == before and not fake_tensorrt  # refused before any build
    _ok(capsys, ["build", str(graph)])  # default: GRAPH.engine beside the graph
    assert (tmp_path / "prefill.engine").read_bytes() == b"ENGINE-BYTES"
    _one_line_error(capsys, ["build", str(graph)], "prefill.engine: exists; pass --force")
    assert len(fake_tensorrt) == 1
    (tmp_path / "prefill.engine.json").unlink()
    _one_line_error(capsys, ["build", str(graph)], "exists; pass --force")  # the engine alone blocks too
    _ok(capsys, ["build", str(graph), "--force"])
    (tmp_path / "other.engine.json").write_text("{}")
    _one_line_error(capsys, ["build", str(graph), "-o", str(tmp_path / "other.engine")],
                    "other.engine.json: exists; pass --force")  # the sidecar is claimed before the build
    assert not (tmp_path / "other.engine").exists()


def test_a_failed_build_writes_nothing(fake_tensorrt, exported, tmp_path, capsys, monkeypatch):
    graph = _copy_export(exported, tmp_path)

    def failing(plan, progress, timing_cache=None, want_cache=False):
        raise VskipError(f"{plan.graph}: TensorRT could not build an engine: [graphShapeAnalyzer] error")

    monkeypatch.setattr(build, "build_serialized", failing)
    _one_line_error(capsys, ["build", str(graph), "-o", str(tmp_path / "e.engine"), "--timing-cache",
                             str(tmp_path / "t.cache")], "could not build an engine")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prefill.onnx", "vskip.json"]


def test_the_timing_cache_is_read_and_replaced(fake_tensorrt, exported, tmp_path, capsys):
    graph = _copy_export(exported, tmp_path)
    cache = tmp_path / "t.cache"
    _ok(capsys, ["build", str(graph), "-o", str(tmp_path / "a.engine"), "--timing-cache", str(cache)])
    assert fake_tensorrt[-1]["timing_cache"] is None and fake_tensorrt[-1]["want_cache"]
    assert cache.read_bytes() == b"CACHE-"
    _ok(capsys, ["build", str(graph), "-o", str(tmp_path / "b.engine"), "--timing-cache", str(cache)])
    assert fake_tensorrt[-1]["timing_cache"] == b"CACHE-"  # no --force needed: a cache is meant to grow
    assert cache.read_bytes() == b"CACHE-CACHE-"
    assert not list(tmp_path.glob("*.lock")) and not list(tmp_path.glob(".vskip-*"))
    _one_line_error(capsys, ["build", str(graph), "-o", str(cache), "--timing-cache", str(cache), "--force"],
                    "own input")
    _one_line_error(capsys, ["build", str(graph), "-o", str(tmp_path / "c.engine"), "--timing-cache", str(graph)],
                    "own input")
    _one_line_error(capsys, ["build", str(graph), "-o", str(tmp_path / "c.engine"), "--timing-cache",
                             str(tmp_path / "vskip.json")], "own input")
    assert graph.stat().st_size > 1000


def test_a_stale_or_foreign_engine_is_refused(fake_tensorrt, exported, tmp_path, capsys):
    graph = _copy_export(exported, tmp_path)
    engine = tmp_path / "e.engine"
    _ok(capsys, ["build", str(graph), "-o", str(engine)])
    info = build.read_engine_sidecar(engine)
    build.check_engine(info, "10.99.1")  # the recorded graph is unchanged
    with pytest.raises(VskipError, match="built with TensorRT 10.99.1, this is TensorRT 11.0.0"):
        build.check_engine(info, "11.0.0")
    model = onnx.load(str(graph))
    model.doc_string = "changed"
    onnx.save(model, str(graph))
    with pytest.raises(VskipError, match=r"built from a graph with sha256 .* rebuild it: vskip build"):
        build.check_engine(info, "10.99.1")
    shutil.copy(engine, tmp_path / "moved.engine")
    with pytest.raises(VskipError, match="describes the engine 'e.engine', not 'moved.engine'"):
        shutil.copy(tmp_path / "e.engine.json", tmp_path / "moved.engine.json")
        build.read_engine_sidecar(tmp_path / "moved.engine")
    with pytest.raises(VskipError, match="no lone.engine.json beside it"):
        (tmp_path / "lone.engine").write_bytes(b"x")
        build.read_engine_sidecar(tmp_path / "lone.engine")
    (tmp_path / "bad.engine.json").write_text(json.dumps({"format": "vskip-engine", "version": 9}))
    with pytest.raises(VskipError, match="engine sidecar version 9 is not supported"):
        build.read_engine_sidecar(tmp_path / "bad.engine")


def test_feeds_outside_the_profile_name_the_flag(fake_tensorrt, graphs, tmp_path, capsys):
    path, _ = graphs("qwen3_vl", 20, False)
    engine = tmp_path / "q3.engine"
    _ok(capsys, ["build", str(path), "-o", str(engine), "--max-seq", "96", "--opt-seq", "40",
                 "--opt-visual-rows", "32", "--max-visual-rows", "80"])
    info = build.read_engine_sidecar(engine)
    d = read_sidecar(path).hidden_size
    feeds = {"inputs_embeds": np.zeros((1, 97, d), np.float32), "attention_mask": np.ones((1, 97), np.int64)}
    with pytest.raises(VskipError, match=r"input inputs_embeds: shape \[1, 97, .*axis 1 \(sequence\) is 97, "
                                         r"the engine takes 1-96; rebuild the engine with a larger --max-seq"):
        check_profile(info, feeds)
    with pytest.raises(VskipError, match=r"axis 0 \(batch\) is 2, the engine takes 1-1; .*--max-batch"):
        check_profile(info, {"inputs_embeds": np.zeros((2, 9, d), np.float32)})
    with pytest.raises(VskipError, match=r"axis 1 \(visual_rows\) is 81.*--max-visual-rows"):
        check_profile(info, {"deepstack_visual_embeds": np.zeros((2, 81, d), np.float32)})
    with pytest.raises(VskipError, match="has 2 axes, the engine takes 3"):
        check_profile(info, {"inputs_embeds": np.zeros((1, 9), np.float32)})
    check_profile(info, {"inputs_embeds": np.zeros((1, 96, d), np.float32),
                         "deepstack_visual_embeds": np.zeros((2, 0, d), np.float32)})


def test_the_polygraphy_loaders_as_the_build_makes_them(graphs):
    """Polygraphy imports TensorRT only when a loader runs, so the loaders the build uses are
    made here against the installed Polygraphy: the path, strongly typed, the profile, the
    timing cache as bytes, and no precision flag (TensorRT 11 has none)."""
    pytest.importorskip("polygraphy")
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    path, sidecar = graphs("qwen2_vl", 20, True)
    plan = build.plan_build(path, LIMITS)
    parse, configure = build.polygraphy_loaders(plan, b"old-cache")
    assert parse.path == str(path) and parse.strongly_typed is True
    (profile,) = configure.profiles
    for item in plan.profiles:
        shapes = profile[item.name]
        assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == (item.min, item.opt, item.max)
    assert configure.timing_cache_path.read() == b"old-cache"
    assert not (configure.fp16 or configure.bf16 or configure.int8 or configure.fp8 or configure.tf32)
    assert build.polygraphy_loaders(plan)[1].timing_cache_path is None
    runner = TrtRunner(EngineFromBytes(b"engine"), name="vskip-trt")  # what the trt backend activates
    assert not runner.is_active


def test_the_trt_backend_with_its_runner_stood_in_for(fake_tensorrt, graphs, tmp_path, capsys, monkeypatch):
    """Everything of ``--backend trt`` but the GPU: the engine sidecar read and checked, feeds
    checked against the inputs and the profile, outputs by name. Polygraphy's OnnxrtRunner
    on the source graph stands in for the TrtRunner (the same runner interface)."""
    pytest.importorskip("polygraphy")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    from vskip_compile.backends import tensorrt as trt_backend

    path, sidecar = graphs("qwen2_vl", 20, True)
    engine = tmp_path / "c.engine"
    _ok(capsys, ["build", str(path), "-o", str(engine), "--max-seq", "64", "--opt-seq", "24", "--opt-visual-rows", "12"])

    def stand_in(data, where):
        assert data == b"ENGINE-BYTES"
        runner = OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]))
        runner.activate()
        return runner

    monkeypatch.setattr(trt_backend, "_activate", stand_in)
    session = open_session(engine, "trt")
    assert session.description.backend == "trt" and session.description.precision == "fp32"
    assert [s.name for s in session.inputs] == [s.name for s in open_session(path).inputs]
    feeds = _feeds(sidecar)
    got, want = session.run(feeds), open_session(path).run(feeds)
    assert list(got) == list(want) and all(np.array_equal(got[n], want[n]) for n in want)
    with pytest.raises(VskipError, match="missing graph inputs: vskip_text_rows"):
        session.run({k: v for k, v in feeds.items() if k != "vskip_text_rows"})
    with pytest.raises(VskipError, match="rebuild the engine with a larger --max-seq"):
        session.run(_feeds(sidecar, rows=65))
    session.close()
    # vskip run ENGINE --backend trt, and an engine given with its graph
    np.savez(tmp_path / "feeds.npz", **{k: v for k, v in feeds.items() if not k.startswith("vskip_")})
    _ok(capsys, ["run", str(engine), "--inputs", str(tmp_path / "feeds.npz"), "--visual-rows", "3:9",
                 "-o", str(tmp_path / "out.npz"), "--backend", "trt"])
    with np.load(tmp_path / "out.npz") as out:
        assert np.array_equal(out["logits"], want["logits"])
    assert trt_backend.TENSORRT.load(path, engine=engine).info.source_sha256 == build.sha256_file(path)
    in_memory = trt_backend.TENSORRT.load(path)  # an .onnx alone: an engine built for it, in memory
    assert fake_tensorrt[-1]["plan"].limits == trt_backend.IN_MEMORY_LIMITS and not fake_tensorrt[-1]["want_cache"]
    assert np.array_equal(in_memory.run(feeds)["logits"], want["logits"])
    with pytest.raises(VskipError, match="built from a graph with sha256"):
        trt_backend.TENSORRT.load(graphs("qwen2_vl", 20, False)[0], engine=engine)
    with pytest.raises(VskipError, match="limits apply only to engines built in memory"):
        trt_backend.TENSORRT.load(engine, limits=ProfileLimits())
    monkeypatch.setattr(build, "tensorrt_version", lambda: "11.0.0")
    with pytest.raises(VskipError, match="built with TensorRT 10.99.1, this is TensorRT 11.0.0"):
        open_session(engine, "trt")


# ------------------------------------------- Polygraphy's Comparator, on ONNX Runtime

def _feeds(sidecar, rows=12, visual=slice(3, 9)):
    """Random decoder feeds for a Qwen2-VL graph and the row inputs of ``visual``."""
    rng = np.random.default_rng(0)
    mask = np.zeros(rows, bool)
    mask[visual] = True
    feeds = {"inputs_embeds": rng.standard_normal((1, rows, sidecar.hidden_size), dtype=np.float32),
             "attention_mask": np.ones((1, rows), np.int64),
             "position_ids": np.broadcast_to(np.arange(rows), (3, 1, rows)).astype(np.int64)}
    return {**feeds, **row_feeds(mask, ["vskip_text_rows", "vskip_suffix_rows"])}


def test_polygraphy_comparator_on_onnxruntime_runners(exported, tmp_path):
    """The comparison TensorRT takes on a GPU machine (TrtRunner in place of one runner):
    a vanilla export and its empty-plan compile match exactly; a freeze plan does not."""
    pytest.importorskip("polygraphy")
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx

    source = exported("qwen2_vl", 20) / "prefill.onnx"
    sidecar = read_sidecar(source)
    compile_model(source, Plan.empty(sidecar.num_layers), tmp_path / "empty.onnx")
    compile_model(source, _plan(sidecar.num_layers), tmp_path / "freeze.onnx")

    def runner(path, name):
        return OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name=name)

    feeds = [_feeds(sidecar)]  # one feed dict: each runner takes the inputs it has
    same = build.compare_runners([runner(source, "vanilla"), runner(tmp_path / "empty.onnx", "empty")], feeds, atol=0)
    assert same["passed"] and len(same["outputs"]) == 1 + 2 * sidecar.num_layers
    assert all(o["max_abs"] == 0 and o["passed"] for o in same["outputs"].values())
    other = build.compare_runners([runner(source, "vanilla"), runner(tmp_path / "freeze.onnx", "freeze")], feeds,
                                  atol=1e-6)
    assert not other["passed"] and other["outputs"]["logits"]["max_abs"] > 1e-6
    assert other["outputs"]["present.0.key"]["passed"]  # layer 0 runs in full: its K/V are unchanged


# ------------------------------------------------ TensorRT and a GPU (skipped elsewhere)

def _needs_tensorrt():
    reason = build.missing_tensorrt()
    if reason:
        pytest.skip(f"{NEEDS_TRT} ({reason})")


SMALL = ["--max-seq", "64", "--opt-seq", "24", "--opt-visual-rows", "12", "--max-batch", "2"]


def test_a_real_engine_matches_onnx_runtime(graphs, tmp_path):
    """Build a tiny compiled graph's engine, run it through the trt backend and through
    Polygraphy's TrtRunner, and compare both with ONNX Runtime."""
    _needs_tensorrt()
    from polygraphy.backend.onnxrt import OnnxrtRunner, SessionFromOnnx
    from polygraphy.backend.trt import EngineFromBytes, TrtRunner

    path, sidecar = graphs("qwen2_vl", 20, True)
    engine = tmp_path / "c.engine"
    cache = tmp_path / "t.cache"
    assert main(["build", str(path), "-o", str(engine), "--timing-cache", str(cache), *SMALL]) == 0
    assert engine.stat().st_size > 0 and cache.stat().st_size > 0
    feeds = _feeds(sidecar)
    trt_session, ort_session = open_session(engine, "trt"), open_session(path, "ort-cpu")
    got, want = trt_session.run(feeds), ort_session.run(feeds)
    assert list(got) == list(want)
    for name in want:  # TF32 is off (Polygraphy's default): fp32 kernels
        assert np.abs(got[name] - want[name]).max() <= 1e-3, name
    trt_session.close()
    result = build.compare_runners(
        [OnnxrtRunner(SessionFromOnnx(str(path), providers=["CPUExecutionProvider"]), name="ort"),
         TrtRunner(EngineFromBytes(engine.read_bytes()), name="trt")], [feeds], atol=1e-3, rtol=1e-3)
    assert result["passed"], result
    # a rebuild with the cache it wrote reads it back
    assert main(["build", str(path), "-o", str(tmp_path / "again.engine"), "--timing-cache", str(cache),
                 *SMALL]) == 0


def test_a_real_engine_for_every_row_layout(graphs, tmp_path):
    """Text only (every row text), an image in the middle, an image at the very start."""
    _needs_tensorrt()
    path, sidecar = graphs("qwen3_vl", 20, True)
    engine = tmp_path / "q3.engine"
    assert main(["build", str(path), "-o", str(engine), *SMALL]) == 0
    session, reference = open_session(engine, "trt"), open_session(path, "ort-cpu")
    rng = np.random.default_rng(1)
    d = sidecar.hidden_size
    for rows, visual in ((7, slice(0, 0)), (20, slice(4, 12)), (20, slice(0, 10))):
        mask = np.zeros(rows, bool)
        mask[visual] = True
        layers = next(s for s in reference.inputs if s.name == "deepstack_visual_embeds").shape[0]
        feeds = {"inputs_embeds": rng.standard_normal((1, rows, d), dtype=np.float32),
                 "attention_mask": np.ones((1, rows), np.int64),
                 "position_ids": np.broadcast_to(np.arange(rows), (3, 1, rows)).astype(np.int64),
                 "visual_pos_masks": mask[None],
                 "deepstack_visual_embeds": rng.standard_normal((layers, int(mask.sum()), d), dtype=np.float32),
                 **row_feeds(mask, ["vskip_text_rows", "vskip_suffix_rows"])}
        got, want = session.run(feeds), reference.run(feeds)
        for name in want:
            assert np.abs(got[name] - want[name]).max() <= 1e-3, (rows, visual, name)


def test_validate_on_the_trt_backend(graphs, capsys):
    """`vskip validate GRAPH --backend trt`: an engine built in memory against the PyTorch reference."""
    _needs_tensorrt()
    path, _ = graphs("qwen2_vl", 23, False)
    assert main(["validate", str(path), "--backend", "trt", "--atol", "1e-3"]) == 0
    assert "graph on trt (tensorrt" in capsys.readouterr().out
