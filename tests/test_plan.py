"""Plan files: vskip's own format, OpSkip policy files, and the errors a bad file gives."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, FreezeScope, Plan, PlanError, load_plan, to_json

F, A, N, Z = Action.FULL, Action.SKIP_ATTENTION, Action.SKIP_FFN, Action.FREEZE

# In the shape of OpSkip's configs/llava/preset20.json (zayan-l/OpSkip, commit 466fb31):
# the only released preset whose three lists are all non-empty.
OPSKIP_LLAVA_PRESET20 = """{
  "model_family": "llava",
  "checkpoint": "liuhaotian/llava-v1.5-7b",
  "num_layers": 32,
  "preset": 20,
  "budget": 20,
  "attention_only": [
    2
  ],
  "ffn_only": [
    0,
    3,
    5,
    16,
    17,
    18,
    19,
    20,
    21,
    22,
    23
  ],
  "freeze": [
    24,
    25,
    26,
    27,
    28,
    29,
    30,
    31
  ],
  "freeze_scope": "visual",
  "mlp_chunk_size": 0,
  "source": "Eval/scripts/lmms/llava/llava15-frozen2.sh",
  "use_triton": false
}
"""
# Its actions, spelled out by hand: ffn_only keeps only the FFN (skip visual attention),
# attention_only keeps only attention (skip visual FFN), freeze skips both.
LLAVA_PRESET20_ACTIONS = (A, F, N, A, F, A) + (F,) * 10 + (A,) * 8 + (Z,) * 8

# The same policy in vskip's format, written by hand.
VSKIP_LLAVA_PRESET20 = {
    "format": "vskip-plan", "version": 1,
    "model": {"family": "llava", "num_layers": 32},
    "layers": {"0": "skip_visual_attention", "2": "skip_visual_ffn", "3": "skip_visual_attention",
               "5": "skip_visual_attention", "16-23": "skip_visual_attention", "24-31": "freeze"},
}


def write(tmp_path, content, name="plan.json"):
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def vskip(layers=None, num_layers=8, **extra):
    doc = {"format": "vskip-plan", "version": 1,
           "model": {"family": "qwen2_vl", "num_layers": num_layers}, "layers": layers or {}}
    doc.update(extra)
    return doc


def opskip(**fields):
    doc = {"model_family": "qwen3_vl", "num_layers": 8, "attention_only": [], "ffn_only": [1],
           "freeze": [6, 7], "freeze_scope": "visual"}
    doc.update(fields)
    return {k: v for k, v in doc.items() if v is not None}


# ------------------------------------------------------------------------------ vskip format

def test_vskip_plan_from_the_design_example(tmp_path):
    doc = {"format": "vskip-plan", "version": 1, "model": {"family": "qwen2_vl", "num_layers": 24},
           "freeze_scope": "visual",
           "layers": {"0-1": "full", "2": "skip_visual_attention", "4": "skip_visual_attention",
                      "17-23": "freeze"}}
    plan, info = load_plan(write(tmp_path, doc))
    assert plan.actions == (F, F, A, F, A) + (F,) * 12 + (Z,) * 7
    assert plan.freeze_scope is FreezeScope.VISUAL
    assert (info.format, info.family, info.num_layers) == ("vskip-plan", "qwen2_vl", 24)


@pytest.mark.parametrize("plan", [
    Plan.empty(5),
    Plan((A, A, F, N, Z, Z, Z)),
    Plan((Z,) * 3 + (N,), FreezeScope.PREFIX_THROUGH_VISUAL),
    Plan((N, A, N, A)),
])
@pytest.mark.parametrize("family", ["qwen2_vl", None])
def test_round_trip(tmp_path, plan, family):
    text = to_json(plan, family=family, description="round trip")
    loaded, info = load_plan(write(tmp_path, text))
    assert loaded == plan
    assert (info.family, info.num_layers) == (family, plan.num_layers)
    assert info.metadata == {"description": "round trip"}
    assert to_json(loaded, family=family, description="round trip") == text


def test_writer_folds_runs_into_ranges_and_leaves_full_layers_out():
    doc = json.loads(to_json(Plan((F, A, A, A, F, Z, N, N))))
    assert doc["layers"] == {"1-3": "skip_visual_attention", "5": "freeze", "6-7": "skip_visual_ffn"}
    assert "family" not in doc["model"]


def test_plan_dict_without_family_fits_any_model():
    plan, info = load_plan({"format": "vskip-plan", "version": 1, "model": {"num_layers": 3},
                            "layers": {"2": "freeze"}})
    assert plan.actions == (F, F, Z)
    info.check_model("gemma3", 3)
    with pytest.raises(PlanError, match="3-layer decoder.*4-layer gemma3"):
        info.check_model("gemma3", 4)


# ------------------------------------------------------------------------------ OpSkip format

def test_opskip_policy_actions(tmp_path):
    plan, info = load_plan(write(tmp_path, OPSKIP_LLAVA_PRESET20))
    assert plan.actions == LLAVA_PRESET20_ACTIONS
    assert plan.freeze_scope is FreezeScope.VISUAL
    assert (info.format, info.family, info.num_layers) == ("opskip", "llava", 32)
    assert info.metadata["checkpoint"] == "liuhaotian/llava-v1.5-7b"
    assert info.metadata["budget"] == 20


def test_opskip_prefix_scope_and_qwen25_fields(tmp_path):
    # An older stored configs/llava/preset20.json says prefix_through_visual and has no
    # use_triton; the Qwen2.5-VL files add rmsnorm_backend.
    doc = json.loads(OPSKIP_LLAVA_PRESET20)
    doc["freeze_scope"] = "prefix_through_visual"
    del doc["use_triton"]
    doc["rmsnorm_backend"] = "torch"
    plan, info = load_plan(write(tmp_path, doc))
    assert plan.freeze_scope is FreezeScope.PREFIX_THROUGH_VISUAL
    assert plan.actions == LLAVA_PRESET20_ACTIONS
    assert info.metadata["rmsnorm_backend"] == "torch"


def test_opskip_lists_are_optional():
    plan, _ = load_plan({"model_family": "qwen2_5_vl", "num_layers": 3, "freeze": [1]})
    assert plan == Plan((F, Z, F))


def test_both_formats_give_the_same_plan(tmp_path):
    from_opskip, _ = load_plan(write(tmp_path, OPSKIP_LLAVA_PRESET20, "opskip.json"))
    from_vskip, _ = load_plan(write(tmp_path, VSKIP_LLAVA_PRESET20, "vskip.json"))
    assert from_opskip == from_vskip
    # And an OpSkip policy survives conversion to vskip's format.
    converted, info = load_plan(json.loads(to_json(from_opskip, family="llava")))
    assert converted == from_opskip and info.family == "llava"


# ------------------------------------------------------------------------------ errors

ERRORS = {
    # name: (file content, words the message must contain)
    "malformed JSON": ('{"format": "vskip-plan", "version": 1,', ["malformed JSON", "line 1"]),
    "not an object": ("[1, 2]", ["must be a JSON object", "array"]),
    "neither format": ({"layers": {"1": "freeze"}}, ["not a plan", "format"]),
    "unknown format": (vskip(format="vskip"), ["unknown plan format 'vskip'"]),
    "newer version": (vskip(version=2), ["version 2 is not supported"]),
    "version type": (vskip(version="1"), ["'version' must be an integer", "string"]),
    "num_layers type": (vskip(num_layers="24"), ["model.num_layers must be an integer", "string"]),
    "num_layers bool": (opskip(num_layers=True), ["'num_layers' must be an integer", "boolean"]),
    "num_layers zero": (vskip(num_layers=0), ["model.num_layers must be an integer in 1-4096"]),
    "layers type": (vskip(layers=["freeze"]), ["'layers' must be an object", "array"]),
    "action type": (vskip({"1": 3}), ["layers['1'] must be a string", "integer"]),
    "family type": ({**vskip(), "model": {"family": 2, "num_layers": 4}}, ["model.family must be a string"]),
    "list type": (opskip(ffn_only="2"), ["'ffn_only' must be an array", "string"]),
    "list item type": (opskip(ffn_only=[1, "2"]), ["ffn_only[1] must be an integer", "string"]),
    "list item bool": (opskip(freeze=[True]), ["freeze[0] must be an integer", "boolean"]),
    "scope type": (opskip(freeze_scope=1), ["'freeze_scope' must be a string"]),
    "use_triton type": (opskip(use_triton="no"), ["'use_triton' must be a boolean"]),
    "negative chunk": (opskip(mlp_chunk_size=-1), ["'mlp_chunk_size' must be >= 0"]),
    "unknown vskip field": (vskip(layer={}), ["unknown field(s) 'layer'", "a vskip plan"]),
    "unknown model field": ({**vskip(), "model": {"num_layers": 4, "layers": 4}},
                            ["unknown field(s) 'layers'", "'model'"]),
    "unknown opskip field": (opskip(ffn_skip=[2]), ["unknown field(s) 'ffn_skip'", "OpSkip policy"]),
    "unknown action": (vskip({"1": "skip_attention"}), ["unknown action 'skip_attention'",
                                                        "skip_visual_attention"]),
    "opskip name as action": (vskip({"1": "ffn_only"}), ["unknown action 'ffn_only'",
                                                         "means 'skip_visual_attention'"]),
    "unknown scope": (vskip(freeze_scope="prefix"), ["unknown freeze_scope 'prefix'"]),
    "unknown opskip scope": (opskip(freeze_scope="text"), ["unknown freeze_scope 'text'"]),
    "duplicate key": ('{"format": "vskip-plan", "version": 1, "model": {"num_layers": 4},'
                      ' "layers": {"3": "freeze", "3": "full"}}', ["'3' appears twice"]),
    "duplicate opskip list": ('{"model_family": "llava", "num_layers": 4, "freeze": [1],'
                              ' "freeze": [2]}', ["'freeze' appears twice"]),
    "overlapping ranges": (vskip({"2-5": "freeze", "4": "full"}), ["layer 4 is listed twice",
                                                                  "'2-5'", "'4'"]),
    "same layer spelled twice": (vskip({"3": "freeze", "03": "freeze"}), ["layer 3 is listed twice"]),
    "layer in two lists": (opskip(ffn_only=[5], freeze=[5, 6]), ["layer 5 is listed twice",
                                                                "'ffn_only'", "'freeze'"]),
    "layer twice in one list": (opskip(freeze=[6, 6]), ["layer 6 is listed twice"]),
    "layer out of range": (vskip({"8": "freeze"}), ["'8' is out of range", "0-7"]),
    "range out of range": (vskip({"6-9": "freeze"}), ["'6-9' is out of range"]),
    "opskip out of range": (opskip(freeze=[8]), ["freeze[0]: layer 8 is out of range", "0-7"]),
    "opskip negative": (opskip(ffn_only=[-1]), ["layer -1 is out of range"]),
    "backwards range": (vskip({"5-3": "freeze"}), ["'5-3' ends before it starts", "3-5"]),
    "bad layer key": (vskip({"a-b": "freeze"}), ["layer key 'a-b'", "17-23"]),
    "negative layer key": (vskip({"-1": "freeze"}), ["layer key '-1'"]),
    "vskip missing num_layers": ({**vskip(), "model": {"family": "qwen2_vl"}},
                                 ["missing required field model.num_layers"]),
    "vskip missing model": ({"format": "vskip-plan", "version": 1, "layers": {}},
                            ["missing required field 'model'"]),
    "opskip missing num_layers": (opskip(num_layers=None), ["missing required field 'num_layers'"]),
    "opskip missing family": (opskip(model_family=None), ["missing required field 'model_family'"]),
    "budget mismatch": (opskip(budget=4), ["'budget' is 4", "lists 3 layers"]),
}


@pytest.mark.parametrize("name", list(ERRORS))
def test_bad_plan_file_says_what_is_wrong(tmp_path, name):
    content, words = ERRORS[name]
    path = write(tmp_path, content)
    with pytest.raises(PlanError) as caught:
        load_plan(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    assert "\n" not in message


def test_plan_error_is_a_user_error(tmp_path):
    with pytest.raises(VskipError, match="no such file"):
        load_plan(tmp_path / "missing.json")


def test_dict_errors_name_the_dict():
    with pytest.raises(PlanError, match=r"^<dict>: layer 2 is listed twice"):
        load_plan(opskip(ffn_only=[2], attention_only=[2]))
    with pytest.raises(PlanError, match=r"^<dict>: layer key 2 is neither"):
        load_plan(vskip({2: "freeze"}))


def test_check_model_refuses_a_mismatched_plan(tmp_path):
    path = write(tmp_path, OPSKIP_LLAVA_PRESET20)
    _, info = load_plan(path)
    info.check_model("llava", 32)
    with pytest.raises(PlanError) as caught:
        info.check_model("llava", 40)
    assert str(caught.value).startswith(f"{path}: ")
    assert "32-layer llava" in str(caught.value) and "40-layer llava" in str(caught.value)
    with pytest.raises(PlanError, match="32-layer llava.*32-layer qwen2_vl"):
        info.check_model("qwen2_vl", 32)


# ------------------------------------------------------------------------------ shipped plans

def shipped(name):
    return resources.files("vskip_compile") / "plans" / name


def test_example_tiny_plan():
    plan, info = load_plan(shipped("example_tiny.json"))
    assert plan.actions == (F, A, N, Z)
    assert (info.format, info.family) == ("vskip-plan", "qwen2_vl")
    info.check_model("qwen2_vl", 4)


def test_example_tiny_plan_fits_the_tiny_preset():
    from vskip_compile.models.family import get_family

    _, info = load_plan(shipped("example_tiny.json"))
    config = get_family("qwen2_vl").tiny_config()
    info.check_model("qwen2_vl", config.get_text_config().num_hidden_layers)


def test_opskip_qwen3vl8b_preset20():
    plan, info = load_plan(shipped("opskip_qwen3vl8b_preset20.json"))
    # OpSkip's configs/qwen3_vl/preset20.json lists ffn_only 2, 4, 17, 18, 20-23 (not 19)
    # and freeze 24-35: 8 + 12 = its budget of 20 selected layers.
    skip_attention = {2, 4, 17, 18, 20, 21, 22, 23}
    expected = tuple(A if i in skip_attention else Z if i >= 24 else F for i in range(36))
    assert plan.actions == expected
    assert plan.freeze_scope is FreezeScope.VISUAL
    assert (info.format, info.family, info.num_layers) == ("opskip", "qwen3_vl", 36)
    assert info.metadata["budget"] == 20 and info.metadata["checkpoint"] == "Qwen/Qwen3-VL-8B-Instruct"
