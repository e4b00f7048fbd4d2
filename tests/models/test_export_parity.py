"""Exported graphs on ONNX Runtime equal the PyTorch model (fp32, 1e-4 absolute)."""

from __future__ import annotations

import pytest
import torch

from helpers import assert_cache_close, assert_close, feeds_numpy
from conftest import FAMILIES, tiny_model
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.models.wrappers import DecodeStep, PrefillDecoder, embed_tokens, prefill_input_names
from vskip_compile.backends import open_session

# (layout, batch, left padding per row): two sequence lengths, and batch 2 left-padded.
CASES = [
    ([3, "image", 2], 1, [0]),
    ([5, "image", 4, "image", 6], 1, [0]),
    ([2, "image", 5], 2, [0, 3]),
]


def _torch_prefill(loaded, feeds, all_logits=False):
    module = PrefillDecoder(loaded.family, loaded.model, all_logits=all_logits)
    with torch.no_grad():
        return module(*(feeds[name] for name in prefill_input_names(loaded.family)))


@pytest.mark.parametrize("family", FAMILIES)
def test_decoder_inputs_reproduce_full_model(family):
    """The captured decoder inputs drive the text model to the full model's logits."""
    loaded = tiny_model(family)
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 4], batch=2, left_pad=[0, 2], seed=3)
    inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
    logits = _torch_prefill(loaded, inputs.feeds, all_logits=True)[0]
    valid = prompt.attention_mask.bool()
    assert_close(logits[valid], inputs.full_logits[valid], what="decoder vs full model logits")
    assert int(inputs.visual_rows.sum()) > 0


@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_matches_pytorch(family, opset, exported):
    loaded = tiny_model(family)
    session = open_session(exported(family, opset) / "prefill.onnx")
    names = [o.name for o in session.outputs]
    for seed, (layout, batch, pad) in enumerate(CASES):
        prompt = synthetic_prompt(loaded.family, loaded.config, layout, batch=batch, left_pad=pad, seed=seed)
        inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
        got = session.run(feeds_numpy(inputs.feeds))
        want = _torch_prefill(loaded, inputs.feeds)
        assert_close(got["logits"], want[0], what=f"{layout} b{batch} logits")
        for name, expected in zip(names[1:], want[1:]):
            assert_cache_close(got[name], expected, prompt.attention_mask, what=f"{layout} b{batch} {name}")


def _random_past(loaded, batch, length, seed):
    tc = loaded.text_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, tc.num_key_value_heads, length, head_dim, generator=g)
            for _ in range(2 * tc.num_hidden_layers)]


# Decode graphs: every family at opset 20, and opset 23 for one family (the decode step is
# the same code for all; the suite's time goes to exports).
DECODE_CASES = [(family, 20) for family in FAMILIES] + [("qwen2_vl", 23)]


@pytest.mark.parametrize("family, opset", DECODE_CASES)
def test_decode_step_matches_pytorch(family, opset, exported):
    loaded = tiny_model(family)
    session = open_session(exported(family, opset, decode=True) / "decode.onnx")
    names = [i.name for i in session.inputs]
    step_module = DecodeStep(loaded.family, loaded.model)
    for query, past_len in [(1, 9), (4, 6)]:
        past = _random_past(loaded, 2, past_len, seed=query)
        ids = torch.randint(0, 200, (2, query), generator=torch.Generator().manual_seed(query))
        embeds = embed_tokens(loaded.family, loaded.model, ids)
        mask = torch.ones(2, past_len + query, dtype=torch.long)
        prior = torch.arange(past_len).expand(2, -1)
        if loaded.family.position_rank > 1:
            prior = prior.unsqueeze(0).expand(loaded.family.position_rank, -1, -1)
        positions = loaded.family.decode_position_ids(prior, torch.arange(query).expand(2, -1))
        args = (embeds, mask, positions, *past)
        got = session.run(feeds_numpy(dict(zip(names, args))))
        with torch.no_grad():
            want = step_module(*args)
        for name, expected in zip([o.name for o in session.outputs], want):
            assert_close(got[name], expected, what=f"q={query} {name}")


@pytest.mark.parametrize("family, opset", DECODE_CASES)
def test_prefill_then_decode_equals_longer_prefill(family, opset, exported):
    """ORT prefill(n) then k one-token ORT decode steps == PyTorch prefill(n + k)."""
    loaded, k = tiny_model(family), 3
    directory = exported(family, opset, decode=True)
    prefill, decode = open_session(directory / "prefill.onnx"), open_session(directory / "decode.onnx")
    full = synthetic_prompt(loaded.family, loaded.config, [4, "image", 2 + k], batch=2, left_pad=[0, 2], seed=7)
    n = full.input_ids.shape[1] - k
    head = prepare_decoder_inputs(loaded.family, loaded.model, full.prefix(loaded.family, loaded.config, n))
    out = prefill.run(feeds_numpy(head.feeds))
    cache_names = [o.name for o in prefill.outputs][1:]
    past = [out[name] for name in cache_names]
    mask = full.attention_mask[:, :n]
    for step in range(k):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], dim=1)
        positions = loaded.family.decode_position_ids(head.feeds["position_ids"], torch.full((2, 1), step))
        feeds = {"inputs_embeds": embed_tokens(loaded.family, loaded.model, full.input_ids[:, n + step:n + step + 1]),
                 "attention_mask": mask,
                 "position_ids": positions}
        feeds.update({f"past_key_values.{name[len('present.'):]}": value for name, value in zip(cache_names, past)})
        out = decode.run(feeds_numpy(feeds))
        past = [out[name] for name in cache_names]
    whole = prepare_decoder_inputs(loaded.family, loaded.model, full)
    want = _torch_prefill(loaded, whole.feeds)
    assert_close(out["logits"], want[0], what="logits after decode")
    for name, cached, expected in zip(cache_names, past, want[1:]):
        assert_cache_close(cached, expected, full.attention_mask, what=name)


@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", FAMILIES)
def test_prefill_graph_has_no_data_dependent_shapes(family, opset, exported):
    """No NonZero: TensorRT cannot build data-dependent shapes with dynamic inputs (DESIGN.md section 3)."""
    import onnx

    graph = onnx.load(exported(family, opset) / "prefill.onnx", load_external_data=False).graph
    assert "NonZero" not in {node.op_type for node in graph.node}
