"""Dependencies point down (STYLE.md): the core imports neither torch, transformers nor the
pipeline; passes/ and models/ import only the core from vskip_compile; models/ never
imports passes/, passes/ never imports torch or transformers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _imports(path: Path, package: str) -> set[str]:
    """Absolute module names ``path`` imports (relative imports resolved against ``package``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            found.add(module)
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def _package(path: Path) -> str:
    """The installed package a source file lives in (passes/ and models/ install under vskip_compile)."""
    parts = list(path.relative_to(ROOT).parent.parts)
    if parts[0] in ("passes", "models"):
        parts = ["vskip_compile"] + parts
    return ".".join(parts)


def _files(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


def _vskip_modules(imports: set[str]) -> set[str]:
    return {m for m in imports if m.startswith("vskip_compile")}


PIPELINE = ("vskip_compile.compile", "vskip_compile.validate", "vskip_compile.bench", "vskip_compile.flops",
            "vskip_compile.cli", "vskip_compile.demo", "vskip_compile.backends", "vskip_compile.passes",
            "vskip_compile.models")


@pytest.mark.parametrize("path", _files("vskip_compile/core"), ids=lambda p: p.name)
def test_core_imports_only_the_core(path):
    imports = _imports(path, _package(path))
    assert not {m.split(".")[0] for m in imports} & {"torch", "transformers"}, path
    outside = {m for m in _vskip_modules(imports) if m.startswith(PIPELINE)}
    assert not outside, f"{path.name} imports {sorted(outside)}"


# What each layer may import from vskip besides itself: the core, and for models/ the
# host's numpy functions (it traces the vision graph on what they make) and the packaged
# checkpoints' names (vskip_compile.testbed, a leaf over the core).
BELOW = {"passes": ("vskip_compile.core",),
         "models": ("vskip_compile.core", "vskip_compile.host", "vskip_compile.testbed"),
         "vskip_compile/host": ("vskip_compile.core",), "vskip_compile/testbed": ("vskip_compile.core",)}


@pytest.mark.parametrize("folder", list(BELOW))
def test_layers_import_only_what_lies_below(folder):
    for path in _files(folder):
        own = "vskip_compile." + folder.split("/")[-1]
        imports = _vskip_modules(_imports(path, _package(path)))
        other = {m for m in imports if not m.startswith((*BELOW[folder], own)) and m != "vskip_compile"}
        assert not other, f"{path.relative_to(ROOT)} imports {sorted(other)}"


def test_the_host_needs_only_numpy():
    for path in _files("vskip_compile/host"):
        roots = {m.split(".")[0] for m in _imports(path, _package(path))}
        assert not roots & {"torch", "transformers", "onnx", "onnxruntime"}, path


def test_passes_need_neither_torch_nor_transformers():
    for path in _files("passes"):
        roots = {m.split(".")[0] for m in _imports(path, _package(path))}
        assert not roots & {"torch", "transformers"}, path


def test_importing_the_core_and_the_passes_loads_no_torch():
    code = ("import sys, vskip_compile.core.graph_io, vskip_compile.core.sidecar, vskip_compile.passes.pipeline, "
            "vskip_compile.passes.skip_visual, vskip_compile.compile, vskip_compile.backends; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
