"""Graphs vskip did not export compile and equal the PyTorch skip reference.

Every family's tiny preset, from transformers' OnnxExporter (opset 20; tests/test_compile.py
covers qwen2_vl at 23) and from the legacy TorchScript exporter, compiled with a plan that
skips FFN, skips attention and freezes, then run on ONNX Runtime: the hidden state /
logits and every K/V output within the fp32 tolerance of the reference with the same
plan, on a two-image prompt other than the one traced. docs/foreign_exports.md has the
table this file checks, including the one pair whose exporter writes a broken graph.
"""

from __future__ import annotations

from collections import Counter

import onnx
import pytest
import torch

from conftest import FAMILIES, tiny_model
from foreign_exports import graph_feeds, legacy_export, text_model_kwargs, transformers_export
from helpers import assert_close, feeds_numpy
from vskip_compile.compile import compile_model
from vskip_compile.core.errors import VskipError
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.models.reference import skip_reference
from vskip_compile.models.wrappers import PrefillDecoder, output_names, prefill_input_names
from vskip_compile.core.plan import Action, Plan
from vskip_compile.backends import open_session
from vskip_compile.core.visual_rows import row_feeds, visual_rows_from_ids

EXPORTERS = ("transformers", "legacy")
TRANSFORMERS_OPSET = 20
# What the compiled graph must not add (DESIGN.md section 3); a source's own stay.
DATA_DEPENDENT = ("NonZero", "GatherND")


class ExporterError(Exception):
    """The exporter's own graph fails on ONNX Runtime or differs from PyTorch, before vskip."""


# Pairs whose exporter writes a broken graph (docs/foreign_exports.md has the details).
BROKEN_EXPORTS = {
    ("qwen3_vl", "legacy"): "the legacy exporter lowers DeepStack's h[visual_pos_masks, :] = x with index tensors "
                            "that do not broadcast: ONNX Runtime refuses its own graph ('Attempting to broadcast an "
                            "axis by a dimension other than 1. 3 by <seq>') on every prompt, the traced one included",
}
PAIRS = [pytest.param(f, e, marks=pytest.mark.xfail(strict=True, raises=ExporterError, reason=BROKEN_EXPORTS[f, e]))
         if (f, e) in BROKEN_EXPORTS else (f, e) for f in FAMILIES for e in EXPORTERS]


def _mixed_plan(layers: int) -> Plan:
    return Plan.from_layers(layers, {0: Action.SKIP_FFN, 1: Action.SKIP_ATTENTION, 2: Action.FREEZE,
                                     3: Action.FREEZE})


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """foreign(family, exporter) -> the exported graph, each exported once per module."""
    cache: dict[tuple[str, str], object] = {}
    root = tmp_path_factory.mktemp("foreign")

    def get(family: str, exporter: str):
        key = (family, exporter)
        if key not in cache:
            loaded = tiny_model(family)
            trace = prepare_decoder_inputs(loaded.family, loaded.model,
                                           synthetic_prompt(loaded.family, loaded.config, [3, "image", 4], seed=5))
            if exporter == "transformers":
                cache[key] = transformers_export(root / f"{family}-hf", trace.feeds, TRANSFORMERS_OPSET, family)
            else:
                cache[key] = legacy_export(root / f"{family}-legacy.onnx", trace.feeds, family)
        return cache[key]

    return get


def _prompt(loaded):
    prompt = synthetic_prompt(loaded.family, loaded.config, [2, "image", 3, "image", 5], seed=6)
    inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
    visual = visual_rows_from_ids(prompt.input_ids, loaded.family.image_token_id(loaded.config))
    return inputs, visual


def _source_feeds(source, loaded, exporter: str, feeds: dict) -> dict:
    if exporter == "transformers":
        return graph_feeds(source, loaded.family, feeds)
    graph_inputs = {i.name for i in onnx.load(str(source), load_external_data=False).graph.input}
    return {k: v for k, v in feeds.items() if k in graph_inputs}  # the legacy exporter drops unused inputs


def _reference(loaded, exporter: str, plan: Plan, feeds: dict, visual) -> dict[str, torch.Tensor]:
    """The graph's outputs by name, from PyTorch with ``plan``.

    The legacy graph has vskip's outputs (logits, present.*). transformers' exporter names
    the cache tensors after the cache layers' attributes (``past_key_values.layers.{i}.keys``)
    and traces sliding-window layers as full ones (exporter_dynamo's
    ``_patch_sliding_window_layer``), so its reference runs on the family's full cache,
    which keeps every row as present.* must; the scalar ``_sliding_window_tensor`` outputs
    this adds for Gemma3 are not in it (the caller compares them with the source graph).
    """
    rows = torch.from_numpy(visual).unsqueeze(0)
    with skip_reference(loaded.family, loaded.model, plan, rows), torch.no_grad():
        if exporter == "legacy":
            layers = loaded.text_config.num_hidden_layers
            out = PrefillDecoder(loaded.family, loaded.model)(*(feeds[n] for n in prefill_input_names(loaded.family)))
            return dict(zip(output_names(layers), out))
        out = loaded.text_model(**text_model_kwargs(loaded.family, feeds), use_cache=True,
                                past_key_values=loaded.family.new_cache(loaded.text_config))
    want = {"last_hidden_state": out.last_hidden_state}
    for i, layer in enumerate(out.past_key_values.layers):
        want[f"past_key_values.layers.{i}.keys"] = layer.keys
        want[f"past_key_values.layers.{i}.values"] = layer.values
    return want


def _run_source(source, loaded, exporter: str, graph_inputs: dict, feeds: dict, visual) -> dict:
    """The exporter's graph on ONNX Runtime, checked against PyTorch without a plan, so a
    later mismatch is vskip's and an exporter's own fault is reported as one."""
    try:
        got = open_session(source).run(graph_inputs)
    except VskipError as exc:
        raise ExporterError(str(exc)) from None
    want = _reference(loaded, exporter, Plan.empty(len(loaded.family.decoder_layers(loaded.model))), feeds, visual)
    for name, expected in want.items():
        try:
            assert_close(got[name], expected, what=f"the exporter's {name}")
        except AssertionError as exc:
            raise ExporterError(str(exc)) from None
    return got


@pytest.mark.parametrize("family, exporter", PAIRS)
def test_foreign_graph_compiles_and_matches_reference(family, exporter, foreign, tmp_path):
    loaded = tiny_model(family)
    source = foreign(family, exporter)
    inputs, visual = _prompt(loaded)
    feeds = feeds_numpy(_source_feeds(source, loaded, exporter, inputs.feeds))
    source_out = _run_source(source, loaded, exporter, feeds, inputs.feeds, visual)

    plan = _mixed_plan(len(loaded.family.decoder_layers(loaded.model)))
    out = tmp_path / "c.onnx"
    report = compile_model(source, plan, out)
    assert {change.index for change in report.pass_report("skip_visual_rows").layers} == {0, 1, 2, 3}
    before = Counter(n.op_type for n in onnx.load(str(source), load_external_data=False).graph.node)
    after = Counter(n.op_type for n in onnx.load(str(out), load_external_data=False).graph.node)
    for op in DATA_DEPENDENT:
        assert after[op] == before[op], f"{op}: {before[op]} in the source, {after[op]} compiled"

    session = open_session(out)
    rows = row_feeds(visual, [i.name for i in session.inputs if i.name.startswith("vskip_")])
    got = session.run({**feeds, **rows})
    want = _reference(loaded, exporter, plan, inputs.feeds, visual)
    assert len([n for n in want if n not in ("logits", "last_hidden_state")]) == 2 * len(plan.actions)
    # outputs no plan touches (Gemma3's _sliding_window_tensor) must pass through as they were
    want.update({name: source_out[name] for name in got if name not in want})
    assert set(got) == set(want)
    for name, value in got.items():
        assert_close(value, want[name], what=f"{family} / {exporter}: {name}")


def test_reference_differs_from_the_unskipped_model(foreign):
    """The comparison above can fail: on the DeepStack graph the plan changes the outputs
    far beyond the tolerance, so matching the reference means the plan was applied."""
    loaded = tiny_model("qwen3_vl")
    source = foreign("qwen3_vl", "transformers")
    inputs, visual = _prompt(loaded)
    full = open_session(source).run(feeds_numpy(graph_feeds(source, loaded.family, inputs.feeds)))
    skipped = _reference(loaded, "transformers", _mixed_plan(4), inputs.feeds, visual)
    with pytest.raises(AssertionError, match="max abs error"):
        assert_close(full["last_hidden_state"], skipped["last_hidden_state"], what="unskipped vs skipped")
