"""Reads and writes outside the model's and the output's directories are refused."""

from __future__ import annotations

import os

import onnx
import pytest

from hostile import (PLAN, assert_refused, external_source, run_cli, save_graph_only, set_external,  # noqa: F401
                     snapshot, workspace)


def _hostile_graph(workspace, location: str):
    model = set_external(onnx.load(workspace / "src" / "model.onnx", load_external_data=False), location=location)
    return save_graph_only(model, workspace / "src" / "model.onnx")


@pytest.mark.parametrize("location", ["../../secret/blob.bin", "../secret/blob.bin", "sub/../../secret/blob.bin"])
def test_external_data_leaving_the_directory_is_refused(workspace, location):
    secret = workspace / "secret"
    secret.mkdir()
    (secret / "blob.bin").write_bytes((workspace / "src" / "model.onnx.data").read_bytes())
    (workspace / "out" / "deep" / "x").mkdir(parents=True)
    _hostile_graph(workspace, location)
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN,
                     "-o", workspace / "out" / "deep" / "x" / "out.onnx", "--force")
    assert_refused(result, before, workspace, "leaves the model's directory")


def test_absolute_external_location_is_refused(workspace):
    secret = workspace / "secret.bin"
    secret.write_bytes((workspace / "src" / "model.onnx.data").read_bytes())
    _hostile_graph(workspace, str(secret))
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, "-o", workspace / "out.onnx")
    assert_refused(result, before, workspace, "is absolute")


def test_symlinked_data_file_pointing_outside_is_refused(workspace):
    data = workspace / "src" / "model.onnx.data"
    outside = workspace / "elsewhere.bin"
    os.replace(data, outside)
    data.symlink_to(outside)
    before = snapshot(workspace)
    for command in (["compile", workspace / "src" / "model.onnx", "--plan", PLAN, "-o", workspace / "o.onnx"],
                    ["inspect", workspace / "src" / "model.onnx"],
                    ["flops", workspace / "src" / "model.onnx"]):
        assert_refused(run_cli(*command), before, workspace, "symbolic link")


def test_symlink_inside_the_directory_is_refused_too(workspace):
    """onnx refuses any symlinked data file, even one that stays inside the directory."""
    data = workspace / "src" / "model.onnx.data"
    os.replace(data, workspace / "src" / "real.bin")
    data.symlink_to("real.bin")
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, "-o", workspace / "o.onnx")
    assert_refused(result, before, workspace, "symbolic link")


def test_run_refuses_hostile_external_data_before_onnx_runtime_reads_it(workspace):
    secret = workspace / "secret.bin"
    secret.write_bytes((workspace / "src" / "model.onnx.data").read_bytes())
    _hostile_graph(workspace, "../secret.bin")
    import numpy as np

    np.savez(workspace / "feeds.npz", inputs_embeds=np.zeros((1, 4, 8), np.float32))
    before = snapshot(workspace)
    result = run_cli("run", workspace / "src" / "model.onnx", "--inputs", workspace / "feeds.npz",
                     "-o", workspace / "out.npz")
    assert_refused(result, before, workspace, "leaves the model's directory")


@pytest.mark.parametrize("planted", ["OUT.onnx.data", ".model.onnx.data.vskip-tmp", ".vskip-planted.tmp"])
def test_a_planted_symlink_is_replaced_never_written_through(workspace, planted):
    """A symlink at an output or temp name is replaced as a link (rename), its target untouched."""
    victim = workspace / "victim.txt"
    victim.write_text("precious")
    out = workspace / "out"
    out.mkdir()
    name = planted.replace("OUT", "c")
    (out / name).symlink_to(victim)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, "-o", out / "c.onnx", "--force")
    assert result.returncode == 0, result.stderr
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in out.iterdir()) == sorted({"c.onnx", "c.onnx.data", name})
    if name == "c.onnx.data":
        assert not (out / name).is_symlink() and (out / name).stat().st_size > 1000


def test_onnx_runtime_shape_inference_leaves_nothing_in_the_working_directory(tmp_path, monkeypatch):
    """ORT's SymbolicShapeInference saves sym_shape_infer_temp.onnx into the current
    directory when its inference stays incomplete (onnxruntime 1.32, symbolic_shape_infer.py).
    vskip runs it in a private scratch directory; here it is made to fail that way."""
    from onnx import TensorProto, helper
    from onnxruntime.tools import symbolic_shape_infer

    from vskip_compile.core.shapes import ort_symbolic_shapes

    def incomplete(model, **kwargs):
        onnx.save_model(model, "sym_shape_infer_temp.onnx")  # what ORT does before raising
        raise Exception("Incomplete symbolic shape inference")

    monkeypatch.setattr(symbolic_shape_infer.SymbolicShapeInference, "infer_shapes", staticmethod(incomplete))
    monkeypatch.chdir(tmp_path)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    assert ort_symbolic_shapes(helper.make_model(graph)) is None
    assert list(tmp_path.iterdir()) == []
    assert os.getcwd() == str(tmp_path)
