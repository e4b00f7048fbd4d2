"""The export leaves out onnxscript's quadratic ``SlicesSplit`` rewrite
(models/export.py, ``_without_quadratic_rewrites``); that must cost nothing but time.

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
