"""Tiny inputs that ask for huge work are refused before memory or time is spent.

Every command runs under a hard timeout (hostile.TIMEOUT_S, enforced by subprocess, not
measured); these must answer in seconds.
"""

from __future__ import annotations

import io
import json
import os
import zipfile

import numpy as np
import pytest

from hostile import PLAN, assert_refused, external_source, run_cli, snapshot, workspace  # noqa: F401

FAST_S = 30


def test_a_plan_with_two_hundred_million_layers(workspace):
    plan = workspace / "plan.json"
    plan.write_text(json.dumps({"format": "vskip-plan", "version": 1, "model": {"num_layers": 200_000_000},
                                "layers": {}}))
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", plan, "-o", workspace / "c.onnx",
                     timeout=FAST_S)
    assert_refused(result, before, workspace, "num_layers")


def test_a_plan_layer_key_with_thousands_of_digits(workspace):
    plan = workspace / "plan.json"
    plan.write_text(json.dumps({"format": "vskip-plan", "version": 1, "model": {"num_layers": 4},
                                "layers": {"0-" + "9" * 5000: "freeze"}}))
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", plan, timeout=FAST_S)
    assert_refused(result, before, workspace, "layer key")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
@pytest.mark.parametrize("where", ["--plan", "model", "--inputs"])
def test_a_fifo_is_refused_not_read(workspace, where):
    fifo = workspace / "fifo"
    os.mkfifo(fifo)
    model = fifo if where == "model" else workspace / "src" / "model.onnx"
    if where == "--inputs":
        args = ["run", model, "--inputs", fifo, "-o", workspace / "o.npz"]
    else:
        args = ["compile", model, "--plan", fifo if where == "--plan" else PLAN, "-o", workspace / "c.onnx"]
    before = snapshot(workspace)
    assert_refused(run_cli(*args, timeout=FAST_S), before, workspace, "not a regular file")


def test_a_device_is_refused_as_a_plan(workspace):
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", "/dev/zero", timeout=FAST_S)
    assert_refused(result, before, workspace, "not a regular file")


def _npz_declaring(path, shape):
    """A tiny .npz whose one member's .npy header declares ``shape`` float32 (no data)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("inputs_embeds.npy", b"\x93NUMPY\x01\x00" + header.getvalue()[8:])
    return path


def test_an_npz_declaring_sixty_four_tebibytes(workspace):
    feeds = _npz_declaring(workspace / "feeds.npz", (2**22, 2**22, 1))
    assert feeds.stat().st_size < 1000
    before = snapshot(workspace)
    result = run_cli("run", workspace / "src" / "model.onnx", "--inputs", feeds, "-o", workspace / "o.npz",
                     timeout=FAST_S)
    assert_refused(result, before, workspace, "declares")


def test_an_npz_whose_arrays_exceed_the_memory_budget(tmp_path):
    """The members' total size is checked against the budget (default: memory available)
    before any member is read; here a budget below a real 64 KiB file stands in for RAM."""
    from vskip_compile.core.errors import VskipError
    from vskip_compile.core.files import read_npz

    np.savez_compressed(tmp_path / "big.npz", x=np.zeros(64 * 1024, np.uint8))
    assert (tmp_path / "big.npz").stat().st_size < 2000
    with pytest.raises(VskipError, match="more than the 4096 bytes available"):
        read_npz(tmp_path / "big.npz", max_bytes=4096)
    assert read_npz(tmp_path / "big.npz")["x"].shape == (64 * 1024,)


@pytest.mark.parametrize("ranges", ["0:" + "9" * 5000, "9" * 5000 + ":1", "0:99999999999999"])
def test_visual_rows_with_thousands_of_digits(workspace, ranges):
    np.savez(workspace / "feeds.npz", inputs_embeds=np.zeros((1, 8, 4), np.float32))
    compiled = workspace / "src" / "c.onnx"
    assert run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, "-o", compiled).returncode == 0
    before = snapshot(workspace)
    result = run_cli("run", compiled, "--inputs", workspace / "feeds.npz", "-o", workspace / "o.npz",
                     "--visual-rows", ranges, timeout=FAST_S)
    assert_refused(result, before, workspace, "--visual-rows")


@pytest.mark.parametrize("command", ["run", "bench"])
def test_thread_counts_beyond_the_machine(workspace, command):
    np.savez(workspace / "feeds.npz", inputs_embeds=np.zeros((1, 8, 4), np.float32))
    args = {"run": ["run", workspace / "src" / "model.onnx", "--inputs", workspace / "feeds.npz",
                    "-o", workspace / "o.npz"],
            "bench": ["bench", workspace / "src" / "model.onnx", "--plan", PLAN]}[command]
    before = snapshot(workspace)
    for threads in (5000, 0, -3):
        result = run_cli(*args, "--threads", threads, timeout=FAST_S)
        assert_refused(result, before, workspace, "--threads")


@pytest.mark.parametrize("flag, value", [("--rows", 10**12), ("--visual-rows", f"0:{10**12}"), ("--rounds", 10**9)])
def test_benchmark_sizes_are_bounded(workspace, flag, value):
    before = snapshot(workspace)
    result = run_cli("bench", workspace / "src" / "model.onnx", "--plan", PLAN, flag, value, timeout=FAST_S)
    assert_refused(result, before, workspace, flag)


def test_flops_workload_is_bounded(workspace):
    before = snapshot(workspace)
    result = run_cli("flops", workspace / "src" / "model.onnx", "--rows", 10**15, timeout=FAST_S)
    assert_refused(result, before, workspace, "--rows")


def test_an_external_length_beyond_its_file(workspace):
    """A graph claiming more weight bytes than its file holds is refused before a copy starts."""
    import onnx

    from hostile import save_graph_only

    path = workspace / "src" / "model.onnx"
    model = onnx.load(path, load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    entry = next(e for e in tensor.external_data if e.key == "offset")
    entry.value = str(2**40)
    save_graph_only(model, path)
    before = snapshot(workspace)
    result = run_cli("compile", path, "--plan", PLAN, "-o", workspace / "c.onnx", timeout=FAST_S)
    assert_refused(result, before, workspace, "truncated")
