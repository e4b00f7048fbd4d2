"""Calibration (vskip_compile/calibrate.py): the gains, the choices, the command.

The gains are held to an independent computation: the answer distributions of the model
run with ``skip_rows`` (only the live rows computed, another implementation of the plan
than the skip reference calibration uses) and a KL divergence written out here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import tiny_model
from vskip_compile.calibrate import CalibrationSet, OPTIONS, calibrate, flops_cut, merged
from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Action, Plan
from vskip_compile.models.export import describe
from vskip_compile.models.inputs import synthetic_prompt
from vskip_compile.models.skipping import skip_rows

FAMILY = "qwen2_vl"


@pytest.fixture(scope="module")
def tiny_set():
    loaded = tiny_model(FAMILY)
    image = loaded.family.image_token_id(loaded.config)
    batches, rows = [], []
    for seed, layout in ((3, [3, "image", 2]), (4, [2, "image", 4, "image", 1])):
        prompt = synthetic_prompt(loaded.family, loaded.config, layout, batch=2, seed=seed)
        inputs = {"input_ids": prompt.input_ids, "attention_mask": prompt.attention_mask, **prompt.pixels,
                  **prompt.model_kwargs}
        visual = prompt.input_ids == image
        batches.append((inputs, visual, torch.tensor([5, 7])))
        rows += [v.numpy() for v in visual]
    return loaded, CalibrationSet(batches, rows)


def _log_probs(loaded, samples, plan):
    out = []
    for inputs, visual, _ in samples.batches:
        with torch.no_grad(), skip_rows(loaded.family, loaded.model, plan, visual):
            logits = loaded.model(**inputs).logits[:, -1].double()
        out.append(torch.log_softmax(logits, -1))
    return out


def test_gains_are_the_kl_of_the_answer_distribution(tiny_set):
    loaded, samples = tiny_set
    dims = describe(loaded, 20, False, decode=False).dims()
    result = calibrate(loaded.family, loaded.model, dims, samples, "operators", target_cut=0.05)
    layers = len(loaded.family.decoder_layers(loaded.model))
    vanilla = _log_probs(loaded, samples, Plan.empty(layers))
    for layer in range(layers):
        for i, option in enumerate(OPTIONS):
            skipped = _log_probs(loaded, samples, Plan.from_layers(layers, {layer: option}))
            kl = sum(float((p.exp() * (p - q)).sum()) for p, q in zip(vanilla, skipped)) / samples.size
            # Same logits up to float32 rounding (calibration asks the LM head for the last
            # row only): measured 1e-7 relative on the KL.
            assert result.gains[layer, i] == pytest.approx(kl, rel=1e-4, abs=1e-12), (layer, option)
    # The last layer's visual outputs feed nothing the answer reads (its K/V come from its
    # input): skipping them is free. Every earlier one moves the answer a little.
    assert (result.gains[-1] == 0).all() and (result.gains[:-1] > 0).all()
    assert result.flops_cut >= 0.05 and result.flops_cut == pytest.approx(flops_cut(dims, result.plan, samples.visual_rows))


def test_vskip_skips_the_layers_of_lowest_gain(tiny_set):
    loaded, samples = tiny_set
    dims = describe(loaded, 20, False, decode=False).dims()
    result = calibrate(loaded.family, loaded.model, dims, samples, "vskip", layers=2)
    lowest = set(np.argsort(result.gains[:, 0])[:2].tolist())
    assert {i for i, a in enumerate(result.plan.actions) if a is Action.SKIP_ATTENTION} == lowest
    assert set(result.plan.actions) <= {Action.FULL, Action.SKIP_ATTENTION} and result.options == (Action.SKIP_ATTENTION,)
    assert result.forwards == 2 * (1 + 4 + 1), "vanilla, one per layer, the chosen plan: per batch"


def test_merging_options_keeps_what_was_skipped():
    plan = Plan.from_layers(3, {1: Action.SKIP_ATTENTION})
    assert merged(plan, 1, Action.SKIP_FFN).actions[1] is Action.FREEZE
    assert merged(plan, 1, Action.SKIP_ATTENTION) == plan
    assert merged(plan, 0, Action.FREEZE).actions == (Action.FREEZE, Action.SKIP_ATTENTION, Action.FULL)


def test_refusals(tiny_set):
    loaded, samples = tiny_set
    dims = describe(loaded, 20, False, decode=False).dims()
    for kwargs, expect in [(dict(method="vskip"), "--layers N or --retention R"),
                           (dict(method="vskip", layers=9), "the model has 4 layers"),
                           (dict(method="operators"), "needs --flops-cut"),
                           (dict(method="operators", target_cut=1.5), "needs --flops-cut"),
                           (dict(method="nope"), "unknown calibration method"),
                           (dict(method="vskip", retention=7.0), "--retention 7.0")]:
        with pytest.raises(VskipError, match=expect):
            calibrate(loaded.family, loaded.model, dims, samples, **kwargs)


# ------------------------------------------------------------------ --data: the model's own samples

def _data_files(tiny_set, tmp_path):
    """tiny_set's batches as --data files: the model's inputs and answer_ids."""
    _, samples = tiny_set
    files = []
    for i, (inputs, _, answers) in enumerate(samples.batches):
        path = tmp_path / f"calib{i}.npz"
        np.savez(path, answer_ids=answers.numpy(), **{k: v.numpy() for k, v in inputs.items()})
        files.append(path)
    return files


def test_data_files_calibrate_as_the_same_samples_in_memory(tiny_set, tmp_path, capsys):
    import json

    from vskip_compile.cli import main

    loaded, samples = tiny_set
    files = _data_files(tiny_set, tmp_path)
    want = calibrate(loaded.family, loaded.model, describe(loaded, 20, False, decode=False).dims(), samples,
                     "vskip", layers=2)
    argv = ["calibrate", f"tiny:{FAMILY}", "--method", "vskip", "--layers", "2", "-o", str(tmp_path / "plan.json"),
            "--json", "-"]
    for path in files:
        argv += ["--data", str(path)]
    assert main(argv) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["samples"] == 4 and got["data"] == [str(p) for p in files]
    assert np.allclose(got["gains"]["skip_visual_attention"], want.gains[:, 0], rtol=1e-9, atol=0)
    assert got["plan"] == [a.value for a in want.plan.actions]
    assert "--data (4 samples in 2 files)" in (tmp_path / "plan.json").read_text()
    # Without the modality ids (what tools/e2e_inputs.py writes), the family derives them
    # from input_ids, as vskip generate does: the same gains.
    for path in files:
        arrays = dict(np.load(path))
        assert arrays.pop("mm_token_type_ids") is not None
        np.savez(path, **arrays)
    assert main([*argv, "--force"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["gains"] == got["gains"]


def test_data_files_are_checked(tiny_set, tmp_path, capsys):
    from vskip_compile.cli import main

    good = _data_files(tiny_set, tmp_path)[0]
    arrays = dict(np.load(good))
    out = ["-o", str(tmp_path / "p.json"), "--layers", "1"]

    def refused(argv, expect):
        assert main(["calibrate", f"tiny:{FAMILY}", *argv, *out]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, err
        assert not (tmp_path / "p.json").exists()

    def saved(name, **change):
        path = tmp_path / name
        np.savez(path, **{k: v for k, v in {**arrays, **change}.items() if v is not None})
        return str(path)

    refused(["--data", saved("none.npz", answer_ids=None)], "needs answer_ids")
    refused(["--data", saved("big.npz", answer_ids=np.array([5, 10**9]))], "needs answer_ids, one token id in")
    refused(["--data", saved("pad.npz", attention_mask=np.pad(arrays["attention_mask"][:, 1:], ((0, 0), (0, 1))))],
            "pad on the left")
    refused(["--data", saved("odd.npz", surprise=np.zeros(2))], "the model takes no input surprise")
    refused(["--data", saved("text.npz", input_ids=np.full_like(arrays["input_ids"], 5))], "no prompt has an image")
    refused(["--data", str(good), "--task", "count"], "either as --task")
    refused([], "either as --task")
    refused(["--data", str(good), "--samples", "5"], "--samples go(es) with --task")
    refused(["--data", saved("grid.npz", image_grid_thw=arrays["image_grid_thw"] * 2)], "the model fails on these inputs")
