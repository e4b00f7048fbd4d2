"""A failed, killed or starved command leaves nothing behind: no temp, no half file, no copy."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hostile import (PLAN, assert_refused, error_line, external_source, run_cli, run_patched,  # noqa: F401
                     snapshot, workspace)

# Sends this process SIGTERM halfway through the first large copy, as `kill` would.
KILL_MID_COPY = """
import os, shutil, signal
_copy = shutil.copyfileobj
def copy(src, dst, length=0):
    dst.write(src.read(1000))
    os.kill(os.getpid(), signal.SIGTERM)
    _copy(src, dst)
shutil.copyfileobj = copy
"""

# The graph write fails as a full disk would, after the weights were copied.
DISK_FULL_AT_GRAPH = """
import errno
from vskip_compile.core import files
_write = files.Outputs.write_bytes
def write_bytes(self, path, data):
    if str(path).endswith(".onnx"):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    return _write(self, path, data)
files.Outputs.write_bytes = write_bytes
"""


def _terminated(result, before, root):
    assert result.returncode == 143, result.stderr
    assert "terminated" in error_line(result)
    assert snapshot(root) == before


def test_sigterm_mid_copy_leaves_nothing(workspace):
    (workspace / "out").mkdir()
    before = snapshot(workspace)
    result = run_patched(KILL_MID_COPY, "compile", workspace / "src" / "model.onnx", "--plan", PLAN,
                         "-o", workspace / "out" / "c.onnx")
    _terminated(result, before, workspace)


def test_failure_after_the_weight_copy_removes_the_copy(workspace):
    (workspace / "out").mkdir()
    before = snapshot(workspace)
    result = run_patched(DISK_FULL_AT_GRAPH, "compile", workspace / "src" / "model.onnx", "--plan", PLAN,
                         "-o", workspace / "out" / "c.onnx")
    assert_refused(result, before, workspace, "No space left on device")


def test_report_workload_is_checked_before_anything_is_written(workspace):
    before = snapshot(workspace)
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, "--report", "--visual-rows", -5)
    assert_refused(result, before, workspace, "--visual-rows")
    result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, "--visual-rows", 5)
    assert_refused(result, before, workspace, "--report")


def test_sigterm_mid_bench_leaves_no_hidden_graph_beside_the_source(workspace):
    patch = """
import os, signal
from vskip_compile import bench
def measure(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
bench.measure = measure
"""
    before = snapshot(workspace)
    result = run_patched(patch, "bench", workspace / "src" / "model.onnx", "--plan", PLAN, "--rounds", 1,
                         "--warmup", 0, "--rows", 12, "--visual-rows", "2:10")
    _terminated(result, before, workspace)


def test_a_real_sigterm_mid_export_leaves_no_staging_directory(tmp_path):
    """A real signal from outside, sent while the exporter traces into its staging directory."""
    process = subprocess.Popen([sys.executable, "-c", "import sys; from vskip_compile.cli import main; sys.exit(main())",
                                "export", "tiny:qwen2_vl", "-o", str(tmp_path / "out"), "--prefill-only"],
                               stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(".vskip-") and p.is_dir() for p in tmp_path.iterdir()):
        assert process.poll() is None and time.monotonic() < deadline, "the export never staged"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 143, stderr
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].endswith("nothing was written")
    assert list(tmp_path.iterdir()) == []


def _tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def test_disk_full_output_is_one_line_and_leaves_nothing(workspace):
    full = workspace / "full"
    if not _tmpfs(full, "256k"):
        pytest.skip("cannot mount a small tmpfs on this machine (needs root and mount permission): "
                    "the disk-full case is covered only by the injected-fault test above")
    try:
        data = (workspace / "src" / "model.onnx.data").stat().st_size
        assert data > 256 * 1024, "the weights must not fit the small file system"
        before = snapshot(workspace)
        result = run_cli("compile", workspace / "src" / "model.onnx", "--plan", PLAN, "-o", full / "c.onnx")
        assert_refused(result, before, workspace, "No space left on device")
        assert os.listdir(full) == []
    finally:
        subprocess.run(["umount", str(full)], capture_output=True, timeout=30)


def test_report_and_plot_without_matplotlib_stop_before_any_work(workspace):
    """--report and --plot draw with matplotlib, an extra: without it, one line and nothing
    compiled or written (not a compiled graph and a missing report)."""
    no_matplotlib = "sys.modules['matplotlib'] = None"
    (workspace / "out").mkdir()
    before = snapshot(workspace)
    result = run_patched(no_matplotlib, "compile", workspace / "src" / "model.onnx", "--plan", PLAN,
                         "-o", workspace / "out" / "c.onnx", "--report", "--rows", 12, "--visual-rows", "2:10")
    assert_refused(result, before, workspace, "pip install 'vskip[plot]'")
    result = run_patched(no_matplotlib, "flops", workspace / "src" / "model.onnx", "--compare",
                         workspace / "src" / "model.onnx", "--plot", workspace / "out" / "p.png",
                         "--rows", 12, "--visual-rows", "2:10")
    assert_refused(result, before, workspace, "pip install 'vskip[plot]'")
