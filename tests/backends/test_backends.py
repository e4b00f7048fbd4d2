"""Backends behind one interface: the registry, ORT CPU, the PyTorch reference, and the
ones this machine lacks (one line naming what to install, nothing run or written)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_model
from helpers import FP32_ATOL, feeds_numpy
from vskip_compile.backends import BACKENDS, get_backend, open_session
from vskip_compile.cli import main
from vskip_compile.compile import compile_model
from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, FreezeScope, Plan
from vskip_compile.core.visual_rows import row_feeds, visual_rows_from_ids
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt


def test_registry_names_every_backend_once():
    assert list(BACKENDS) == ["ort-cpu", "ort-cuda", "ort-trt", "torch", "torch-skip", "onnx-ref", "trt"]
    with pytest.raises(VskipError, match="unknown backend 'tensorflow'; backends are ort-cpu, ort-cuda"):
        get_backend("tensorflow")


@pytest.mark.parametrize("name, hint", [("ort-cuda", "onnxruntime-gpu"), ("ort-trt", "onnxruntime-gpu"),
                                        ("trt", "vskip[trt]")])
def test_backends_this_machine_lacks_say_what_to_install(name, hint):
    if BACKENDS[name].unavailable() is None:
        pytest.skip(f"{name} is available on this machine")
    with pytest.raises(VskipError) as caught:
        get_backend(name)
    assert f"backend {name} is not available" in str(caught.value) and hint in str(caught.value)
    assert "\n" not in str(caught.value)


def test_an_absent_backend_is_one_line_and_writes_nothing(exported, tmp_path, capsys):
    if BACKENDS["ort-cuda"].unavailable() is None:
        pytest.skip("ort-cuda is available on this machine")
    source = exported("qwen2_vl", 20) / "prefill.onnx"
    np.savez(tmp_path / "feeds.npz", x=np.zeros(1))
    assert main(["run", str(source), "--inputs", str(tmp_path / "feeds.npz"), "-o", str(tmp_path / "o.npz"),
                 "--backend", "ort-cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'vskip[gpu]'" in err
    assert not (tmp_path / "o.npz").exists()


@pytest.fixture(scope="module")
def compiled_and_feeds(exported, tmp_path_factory):
    """A freeze-scope-prefix compiled tiny graph (both row inputs) and a two-image prompt's feeds."""
    loaded = tiny_model("qwen2_vl")
    plan = Plan((Action.FULL, Action.SKIP_ATTENTION, Action.FREEZE, Action.FREEZE), FreezeScope.PREFIX_THROUGH_VISUAL)
    out = tmp_path_factory.mktemp("backends") / "c.onnx"
    compile_model(exported("qwen2_vl", 20) / "prefill.onnx", plan, out)
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 2, "image", 4], seed=5)
    inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
    visual = visual_rows_from_ids(prompt.input_ids.numpy(), loaded.family.image_token_id(loaded.config))
    return out, exported("qwen2_vl", 20), feeds_numpy(inputs.feeds), visual, plan


def test_ort_and_the_torch_reference_agree_through_one_interface(compiled_and_feeds):
    from vskip_compile.core.sidecar import read_sidecar

    out, export, feeds, visual, plan = compiled_and_feeds
    ort = open_session(out, "ort-cpu")
    torch_ = open_session(out, "torch", sidecar=read_sidecar(export / "prefill.onnx"))
    assert [s.name for s in ort.inputs] == [s.name for s in torch_.inputs]
    assert torch_.plan == plan  # the plan the graph records
    assert ort.description.backend == "ort-cpu" and ort.description.precision == "fp32"
    assert torch_.description.runtime == "torch"
    feeds = {**feeds, **row_feeds(visual, ["vskip_text_rows", "vskip_suffix_rows"])}
    got, want = ort.run(feeds), torch_.run(feeds)
    assert list(got) == list(want) and len(got) == 9
    for name in got:
        assert np.abs(got[name] - want[name]).max() <= FP32_ATOL, name


def test_torch_skip_gives_the_compiled_graphs_outputs(compiled_and_feeds):
    """The live-rows-only PyTorch run is the graph's semantics: same outputs, other name."""
    from vskip_compile.core.sidecar import read_sidecar

    out, export, feeds, visual, plan = compiled_and_feeds
    skip = open_session(out, "torch-skip", sidecar=read_sidecar(export / "prefill.onnx"))
    assert skip.plan == plan and skip.description.backend == "torch-skip"
    feeds = {**feeds, **row_feeds(visual, ["vskip_text_rows", "vskip_suffix_rows"])}
    got, want = skip.run(feeds), open_session(out, "ort-cpu").run(feeds)
    assert list(got) == list(want)
    for name in got:
        assert np.abs(got[name] - want[name]).max() <= FP32_ATOL, name


def test_sessions_check_their_feeds_before_running(compiled_and_feeds):
    from vskip_compile.core.sidecar import read_sidecar

    out, export, feeds, visual, _ = compiled_and_feeds
    rows = row_feeds(visual, ["vskip_text_rows", "vskip_suffix_rows"])
    for session in (open_session(out), open_session(out, "torch", sidecar=read_sidecar(export / "prefill.onnx"))):
        with pytest.raises(VskipError, match="missing graph inputs: vskip_text_rows, vskip_suffix_rows"):
            session.run(feeds)
        with pytest.raises(VskipError, match="inputs not in the graph: extra"):
            session.run({**feeds, **rows, "extra": np.zeros(1)})
        with pytest.raises(VskipError, match="ascending and unique"):
            session.run({**feeds, **rows, "vskip_text_rows": rows["vskip_text_rows"][::-1].copy()})


def test_the_torch_reference_refuses_a_suffix_that_is_not_the_suffix(compiled_and_feeds):
    from vskip_compile.core.sidecar import read_sidecar

    out, export, feeds, visual, _ = compiled_and_feeds
    rows = row_feeds(visual, ["vskip_text_rows", "vskip_suffix_rows"])
    rows["vskip_suffix_rows"] = rows["vskip_suffix_rows"][1:]  # a shorter run still ends with the last row
    session = open_session(out, "torch", sidecar=read_sidecar(export / "prefill.onnx"))
    with pytest.raises(VskipError, match="must be every row after the last visual row"):
        session.run({**feeds, **rows})


def test_run_on_the_torch_backend(compiled_and_feeds, tmp_path, capsys):
    """`vskip run --backend torch` on a graph beside its export's vskip.json."""
    out, export, feeds, visual, _ = compiled_and_feeds
    beside = export / f"backend-{tmp_path.name}.onnx"
    compile_model(export / "prefill.onnx", Plan((Action.FREEZE,) * 4), beside)
    try:
        np.savez(tmp_path / "feeds.npz", **feeds)
        assert main(["run", str(beside), "--inputs", str(tmp_path / "feeds.npz"), "--visual-rows", "4:12,16:24",
                     "-o", str(tmp_path / "t.npz"), "--backend", "torch"]) == 0
        assert main(["run", str(beside), "--inputs", str(tmp_path / "feeds.npz"), "--visual-rows", "4:12,16:24",
                     "-o", str(tmp_path / "o.npz")]) == 0
        with np.load(tmp_path / "t.npz") as t, np.load(tmp_path / "o.npz") as o:
            assert sorted(t.files) == sorted(o.files)
            assert max(float(np.abs(t[n] - o[n]).max()) for n in t.files) <= FP32_ATOL
        assert "torch (torch " in capsys.readouterr().err
    finally:
        beside.unlink(missing_ok=True)


def test_ort_sessions_flush_denormals(compiled_and_feeds):
    """vskip's one ONNX Runtime setting beyond threads (docs/benchmarks.md measures why)."""
    out = compiled_and_feeds[0]
    options = open_session(out).session.get_session_options()
    assert options.get_session_config_entry("session.set_denormal_as_zero") == "1"


def test_onnx_reference_runs_what_onnx_runtime_runs(compiled_and_feeds, monkeypatch):
    """onnx's evaluator and ONNX Runtime agree on an fp32 compiled graph (fp32 1e-4), and the
    evaluator refuses graphs too large for it in one line."""
    from vskip_compile.backends import onnx_reference

    out, _, feeds, visual, _ = compiled_and_feeds
    ort, ref = open_session(out), open_session(out, "onnx-ref")
    names = [s.name for s in ort.inputs]
    run_feeds = {**{k: v for k, v in feeds.items() if k in names}, **row_feeds(visual, [n for n in names
                                                                                  if n.startswith("vskip_")])}
    got, want = ref.run(run_feeds), ort.run(run_feeds)
    assert ref.description.backend == "onnx-ref" and set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], atol=FP32_ATOL, rtol=0, err_msg=name)
    monkeypatch.setattr(onnx_reference, "MAX_WEIGHT_BYTES", 1024)
    with pytest.raises(VskipError, match="too much for the onnx reference evaluator"):
        open_session(out, "onnx-ref")
