"""The DESIGN.md section 6 formula (vskip_compile.flops.analytic): hand-computed numbers for a
tiny dims dict, and equality with the graph counts of a tiny export.

Hand numbers, dims d = 8, d_q = 2 heads x 4 = 8, d_kv = 1 x 4 = 4, m = 16, vocab 10, for
the mask [text, visual x 3, text, text] (S = n = 6 rows: 3 text, 3 visual, suffix 2), per
layer K/V 2n*2*d*d_kv = 2*6*2*8*4 = 768 always, then with q attention rows and f FFN rows:

    Q/O 2q*2*d*d_q = 32q*8 = 256q   products 4*q*n*d_q = 192q   FFN 6*f*d*m = 768f

    full          q=6 f=6: 768 + 1536 + 1152 + 4608 = 8064
    skip attn     q=3 f=6: 768 +  768 +  576 + 4608 = 6720
    skip ffn      q=6 f=3: 768 + 1536 + 1152 + 2304 = 5760
    freeze        q=3 f=3: 768 +  768 +  576 + 2304 = 4416
    freeze, prefix_through_visual (q=f=2, the suffix): 768 + 512 + 384 + 1536 = 3200

LM head 2*1*d*vocab = 160 (last row), 2*6*8*10 = 960 with logits "all". Causal products:
query row i sees i + 1 keys, 4*d_q*sum(i + 1) = 32*sum: all rows 32*21 = 672; the text
rows 0, 4, 5: 32*(1 + 5 + 6) = 384.
"""

from __future__ import annotations

import numpy as np
import pytest

from conftest import tiny_model
from vskip_compile.core.plan import Action, FreezeScope, Plan
from vskip_compile.flops import FlopsError, analytic_flops, count_flops, plan_flops

A = Action
DIMS = {"hidden_size": 8, "intermediate_size": 16, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 4, "vocab_size": 10}
MASK = np.array([0, 1, 1, 1, 0, 0], dtype=bool)


def test_every_action_by_hand():
    plan = Plan((A.FULL, A.SKIP_ATTENTION, A.SKIP_FFN, A.FREEZE))
    assert analytic_flops(DIMS, plan, MASK) == 8064 + 6720 + 5760 + 4416 + 160


def test_prefix_through_visual_freezes_up_to_the_last_visual_row():
    plan = Plan((A.FREEZE, A.FREEZE), FreezeScope.PREFIX_THROUGH_VISUAL)
    assert analytic_flops(DIMS, plan, MASK) == 2 * 3200 + 160
    # without visual rows every row is the suffix: a freeze layer is a full one
    assert analytic_flops(DIMS, Plan((A.FREEZE,), FreezeScope.PREFIX_THROUGH_VISUAL), np.zeros(6, bool)) == 8064 + 160


def test_head_rows_and_vocabulary():
    assert analytic_flops({**DIMS, "logits": "all"}, Plan.empty(2), MASK) == 2 * 8064 + 960
    assert analytic_flops({**DIMS, "logits": "last"}, Plan.empty(2), MASK) == 2 * 8064 + 160
    no_head = {k: v for k, v in DIMS.items() if k != "vocab_size"}
    assert analytic_flops(no_head, Plan.empty(1), MASK) == 8064


def test_causal_products():
    plan = Plan((A.FULL, A.SKIP_ATTENTION))
    full, skip = 768 + 1536 + 672 + 4608, 768 + 768 + 384 + 4608
    assert analytic_flops(DIMS, plan, MASK, causal=True) == full + skip + 160


def test_refuses_a_batch_of_masks():
    with pytest.raises(FlopsError, match="one row per position"):
        analytic_flops(DIMS, Plan.empty(1), np.zeros((2, 6), bool))


def _dims(family):
    tc = tiny_model(family).text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    return {"hidden_size": tc.hidden_size, "intermediate_size": tc.intermediate_size, "head_dim": head_dim,
            "num_attention_heads": tc.num_attention_heads, "num_key_value_heads": tc.num_key_value_heads,
            "vocab_size": tc.vocab_size}


@pytest.mark.parametrize("scope", list(FreezeScope))
def test_equals_the_graph_count_of_a_tiny_export(exported, tmp_path, scope):
    """The vanilla count and the plan's FLOPs derived from it are the formula, exactly, for a
    prompt of 7 text, 8 visual and 5 text rows (matrix products outside the layers aside)."""
    from vskip_compile.compile import compile_model

    dims = _dims("qwen2_vl")
    source = exported("qwen2_vl", 20, decode=False) / "prefill.onnx"
    mask = np.r_[np.zeros(7, bool), np.ones(8, bool), np.zeros(5, bool)]
    vanilla = count_flops(source, 20, 8, suffix_rows=5)
    assert vanilla.total - vanilla.other == analytic_flops(dims, Plan.empty(len(vanilla.layers)), mask)
    plan = Plan((A.SKIP_ATTENTION, A.FREEZE, A.SKIP_FFN, A.FULL), scope)
    required = plan_flops(vanilla, plan)
    assert required.total - required.other == analytic_flops(dims, plan, mask)
    # no two freeze layers in a row: the compiled graph computes exactly what the plan requires
    compile_model(source, plan, tmp_path / "c.onnx")
    compiled = count_flops(tmp_path / "c.onnx", 20, 8, suffix_rows=5)
    assert compiled.total - compiled.other == analytic_flops(dims, plan, mask)
