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


@contextmanager
def plan_on_prefill(family: Family, model: torch.nn.Module, plan: Plan, visual_rows: torch.Tensor,
                    live_rows_only: bool = False):
    """Within the block, the first call of the text model (the prefill of a ``generate``)
    follows ``plan`` through :func:`skip_reference` (or, with ``live_rows_only``, through
    :func:`.skipping.skip_rows`, which computes only the live rows: PyTorch's speed on the
    plan); the calls after it (decode steps) are the normal model, as the skip semantics
    say (DESIGN.md section 2)."""
    from contextlib import ExitStack

    from .skipping import skip_rows

    apply = skip_rows if live_rows_only else skip_reference

    text_model = family.text_model(model)
    stack = ExitStack()
    calls = {"n": 0}

    def before(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            stack.enter_context(apply(family, model, plan, visual_rows))

    def after(module, args, kwargs, output):
        if calls["n"] == 1:
            stack.close()

    handles = [text_model.register_forward_pre_hook(before, with_kwargs=True),
               text_model.register_forward_hook(after, with_kwargs=True)]
    try:
        yield
    finally:
        stack.close()
        for handle in handles:
            handle.remove()
        if calls["n"] == 0:
            raise RuntimeError("the model's text model was never called inside plan_on_prefill")


@torch.no_grad()
def reference_generate(family: Family, model: torch.nn.Module, inputs: dict[str, torch.Tensor], max_new_tokens: int,
                       plan: Plan | None = None, visual_rows: torch.Tensor | None = None) -> torch.Tensor:
    """transformers' own greedy ``generate`` on the full model: the new tokens [B, n].

    With ``plan``, the prefill follows it (``visual_rows`` [B, S]); decode steps do not.
    """
    run = dict(inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    if plan is None or plan.is_empty:
        out = model.generate(**run)
    else:
        with plan_on_prefill(family, model, plan, visual_rows):
            out = model.generate(**run)
    return out[:, inputs["input_ids"].shape[1]:]
