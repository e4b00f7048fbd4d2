"""The README's first command: `vskip demo` exports, checks, compiles, validates and times."""

from __future__ import annotations

from vskip_compile.cli import main


def test_the_demo_passes(tmp_path, capsys):
    assert main(["demo", "--workdir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr()
    text = out.out + out.err
    assert "result: PASS" in text
    assert "skip_visual_rows: 3 layers changed" in text           # the example plan's three skipping layers
    assert (tmp_path / "demo" / "tiny-qwen2-vl" / "prefill.vskip.onnx").is_file()
