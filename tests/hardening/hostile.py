"""Helpers for the hostile-input tests: run the CLI as a user would, and check what it
left on disk.

Each test records the state of its directory tree before the command (every file's
hash, every symlink's target) and asserts the promise afterwards: exit status 2, one
line on stderr, no traceback, the inputs untouched, nothing new outside what the command
was asked to write and nothing partial inside it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import onnx

# A hard bound on every command: hostile inputs must be refused in seconds, not minutes.
TIMEOUT_S = 60


def run_cli(*args, cwd=None, timeout: float = TIMEOUT_S, prog: str = "vskip") -> subprocess.CompletedProcess:
    entry = "main" if prog == "vskip" else "compile_main"
    code = f"import sys; from vskip_compile.cli import {entry}; sys.exit({entry}())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def snapshot(root: Path) -> dict[str, str]:
    """relative path -> content hash, 'link -> target' or 'dir', for everything under ``root``."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            key = str(path.relative_to(root))
            if path.is_symlink():
                state[key] = f"link -> {os.readlink(path)}"
            elif path.is_dir():
                state[key] = "dir"
            elif path.is_file():
                state[key] = hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                state[key] = "special"
    return state


def assert_refused(result: subprocess.CompletedProcess, before: dict, root: Path, *needles: str) -> str:
    """Exit 2, one line naming the problem, no traceback, and ``root`` exactly as before."""
    assert result.returncode == 2, f"exit {result.returncode}, stderr:\n{result.stderr}"
    line = error_line(result)
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    after = snapshot(root)
    assert after == before, f"the file system changed: {_diff(before, after)}"
    return line


def error_line(result: subprocess.CompletedProcess) -> str:
    """The one error line: the last line of stderr, the only one naming the command (progress
    lines may precede it), with no traceback anywhere."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert lines, "nothing on stderr"
    errors = [line for line in lines if line.startswith(("vskip ", "vskip-compile:"))]
    assert errors == [lines[-1]], f"expected one error line, last, got:\n{result.stderr}"
    return lines[-1]


def _diff(before: dict, after: dict) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"


def with_external_data(source: Path, directory: Path, name: str = "model.onnx", location: str | None = None) -> Path:
    """``source`` saved as ``directory/name`` with every large tensor in one external file."""
    directory.mkdir(parents=True, exist_ok=True)
    model = onnx.load(source)
    target = directory / name
    onnx.save(model, target, save_as_external_data=True, all_tensors_to_one_file=True,
              location=location or f"{name}.data", size_threshold=1024)
    return target


def set_external(model: onnx.ModelProto, **fields: str | None) -> onnx.ModelProto:
    """Rewrite the external-data entries of every external tensor (None removes a key)."""
    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        entries = {e.key: e.value for e in tensor.external_data}
        for key, value in fields.items():
            if value is None:
                entries.pop(key, None)
            else:
                entries[key] = value
        del tensor.external_data[:]
        for key, value in entries.items():
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
    return model


def save_graph_only(model: onnx.ModelProto, path: Path) -> Path:
    """Write the graph proto as it is (external references untouched, no data written)."""
    path.write_bytes(model.SerializeToString())
    return path


# ------------------------------------------------------------------------------ fixtures
# Here, not in a conftest.py: a second conftest module would shadow tests/conftest.py for
# `from conftest import ...`. Test modules import these two by name.

import shutil  # noqa: E402

import pytest  # noqa: E402

PLAN = Path(__file__).resolve().parents[2] / "vskip_compile" / "plans" / "example_tiny.json"


@pytest.fixture(scope="session")
def external_source(exported, tmp_path_factory) -> Path:
    """A tiny Qwen2-VL prefill graph as model.onnx + model.onnx.data, with its vskip.json."""
    export = exported("qwen2_vl", 20)
    directory = tmp_path_factory.mktemp("external") / "src"
    model = with_external_data(export / "prefill.onnx", directory)
    shutil.copy(export / "vskip.json", directory / "vskip.json")
    return model


@pytest.fixture
def workspace(external_source, tmp_path) -> Path:
    """A fresh copy of the external-data source in tmp_path/src; tests work in tmp_path."""
    shutil.copytree(external_source.parent, tmp_path / "src")
    return tmp_path


def run_patched(patch: str, *args, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter after ``patch`` (Python source) ran: how a fault (a full
    disk, a signal at a chosen moment) is placed exactly where a test wants it."""
    code = f"import sys\n{patch}\nfrom vskip_compile.cli import main\nsys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
