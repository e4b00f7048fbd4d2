"""The CLI end to end on tiny models: checkpoint export, validate, compile --report, flops."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import tiny_model
from helpers import feeds_numpy
from vskip_compile.cli import main
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.models.wrappers import PrefillDecoder, prefill_input_names
from vskip_compile.backends import open_session

PLAN = {"format": "vskip-plan", "version": 1, "model": {"family": "qwen2_vl", "num_layers": 4},
        "layers": {"1": "skip_visual_attention", "2": "skip_visual_ffn", "3": "freeze"}}


def test_export_from_a_checkpoint_directory(checkpoint_export):
    """The path real models take: save_pretrained -> vskip export DIR -> same numbers."""
    import torch

    loaded = tiny_model("qwen2_vl")
    checkpoint, export = checkpoint_export(processor=True)
    sidecar = json.loads((export / "vskip.json").read_text())
    assert sidecar["source"] == str(checkpoint) and sidecar["family"] == "qwen2_vl"
    prompt = synthetic_prompt(loaded.family, loaded.config, [3, "image", 4], seed=2)
    inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
    got = open_session(export / "prefill.onnx").run(feeds_numpy(inputs.feeds))
    with torch.no_grad():
        want = PrefillDecoder(loaded.family, loaded.model)(*(inputs.feeds[n] for n in prefill_input_names(loaded.family)))
    np.testing.assert_allclose(got["logits"], want[0].numpy(), atol=1e-4, rtol=0)


@pytest.fixture()
def compiled(exported, tmp_path):
    source = exported("qwen2_vl", 20) / "prefill.onnx"
    (tmp_path / "plan.json").write_text(json.dumps(PLAN))
    out = source.parent / f"cli-{tmp_path.name}.onnx"
    assert main(["compile", str(source), "--plan", str(tmp_path / "plan.json"), "-o", str(out), "--report",
                 "--rows", "32", "--visual-rows", "0:24"]) == 0
    yield source, out, tmp_path / "plan.json"
    for path in (out, out.with_suffix(".flops.json"), out.with_suffix(".flops.png")):
        path.unlink(missing_ok=True)


def test_compile_report_writes_json_and_plot(compiled, capsys):
    source, out, _ = compiled
    report = json.loads(out.with_suffix(".flops.json").read_text())
    assert report["workload"] == {"sequence_length": 32, "visual_rows": 24, "text_rows": 8, "visual_ranges": "0:24"}
    assert report["ideal_speedup"] == pytest.approx(report["vanilla"]["total"] / report["required"]["total"])
    assert report["executed_speedup"] == pytest.approx(report["vanilla"]["total"] / report["compiled"]["total"])
    assert report["required"]["plan"] == ["full", "skip_visual_attention", "skip_visual_ffn", "freeze"]
    assert report["ideal_speedup"] > 1
    assert out.with_suffix(".flops.png").read_bytes()[:4] == b"\x89PNG"


def test_validate_passes_on_the_compiled_graph_and_fails_on_a_mismatch(compiled, capsys):
    source, out, plan = compiled
    capsys.readouterr()
    assert main(["validate", str(out), "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["plan"] == ["full", "skip_visual_attention", "skip_visual_ffn", "freeze"]
    assert report["smallest_passing_atol"] <= 1e-4
    assert {o["name"] for o in report["outputs"]} >= {"logits", "present.3.value"}
    # the vanilla graph does not skip, so under the same plan the reference disagrees
    assert main(["validate", str(source), "--plan", str(plan)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_validate_the_live_rows_pytorch_run(compiled, capsys):
    """torch-skip stands where a graph session stands: the plan the graph records, live rows only."""
    _, out, _ = compiled
    capsys.readouterr()
    assert main(["validate", str(out), "--backend", "torch-skip", "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["backend"]["backend"] == "torch-skip"
    assert report["plan"] == ["full", "skip_visual_attention", "skip_visual_ffn", "freeze"]


def test_flops_compare(compiled, capsys):
    source, out, _ = compiled
    capsys.readouterr()
    assert main(["flops", str(source), "--compare", str(out), "--rows", "32", "--visual-rows", "0:24", "--json", "-"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["ideal_speedup"] == pytest.approx(data["vanilla"]["total"] / data["required"]["total"])
    assert data["executed_speedup"] == pytest.approx(data["vanilla"]["total"] / data["compiled"]["total"])
