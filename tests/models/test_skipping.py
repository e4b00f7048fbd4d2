"""The plan executed with live rows only (models/skipping.py) against the skip reference.

The reference computes every row and zeroes the skipped rows' updates; the skipping
implementation never computes those rows. Both must give the same logits and every K/V
(fp32, 1e-4) for every family, every action under both freeze scopes, random mixed
plans, a padded batch of two and two images. The timing backend built on it
(``torch-skip``) is tested in tests/backends.
"""

from __future__ import annotations

import pytest
import torch

from conftest import FAMILIES, tiny_model
from test_reference import _compare, _inputs, _plans, _prefill, _prefill_under
from vskip_compile.core.plan import Action, Plan
from vskip_compile.models.reference import skip_reference
from vskip_compile.models.skipping import skip_rows

ATOL = 1e-4


@pytest.mark.parametrize("family", FAMILIES)
def test_skipping_matches_the_reference(family):
    loaded = tiny_model(family)
    prompt, inputs = _inputs(loaded)
    for plan in _plans(loaded, f"skipping-{family}", 4):
        want = _prefill_under(skip_reference, loaded, plan, inputs)
        _compare(_prefill_under(skip_rows, loaded, plan, inputs), want, prompt.attention_mask, ATOL)


def test_skipping_computes_fewer_rows():
    """The point of it: a frozen layer's FFN sees only the text rows."""
    loaded = tiny_model("qwen2_vl")
    _, inputs = _inputs(loaded)
    layers = loaded.family.decoder_layers(loaded.model)
    seen = []
    handle = layers[1].mlp.down_proj.register_forward_hook(lambda m, a, o: seen.append(a[0].shape))
    try:
        plan = Plan.from_layers(len(layers), {1: Action.FREEZE})
        with skip_rows(loaded.family, loaded.model, plan, inputs.visual_rows):
            _prefill(loaded, inputs.feeds)
    finally:
        handle.remove()
    text_rows = int((~inputs.visual_rows.bool()).sum())
    assert seen and seen[0][0] == text_rows < inputs.visual_rows.numel()


def test_leaving_the_block_restores_the_model():
    from transformers.modeling_utils import AttentionInterface

    loaded = tiny_model("qwen3_vl")
    prompt, inputs = _inputs(loaded)
    before = _prefill(loaded, inputs.feeds)
    sdpa = AttentionInterface._global_mapping["sdpa"]
    plan = Plan((Action.FREEZE,) * (len(before) // 2))
    with pytest.raises(KeyError):
        with skip_rows(loaded.family, loaded.model, plan, inputs.visual_rows):
            raise KeyError("inside")
    assert AttentionInterface._global_mapping["sdpa"] is sdpa
    for layer in loaded.family.decoder_layers(loaded.model):
        assert "forward" not in layer.mlp.__dict__ and "forward" not in layer.self_attn.q_proj.__dict__
    for a, b in zip(before, _prefill(loaded, inputs.feeds)):
        assert torch.equal(a, b)


def test_decode_inside_the_block_is_refused():
    loaded = tiny_model("qwen2_vl")
    _, inputs = _inputs(loaded)
    layers = loaded.family.decoder_layers(loaded.model)
    with skip_rows(loaded.family, loaded.model, Plan.from_layers(len(layers), {0: Action.SKIP_FFN}),
                   inputs.visual_rows):
        with pytest.raises(RuntimeError, match="decode steps outside"):
            layers[0].mlp(torch.zeros(2, 1, loaded.config.get_text_config().hidden_size))


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen3_vl", "gemma3"])
def test_one_unpadded_prompt(family):
    """Batch 1 without padding: transformers passes SDPA no mask (causal), the bench's case."""
    from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt

    loaded = tiny_model(family)
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 5], batch=1, left_pad=[0], seed=5)
    inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
    num_layers = len(loaded.family.decoder_layers(loaded.model))
    for plan in (Plan((Action.SKIP_ATTENTION,) * num_layers), Plan((Action.FREEZE,) * num_layers)):
        want = _prefill_under(skip_reference, loaded, plan, inputs)
        _compare(_prefill_under(skip_rows, loaded, plan, inputs), want, prompt.attention_mask, ATOL)
