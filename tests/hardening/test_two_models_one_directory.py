"""Any number of compiled models can live in one directory, each with its own weights.

Property: random plans for two different models (a tiny Qwen2-VL and a tiny LLaVA, each
exported with its weights in external data) compiled into one shared directory, then
run; each must equal its own PyTorch skip reference, fp32 within 1e-4, logits and every
K/V. Before owned weight files, the second compile replaced the first one's weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tiny_model
from hostile import with_external_data
from vskip_compile.compile import compile_model
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.core.plan import Action, FreezeScope, Plan
from vskip_compile.core.visual_rows import visual_rows_from_ids

import test_compile as reference_tests

MODELS = ("qwen2_vl", "llava")


@pytest.fixture(scope="module")
def sources(exported, tmp_path_factory):
    root = tmp_path_factory.mktemp("two-models")
    return {family: with_external_data(exported(family, 20) / "prefill.onnx", root / family) for family in MODELS}


@pytest.fixture(scope="module")
def prompts():
    found = {}
    for family in MODELS:
        loaded = tiny_model(family)
        prompt = synthetic_prompt(loaded.family, loaded.config, [2, "image", 3, "image", 4], seed=11)
        found[family] = (prompt, prepare_decoder_inputs(loaded.family, loaded.model, prompt))
    return found


def _plans(num_layers: int):
    return st.builds(Plan, st.tuples(*[st.sampled_from(list(Action))] * num_layers), st.sampled_from(list(FreezeScope)))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan_a=_plans(4), plan_b=_plans(4))
def test_two_models_compiled_into_one_directory_each_match_their_reference(sources, prompts, tmp_path_factory,
                                                                           plan_a, plan_b):
    shared = tmp_path_factory.mktemp("shared")
    outputs = {}
    for family, plan, name in (("qwen2_vl", plan_a, "first.onnx"), ("llava", plan_b, "second.onnx")):
        outputs[family] = (shared / name, plan)
        compile_model(sources[family], plan, shared / name)
    assert sorted(p.name for p in shared.iterdir()) == ["first.onnx", "first.onnx.data",
                                                         "second.onnx", "second.onnx.data"]
    for family, (path, plan) in outputs.items():
        loaded = tiny_model(family)
        prompt, inputs = prompts[family]
        visual = visual_rows_from_ids(prompt.input_ids, loaded.family.image_token_id(loaded.config))
        got = reference_tests.run_compiled(path, inputs.feeds, visual)
        want = reference_tests.reference(loaded, plan, inputs, visual)
        reference_tests.compare(got, want, prompt.attention_mask, f"{family} in a shared directory")
    assert not np.isnan(got["logits"]).any()
