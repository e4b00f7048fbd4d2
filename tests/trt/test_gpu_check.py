"""tools/gpu_check.sh without TensorRT: one line saying what it needs, exit 2, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_without_tensorrt_it_says_what_it_needs(tmp_path):
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: run tools/gpu_check.sh itself")
    except ImportError:
        pass
    work = tmp_path / "check"
    bin_dir = Path(sys.executable).parent  # the python and vskip the suite runs with
    run = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), str(work)], cwd=ROOT, capture_output=True,
                         text=True, env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "gpu_check: needs TensorRT and an NVIDIA GPU: pip install -e '.[trt,dev]' on a GPU machine"]
    assert not work.exists()
