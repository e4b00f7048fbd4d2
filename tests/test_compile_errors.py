"""Bad input to compile / run / validate: one line, exit 2, no partial output, sources untouched."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from vskip_compile.cli import main

TINY_PLAN = {"format": "vskip-plan", "version": 1, "model": {"family": "qwen2_vl", "num_layers": 4},
             "layers": {"1": "skip_visual_attention", "3": "freeze"}}


def _digest(directory) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir()) if p.is_file()}


@pytest.fixture()
def workdir(exported, tmp_path):
    """A private copy of the tiny qwen2_vl export with weights in external data, and a plan."""
    source = exported("qwen2_vl", 20)
    work = tmp_path / "export"
    work.mkdir()
    model = onnx.load(source / "prefill.onnx")
    onnx.save_model(model, work / "prefill.onnx", save_as_external_data=True, location="prefill.onnx.data",
                    size_threshold=1024)
    shutil.copy(source / "vskip.json", work / "vskip.json")
    (tmp_path / "plan.json").write_text(json.dumps(TINY_PLAN))
    return work


def _fails(capsys, argv, expect):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and expect in err[-1], err
    assert not any("Traceback" in line for line in err)
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1, err


def _compile_refused(capsys, workdir, plan_path, expect, output_name="out.onnx"):
    before = _digest(workdir)
    out = workdir.parent / output_name
    _fails(capsys, ["compile", str(workdir / "prefill.onnx"), "--plan", str(plan_path), "-o", str(out)], expect)
    assert not out.exists()
    assert _digest(workdir) == before
    assert not [p for p in workdir.parent.iterdir() if p.name.startswith(".")]


def test_compile_with_external_data_in_another_directory(workdir, capsys):
    out_dir = workdir.parent / "elsewhere"
    out_dir.mkdir()
    before = _digest(workdir)
    assert main(["compile", str(workdir / "prefill.onnx"), "--plan", str(workdir.parent / "plan.json"),
                 "-o", str(out_dir / "c.onnx")]) == 0
    # The copy is the compiled graph's own, named after it: c.onnx.data
    assert sorted(p.name for p in out_dir.iterdir()) == ["c.onnx", "c.onnx.data"]
    assert _digest(workdir) == before
    compiled = onnx.load(out_dir / "c.onnx", load_external_data=False)
    assert any(t.data_location == TensorProto.EXTERNAL for t in compiled.graph.initializer)
    assert onnx.load(out_dir / "c.onnx").graph.initializer  # the data resolves from the new place


@pytest.mark.parametrize("text, expect", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({**TINY_PLAN, "layers": {"1": "skip_everything"}}), "skip_everything"),
    (json.dumps({**TINY_PLAN, "layers": {"1": 3}}), "1"),
    (json.dumps({**TINY_PLAN, "model": {"family": "llava", "num_layers": 4}}), "plan was made for"),
    (json.dumps({**TINY_PLAN, "model": {"family": "qwen2_vl", "num_layers": 24}}), "layer"),
    (json.dumps({**TINY_PLAN, "surprise": 1}), "surprise"),
])
def test_bad_plans(workdir, capsys, text, expect):
    plan = workdir.parent / "bad.json"
    plan.write_text(text)
    _compile_refused(capsys, workdir, plan, expect)


def test_missing_plan_file(workdir, capsys):
    _compile_refused(capsys, workdir, workdir.parent / "nope.json", "nope.json")


def test_not_onnx(workdir, capsys, tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"this is not a protobuf" * 10)
    _fails(capsys, ["compile", str(bad), "--plan", str(tmp_path / "plan.json"), "-o", str(tmp_path / "o.onnx")],
           "not an ONNX model")
    assert not (tmp_path / "o.onnx").exists()


def test_truncated_onnx(workdir, capsys, tmp_path):
    data = (workdir / "prefill.onnx").read_bytes()
    bad = tmp_path / "cut.onnx"
    bad.write_bytes(data[: len(data) // 2])
    _fails(capsys, ["compile", str(bad), "--plan", str(tmp_path / "plan.json"), "-o", str(tmp_path / "o.onnx")],
           "not an ONNX model or truncated")


def test_missing_external_data(workdir, capsys):
    (workdir / "prefill.onnx.data").rename(workdir.parent / "moved.data")
    _compile_refused(capsys, workdir, workdir.parent / "plan.json", "no such file (external data file)")


def test_truncated_external_data(workdir, capsys):
    data = workdir / "prefill.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    _compile_refused(capsys, workdir, workdir.parent / "plan.json", "truncated")


def test_not_a_decoder(capsys, tmp_path):
    weight = helper.make_tensor("w", TensorProto.FLOAT, [4, 3, 3, 3], np.ones(108, np.float32))
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"]), helper.make_node("Relu", ["y"], ["z"])],
                              "cnn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)], [weight])
    path = tmp_path / "cnn.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)]), path)
    (tmp_path / "plan.json").write_text(json.dumps({**TINY_PLAN, "model": {"num_layers": 4}}))
    _fails(capsys, ["compile", str(path), "--plan", str(tmp_path / "plan.json"), "-o", str(tmp_path / "o.onnx")],
           "not a decoder")
    assert not (tmp_path / "o.onnx").exists()


def test_existing_output_needs_force(workdir, capsys):
    out = workdir.parent / "out.onnx"
    out.write_text("keep")
    _fails(capsys, ["compile", str(workdir / "prefill.onnx"), "--plan", str(workdir.parent / "plan.json"),
                    "-o", str(out)], "--force")
    assert out.read_text() == "keep"
    assert main(["compile", str(workdir / "prefill.onnx"), "--plan", str(workdir.parent / "plan.json"),
                 "-o", str(out), "--force"]) == 0
    assert onnx.load(out, load_external_data=False).graph.node


def test_output_over_input_refused(workdir, capsys):
    before = _digest(workdir)
    _fails(capsys, ["compile", str(workdir / "prefill.onnx"), "--plan", str(workdir.parent / "plan.json"),
                    "-o", str(workdir / "prefill.onnx"), "--force"], "own input")
    assert _digest(workdir) == before


def test_unwritable_directory(workdir, capsys):
    _fails(capsys, ["compile", str(workdir / "prefill.onnx"), "--plan", str(workdir.parent / "plan.json"),
                    "-o", "/proc/vskip.onnx"], "not writable")


def test_recompile_refused(workdir, capsys):
    plan = str(workdir.parent / "plan.json")
    assert main(["compile", str(workdir / "prefill.onnx"), "--plan", plan, "-o", str(workdir / "c.onnx")]) == 0
    _fails(capsys, ["compile", str(workdir / "c.onnx"), "--plan", plan, "-o", str(workdir / "c2.onnx")],
           "already compiled")
    assert not (workdir / "c2.onnx").exists()


@pytest.mark.parametrize("rows, expect", [
    ("5:3", "is empty"), ("0:999", "out of range"), ("2:6,4:8", "overlaps"), ("a:b", "is not a range"),
    ("0:1000000", "out of range"), ("0:10", "at least one text row"),
])
def test_bad_visual_rows(workdir, capsys, rows, expect):
    plan = str(workdir.parent / "plan.json")
    compiled = workdir / "c.onnx"
    assert main(["compile", str(workdir / "prefill.onnx"), "--plan", plan, "-o", str(compiled)]) == 0
    feeds = workdir.parent / "feeds.npz"
    np.savez(feeds, inputs_embeds=np.zeros((1, 10, 64), np.float32), attention_mask=np.ones((1, 10), np.int64),
             position_ids=np.zeros((3, 1, 10), np.int64))
    _fails(capsys, ["run", str(compiled), "--inputs", str(feeds), "--visual-rows", rows, "-o",
                    str(workdir.parent / "o.npz")], expect)
    assert not (workdir.parent / "o.npz").exists()


def test_run_compiled_with_visual_rows(workdir, tmp_path):
    """The CLI path end to end: ranges in, outputs by name out."""
    plan = str(workdir.parent / "plan.json")
    compiled = workdir / "c.onnx"
    assert main(["compile", str(workdir / "prefill.onnx"), "--plan", plan, "-o", str(compiled)]) == 0
    rng = np.random.default_rng(0)
    feeds = tmp_path / "feeds.npz"
    positions = np.broadcast_to(np.arange(12), (3, 1, 12)).copy()
    np.savez(feeds, inputs_embeds=rng.standard_normal((1, 12, 64)).astype(np.float32),
             attention_mask=np.ones((1, 12), np.int64), position_ids=positions)
    assert main(["run", str(compiled), "--inputs", str(feeds), "--visual-rows", "2:6,8:10",
                 "-o", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as out:
        assert out["logits"].shape == (1, 1, 320)
        assert out["present.3.value"].shape[2] == 12


def test_validate_without_sidecar_needs_model(workdir, capsys):
    (workdir / "vskip.json").unlink()
    _fails(capsys, ["validate", str(workdir / "prefill.onnx")], "--model")


def test_every_tensor_external_and_another_working_directory(exported, tmp_path, monkeypatch):
    """Small constants the rewrite reads may live in external data too; paths are the model's."""
    from vskip_compile.backends import open_session

    source = tmp_path / "src"
    source.mkdir()
    onnx.save_model(onnx.load(exported("qwen2_vl", 20) / "prefill.onnx"), source / "prefill.onnx",
                    save_as_external_data=True, location="w.data", size_threshold=0)
    (tmp_path / "plan.json").write_text(json.dumps(TINY_PLAN))
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["compile", str(source / "prefill.onnx"), "--plan", str(tmp_path / "plan.json")]) == 0
    session = open_session(source / "prefill.vskip.onnx")
    assert "vskip_text_rows" in [i.name for i in session.inputs]
