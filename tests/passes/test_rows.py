"""Row-engine building blocks on small hand-built graphs, checked with NumPy."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from vskip_compile.passes.rows import Builder, RowSubset, _unrepeated_kv


def _run(graph: gs.Graph, feeds: dict) -> list[np.ndarray]:
    model = gs.export_onnx(graph.cleanup().toposort())
    model.ir_version = 10
    model.opset_import[0].version = 23
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.mark.parametrize("axis", [1, 2, 3])
def test_scatter_along_writes_the_kept_rows_of_any_axis(axis):
    rng = np.random.default_rng(axis)
    shape = [2, 3, 4][:axis] + [7, 5]  # 7 rows on axis ``axis``
    kept = np.array([0, 2, 5, 6], np.int64)
    update_shape = list(shape)
    update_shape[axis] = len(kept)
    full = gs.Variable("full", np.float32, shape)
    rows = gs.Variable("rows", np.float32, update_shape)
    graph = gs.Graph(inputs=[full, rows], opset=23)
    subset = RowSubset(graph, Builder(graph, "t"), "kept")
    out = subset.scatter_along(full, rows, axis)
    again = subset.scatter_along(out, rows, axis)  # a second scatter reuses the index tuples
    graph.outputs = [out, again]
    full_value = rng.standard_normal(shape).astype(np.float32)
    rows_value = rng.standard_normal(update_shape).astype(np.float32)
    got, _ = _run(graph, {"full": full_value, "rows": rows_value, "kept": kept})
    want = full_value.copy()
    index = [slice(None)] * len(shape)
    index[axis] = kept
    want[tuple(index)] = rows_value
    np.testing.assert_array_equal(got, want)
    if axis > 1:
        assert [n.op for n in graph.nodes].count("Range") == axis  # built once, not per scatter


def _repeat_kv_graph(axes=(2,), kv=2, heads=6, expand_heads=3):
    """K [B, kv, S, d] -> Unsqueeze(axes) -> Expand -> Reshape [B, heads, S, d], as repeat_kv exports."""
    source = gs.Variable("k", np.float32, ["batch", kv, "seq", 8])
    u = gs.Variable("u", np.float32, ["batch", kv, 1, "seq", 8])
    e = gs.Variable("e", np.float32, ["batch", kv, expand_heads, "seq", 8])
    out = gs.Variable("out", np.float32, ["batch", heads, "seq", 8])
    nodes = [
        gs.Node("Unsqueeze", inputs=[source, gs.Constant("axes", np.array(axes, np.int64))], outputs=[u]),
        gs.Node("Expand", inputs=[u, gs.Constant("shape", np.array([1, kv, expand_heads, 1, 8], np.int64))],
                outputs=[e]),
        gs.Node("Reshape", inputs=[e, gs.Constant("target", np.array([0, heads, -1, 8], np.int64))],
                outputs=[out]),
    ]
    gs.Graph(nodes=nodes, inputs=[source], outputs=[out])
    return source, out


def test_unrepeated_kv_finds_the_grouped_source():
    source, out = _repeat_kv_graph()
    assert _unrepeated_kv(out, 6) is source


@pytest.mark.parametrize("case", ["other axis", "query heads differ", "not a multiple"])
def test_unrepeated_kv_refuses_near_misses(case):
    if case == "other axis":
        _, out = _repeat_kv_graph(axes=(1,))
        heads = 6
    elif case == "query heads differ":
        _, out = _repeat_kv_graph()
        heads = 12
    else:
        _, out = _repeat_kv_graph(kv=4, heads=6, expand_heads=3)
        heads = 6
    assert _unrepeated_kv(out, heads) is None
