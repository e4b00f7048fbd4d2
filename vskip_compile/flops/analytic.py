"""The DESIGN.md section 6 FLOPs formula of a plan, from the model's dimensions alone.

Per decoder layer with n rows, q attention-live and f FFN-live rows (which rows are live:
:meth:`vskip_compile.core.plan.Plan.live_rows` on the visual-row mask), multiply-add = 2::

    K/V projections     2n * 2 d d_kv      every row, in every layer
    Q/O projections     2q * 2 d d_q
    scores, weighted V  4 q n d_q          live queries against every key (the graph's
                                           masked n_q x S); causal: 4 d_q * sum(i + 1)
                                           over the live query rows i (0-based)
    SwiGLU FFN          6 f d m

plus the LM head, 2 * head_rows * d * vocab (head_rows = n for ``logits`` "all", else 1).
d_q = heads x head_dim, d_kv = KV heads x head_dim. The graph counts of
:func:`vskip_compile.flops.count_flops` equal it exactly (``causal`` aside: a graph
computes the full masked product, a causal kernel only the keys at or before each query).
"""

from __future__ import annotations

import numpy as np

from ..core.plan import Plan, Rows
from ..core.visual_rows import live_mask
from .report import FlopsError


def analytic_flops(dims: dict, plan: Plan, visual: np.ndarray, causal: bool = False) -> int:
    """Prefill FLOPs of ``plan`` for the visual-row mask ``visual`` [S] (module docstring).

    ``dims``: hidden_size, intermediate_size, num_attention_heads, num_key_value_heads,
    head_dim, and optionally vocab_size (no LM head without it) and logits ("all" or
    "last", the default).
    """
    visual = np.asarray(visual, dtype=bool)
    if visual.ndim != 1:
        raise FlopsError(f"the visual-row mask must be one row per position [S], got shape {visual.shape}")
    n = int(visual.shape[0])
    d, m = int(dims["hidden_size"]), int(dims["intermediate_size"])
    d_q = int(dims["num_attention_heads"]) * int(dims["head_dim"])
    d_kv = int(dims["num_key_value_heads"]) * int(dims["head_dim"])
    rows, keys = {}, {}
    for kind in Rows:
        live = np.flatnonzero(live_mask(kind, visual))
        rows[kind] = int(live.size)
        keys[kind] = int((live + 1).sum())  # causal: query row i sees keys 0..i
    total = 0
    for layer in range(plan.num_layers):
        attention, ffn = plan.live_rows(layer)
        q, f = rows[attention], rows[ffn]
        products = 4 * d_q * keys[attention] if causal else 4 * q * n * d_q
        total += 2 * n * 2 * d * d_kv + 2 * q * 2 * d * d_q + products + 6 * f * d * m
    head_rows = n if dims.get("logits") == "all" else 1
    return total + 2 * head_rows * d * int(dims.get("vocab_size", 0))
