"""`vskip-compile --routable`, then `vskip run --plan` and `vskip validate --plan` on the
routable graph: the plan applied at run time equals its static compile; misuse is one line,
exit 2."""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr

import numpy as np
import pytest

from conftest import tiny_model
from helpers import FP32_ATOL, assert_close
from vskip_compile.cli import main
from vskip_compile.core.routing import routing_inputs
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt

PLAN = {"format": "vskip-plan", "version": 1, "model": {"family": "qwen2_vl", "num_layers": 4},
        "freeze_scope": "prefix_through_visual",
        "layers": {"0": "skip_visual_attention", "1": "skip_visual_ffn", "3": "freeze"}}
VISUAL_ROWS = "5:13,23:31"   # the image-token rows of [4, image, 8, image, 4]


def _fails_cleanly(capsys, argv, expect):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    assert expect in err, err


@pytest.fixture(scope="module")
def files(exported, tmp_path_factory):
    """The routable graph compiled by the CLI, its compile log and JSON, feeds and plans."""
    root = tmp_path_factory.mktemp("routable-cli")
    source = exported("qwen2_vl", 20) / "prefill.onnx"
    loaded = tiny_model("qwen2_vl")
    inputs = prepare_decoder_inputs(loaded.family, loaded.model,
                                    synthetic_prompt(loaded.family, loaded.config, [4, "image", 8, "image", 4]))
    np.savez(root / "feeds.npz", **{k: v.numpy() for k, v in inputs.feeds.items()})
    (root / "plan.json").write_text(json.dumps(PLAN))
    (root / "plan5.json").write_text(json.dumps({**PLAN, "model": {"num_layers": 5}}))
    routable = root / "routable.onnx"
    log = io.StringIO()
    with redirect_stderr(log):
        assert main(["compile", str(source), "--routable", "-o", str(routable), "--json", str(root / "c.json")]) == 0
    return {"root": root, "source": source, "routable": routable, "log": log.getvalue(),
            "report": json.loads((root / "c.json").read_text())}


def test_compile_routable_reports_every_layer(files):
    assert "route_rows: 4 layers changed (routed x4)" in files["log"]
    assert "routable" in files["log"].splitlines()[-1]
    report = files["report"]
    assert report["routable"] is True and report["plan"] is None
    assert report["row_inputs"] == routing_inputs(4)


def test_run_with_a_plan_equals_the_static_compile(files):
    root = files["root"]
    static = root / "static.onnx"
    assert main(["compile", str(files["source"]), "--plan", str(root / "plan.json"), "-o", str(static)]) == 0
    assert main(["run", str(files["routable"]), "--plan", str(root / "plan.json"), "--inputs", str(root / "feeds.npz"),
                 "--visual-rows", VISUAL_ROWS, "-o", str(root / "routed.npz")]) == 0
    assert main(["run", str(static), "--inputs", str(root / "feeds.npz"), "--visual-rows", VISUAL_ROWS,
                 "-o", str(root / "static.npz")]) == 0
    routed, want = np.load(root / "routed.npz"), np.load(root / "static.npz")
    assert sorted(routed.files) == sorted(want.files)
    for name in want.files:
        assert_close(routed[name], want[name], atol=FP32_ATOL, what=name)


def test_validate_feeds_the_plan_to_a_routable_graph(files, capsys):
    root = files["root"]
    assert main(["validate", str(files["routable"]), "--plan", str(root / "plan.json"), "--model", "tiny:qwen2_vl",
                 "--json", "-"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passed"] and report["routable"] is True
    assert report["plan"] == ["skip_visual_attention", "skip_visual_ffn", "full", "freeze"]
    assert report["freeze_scope"] == "prefix_through_visual"


@pytest.mark.parametrize("argv, expect", [
    (["run", "{routable}", "--inputs", "{feeds}", "--visual-rows", VISUAL_ROWS], "is routable: pass --plan"),
    (["run", "{routable}", "--inputs", "{feeds}", "--plan", "{plan}"], "--plan needs --visual-rows"),
    (["run", "{source}", "--inputs", "{feeds}", "--plan", "{plan}", "--visual-rows", VISUAL_ROWS],
     "not a routable graph"),
    (["run", "{routable}", "--inputs", "{feeds}", "--plan", "{plan5}", "--visual-rows", VISUAL_ROWS],
     "plan was made for a 5-layer decoder, but the model is a 4-layer qwen2_vl"),
    (["validate", "{routable}", "--plan", "{plan5}", "--model", "tiny:qwen2_vl"], "the plan has 5 layers"),
    (["compile", "{source}", "--routable", "--plan", "{plan}"], "--routable takes no --plan"),
    (["compile", "{source}", "--routable", "--causal-blocks", "4"], "--causal-blocks does not apply to a routable"),
    (["compile", "{source}", "--routable", "--report"], "a routable graph has no plan of its own"),
    (["compile", "{source}"], "give --plan PLAN.json, or --routable"),
    (["compile", "{routable}", "--routable"], "already compiled by vskip"),
])
def test_misuse_is_one_line(files, capsys, argv, expect):
    root = files["root"]
    paths = {"routable": files["routable"], "source": files["source"], "feeds": root / "feeds.npz",
             "plan": root / "plan.json", "plan5": root / "plan5.json"}
    argv = [a.format(**{k: str(v) for k, v in paths.items()}) for a in argv]
    out = root / "misuse.out"
    argv += ["-o", str(out) + (".npz" if argv[0] == "run" else ".onnx")] if argv[0] != "validate" else []
    _fails_cleanly(capsys, argv, expect)
    assert not list(root.glob("misuse.out*"))


def test_bad_rows_in_the_feeds_are_one_line(files, capsys):
    """The per-layer rows may come in the feeds instead of --plan; they are checked all the same."""
    root = files["root"]
    feeds = dict(np.load(root / "feeds.npz"))
    length = feeds["inputs_embeds"].shape[1]
    rows = {name: np.arange(length) for name in routing_inputs(4)}
    for bad, expect in ((np.array([2, 1]), "ascending and unique"), (np.array([0, length]), "rows must be in 0-")):
        np.savez(root / "bad.npz", **feeds, **{**rows, "vskip_layer1_ffn_rows": bad})
        _fails_cleanly(capsys, ["run", str(files["routable"]), "--inputs", str(root / "bad.npz"),
                                "-o", str(root / "bad_out.npz"), "--force"], expect)
    assert not (root / "bad_out.npz").exists()
