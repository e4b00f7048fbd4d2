"""`vskip bench --e2e`: whole generations per stage, on the export's graphs and in PyTorch.

Only the report's structure and its arithmetic are checked (no wall-clock thresholds):
every config is present with every stage, the first-token speedup is the ratio of the
medians, and its ideal follows the stated formula from the vanilla config's stages.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_model
from vskip_compile.cli import main
from vskip_compile.models.inputs import synthetic_prompt

PLAN = "vskip_compile/plans/example_tiny.json"


@pytest.fixture(scope="module")
def inputs_file(tmp_path_factory):
    loaded = tiny_model("qwen2_vl")
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 2], batch=1, seed=2)
    path = tmp_path_factory.mktemp("e2e") / "inputs.npz"
    np.savez(path, input_ids=prompt.input_ids.numpy(), attention_mask=prompt.attention_mask.numpy(),
             **{k: v.numpy() for k, v in prompt.pixels.items()})
    return path


def test_e2e_report(exported, inputs_file, tmp_path, capsys):
    out = tmp_path / "e2e.json"
    model = exported("qwen2_vl") / "prefill.onnx"
    assert main(["bench", str(model), "--e2e", "--inputs", str(inputs_file), "--plan", PLAN, "--max-new-tokens", "4",
                 "--warmup", "0", "--rounds", "2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    result = json.loads(out.read_text())
    names = [row["config"] for row in result["configs"]]
    assert names == ["ort-cpu:vanilla", "ort-cpu:example_tiny", "torch:vanilla", "torch:example_tiny"]
    for row in result["configs"]:
        assert row["first_token_s"] > 0 and row["decode_tokens_per_s"] > 0 and row["total_s"] >= row["first_token_s"]
    rows = {row["config"]: row for row in result["configs"]}
    for speedup in result["speedups"]:
        backend = speedup["config"].split(":")[0]
        vanilla, planned = rows[f"{backend}:vanilla"], rows[speedup["config"]]
        assert speedup["first_token_speedup"] == pytest.approx(vanilla["first_token_s"] / planned["first_token_s"])
        stages = vanilla["vision_s"] + vanilla["prefill_s"]
        assert speedup["ideal_first_token_speedup"] == pytest.approx(
            stages / (vanilla["vision_s"] + vanilla["prefill_s"] / speedup["ideal_prefill_speedup"]))
        assert "processor_s" not in vanilla, "pre-tokenized inputs have no processor stage"
        assert speedup["ideal_prefill_speedup"] > 1
    assert "first token" in table and "of it" in table
    assert not [p for p in model.parent.iterdir() if p.name.startswith(".")], "the hidden compiled graphs are removed"


def test_e2e_through_the_processor(exported, tmp_path):
    """--prompt/--image: the processor runs before every generation; its seconds come
    first and count in the first token and the total, on both backends."""
    from PIL import Image

    image = tmp_path / "image.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "e2e.json"
    model = exported("qwen2_vl") / "prefill.onnx"
    assert main(["bench", str(model), "--e2e", "--prompt", "w5 <|vision_start|><|image_pad|><|vision_end|> w7",
                 "--image", str(image), "--max-new-tokens", "3", "--warmup", "0", "--rounds", "1",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["prompt"]["through_processor"] and result["prompt"]["visual_rows"] == 35
    for row in result["configs"]:
        assert row["processor_s"] > 0, row["config"]
        stages = row["processor_s"] + row["vision_s"] + row["prefill_s"]
        assert row["first_token_s"] == pytest.approx(stages, rel=1e-6), row["config"]
        assert row["total_s"] == pytest.approx(row["first_token_s"] + row["decode_s"], rel=1e-6), row["config"]


def test_e2e_refusals(exported, inputs_file, capsys):
    model = str(exported("qwen2_vl") / "prefill.onnx")
    for argv, expect in [
        (["--e2e"], "--e2e needs the prompt either as --inputs"),
        (["--e2e", "--inputs", str(inputs_file), "--prompt", "w1"], "--e2e needs the prompt either as --inputs"),
        (["--e2e", "--inputs", str(inputs_file), "--rows", "64"], "--rows do(es) not apply with --e2e"),
        (["--inputs", str(inputs_file)], "--inputs, --prompt and --image go with --e2e"),
        (["--e2e", "--inputs", str(inputs_file), "--backend", "torch-skip"], "--e2e runs on"),
    ]:
        assert main(["bench", model, *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err
