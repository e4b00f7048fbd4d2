"""The PyTorch skip reference: what a plan means, on a transformers model.

For every layer whose action skips something, a forward hook zeroes the skipped rows'
contribution of that branch:

    skip attention:  h_mid = h + where(skipped, 0, Attn(norm1(h)))
    skip FFN:        h_out = h_mid + where(skipped, 0, FFN(norm2(h_mid)))

Attention still runs over every row, so keys and values come from every row of the
layer's input and the KV cache stays complete; a skipped row's own query result is simply
discarded, which equals not computing it because attention rows are independent given
K/V. Zeroing before a family's post-branch norm (Gemma3) is still exact: an RMSNorm maps
a zero row to zero. DeepStack injections happen between layers, outside these hooks, so
they are kept. Decode steps run outside the context and are unchanged.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from vskip_compile.plan import Action, FreezeScope, Plan

from .family import Family


def prefix_through_last(rows: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: every position up to and including each row's last True."""
    positions = torch.arange(rows.shape[1], device=rows.device)
    last = torch.where(rows, positions, -1).amax(dim=1, keepdim=True)
    return positions.unsqueeze(0) <= last


def skipped_rows(plan: Plan, action: Action, visual_rows: torch.Tensor) -> torch.Tensor:
    """The rows a layer with ``action`` leaves untouched, per DESIGN.md section 2."""
    if action is Action.FREEZE and plan.freeze_scope is FreezeScope.PREFIX_THROUGH_VISUAL:
        return prefix_through_last(visual_rows)
    return visual_rows


def _zero_rows_hook(rows: torch.Tensor, label: str):
    mask = rows.unsqueeze(-1)

    def hook(module, args, output):
        tensor = output[0] if isinstance(output, tuple) else output
        if tensor.shape[:2] != rows.shape:
            raise RuntimeError(
                f"{label}: the skip reference was set up for {tuple(rows.shape)} rows but got "
                f"{tuple(tensor.shape[:2])}; run decode steps outside the skip_reference block"
            )
        zeroed = torch.where(mask, torch.zeros((), dtype=tensor.dtype), tensor)
        return (zeroed, *output[1:]) if isinstance(output, tuple) else zeroed

    return hook


@contextmanager
def skip_reference(family: Family, model: torch.nn.Module, plan: Plan, visual_rows: torch.Tensor):
    """Within the block, prefill calls of ``model`` follow ``plan``; leaving restores it.

    ``visual_rows`` is a [B, S] bool tensor over the prefill's rows.
    """
    layers = family.decoder_layers(model)
    if plan.num_layers != len(layers):
        raise ValueError(f"the plan has {plan.num_layers} layers but the model has {len(layers)}")
    visual_rows = visual_rows.bool()
    handles = []
    try:
        for index, (layer, action) in enumerate(zip(layers, plan.actions)):
            rows = skipped_rows(plan, action, visual_rows)
            if action.skips_attention:
                handles.append(layer.self_attn.register_forward_hook(
                    _zero_rows_hook(rows, f"layer {index} attention")))
            if action.skips_ffn:
                handles.append(layer.mlp.register_forward_hook(_zero_rows_hook(rows, f"layer {index} FFN")))
        yield
    finally:
        for handle in handles:
            handle.remove()
