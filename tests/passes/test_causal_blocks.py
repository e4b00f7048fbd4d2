"""passes/causal_blocks.py: full-query attention cores cut into causal query chunks.

Numerics: every family at both opsets, a mixed plan and the empty one, one-image prompts
and a left-padded batch of two, against the PyTorch skip reference (fp32 1e-4 on the
logits and every real row of every K/V). Gemma3's masks are graph inputs, so nothing is
proven there and its graph must come out unblocked. The proof's near misses are tested
on small graphs built here.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from conftest import FAMILIES, tiny_model
from helpers import feeds_numpy
from test_compile import LAYOUTS, compare, reference, run_compiled
from vskip_compile.backends import open_session
from vskip_compile.cli import main
from vskip_compile.compile import compile_model
from vskip_compile.core.plan import Action, FreezeScope, Plan, Rows
from vskip_compile.core.visual_rows import visual_rows_from_ids
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.passes.causal_blocks import proves_causal

PROVEN = [f for f in FAMILIES if f != "gemma3"]


def _mixed(num_layers: int) -> Plan:
    actions = [Action.FULL, Action.SKIP_FFN, Action.SKIP_ATTENTION, Action.FREEZE]
    return Plan(tuple(actions[i % 4] for i in range(num_layers)), FreezeScope.VISUAL)


@pytest.mark.parametrize("opset", [20, 23])
@pytest.mark.parametrize("family", FAMILIES)
def test_blocked_graphs_match_the_reference(family, opset, exported, tmp_path):
    loaded = tiny_model(family)
    source = exported(family, opset) / "prefill.onnx"
    num_layers = len(loaded.family.decoder_layers(loaded.model))
    image_token = loaded.family.image_token_id(loaded.config)
    for blocks, plan in ((4, _mixed(num_layers)), (3, Plan.empty(num_layers))):
        out = tmp_path / f"b{blocks}.onnx"
        report = compile_model(source, plan, out, causal_blocks=blocks).pass_report("causal_blocks")
        full_query = [i for i in range(num_layers) if plan.live_rows(i)[0] is Rows.ALL]
        if family in PROVEN:
            assert [c.index for c in report.layers] == full_query, report.skipped
        else:
            assert not report.layers and {why for _, why in report.skipped} == {"the mask is not provably causal"}
        for seed, layout in enumerate((LAYOUTS["middle"], LAYOUTS["two images"])):
            prompt = synthetic_prompt(loaded.family, loaded.config, layout, seed=40 + seed)
            inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
            visual = visual_rows_from_ids(prompt.input_ids, image_token)
            compare(run_compiled(out, inputs.feeds, visual), reference(loaded, plan, inputs, visual),
                    prompt.attention_mask, f"{family} opset {opset} {blocks} blocks {plan}")


@pytest.mark.parametrize("opset", [20, 23])
def test_a_padded_batch_and_more_blocks_than_rows(opset, exported, tmp_path):
    """Left padding (query rows that see no key) and chunks that come out empty."""
    loaded = tiny_model("qwen2_vl")
    source = exported("qwen2_vl", opset) / "prefill.onnx"
    plan = Plan.empty(4)
    for blocks, layout, batch in ((4, [2, "image", 3], 2), (64, [1, "image", 1], 1)):
        out = tmp_path / f"b{blocks}.onnx"
        compile_model(source, plan, out, causal_blocks=blocks, force=True)
        prompt = synthetic_prompt(loaded.family, loaded.config, layout, batch=batch,
                                  left_pad=[0, 3][:batch], seed=9)
        inputs = prepare_decoder_inputs(loaded.family, loaded.model, prompt)
        visual = np.zeros(prompt.input_ids.shape[1], dtype=bool)
        got = run_compiled(out, inputs.feeds, visual)
        compare(got, reference(loaded, plan, inputs, visual), prompt.attention_mask, f"{blocks} blocks")
        want = open_session(source).run(feeds_numpy(inputs.feeds))
        np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-5)


def test_the_options_say_what_is_wrong_in_one_line(exported, tmp_path, capsys):
    source = str(exported("qwen2_vl", 20) / "prefill.onnx")
    plan = str(tmp_path / "p.json")
    (tmp_path / "p.json").write_text('{"format": "vskip-plan", "version": 1, "layers": {"1": "freeze"}}')
    for extra, message in ((["--causal-blocks", "1"], "--causal-blocks must be 0 (off) or an integer in 2-64"),
                           (["--causal-blocks", "4", "--report"], "does not count causally blocked graphs")):
        assert main(["compile", source, "--plan", plan, "-o", str(tmp_path / "c.onnx"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
        assert not (tmp_path / "c.onnx").exists()


# ----------------------------------------------------------------------------- the proof

def _mask(compare_op="LessOrEqual", swap=False, second_range=False, step=1, combine="And", fill=None):
    """A [S, S] causal-and-padding mask built the way the exporter builds it, or a near miss."""
    i64 = np.int64
    n = gs.Variable("n", i64, ())
    pad = gs.Variable("pad", np.bool_, (1, "s"))
    nodes = []

    def node(op, inputs, attrs=None, dtype=i64):
        out = gs.Variable(f"{op}_{len(nodes)}", dtype)
        nodes.append(gs.Node(op, inputs=inputs, outputs=[out], attrs=attrs or {}))
        return out

    start = gs.Constant("start", np.array(0, i64))
    delta = gs.Constant(f"step{step}", np.array(step, i64))
    keys_range = node("Range", [start, n, delta])
    queries_range = node("Range", [start, n, delta]) if second_range else keys_range
    keys = node("Unsqueeze", [keys_range, gs.Constant("ax0", np.array([0], i64))])          # [1, S]
    queries = node("Unsqueeze", [queries_range, gs.Constant("ax1", np.array([1], i64))])    # [S, 1]
    a, b = (queries, keys) if swap else (keys, queries)
    causal = node(compare_op, [a, b], dtype=np.bool_)
    mask = node(combine, [causal, pad], dtype=np.bool_)
    if fill is not None:
        mask = node("Where", [mask, gs.Constant("keep", np.array(0.0, np.float32)),
                              gs.Constant("hide", np.array(fill, np.float32))], dtype=np.float32)
    gs.Graph(nodes=nodes, inputs=[n, pad], outputs=[mask])
    return mask


def test_the_exporters_mask_is_proven_causal():
    assert proves_causal(_mask())
    assert proves_causal(_mask("GreaterOrEqual", swap=True))
    assert proves_causal(_mask(fill=-np.inf)) and proves_causal(_mask(fill=np.finfo(np.float32).min))


@pytest.mark.parametrize("near_miss", [
    {"swap": True},                     # key >= query: the upper triangle
    {"compare_op": "GreaterOrEqual"},   # the same, written the other way
    {"second_range": True},             # two Ranges: not provably the same indices
    {"step": -1},                       # a decreasing Range
    {"combine": "Or"},                  # padding can reopen hidden keys
    {"fill": -1.0},                     # a soft additive mask: hidden keys keep some weight
])
def test_near_misses_are_not_proven(near_miss):
    assert not proves_causal(_mask(**near_miss))


def test_a_mask_fed_as_an_input_is_not_proven():
    assert not proves_causal(gs.Variable("mask", np.bool_, (1, 1, "s", "s")))


def test_the_flops_counter_refuses_a_blocked_graph_in_one_line(exported, tmp_path, capsys):
    source = exported("qwen2_vl", 20) / "prefill.onnx"
    compile_model(source, Plan.empty(4), tmp_path / "b.onnx", causal_blocks=4)
    compile_model(source, Plan.empty(4), tmp_path / "u.onnx")
    capsys.readouterr()
    assert main(["flops", str(tmp_path / "b.onnx"), "--rows", "40", "--visual-rows", "8:24"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "compiled with --causal-blocks" in err
    assert main(["flops", str(tmp_path / "u.onnx"), "--rows", "40", "--visual-rows", "8:24"]) == 0


def test_a_damaged_block_count_is_one_line(exported, tmp_path, capsys):
    from vskip_compile.core.graph_io import BLOCKS_METADATA

    compile_model(exported("qwen2_vl", 20) / "prefill.onnx", Plan.empty(4), tmp_path / "b.onnx", causal_blocks=4)
    model = onnx.load(str(tmp_path / "b.onnx"), load_external_data=False)
    next(p for p in model.metadata_props if p.key == BLOCKS_METADATA).value = "[4]"
    onnx.save(model, str(tmp_path / "d.onnx"))
    capsys.readouterr()
    assert main(["flops", str(tmp_path / "d.onnx"), "--rows", "40", "--visual-rows", "8:24"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "vskip.causal_blocks must be a block count" in err
