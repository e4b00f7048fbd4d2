"""Bad input: one clear line on stderr, exit status 2, no traceback, no partial output."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

from vskip_compile.cli import main


def _fails_cleanly(capsys, argv, expect):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert expect in err, err
    return err


def test_export_missing_source(tmp_path, capsys):
    _fails_cleanly(capsys, ["export", str(tmp_path / "nope"), "-o", str(tmp_path / "out")], "no such file")
    assert not (tmp_path / "out").exists()


def test_export_directory_without_checkpoint(tmp_path, capsys):
    (tmp_path / "ckpt").mkdir()
    _fails_cleanly(capsys, ["export", str(tmp_path / "ckpt"), "-o", str(tmp_path / "out")], "no config.json")
    assert not (tmp_path / "out").exists()


def test_export_unknown_preset(tmp_path, capsys):
    _fails_cleanly(capsys, ["export", "tiny:bert", "-o", str(tmp_path / "out")], "unsupported architecture 'bert'")


def test_export_unsupported_architecture(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "resnet"}))
    (ckpt / "model.safetensors").write_bytes(b"")
    _fails_cleanly(capsys, ["export", str(ckpt), "-o", str(tmp_path / "out")], "unsupported architecture 'resnet'")


def test_export_checkpoint_without_weights(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    _fails_cleanly(capsys, ["export", str(ckpt), "-o", str(tmp_path / "out")], "no *.safetensors")


def test_export_bad_config_json(tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{not json")
    _fails_cleanly(capsys, ["export", str(ckpt), "-o", str(tmp_path / "out")], "not valid JSON")


def test_export_unwritable_output(capsys):
    # /proc refuses new files even for root, unlike a chmod-ed directory.
    _fails_cleanly(capsys, ["export", "tiny:qwen2_vl", "-o", "/proc/vskip-out"], "not writable")


def test_export_output_is_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    _fails_cleanly(capsys, ["export", "tiny:qwen2_vl", "-o", str(target)], "not a directory")
    assert target.read_text() == "keep me"


def test_export_refuses_to_overwrite_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "vskip.json").write_text("{}")
    _fails_cleanly(capsys, ["export", "tiny:qwen2_vl", "-o", str(out)], "--force")
    assert (out / "vskip.json").read_text() == "{}"


def test_run_missing_model(tmp_path, capsys):
    np.savez(tmp_path / "feeds.npz", x=np.zeros(1))
    _fails_cleanly(capsys, ["run", str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "feeds.npz"),
                            "-o", str(tmp_path / "o.npz")], "no such file")


def test_run_not_onnx(tmp_path, capsys):
    (tmp_path / "m.onnx").write_bytes(b"\x00garbage" * 10)
    np.savez(tmp_path / "feeds.npz", x=np.zeros(1))
    _fails_cleanly(capsys, ["run", str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "feeds.npz"),
                            "-o", str(tmp_path / "o.npz")], "not an ONNX model")
    assert not (tmp_path / "o.npz").exists()


def test_run_bad_feeds_file(tmp_path, capsys):
    (tmp_path / "feeds.npz").write_text("not a zip")
    _fails_cleanly(capsys, ["run", str(tmp_path / "m.onnx"), "--inputs", str(tmp_path / "feeds.npz"),
                            "-o", str(tmp_path / "o.npz")], "not a readable .npz")


@pytest.fixture(scope="module")
def add_graph(tmp_path_factory):
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["c"])], "add",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in "ab"],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [2])])
    path = tmp_path_factory.mktemp("graphs") / "add.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)], ir_version=10), path)
    return path


def test_run_writes_outputs_by_name(add_graph, tmp_path):
    np.savez(tmp_path / "feeds.npz", a=np.array([1.0, 2.0], np.float32), b=np.array([10.0, 20.0], np.float32))
    assert main(["run", str(add_graph), "--inputs", str(tmp_path / "feeds.npz"), "-o", str(tmp_path / "o.npz")]) == 0
    with np.load(tmp_path / "o.npz") as out:
        np.testing.assert_array_equal(out["c"], [11.0, 22.0])


def test_run_missing_input(add_graph, tmp_path, capsys):
    np.savez(tmp_path / "feeds.npz", a=np.array([1.0, 2.0], np.float32))
    _fails_cleanly(capsys, ["run", str(add_graph), "--inputs", str(tmp_path / "feeds.npz"),
                            "-o", str(tmp_path / "o.npz")], "missing graph inputs: b")
    assert not (tmp_path / "o.npz").exists()


def test_run_refuses_existing_output(add_graph, tmp_path, capsys):
    np.savez(tmp_path / "feeds.npz", a=np.ones(2, np.float32), b=np.ones(2, np.float32))
    (tmp_path / "o.npz").write_text("keep")
    _fails_cleanly(capsys, ["run", str(add_graph), "--inputs", str(tmp_path / "feeds.npz"),
                            "-o", str(tmp_path / "o.npz")], "--force")
    assert (tmp_path / "o.npz").read_text() == "keep"


def test_console_scripts_exit_2_without_traceback(tmp_path):
    for argv in (["vskip", "export", "tiny:nope", "-o", str(tmp_path / "o")],
                 ["vskip-compile", str(tmp_path / "m.onnx"), "--plan", str(tmp_path / "p.json")]):
        proc = subprocess.run(argv, capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
