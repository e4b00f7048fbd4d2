"""A plan executed in PyTorch: only the rows a layer keeps live are computed.

The skip reference (:mod:`.reference`) computes every row and zeroes the skipped rows'
updates, which is the clearest statement of a plan but saves no work. This module runs
the same plan the way a PyTorch implementation that wants the speedup does (OpSkip's
patch is one): per layer, for the rows that do not attend, the query projection, the
attention core and the output projection are not computed, and for the rows that skip
the FFN, the FFN is not computed. Keys and values still come from every row, so the KV
cache stays complete. It is what ``vskip bench --backend torch-skip`` times against the
compiled graph, and it must give the reference's outputs (``tests/models/test_skipping.py``).

How, without a copy of any family's attention code:

- ``q_proj``, ``o_proj`` and ``mlp`` of a skipping layer compute their live rows only and
  give exact zeros elsewhere (a zero attention output is what the reference adds, and a
  post-branch RMSNorm maps zero to zero);
- the attention core runs for the live query rows only: within the block, transformers'
  SDPA entry in its attention registry is replaced by one that, for a skipping layer's
  attention module, takes those query rows (and their mask rows) and hands them to the
  original function. Other modules get the original function unchanged.

The registry is process-global, so the block is not thread-safe, like the reference's
hooks on a shared model.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from vskip_compile.core.plan import Plan, Rows
from vskip_compile.core.visual_rows import live_mask

from .family import Family

ATTENTION = "sdpa"
"""The attention implementation the models are loaded with (:mod:`.loading`)."""


def _live_rows_only(function, live: torch.Tensor):
    """``function`` over the rows ``live`` [B, S] marks, exact zeros in the others."""

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        if hidden.shape[:2] != live.shape:
            raise RuntimeError(f"the skipping block was set up for {tuple(live.shape)} rows but got "
                               f"{tuple(hidden.shape[:2])}; run decode steps outside it")
        rows = function(hidden[live])
        out = rows.new_zeros((*hidden.shape[:2], rows.shape[-1]))
        out[live] = rows
        return out

    return forward


def _queries_of(live_by_module: dict, original):
    """An SDPA entry that runs a skipping layer's attention for its live query rows only."""

    def attention(module, query, key, value, attention_mask, **kwargs):
        live = live_by_module.get(id(module))
        if live is None:
            return original(module, query, key, value, attention_mask, **kwargs)
        batch, heads, length, dim = query.shape
        out = query.new_zeros((batch, length, heads, dim))
        kwargs.pop("is_causal", None)
        for b in range(batch):
            rows = torch.nonzero(live[b]).flatten()
            if rows.numel() == 0:
                continue
            if attention_mask is None:  # causal, no padding: a query sees the keys up to its position
                offset = key.shape[2] - length
                mask = torch.arange(key.shape[2])[None, :] <= (rows + offset)[:, None]
                mask = mask[None, None]
            else:
                mask = attention_mask[b:b + 1]
                if mask.shape[-2] != 1:
                    mask = mask.index_select(-2, rows)
            result, _ = original(module, query[b:b + 1, :, rows], key[b:b + 1], value[b:b + 1], mask,
                                 is_causal=False, **kwargs)
            out[b, rows] = result[0]
        return out, None

    return attention


def _replace_forward(module: torch.nn.Module, forward, replaced: list):
    replaced.append((module, module.__dict__.get("forward")))
    module.forward = forward


@contextmanager
def skip_rows(family: Family, model: torch.nn.Module, plan: Plan, visual_rows: torch.Tensor):
    """Within the block, prefill calls of ``model`` follow ``plan``, computing live rows only.

    ``visual_rows`` is a [B, S] bool tensor over the prefill's rows. The outputs are the
    skip reference's (:func:`.reference.skip_reference`) up to floating-point reordering.
    """
    from transformers.modeling_utils import AttentionInterface

    layers = family.decoder_layers(model)
    if plan.num_layers != len(layers):
        raise ValueError(f"the plan has {plan.num_layers} layers but the model has {len(layers)}")
    visual = visual_rows.bool().cpu().numpy()

    def live(kind: Rows) -> torch.Tensor:
        return torch.from_numpy(live_mask(kind, visual)).to(visual_rows.device)

    live_queries: dict[int, torch.Tensor] = {}
    replaced: list = []
    registry = AttentionInterface._global_mapping
    original = registry[ATTENTION]
    try:
        for index, layer in enumerate(layers):
            attention, ffn = plan.live_rows(index)
            if attention is not Rows.ALL:
                attn = layer.self_attn
                if attn.config._attn_implementation != ATTENTION:
                    raise ValueError(f"layer {index}: skipping rows needs {ATTENTION!r} attention, the model uses "
                                     f"{attn.config._attn_implementation!r}")
                rows = live(attention)
                live_queries[id(attn)] = rows
                _replace_forward(attn.q_proj, _live_rows_only(attn.q_proj.forward, rows), replaced)
                _replace_forward(attn.o_proj, _live_rows_only(attn.o_proj.forward, rows), replaced)
            if ffn is not Rows.ALL:
                _replace_forward(layer.mlp, _live_rows_only(layer.mlp.forward, live(ffn)), replaced)
        registry[ATTENTION] = _queries_of(live_queries, original)
        yield
    finally:
        registry[ATTENTION] = original
        for module, forward in reversed(replaced):
            if forward is None:
                del module.forward
            else:
                module.forward = forward
