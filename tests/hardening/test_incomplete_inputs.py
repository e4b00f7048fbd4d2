"""Inputs that are well-formed but incomplete or inconsistent are refused, not used."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from hostile import PLAN, assert_refused, external_source, run_cli, snapshot, workspace  # noqa: F401


@pytest.mark.parametrize("opset", [7, 12, 99])
def test_unsupported_opset_is_refused(workspace, opset):
    path = workspace / "src" / "model.onnx"
    model = onnx.load(path, load_external_data=False)
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = opset
    path.write_bytes(model.SerializeToString())
    before = snapshot(workspace)
    result = run_cli("compile", path, "--plan", PLAN, "-o", workspace / "c.onnx")
    assert_refused(result, before, workspace, f"opset {opset} is not supported")


@pytest.fixture
def compiled_feeds(workspace, exported):
    """A compiled graph and feeds for it, without the row input."""
    from conftest import tiny_model
    from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt

    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, "-o", workspace / "src" / "c.onnx")
    assert result.returncode == 0, result.stderr
    loaded = tiny_model("qwen2_vl")
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 4], seed=3)
    feeds = {k: v.numpy() for k, v in prepare_decoder_inputs(loaded.family, loaded.model, prompt).feeds.items()}
    return workspace / "src" / "c.onnx", feeds


@pytest.mark.parametrize("rows, problem", [
    ([-1, 0, 1], "rows must be in"),
    ([0, 1, 1, 2], "ascending and unique"),
    ([2, 1, 0], "ascending and unique"),
    ([], "is empty"),
    ([0, 1, 10_000], "rows must be in"),
    ([[0, 1]], "1-D integer"),
    ([0.0, 1.0], "1-D integer"),
])
def test_row_inputs_fed_directly_are_validated(compiled_feeds, workspace, rows, problem):
    graph, feeds = compiled_feeds
    array = np.asarray(rows, dtype=np.int64 if problem != "1-D integer" or isinstance(rows[0], list) else np.float32)
    np.savez(workspace / "feeds.npz", **feeds, vskip_text_rows=array)
    before = snapshot(workspace)
    result = run_cli("run", graph, "--inputs", workspace / "feeds.npz", "-o", workspace / "out.npz")
    assert_refused(result, before, workspace, "vskip_text_rows", problem)


def test_valid_row_inputs_fed_directly_run(compiled_feeds, workspace):
    graph, feeds = compiled_feeds
    length = feeds["inputs_embeds"].shape[1]
    np.savez(workspace / "feeds.npz", **feeds, vskip_text_rows=np.arange(length, dtype=np.int64)[:3])
    result = run_cli("run", graph, "--inputs", workspace / "feeds.npz", "-o", workspace / "out.npz")
    assert result.returncode == 0, result.stderr
    assert (workspace / "out.npz").is_file()


def test_rows_given_twice_are_refused(compiled_feeds, workspace):
    graph, feeds = compiled_feeds
    np.savez(workspace / "feeds.npz", **feeds, vskip_text_rows=np.arange(2, dtype=np.int64))
    before = snapshot(workspace)
    result = run_cli("run", graph, "--inputs", workspace / "feeds.npz", "-o", workspace / "out.npz",
                     "--visual-rows", "3:5")
    assert_refused(result, before, workspace, "once")
