"""The sidecar's one reader: every field checked, every failure one line naming the file."""

from __future__ import annotations

import json

import pytest

from vskip_compile.core.errors import VskipError
from vskip_compile.core.sidecar import GraphEntry, Sidecar, load_sidecar_file, parse_sidecar, read_sidecar

GOOD = {"format": "vskip-export", "version": 1, "family": "qwen2_vl", "source": "tiny:qwen2_vl", "seed": 0,
        "num_layers": 4, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
        "intermediate_size": 128, "vocab_size": 1000, "image_token_id": 7, "position_rank": 3, "opset": 20,
        "logits": "last", "prefill": {"file": "prefill.onnx", "inputs": ["inputs_embeds"], "outputs": ["logits"]}}


def test_round_trip_through_the_one_writer(tmp_path):
    (tmp_path / "vskip.json").write_text(parse_sidecar(GOOD, "x").to_json())
    sidecar = read_sidecar(tmp_path / "prefill.onnx")
    assert json.loads((tmp_path / "vskip.json").read_text()) == GOOD
    assert sidecar.num_layers == 4 and sidecar.prefill == GraphEntry("prefill.onnx", ("inputs_embeds",), ("logits",))
    assert sidecar.path == str(tmp_path / "vskip.json")


def test_no_sidecar_is_none(tmp_path):
    assert read_sidecar(tmp_path / "prefill.onnx") is None


@pytest.mark.parametrize("change, message", [
    ({"num_layers": 0}, "'num_layers' must be a positive integer"),
    ({"hidden_size": "64"}, "'hidden_size' must be a positive integer"),
    ({"head_dim": True}, "'head_dim' must be a positive integer"),
    ({"num_layers": 2**30}, "'num_layers' must be a positive integer"),
    ({"seed": 1.5}, "'seed' must be an integer"),
    ({"source": 7}, "'source' must be a string"),
    ({"logits": "some"}, "'logits' must be \"last\" or \"all\""),
    ({"dtype": "float64"}, "'dtype' must be one of float32, float16, bfloat16"),
    ({"dtype": 16}, "'dtype' must be a string"),
    ({"format": "onnx"}, "not a vskip export sidecar"),
    ({"version": 9}, "sidecar version 9 is not supported"),
    ({"surprise": 1}, "unknown sidecar field(s) 'surprise'"),
    ({"prefill": {"file": "p.onnx"}}, "'prefill' must be an object with file, inputs and outputs"),
    ({"prefill": {"file": "p.onnx", "inputs": "x", "outputs": []}}, "inputs and outputs lists of names"),
])
def test_bad_fields_are_one_line(tmp_path, change, message):
    path = tmp_path / "vskip.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(VskipError) as caught:
        load_sidecar_file(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


@pytest.mark.parametrize("content, message", [("[1, 2]", "must be a JSON object"), ("{nope", "malformed JSON at line 1")])
def test_not_a_sidecar(tmp_path, content, message):
    (tmp_path / "vskip.json").write_text(content)
    with pytest.raises(VskipError, match=message):
        read_sidecar(tmp_path / "prefill.onnx")


def test_require_names_what_is_missing():
    sidecar = Sidecar(num_layers=4, path="hand.json")
    assert sidecar.require(["num_layers"]) is sidecar
    with pytest.raises(VskipError, match=r"hand.json: the sidecar lacks hidden_size, head_dim"):
        sidecar.require(["num_layers", "hidden_size", "head_dim"])


def test_dtype_is_read_and_defaults_to_float32():
    assert parse_sidecar(GOOD, "x").float_type == "float32"  # sidecars before typed exports
    typed = parse_sidecar({**GOOD, "dtype": "bfloat16"}, "x")
    assert typed.float_type == "bfloat16" and json.loads(typed.to_json())["dtype"] == "bfloat16"


def test_runtime_fields_are_checked(tmp_path):
    from vskip_compile.core.sidecar import parse_sidecar

    good = {"embedding": "embedding.safetensors", "config": "config.json", "eos_token_ids": [2],
            "special_token_ids": [300, 301], "processor": ["tokenizer.json"],
            "vision": {"file": "vision.onnx", "inputs": ["pixel_values"], "outputs": ["image_features"]}}
    sidecar = parse_sidecar(good, "s")
    assert sidecar.eos_token_ids == (2,) and sidecar.processor == ("tokenizer.json",)
    assert parse_sidecar(json.loads(sidecar.to_json()), "s") == sidecar
    for field, value, message in [
        ("embedding", "../outside.safetensors", "must be a file name beside the sidecar"),
        ("config", "/etc/passwd", "must be a file name beside the sidecar"),
        ("processor", ["ok.json", "sub/dir.json"], "'processor' entry must be a file name"),
        ("eos_token_ids", [2, -1], "'eos_token_ids' must be a list of token ids"),
        ("special_token_ids", "300", "'special_token_ids' must be a list of token ids"),
        ("vision", {"file": "../v.onnx", "inputs": [], "outputs": []}, "'vision' file must be a file name"),
    ]:
        with pytest.raises(VskipError, match=message):
            parse_sidecar({**good, field: value}, "s")
