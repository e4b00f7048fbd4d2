"""The PyTorch skip reference against an independent slow formulation.

The reference zeroes skipped rows' branch outputs with hooks on the attention and MLP
modules. The slow formulation here instead runs each layer normally and then rebuilds
the skipped rows from the layer's input: for skip-attention rows it recomputes the FFN
branch on just those rows; for skip-FFN rows it adds the attention branch observed for
them; frozen rows get their input back. Agreement of the two checks the hooks, the row
selection (both freeze scopes) and that K/V come from every row of each layer's input.
"""

from __future__ import annotations

import random
from contextlib import contextmanager

import pytest
import torch

from conftest import FAMILIES, tiny_model
from helpers import assert_close
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.models.reference import skip_reference
from vskip_compile.models.wrappers import DecodeStep, PrefillDecoder, embed_tokens, prefill_input_names
from vskip_compile.core.plan import Action, FreezeScope, Plan

REFERENCE_ATOL = 1e-5


def _rows_per_batch(plan: Plan, action: Action, visual: torch.Tensor) -> list[list[int]]:
    rows = []
    for b in range(visual.shape[0]):
        idx = [s for s in range(visual.shape[1]) if visual[b, s]]
        if action is Action.FREEZE and plan.freeze_scope is FreezeScope.PREFIX_THROUGH_VISUAL and idx:
            idx = list(range(0, max(idx) + 1))
        rows.append(idx)
    return rows


@contextmanager
def slow_reference(family, model, plan: Plan, visual: torch.Tensor):
    handles = []
    for layer, action in zip(family.decoder_layers(model), plan.actions):
        if action is Action.FULL:
            continue
        rows = _rows_per_batch(plan, action, visual)
        seen = {}

        def observe(module, args, output, seen=seen):
            seen["attention"] = output[0]

        def rebuild(module, args, kwargs, output, layer=layer, action=action, rows=rows, seen=seen):
            h = args[0] if args else kwargs["hidden_states"]
            out = (output[0] if isinstance(output, tuple) else output).clone()
            for b, idx in enumerate(rows):
                if not idx:
                    continue
                h_rows = h[b:b + 1, idx]
                if action is Action.SKIP_ATTENTION:
                    out[b:b + 1, idx] = h_rows + family.ffn_branch(layer, h_rows)
                elif action is Action.SKIP_FFN:
                    attention = seen["attention"][b:b + 1, idx]
                    out[b:b + 1, idx] = h_rows + family.attention_branch(layer, attention)
                else:
                    out[b:b + 1, idx] = h_rows
            return (out, *output[1:]) if isinstance(output, tuple) else out

        handles.append(layer.self_attn.register_forward_hook(observe))
        handles.append(layer.register_forward_hook(rebuild, with_kwargs=True))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _prefill(loaded, feeds):
    module = PrefillDecoder(loaded.family, loaded.model, all_logits=True)
    with torch.no_grad():
        return module(*(feeds[name] for name in prefill_input_names(loaded.family)))


def _prefill_under(run_plan, loaded, plan: Plan, inputs):
    """The prefill's outputs inside ``run_plan``'s block (skip_reference, skip_rows, ...)."""
    with run_plan(loaded.family, loaded.model, plan, inputs.visual_rows):
        return _prefill(loaded, inputs.feeds)


def _inputs(loaded, seed=11):
    prompt = synthetic_prompt(loaded.family, loaded.config, [2, "image", 3, "image", 4], batch=2,
                              left_pad=[0, 3], seed=seed)
    return prompt, prepare_decoder_inputs(loaded.family, loaded.model, prompt)


def _random_plan(num_layers: int, rng: random.Random) -> Plan:
    return Plan(tuple(rng.choice(list(Action)) for _ in range(num_layers)),
                rng.choice(list(FreezeScope)))


def _plans(loaded, label: str, random_plans: int) -> list[Plan]:
    """Every action in every layer under both freeze scopes, then seeded random mixes."""
    num_layers = len(loaded.family.decoder_layers(loaded.model))
    rng = random.Random(label)
    return ([Plan((a,) * num_layers, s) for a in Action for s in FreezeScope]
            + [_random_plan(num_layers, rng) for _ in range(random_plans)])


def _compare(got, want, mask, atol):
    valid = mask.bool()
    assert_close(got[0][valid], want[0][valid], atol=atol, what="logits")
    for i, (g, w) in enumerate(zip(got[1:], want[1:])):
        assert g.shape[2] == mask.shape[1], "the cache must hold every row"
        assert_close(g.transpose(1, 2)[valid], w.transpose(1, 2)[valid], atol=atol, what=f"cache {i}")


@pytest.mark.parametrize("family", FAMILIES)
def test_empty_plan_is_bit_identical(family):
    loaded = tiny_model(family)
    prompt, inputs = _inputs(loaded)
    vanilla = _prefill(loaded, inputs.feeds)
    with skip_reference(loaded.family, loaded.model, Plan.empty(len(vanilla) // 2), inputs.visual_rows):
        patched = _prefill(loaded, inputs.feeds)
    for a, b in zip(vanilla, patched):
        assert torch.equal(a, b)


@pytest.mark.parametrize("family", FAMILIES)
def test_random_plans_match_slow_formulation(family):
    loaded = tiny_model(family)
    prompt, inputs = _inputs(loaded)
    vanilla = _prefill(loaded, inputs.feeds)
    for plan in _plans(loaded, f"reference-{family}", 6):
        fast = _prefill_under(skip_reference, loaded, plan, inputs)
        slow = _prefill_under(slow_reference, loaded, plan, inputs)
        _compare(fast, slow, prompt.attention_mask, REFERENCE_ATOL)
        if not plan.is_empty:  # the plan must really change the text rows' result
            change = (fast[0] - vanilla[0])[prompt.attention_mask.bool()].abs().max()
            assert change > 1e-4, f"plan {plan} changed nothing"


@pytest.mark.parametrize("family", FAMILIES)
def test_leaving_the_block_restores_the_model(family):
    loaded = tiny_model(family)
    prompt, inputs = _inputs(loaded)
    before = _prefill(loaded, inputs.feeds)
    plan = Plan((Action.FREEZE,) * (len(before) // 2))
    with skip_reference(loaded.family, loaded.model, plan, inputs.visual_rows):
        _prefill(loaded, inputs.feeds)
    after = _prefill(loaded, inputs.feeds)
    for a, b in zip(before, after):
        assert torch.equal(a, b)


def test_decode_after_skipping_prefill_uses_the_normal_layer():
    """Decode steps run outside the block, on the cache the skipping prefill wrote."""
    loaded = tiny_model("qwen2_vl")
    prompt, inputs = _inputs(loaded)
    num_layers = len(loaded.family.decoder_layers(loaded.model))
    plan = Plan.from_layers(num_layers, {1: Action.SKIP_ATTENTION, 2: Action.FREEZE})
    with skip_reference(loaded.family, loaded.model, plan, inputs.visual_rows):
        cache = _prefill(loaded, inputs.feeds)[1:]
        step = DecodeStep(loaded.family, loaded.model)
        ids = embed_tokens(loaded.family, loaded.model, torch.tensor([[5], [6]]))
        mask = torch.cat([prompt.attention_mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        positions = loaded.family.decode_position_ids(inputs.feeds["position_ids"], torch.zeros(2, 1, dtype=torch.long))
        with pytest.raises(RuntimeError, match="outside the skip_reference block"):
            step(ids, mask, positions, *cache)
    with torch.no_grad():
        logits = step(ids, mask, positions, *cache)[0]
    assert torch.isfinite(logits).all()


def test_plan_layer_count_must_match():
    loaded = tiny_model("qwen2_vl")
    _, inputs = _inputs(loaded)
    with pytest.raises(ValueError, match="layers"):
        with skip_reference(loaded.family, loaded.model, Plan.empty(99), inputs.visual_rows):
            pass
