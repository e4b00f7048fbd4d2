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

from vskip_compile.core.plan import Plan, Rows
from vskip_compile.core.visual_rows import live_mask

from .family import Family


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
    visual = visual_rows.bool().cpu().numpy()

    def skipped(kind: Rows) -> torch.Tensor:  # every row the layer does not keep live
        return torch.from_numpy(~live_mask(kind, visual)).to(visual_rows.device)

    handles = []
    try:
        for index, layer in enumerate(layers):
            attention, ffn = plan.live_rows(index)
            if attention is not Rows.ALL:
                handles.append(layer.self_attn.register_forward_hook(
                    _zero_rows_hook(skipped(attention), f"layer {index} attention")))
            if ffn is not Rows.ALL:
                handles.append(layer.mlp.register_forward_hook(_zero_rows_hook(skipped(ffn), f"layer {index} FFN")))
        yield
    finally:
        for handle in handles:
            handle.remove()
