"""`vskip eval` on the trained testbed: PyTorch and the compiled ONNX graphs agree answer
for answer (fp32), with one plan, with a routable prefill fed it, and with one plan per
question type; retention and FLOPs cut are what the answers and the formula give.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vskip_compile.cli import main
from vskip_compile.core.plan import Action, Plan, to_json
from vskip_compile.testbed import VQA
from vskip_compile.testbed.tasks import QUESTION_TYPES

SAMPLES = "6"  # per question type: 24 prompts per run


@pytest.fixture(scope="module")
def testbed_export(tmp_path_factory):
    """The testbed exported whole, and a routable compile of its prefill."""
    from vskip_compile.compile import compile_model

    root = tmp_path_factory.mktemp("testbed")
    assert main(["export", VQA, "-o", str(root / "export")]) == 0
    compile_model(root / "export" / "prefill.onnx", None, root / "routable.onnx", routable=True)
    return root / "export", root / "routable.onnx"


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    """Two plans that change answers on the testbed: early freezes, and late skips."""
    root = tmp_path_factory.mktemp("plans")
    early = Plan.from_layers(8, {0: Action.FREEZE, 1: Action.FREEZE, 2: Action.SKIP_ATTENTION})
    late = Plan.from_layers(8, {5: Action.SKIP_ATTENTION, 6: Action.SKIP_FFN, 7: Action.FREEZE})
    paths = {}
    for name, plan in (("early", early), ("late", late)):
        paths[name] = root / f"{name}.json"
        paths[name].write_text(to_json(plan, family="llava"))
    return paths


def _eval(tmp_path, *argv) -> dict:
    out = tmp_path / "eval.json"
    assert main(["eval", *map(str, argv), "--samples", SAMPLES, "--json", str(out), "--force"]) == 0
    return json.loads(out.read_text())


def test_onnx_and_pytorch_agree_answer_for_answer(testbed_export, plans, tmp_path):
    export, routable = testbed_export
    torch_ = _eval(tmp_path, VQA, "--plan", plans["early"])
    graphs = _eval(tmp_path, export, "--plan", plans["early"])
    routed = _eval(tmp_path, export, "--compiled", routable, "--plan", plans["early"])
    assert torch_["backend"] == "torch" and graphs["backend"] == "ort-cpu"
    assert graphs["vanilla_predictions"] == torch_["vanilla_predictions"]
    assert graphs["plan_predictions"] == routed["plan_predictions"] == torch_["plan_predictions"]
    assert torch_["plan_predictions"] != torch_["vanilla_predictions"], "the plan must change answers to test anything"
    answers = np.array(torch_["answers"])
    scores = torch_["question_types"]
    for kind in QUESTION_TYPES:
        assert scores[kind]["vanilla_accuracy"] >= 0.9 - 1e-9, (kind, scores[kind])   # the testbed's own bar
    vanilla = (np.array(torch_["vanilla_predictions"]) == answers).mean()
    planned = (np.array(torch_["plan_predictions"]) == answers).mean()
    assert scores["all"]["vanilla_accuracy"] == pytest.approx(vanilla)
    assert scores["all"]["retention"] == pytest.approx(planned / vanilla)
    assert 0 < scores["all"]["flops_cut"] < 1


def test_per_task_routing(testbed_export, plans, tmp_path):
    """--plan-for: each question type through its own plan, on the reference and through
    the routable graph; equal to running each type's plan alone."""
    export, routable = testbed_export
    routes = [f"{kind}={plans['early' if kind in ('color', 'count') else 'late']}" for kind in QUESTION_TYPES]
    flags = [a for route in routes for a in ("--plan-for", route)]
    torch_ = _eval(tmp_path, VQA, *flags)
    routed = _eval(tmp_path, export, "--compiled", routable, *flags)
    assert routed["plan_predictions"] == torch_["plan_predictions"]
    early = _eval(tmp_path, VQA, "--plan", plans["early"])
    late = _eval(tmp_path, VQA, "--plan", plans["late"])
    assert early["plan_predictions"] != late["plan_predictions"], "the two plans must differ to test the routing"
    for i, prediction in enumerate(torch_["plan_predictions"]):
        kind = QUESTION_TYPES[i % len(QUESTION_TYPES)]  # samples() draws the types in turn
        expected = early if kind in ("color", "count") else late
        assert prediction == expected["plan_predictions"][i], (i, kind)
    cuts = {kind: torch_["question_types"][kind]["flops_cut"] for kind in QUESTION_TYPES}
    assert cuts["color"] == pytest.approx(early["question_types"]["color"]["flops_cut"])
    assert cuts["digit"] == pytest.approx(late["question_types"]["digit"]["flops_cut"])


def test_refusals(testbed_export, plans, tmp_path, capsys):
    export, routable = testbed_export

    def refused(argv, expect):
        assert main(["eval", *map(str, argv)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()  # progress lines may come first
        errors = [line for line in lines if "error:" in line]
        assert errors == lines[-1:] and expect in errors[0], lines

    refused([VQA, "--backend", "ort-cpu"], "a checkpoint runs in PyTorch")
    refused([VQA, "--compiled", routable], "--compiled needs an export directory")
    refused(["tiny:llava"], "a tiny preset has random weights")
    refused([export, "--plan-for", f"color={plans['early']}"], "no plan for count")
    refused([export, "--plan-for", f"shape={plans['early']}"], "not a question type")
    refused([export, "--compiled", export / "prefill.onnx", "--plan", plans["early"]], "not a routable graph")
    refused([VQA, "--plan", "vskip_compile/plans/example_tiny.json"], "plan was made for")
    refused([VQA, "--type", "shape"], "--type shape: not a question type")
    refused([VQA, "--samples", "10000000000"], "--samples must be in 1-100000")
    sidecar = export / "vskip.json"
    before = sidecar.read_bytes()
    assert main(["eval", str(export), "--json", str(sidecar), "--force"]) == 2, "an input is never an output"
    assert sidecar.read_bytes() == before and "vskip.json" in capsys.readouterr().err
    assert main(["calibrate", VQA, "--task", "digit", "--samples", "0", "--layers", "1", "-o",
                 str(tmp_path / "p.json")]) == 2 and not (tmp_path / "p.json").exists()
    assert "--samples must be in 1-100000" in capsys.readouterr().err
    assert main(["calibrate", VQA, "--task", "digit", "--batch-size", "0", "--layers", "1", "-o",
                 str(tmp_path / "p.json")]) == 2 and not (tmp_path / "p.json").exists()
    assert "--batch-size in 1-4096" in capsys.readouterr().err  # an explicit 0 is refused, not replaced
    only = _eval(tmp_path, VQA, "--type", "digit", "--plan", plans["late"])
    assert set(only["question_types"]) == {"digit", "all"} and len(only["answers"]) == int(SAMPLES)
