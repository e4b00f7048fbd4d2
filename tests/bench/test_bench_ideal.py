"""vskip_compile.bench.ideal: the three sources of an ideal speedup, in order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vskip_compile.bench import ideal as ideal_module
from vskip_compile.bench.ideal import (IDEAL_ANALYTIC, IDEAL_FLOPS_MODULE, IDEAL_GIVEN, analytic_ideal,
                                       ideal_speedups)
from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, FreezeScope, Plan

DIMS = {"num_layers": 2, "hidden_size": 8, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4,
        "intermediate_size": 16, "vocab_size": 10}
VISUAL = np.array([False] + [True] * 6 + [False] * 3)       # 1 text, 6 visual, 3 text
HEAD = 2 * 8 * 10                                            # the LM head on the last row


def _layer(n, q, f, d=8, d_kv=4, m=16):
    """DESIGN.md section 6 by hand: K/V on n rows, Q/O and attention on q, the FFN on f."""
    return 2 * n * 2 * d * d_kv + 2 * q * 2 * d * d + 4 * q * n * d + 6 * f * d * m


def test_the_analytic_ideal_is_the_design_formulas_ratio():
    ideal = analytic_ideal(DIMS)
    vanilla = 2 * _layer(10, 10, 10) + HEAD
    assert ideal(Plan.empty(2), VISUAL) == 1.0
    skip = Plan((Action.SKIP_ATTENTION, Action.SKIP_FFN))                     # 4 text rows live
    assert ideal(skip, VISUAL) == pytest.approx(vanilla / (_layer(10, 4, 10) + _layer(10, 10, 4) + HEAD))
    frozen = Plan((Action.FREEZE,) * 2, FreezeScope.PREFIX_THROUGH_VISUAL)   # only the 3 suffix rows live
    assert ideal(frozen, VISUAL) == pytest.approx(vanilla / (2 * _layer(10, 3, 3) + HEAD))


PLANS = [("a", Plan((Action.FREEZE,) * 2), "a.json"), ("b", Plan.empty(2), "b.json")]
GRAPHS = [Path("a.onnx"), Path("b.onnx")]


def test_the_callers_function_comes_first():
    seen = []

    def given(plan, visual, graph):
        seen.append(graph)
        return 2.0

    ideals, source = ideal_speedups(given, Path("model.onnx"), DIMS, PLANS, GRAPHS, VISUAL)
    assert ideals == {"a": 2.0, "b": 2.0} and source == IDEAL_GIVEN and seen == GRAPHS


def test_the_counter_comes_next(monkeypatch):
    monkeypatch.setattr(ideal_module, "counted_ideal", lambda model: lambda plan, visual, graph: 3.0)
    ideals, source = ideal_speedups(None, Path("model.onnx"), DIMS, PLANS, GRAPHS, VISUAL)
    assert ideals == {"a": 3.0, "b": 3.0} and source == IDEAL_FLOPS_MODULE


def test_a_refusing_counter_falls_back_to_the_formula_with_its_reason(monkeypatch):
    def refuses(model):
        def ideal(plan, visual, graph):
            raise VskipError("model.onnx: an Einsum")
        return ideal

    monkeypatch.setattr(ideal_module, "counted_ideal", refuses)
    log = []
    ideals, source = ideal_speedups(None, Path("model.onnx"), DIMS, PLANS, GRAPHS, VISUAL, log.append)
    frozen = (2 * _layer(10, 10, 10) + HEAD) / (2 * _layer(10, 4, 4) + HEAD)   # 4 text rows live
    assert ideals == {"a": pytest.approx(frozen), "b": 1.0}
    assert source == f"{IDEAL_ANALYTIC} (vskip_compile.flops refused the graphs: model.onnx: an Einsum)"
    assert log == ["FLOPs counter: model.onnx: an Einsum; using the analytic formula"]
