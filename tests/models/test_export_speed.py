"""Two speed-ups of the export that must cost nothing but time (models/export.py):
onnxscript's quadratic ``SlicesSplit`` rewrite is left out, and prefill and decode are
traced in two processes side by side.

The rule, applied by itself to every family's export at both opsets, finds nothing to
rewrite: the graphs are what the exporter would have written with it. (Measured once,
2026-12-01: every family's prefill at opset 20 and 23 exported with and without the rule
serialized to the same bytes; see docs/benchmarks.md, "Export at depth".)
"""

from __future__ import annotations

import onnx
import pytest

from conftest import FAMILIES
from vskip_compile.models.export import SLOW_REWRITES


@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_left_out_rewrite_has_nothing_to_rewrite(family, opset, exported):
    import onnx_ir as ir
    import onnxscript.rewriter as rewriter
    from onnxscript.rewriter import pattern

    rules = [r for r in rewriter._DEFAULT_REWRITE_RULES if getattr(r, "name", None) in SLOW_REWRITES]
    assert [r.name for r in rules] == list(SLOW_REWRITES)  # still onnxscript's rule, still left out
    model = ir.serde.deserialize_model(onnx.load(exported(family, opset) / "prefill.onnx"))
    assert pattern.RewriteRuleSet(rules).apply_to_model(model) == 0


def test_prefill_and_decode_trace_side_by_side_to_the_same_graphs(exported, checkpoint_export):
    """The two-process export (two usable cores: decode and vision in the second) writes
    what one process writes in turn: the suite's one-process export of the tiny Qwen2-VL's
    saved checkpoint (conftest.checkpoint_export) against its two-process export of the preset."""
    _, serial = checkpoint_export(processor=False)
    parallel = exported("qwen2_vl", 20)
    for name in ("prefill.onnx", "decode.onnx", "vision.onnx"):
        assert onnx.load(serial / name).graph == onnx.load(parallel / name).graph, name


def test_a_failing_decode_trace_fails_the_export_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from vskip_compile.models import export

    def broken(*args, **kwargs):
        raise ValueError("no decode today")

    monkeypatch.setattr(export, "usable_cores", lambda: 2)
    monkeypatch.setattr(export, "DecodeStep", broken)
    with pytest.raises(RuntimeError, match="tracing the decode graph failed: ValueError: no decode today"):
        export.export_model("tiny:qwen2_vl", tmp_path / "out", progress=None, vision=False)
    assert list(tmp_path.iterdir()) == []  # no export directory, no staging left behind
    assert "no decode today" in capsys.readouterr().err  # the child's traceback, for the report
