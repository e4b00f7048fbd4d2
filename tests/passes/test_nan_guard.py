"""passes/nan_guard.py: the softmax's NaN guard moved after the P x V product.

Exactness is checked where the guard matters: a left-padded batch of two, whose first
padded query rows have every key masked (NaN probabilities before the guard). Every
output of the empty-plan compile, padded rows and K/V included, must equal the source
graph's bit for bit, for every family's opset-20 export. Near misses stay unchanged.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from conftest import FAMILIES, tiny_model
from helpers import feeds_numpy
from vskip_compile.backends import open_session
from vskip_compile.compile import compile_model
from vskip_compile.core.plan import Plan
from vskip_compile.models.inputs import prepare_decoder_inputs, synthetic_prompt
from vskip_compile.passes.nan_guard import guard_of, move_guard


def _softmax_guards(model: onnx.ModelProto) -> int:
    """Where nodes that select over a Softmax output (the S x S guards)."""
    softmax_out = {o for n in model.graph.node if n.op_type == "Softmax" for o in n.output}
    return sum(1 for n in model.graph.node if n.op_type == "Where" and set(n.input) & softmax_out)


@pytest.mark.parametrize("family", FAMILIES)
def test_moved_guards_give_the_source_graphs_outputs_bit_for_bit(family, exported, tmp_path):
    loaded = tiny_model(family)
    source = exported(family, 20) / "prefill.onnx"
    out = tmp_path / "empty.onnx"
    num_layers = len(loaded.family.decoder_layers(loaded.model))
    report = compile_model(source, Plan.empty(num_layers), out)
    before, after = onnx.load(str(source), load_external_data=False), onnx.load(str(out), load_external_data=False)
    assert _softmax_guards(before) == num_layers, "the opset-20 export guards every layer's softmax"
    assert _softmax_guards(after) == 0
    assert [c.index for c in report.pass_report("move_nan_guard").layers] == list(range(num_layers))
    prompt = synthetic_prompt(loaded.family, loaded.config, [2, "image", 3], batch=2, left_pad=[0, 3], seed=7)
    feeds = feeds_numpy(prepare_decoder_inputs(loaded.family, loaded.model, prompt).feeds)
    want = open_session(source).run(feeds)
    got = open_session(out).run({**feeds, "vskip_text_rows": np.arange(2, dtype=np.int64)})
    for name in want:
        assert np.isfinite(want[name]).all(), name
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def _guarded_core(fill=0.0, extra_consumer=False, condition_of_other=False):
    """scores -> Softmax -> Where(IsNaN(p), fill, p) -> MatMul(., v), as graphsurgeon nodes."""
    f = np.float32
    scores = gs.Variable("scores", f, (1, 2, 4, 4))
    v = gs.Variable("v", f, (1, 2, 4, 3))
    p, nan, guarded, out = (gs.Variable(n, dtype=d) for n, d in
                            (("p", f), ("nan", np.bool_), ("guarded", f), ("out", f)))
    other = gs.Variable("other", f, (1, 2, 4, 4))
    nodes = [gs.Node("Softmax", inputs=[scores], outputs=[p], attrs={"axis": -1}),
             gs.Node("IsNaN", inputs=[other if condition_of_other else p], outputs=[nan]),
             gs.Node("Where", inputs=[nan, gs.Constant("fill", np.array(fill, f)), p], outputs=[guarded]),
             gs.Node("MatMul", inputs=[guarded, v], outputs=[out])]
    outputs = [out]
    if extra_consumer:
        spare = gs.Variable("spare", f)
        nodes.append(gs.Node("Identity", inputs=[guarded], outputs=[spare]))
        outputs.append(spare)
    graph = gs.Graph(nodes=nodes, inputs=[scores, v, other], outputs=outputs, opset=20)
    return graph, nodes


def test_the_rewrite_on_a_bare_core_runs_and_keeps_the_output_tensor():
    import onnxruntime as ort

    graph, nodes = _guarded_core()
    model = gs.export_onnx(graph.copy())
    core = move_guard(graph, nodes[:4])
    assert [n.op for n in core] == ["Softmax", "MatMul", "IsNaN", "Where"]
    graph.cleanup().toposort()
    assert [n.op for n in graph.nodes] == ["Softmax", "MatMul", "IsNaN", "Where"]
    assert graph.outputs[0].name == "out"
    scores = np.random.default_rng(0).standard_normal((1, 2, 4, 4), dtype=np.float32)
    scores[0, 1, 2] = -np.inf                                    # a fully masked query row
    feeds = {"scores": scores, "v": np.ones((1, 2, 4, 3), np.float32), "other": scores}
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(  # noqa: E731
        None, feeds)[0]
    want, got = run(model), run(gs.export_onnx(graph))
    assert (want[0, 1, 2] == 0).all() and np.isfinite(want).all()
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("near_miss", [{"fill": 1.0}, {"extra_consumer": True}, {"condition_of_other": True}])
def test_near_misses_are_left_as_they_are(near_miss):
    graph, nodes = _guarded_core(**near_miss)
    assert guard_of(graph, nodes[0]) is None
    assert move_guard(graph, nodes[:4]) is None
    assert [n.op for n in graph.nodes][:4] == ["Softmax", "IsNaN", "Where", "MatMul"]
