"""Row-engine building blocks and row rules on small hand-built graphs.

The first tests check RowSubset and _unrepeated_kv with NumPy. Then, one section per row
rule of passes/rows.py: graphs the rule restricts, checked on ONNX Runtime against the
original graph taken at the kept rows, and near misses it refuses with a RestrictError
naming the op. Last, the gaps these tests found in the rules, now fixed.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest

from row_graphs import BSD, DIMS, Net, assert_fires, restrict
from vskip_compile.passes.rows import Builder, RestrictError, RowSubset, _unrepeated_kv


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


# ===================================================================================
# Row rules: for each rule of passes/rows.py, graphs it restricts (checked on ONNX
# Runtime against the original graph at the kept rows) and near misses it refuses.
# The graphs and checks are in row_graphs.py; every node of a graph is in the region.
# ===================================================================================

F32, I64 = np.float32, np.int64
NON_DATA = "a non-data input depends on the rows"  # restrict_region's check before a single-input rule


def fires(cases: dict):
    """Parametrize over ``cases``: id -> build(net) returning (outputs, row axis, new ops)."""
    return pytest.mark.parametrize("build", list(cases.values()), ids=list(cases))


def refuses(cases: dict):
    """Parametrize over ``cases``: id -> (build(net) returning the output, op, why regex)."""
    return pytest.mark.parametrize("build, op, why", list(cases.values()), ids=list(cases))


def check_fires(build):
    net = Net()
    outs, axis, ops = build(net)
    return assert_fires(net, outs, axis, ops)


def check_refuses(build, op, why):
    net = Net()
    out = build(net)
    with pytest.raises(RestrictError, match=rf"cannot restrict {op} node '[^']*' to a subset of rows: {why}"):
        restrict(net, out)


# -- _elementwise ---------------------------------------------------------------------


def _two_restricted(n):
    s = n.op("Sigmoid", [n.h], BSD)
    return n.op("Add", [n.h, s], BSD), 1, ["Sigmoid", "Add"]


def _where(n):
    keep = n.input("keep", ["B", "S", 1], np.bool_)
    return n.op("Where", [keep, n.h, n.const([0.0], F32)], BSD), 1, ["Gather", "Where"]


def _fixed_dims(n):
    n.set_h([2, 7, 8])
    return n.op("Mul", [n.h, n.input("side", [2, 7, 8])], [2, 7, 8]), 1, ["Gather", "Mul"]


ELEMENTWISE_FIRES = {
    "unary Sigmoid": lambda n: (n.op("Sigmoid", [n.h], BSD), 1, ["Sigmoid"]),
    "Cast keeps its attribute": lambda n: (n.op("Cast", [n.h], BSD, {"to": onnx.TensorProto.DOUBLE}, np.float64),
                                           1, ["Cast"]),
    "side of lower rank [D] kept": lambda n: (n.op("Add", [n.h, n.input("bias", [8])], BSD), 1, ["Add"]),
    "side [B,S,1] gathered": lambda n: (n.op("Mul", [n.h, n.input("gate", ["B", "S", 1])], BSD),
                                        1, ["Gather", "Mul"]),
    "side [1,1,D] kept, rows on the right": lambda n: (n.op("Sub", [n.input("side", [1, 1, 8]), n.h], BSD),
                                                       1, ["Sub"]),
    "side [S,1] gathered on its axis 0": lambda n: (n.op("Greater", [n.h, n.input("limit", ["S", 1])], BSD,
                                                         dtype=np.bool_), 1, ["Gather", "Greater"]),
    "higher-rank side moves the rows": lambda n: (n.op("Add", [n.h, n.input("side", [4, 1, 1, 8])], [4, "B", "S", 8]),
                                                  2, ["Add"]),
    "both operands restricted": _two_restricted,
    "Where with a row-aligned condition": _where,
    "fixed dims": _fixed_dims,
}


@fires(ELEMENTWISE_FIRES)
def test_elementwise_fires(build):
    check_fires(build)


def _unknown_shape(n):
    i = n.op("Identity", [n.h], None)  # restricted, but its shape is not in the graph
    return n.op("Relu", [i], BSD)


def _rows_on_two_axes(n):
    n.set_h(["B", 7, 7])  # h + h^T: row s of the output reads column s of h
    t = n.op("Transpose", [n.h], ["B", 7, 7], {"perm": [0, 2, 1]})
    return n.op("Add", [n.h, t], ["B", 7, 7])


def _recomputed_side(n):
    shape = n.op("Shape", [n.h], [3], dtype=I64)
    zeros = n.op("ConstantOfShape", [shape], BSD)  # recomputed from the restricted shape
    return n.op("Add", [n.h, zeros], BSD)


ELEMENTWISE_REFUSALS = {
    "restricted input of unknown shape": (_unknown_shape, "Relu", "the shape of its input is unknown"),
    "rows on different axes (h + h^T)": (_rows_on_two_axes, "Add", "its inputs carry the rows on different "
                                                                   "broadcast axes"),
    "side of unknown rank": (lambda n: n.op("Add", [n.h, n.input("side", None)], BSD),
                             "Add", "an input has an unknown rank"),
    "side with another symbol on the row axis": (lambda n: n.op("Mul", [n.h, n.input("side", ["B", "L", 8])], BSD),
                                                 "Mul", r"cannot tell whether axis 1 of input 'side' \(size 'L'\) "
                                                        r"follows the rows \(size 'S'\)"),
    "side with a fixed size against symbolic rows": (lambda n: n.op("Mul", [n.h, n.input("side", [2, 7, 8])], BSD),
                                                     "Mul", r"cannot tell whether axis 1 of input 'side' \(size 7\)"),
    "side recomputed from the rows' shape": (_recomputed_side, "Add", "its input '[^']*' has a row axis but "
                                                                      "was recomputed"),
}


@refuses(ELEMENTWISE_REFUSALS)
def test_elementwise_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _reduce_over_later_axes (LayerNormalization, RMSNormalization, SimplifiedLayerNormalization,
#    Softmax, LogSoftmax) ----------------------------------------------------------------


def _norm(op, axis=None, shape=BSD, bias=False):
    def build(n):
        n.set_h(shape)
        width = list(shape)[-1 if axis is None else axis:]
        inputs = [n.h, n.input("scale", width)] + ([n.input("bias", width)] if bias else [])
        return n.op(op, inputs, shape, {} if axis is None else {"axis": axis}), 1, [op]
    return build


def _softmax(op, axis=None, shape=BSD):
    def build(n):
        n.set_h(shape)
        return n.op(op, [n.h], shape, {} if axis is None else {"axis": axis}), 1, [op]
    return build


REDUCE_LATER_FIRES = {
    "LayerNormalization, default axis": _norm("LayerNormalization", bias=True),
    "LayerNormalization over two later axes": _norm("LayerNormalization", 2, ["B", "S", 2, 4], bias=True),
    "RMSNormalization, default axis": _norm("RMSNormalization"),
    "RMSNormalization axis=-1": _norm("RMSNormalization", -1),
    # ORT's contrib op in the default domain (row_graphs skips the ONNX checker for it)
    "SimplifiedLayerNormalization": _norm("SimplifiedLayerNormalization", -1),
    "Softmax, default axis": _softmax("Softmax"),
    "Softmax over the batch axis": _softmax("Softmax", 0),
    "Softmax over a later axis of 4-D": _softmax("Softmax", 2, ["B", "S", 2, 4]),
    "LogSoftmax axis=2": _softmax("LogSoftmax", 2),
}


@fires(REDUCE_LATER_FIRES)
def test_reduce_over_later_axes_fires(build):
    check_fires(build)


def _norm_refusal(op, axis):
    return lambda n: n.op(op, [n.h, n.input("scale", [8])], BSD, {"axis": axis})


def _scale_from_rows(n):
    scale = n.op("Gather", [n.h, n.const(0)], ["S", 8], {"axis": 0})  # [S, D], rows on axis 0
    return n.op("LayerNormalization", [n.h, scale], BSD)


REDUCE_LATER_REFUSALS = {
    "Softmax over the rows": (lambda n: n.op("Softmax", [n.h], BSD, {"axis": 1}),
                              "Softmax", "it normalises over the row axis"),
    "LogSoftmax over the rows, axis=-2": (lambda n: n.op("LogSoftmax", [n.h], BSD, {"axis": -2}),
                                          "LogSoftmax", "it normalises over the row axis"),
    "LayerNormalization from the rows": (_norm_refusal("LayerNormalization", 1), "LayerNormalization",
                                         r"it normalises over axes 1\.\. which include the row axis 1"),
    "RMSNormalization from the batch": (_norm_refusal("RMSNormalization", 0), "RMSNormalization",
                                        r"it normalises over axes 0\.\. which include the row axis 1"),
    "SimplifiedLayerNormalization axis=-2": (_norm_refusal("SimplifiedLayerNormalization", -2),
                                             "SimplifiedLayerNormalization", r"it normalises over axes 1\.\."),
    # The rule's own "its scale or bias depends on the rows" branch cannot be reached:
    # restrict_region refuses a row-dependent non-data input first.
    "scale from the rows": (_scale_from_rows, "LayerNormalization", NON_DATA),
}


@refuses(REDUCE_LATER_REFUSALS)
def test_reduce_over_later_axes_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _reduce (ReduceMean, ReduceSum, ReduceMax, ReduceMin, ReduceL2, ReduceSumSquare, ReduceProd)


def _reduce(op, axes, shape, axis, keepdims=1):
    return lambda n: (n.op(op, [n.h, n.const(axes)], shape, {"keepdims": keepdims}), axis, [op])


def _axes_from_constant_node(n):
    axes = n.op("Constant", [], [2], {"value": gs.Constant("axes", np.array([0, 2], I64))}, I64)
    return n.op("ReduceL2", [n.h, axes], ["S"], {"keepdims": 0}), 0, ["ReduceL2"]


def _axes_attribute(n):
    n.set_h(BSD, opset=17)  # ReduceMean-13: axes is an attribute
    return n.op("ReduceMean", [n.h], ["B", "S", 1], {"axes": [2]}), 1, ["ReduceMean"]


REDUCE_FIRES = {
    "ReduceMean over the last axis": _reduce("ReduceMean", [-1], ["B", "S", 1], 1),
    "ReduceSum, keepdims=0": _reduce("ReduceSum", [2], ["B", "S"], 1, 0),
    "ReduceMax over the batch, keepdims=0": _reduce("ReduceMax", [0], ["S", 8], 0, 0),
    "ReduceMin over the batch, keepdims=1": _reduce("ReduceMin", [0], [1, "S", 8], 1),
    "ReduceSumSquare": _reduce("ReduceSumSquare", [-1], ["B", "S", 1], 1),
    "ReduceProd": _reduce("ReduceProd", [2], ["B", "S"], 1, 0),
    "axes from a Constant node": _axes_from_constant_node,
    "axes as an attribute (opset 17)": _axes_attribute,
}


@fires(REDUCE_FIRES)
def test_reduce_fires(build):
    check_fires(build)


def _reduce_attribute_rows(n):
    n.set_h(BSD, opset=17)
    return n.op("ReduceMean", [n.h], ["B", 1, 8], {"axes": [1]})


REDUCE_REFUSALS = {
    "over the rows": (lambda n: n.op("ReduceMean", [n.h, n.const([1])], ["B", 1, 8]),
                      "ReduceMean", "it reduces over the row axis"),
    "over the rows and more, negative axes": (lambda n: n.op("ReduceSum", [n.h, n.const([-2, -1])], ["B"],
                                                             {"keepdims": 0}),
                                              "ReduceSum", "it reduces over the row axis"),
    "over the rows, axes attribute": (_reduce_attribute_rows, "ReduceMean", "it reduces over the row axis"),
    "over every axis": (lambda n: n.op("ReduceMax", [n.h], [1, 1, 1]), "ReduceMax", "it reduces over every axis"),
    "axes not constant": (lambda n: n.op("ReduceMean", [n.h, n.input("axes", [1], I64)], None),
                          "ReduceMean", "its axes are not constant"),
}


@refuses(REDUCE_REFUSALS)
def test_reduce_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _matmul --------------------------------------------------------------------------


def _matmul_4d(n):
    n.set_h(["B", 2, "S", 4], row_axis=2)  # queries [B, H, S, d] against keys^T [B, H, d, T]
    return n.op("MatMul", [n.h, n.input("keys_t", ["B", 2, 4, "T"])], ["B", 2, "S", "T"]), 2, ["MatMul"]


def _matmul_batch_from_right(n):
    n.set_h(["S", 8], row_axis=0)
    return n.op("MatMul", [n.h, n.input("w", [3, 8, 6])], [3, "S", 6]), 1, ["MatMul"]


MATMUL_FIRES = {
    "projection [D, N]": lambda n: (n.op("MatMul", [n.h, n.input("w", [8, 6])], ["B", "S", 6]), 1, ["MatMul"]),
    "right operand a vector": lambda n: (n.op("MatMul", [n.h, n.input("w", [8])], ["B", "S"]), 1, ["MatMul"]),
    "4-D, rows on axis 2": _matmul_4d,
    "rank-2 rows, batch broadcast from the right": _matmul_batch_from_right,
}


@fires(MATMUL_FIRES)
def test_matmul_fires(build):
    check_fires(build)


def _h_ht(n):
    t = n.op("Transpose", [n.h], ["B", 8, "S"], {"perm": [0, 2, 1]})
    return n.op("MatMul", [n.h, t], ["B", "S", "S"])


def _rows_reduced_on_left(n):
    t = n.op("Transpose", [n.h], ["B", 8, "S"], {"perm": [0, 2, 1]})  # rows on the last (reduced) axis
    return n.op("MatMul", [t, n.input("w", ["S", 6])], ["B", 8, 6])


MATMUL_REFUSALS = {
    "h @ h^T": (_h_ht, "MatMul", "its right operand depends on the restricted rows"),
    "rows on the right operand's reduction axis": (
        lambda n: n.op("MatMul", [n.input("x", ["B", 6, "S"]), n.h], ["B", 6, 8]),
        "MatMul", "its right operand depends on the restricted rows"),
    "rows on the left operand's reduction axis": (_rows_reduced_on_left, "MatMul",
                                                  "the rows are not the left operand's second-to-last axis"),
    "right operand of unknown rank": (lambda n: n.op("MatMul", [n.h, n.input("w", None)], None),
                                      "MatMul", "its right operand has an unknown rank"),
}


@refuses(MATMUL_REFUSALS)
def test_matmul_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _transpose -----------------------------------------------------------------------


def _transpose_default(n):
    n.set_h(["B", "S", 2, 4])
    return n.op("Transpose", [n.h], [4, 2, "S", "B"]), 2, ["Transpose"]


TRANSPOSE_FIRES = {
    "rows to the last axis": lambda n: (n.op("Transpose", [n.h], ["B", 8, "S"], {"perm": [0, 2, 1]}),
                                        2, ["Transpose"]),
    "rows to the front": lambda n: (n.op("Transpose", [n.h], ["S", "B", 8], {"perm": [1, 0, 2]}), 0, ["Transpose"]),
    "default perm (reversed), 4-D": _transpose_default,
}


@fires(TRANSPOSE_FIRES)
def test_transpose_fires(build):
    check_fires(build)


# _transpose has no refusal of its own (any permutation keeps the rows independent);
# what it must get right is where the rows go, which the next rule then refuses on.
def _transposed_then(op):
    def build(n):
        t = n.op("Transpose", [n.h], ["B", 8, "S"], {"perm": [0, 2, 1]})
        if op == "Softmax":
            return n.op("Softmax", [t], ["B", 8, "S"], {"axis": -1})
        return n.op("MatMul", [t, n.input("w", ["S", 6])], ["B", 8, 6])
    return build


TRANSPOSE_REFUSALS = {
    "then Softmax over the moved rows": (_transposed_then("Softmax"), "Softmax", "it normalises over the row axis"),
    "then MatMul reducing the moved rows": (_transposed_then("MatMul"), "MatMul",
                                            "the rows are not the left operand's second-to-last axis"),
}


@refuses(TRANSPOSE_REFUSALS)
def test_transpose_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _reshape -------------------------------------------------------------------------
REPLACE_ENTRY = ["Slice", "Slice", "Concat"]  # _Clone.replace_entry: the target's row entry set to n


def _reshape(shape, target, out_shape, axis=1):
    def build(n):
        n.set_h(shape, row_axis=axis)
        return n.op("Reshape", [n.h, n.const(target)], out_shape), axis, REPLACE_ENTRY + ["Reshape"]
    return build


def _reshape_from_shape(n):
    shape = n.op("Shape", [n.h], [3], dtype=I64)
    lead = n.op("Slice", [shape, n.const([0]), n.const([2])], [2], dtype=I64)
    target = n.op("Concat", [lead, n.const([2, 4])], [4], {"axis": 0}, I64)
    out = n.op("Reshape", [n.h, target], ["B", "S", 2, 4])
    return out, 1, ["Shape", "Slice", "Concat"] + REPLACE_ENTRY + ["Reshape"]


RESHAPE_FIRES = {
    "split the last axis, target with 0s": _reshape(BSD, [0, 0, 2, 4], ["B", "S", 2, 4]),
    "merge later axes, target with -1": _reshape(["B", "S", 2, 4], [0, 0, -1], BSD),
    "fixed dims, the row entry written out": _reshape([2, 7, 8], [2, 7, 2, 4], [2, 7, 2, 4]),
    "rows on axis 2": _reshape(["B", 2, "S", 4], [0, 0, 0, 2, 2], ["B", 2, "S", 2, 2], axis=2),
    "target from Shape arithmetic": _reshape_from_shape,
}


@fires(RESHAPE_FIRES)
def test_reshape_fires(build):
    check_fires(build)


def _reshape_refusal(shape, target, out_shape):
    def build(n):
        n.set_h(shape)
        return n.op("Reshape", [n.h, n.const(target)], out_shape)
    return build


KEEPS = r"it does not keep axes 0\.\.1 \(the rows and the axes before them\) in place"
RESHAPE_REFUSALS = {
    "merge the rows with the batch": (_reshape_refusal(BSD, [-1, 8], ["BS", 8]), "Reshape", KEEPS),
    "merge the rows with the last axis": (_reshape_refusal([2, 7, 8], [2, 56], [2, 56]), "Reshape", KEEPS),
    "split the rows": (_reshape_refusal([2, 8, 4], [2, 2, 4, 4], [2, 2, 4, 4]), "Reshape", KEEPS),
    "flatten everything": (_reshape_refusal([2, 7, 8], [-1], [112]), "Reshape", "its output shape is unknown"),
    "output shape unknown": (_reshape_refusal(BSD, [0, 0, 2, 4], None), "Reshape", "its output shape is unknown"),
    # the rule's own "its target shape depends on the rows" branch cannot be reached:
    # restrict_region refuses a row-dependent non-data input first.
    "target from the rows": (lambda n: n.op("Reshape", [n.input("x", ["S"]), n.row_ints()], None),
                             "Reshape", NON_DATA),
}


@refuses(RESHAPE_REFUSALS)
def test_reshape_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _expand --------------------------------------------------------------------------


def _expand_heads(n):
    u = n.op("Unsqueeze", [n.h, n.const([2])], ["B", "S", 1, 8])
    return n.op("Expand", [u, n.const([1, 1, 3, 1])], ["B", "S", 3, 8]), 1, ["Unsqueeze"] + REPLACE_ENTRY + ["Expand"]


def _expand_fixed(n):
    n.set_h([2, 7, 1])  # the row entry 7 of the target must become n
    return n.op("Expand", [n.h, n.const([2, 7, 5])], [2, 7, 5]), 1, REPLACE_ENTRY + ["Expand"]


EXPAND_FIRES = {
    "repeat a new axis": _expand_heads,
    "new leading axis moves the rows": lambda n: (n.op("Expand", [n.h, n.const([4, 1, 1, 1])], [4, "B", "S", 8]),
                                                  2, REPLACE_ENTRY + ["Expand"]),
    "fixed dims, the row entry written out": _expand_fixed,
}


@fires(EXPAND_FIRES)
def test_expand_fires(build):
    check_fires(build)


def _broadcast_rows(n):
    n.set_h(["B", 1, 8])  # one row, broadcast to 7: the output rows are not the input's
    return n.op("Expand", [n.h, n.const([1, 7, 1])], ["B", 7, 8])


EXPAND_REFUSALS = {
    "broadcast a one-row input": (_broadcast_rows, "Expand", "it broadcasts the row axis"),
    "output rows of another size": (lambda n: n.op("Expand", [n.h, n.input("shape", [3], I64)], ["B", "L", 8]),
                                    "Expand", "it broadcasts the row axis"),
    "output shape unknown": (lambda n: n.op("Expand", [n.h, n.const([1, 1, 1])], None),
                             "Expand", "its output shape is unknown"),
    "target from the rows": (lambda n: n.op("Expand", [n.input("x", [1]), n.row_ints()], None), "Expand", NON_DATA),
}


@refuses(EXPAND_REFUSALS)
def test_expand_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _unsqueeze -----------------------------------------------------------------------


def _unsqueeze(axes, shape, axis):
    return lambda n: (n.op("Unsqueeze", [n.h, n.const(axes)], shape), axis, ["Unsqueeze"])


def _unsqueeze_attribute(n):
    n.set_h(BSD, opset=11)  # Unsqueeze-11: axes is an attribute
    return n.op("Unsqueeze", [n.h], ["B", 1, "S", 8], {"axes": [1]}), 2, ["Unsqueeze"]


UNSQUEEZE_FIRES = {
    "front": _unsqueeze([0], [1, "B", "S", 8], 2),
    "just before the rows": _unsqueeze([1], ["B", 1, "S", 8], 2),
    "just after the rows": _unsqueeze([2], ["B", "S", 1, 8], 1),
    "last, negative": _unsqueeze([-1], ["B", "S", 8, 1], 1),
    "two axes, unsorted": _unsqueeze([3, 0], [1, "B", "S", 1, 8], 2),
    "two axes before the rows": _unsqueeze([0, 2], [1, "B", 1, "S", 8], 3),
    "axes as an attribute (opset 11)": _unsqueeze_attribute,
}


@fires(UNSQUEEZE_FIRES)
def test_unsqueeze_fires(build):
    check_fires(build)


# Unsqueeze cannot mix rows; its only refusal is _axes_of's, for axes that are not constant.
UNSQUEEZE_REFUSALS = {
    "axes not constant": (lambda n: n.op("Unsqueeze", [n.h, n.input("axes", [1], I64)], None),
                          "Unsqueeze", "its axes are not constant"),
}


@refuses(UNSQUEEZE_REFUSALS)
def test_unsqueeze_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _squeeze -------------------------------------------------------------------------


def _squeeze(shape, axes, out_shape, axis):
    def build(n):
        n.set_h(shape)
        return n.op("Squeeze", [n.h, n.const(axes)], out_shape), axis, ["Squeeze"]
    return build


def _squeeze_attribute(n):
    n.set_h(["B", "S", 1, 8], opset=11)
    return n.op("Squeeze", [n.h], BSD, {"axes": [2]}), 1, ["Squeeze"]


SQUEEZE_FIRES = {
    "after the rows": _squeeze(["B", "S", 1, 8], [2], BSD, 1),
    "before the rows": _squeeze([1, "S", 8], [0], ["S", 8], 0),
    "both sides, negative": _squeeze([1, "S", 1, 8], [0, -2], ["S", 8], 0),
    "axes as an attribute (opset 11)": _squeeze_attribute,
}


@fires(SQUEEZE_FIRES)
def test_squeeze_fires(build):
    check_fires(build)


def _squeeze_refusal(axes):
    def build(n):
        n.set_h(["B", 1, 8])  # a single row
        inputs = [n.h] + ([] if axes is None else [n.const(axes)])
        return n.op("Squeeze", inputs, ["B", 8])
    return build


SQUEEZE_REFUSALS = {
    "the row axis": (_squeeze_refusal([1]), "Squeeze", "it squeezes the row axis"),
    "the row axis, negative": (_squeeze_refusal([-2]), "Squeeze", "it squeezes the row axis"),
    "every size-1 axis": (_squeeze_refusal(None), "Squeeze", "it squeezes every size-1 axis"),
    "axes not constant": (lambda n: n.op("Squeeze", [n.h, n.input("axes", [1], I64)], None),
                          "Squeeze", "its axes are not constant"),
}


@refuses(SQUEEZE_REFUSALS)
def test_squeeze_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _slice ---------------------------------------------------------------------------


def _slice(starts, ends, axes, shape, steps=None):
    def build(n):
        inputs = [n.h, n.const(starts), n.const(ends), n.const(axes)] + ([n.const(steps)] if steps else [])
        return n.op("Slice", inputs, shape), 1, ["Slice"]
    return build


SLICE_FIRES = {
    "the last axis": _slice([0], [5], [2], ["B", "S", 5]),
    "negative axis, negative step": _slice([-1], [-9], [-1], ["B", "S", 4], [-2]),
    "the batch axis": _slice([1], [2], [0], [1, "S", 8]),
}


@fires(SLICE_FIRES)
def test_slice_fires(build):
    check_fires(build)


def _slice_refusal(axes, starts=(0,), ends=(3,)):
    def build(n):
        inputs = [n.h, n.const(list(starts)), n.const(list(ends))]
        if axes == "input":
            inputs.append(n.input("axes", [1], I64))
        elif axes is not None:
            inputs.append(n.const(axes))
        return n.op("Slice", inputs, None)
    return build


SLICE_REFUSALS = {
    "the rows": (_slice_refusal([1]), "Slice", "it slices the row axis"),
    "the rows, negative axis": (_slice_refusal([-2]), "Slice", "it slices the row axis"),
    "default axes 0, 1": (_slice_refusal(None, (0, 0), (1, 3)), "Slice", "its axes are not given as constants"),
    "axes not constant": (_slice_refusal("input"), "Slice", "its axes are not given as constants"),
    # the rule's own "its bounds depend on the rows" branch cannot be reached: restrict_region
    # refuses a row-dependent non-data input first.
    "bounds from the rows": (lambda n: n.op("Slice", [n.h, n.const([0]), n.row_ints(), n.const([2])], None),
                             "Slice", NON_DATA),
}


@refuses(SLICE_REFUSALS)
def test_slice_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _split ---------------------------------------------------------------------------


def _split_batch(n):
    return n.ops("Split", [n.h], [[1, "S", 8]] * 2, {"num_outputs": 2}), 1, ["Split"]


SPLIT_FIRES = {
    "the last axis, sizes given": lambda n: (n.ops("Split", [n.h, n.const([3, 5])], [["B", "S", 3], ["B", "S", 5]],
                                                   {"axis": 2}), 1, ["Split"]),
    "negative axis, num_outputs": lambda n: (n.ops("Split", [n.h], [["B", "S", 4]] * 2,
                                                   {"axis": -1, "num_outputs": 2}), 1, ["Split"]),
    "the batch axis, by default": _split_batch,
}


@fires(SPLIT_FIRES)
def test_split_fires(build):
    check_fires(build)


# _split's only refusal: the split axis is the row axis.
SPLIT_REFUSALS = {
    "the rows": (lambda n: n.ops("Split", [n.h, n.const([3, 4])], [None, None], {"axis": 1}),
                 "Split", "it splits the row axis"),
    "the rows, negative axis": (lambda n: n.ops("Split", [n.h], [None, None], {"axis": -2, "num_outputs": 2}),
                                "Split", "it splits the row axis"),
}


@refuses(SPLIT_REFUSALS)
def test_split_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _concat --------------------------------------------------------------------------


def _concat_restricted(n):
    s = n.op("Sigmoid", [n.h], BSD)
    return n.op("Concat", [n.h, s], ["B", "S", 16], {"axis": 2}), 1, ["Sigmoid", "Concat"]


CONCAT_FIRES = {
    "side [B,S,4] gathered": lambda n: (n.op("Concat", [n.h, n.input("side", ["B", "S", 4])], ["B", "S", 12],
                                             {"axis": -1}), 1, ["Gather", "Concat"]),
    "both restricted": _concat_restricted,
    "along the batch": lambda n: (n.op("Concat", [n.input("side", [3, "S", 8]), n.h], [5, "S", 8], {"axis": 0}),
                                  1, ["Gather", "Concat"]),
}


@fires(CONCAT_FIRES)
def test_concat_fires(build):
    check_fires(build)


def _concat_two_axes(n):
    n.set_h(["B", 7, 7])
    t = n.op("Transpose", [n.h], ["B", 7, 7], {"perm": [0, 2, 1]})
    return n.op("Concat", [n.h, t], [4, 7, 7], {"axis": 0})


CONCAT_REFUSALS = {
    "along the rows (prefix rows)": (lambda n: n.op("Concat", [n.input("prefix", ["B", 3, 8]), n.h], None,
                                                    {"axis": 1}), "Concat", "it concatenates along the row axis"),
    "along the rows, negative axis": (lambda n: n.op("Concat", [n.h, n.h], None, {"axis": -2}),
                                      "Concat", "it concatenates along the row axis"),
    "rows on different axes": (_concat_two_axes, "Concat", "its inputs carry the rows on different axes"),
    "side of unknown shape": (lambda n: n.op("Concat", [n.h, n.input("side", None)], None, {"axis": 2}),
                              "Concat", "the shape of its input 'side' is unknown"),
    "side with another symbol on the row axis": (
        lambda n: n.op("Concat", [n.h, n.input("side", ["B", "L", 4])], None, {"axis": 2}),
        "Concat", r"cannot tell whether axis 1 of input 'side' \(size 'L'\)"),
}


@refuses(CONCAT_REFUSALS)
def test_concat_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _gather --------------------------------------------------------------------------


def _gather(indices, axis, shape, row_axis):
    return lambda n: (n.op("Gather", [n.h, n.const(indices)], shape, {"axis": axis}), row_axis, ["Gather"])


def _gather_indices_input(n):
    idx = n.input("idx", [3], I64, value=[7, 0, 2])
    return n.op("Gather", [n.h, idx], ["B", "S", 3], {"axis": -1}), 1, ["Gather"]


GATHER_FIRES = {
    "later axis": _gather([1, 3], 2, ["B", "S", 2], 1),
    "batch, scalar index": _gather(1, 0, ["S", 8], 0),
    "batch, 2-D indices": _gather([[1], [0]], 0, [2, 1, "S", 8], 2),
    "negative axis, indices an input": _gather_indices_input,
}


@fires(GATHER_FIRES)
def test_gather_fires(build):
    check_fires(build)


GATHER_REFUSALS = {
    "along the rows": (lambda n: n.op("Gather", [n.h, n.const([0, 2])], None, {"axis": 1}),
                       "Gather", "it gathers along the row axis"),
    "along the rows, negative axis": (lambda n: n.op("Gather", [n.h, n.const([0])], None, {"axis": -2}),
                                      "Gather", "it gathers along the row axis"),
    "indices of unknown rank": (lambda n: n.op("Gather", [n.h, n.input("idx", None, I64)], None, {"axis": 0}),
                                "Gather", "its indices have an unknown rank"),
    # h[b, s, idx[t]]: rows on two axes of the output. The rule's own "its indices depend on
    # the rows" branch cannot be reached: restrict_region refuses a row-dependent non-data input first.
    "indices from the rows": (lambda n: n.op("Gather", [n.h, n.row_ints()], None, {"axis": 2}), "Gather", NON_DATA),
}


@refuses(GATHER_REFUSALS)
def test_gather_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _attention (ONNX Attention, opset 23) -------------------------------------------
QUERY = ["B", 2, "S", 4]  # [batch, heads, rows, head size]
KV = ["B", 2, "T", 4]


def _attention_layer(n):
    """h -> Reshape -> Transpose -> Attention (mask [B,1,S,T]) -> Transpose -> Reshape, as exported."""
    q = n.op("Reshape", [n.h, n.const([0, 0, 2, 4])], ["B", "S", 2, 4])
    q = n.op("Transpose", [q], QUERY, {"perm": [0, 2, 1, 3]})
    y = n.op("Attention", [q, n.input("k", KV), n.input("v", KV), n.input("mask", ["B", 1, "S", "T"])], QUERY)
    y = n.op("Transpose", [y], ["B", "S", 2, 4], {"perm": [0, 2, 1, 3]})
    out = n.op("Reshape", [y, n.const([0, 0, 8])], BSD)
    ops = REPLACE_ENTRY + ["Reshape", "Transpose", "Gather", "Attention", "Transpose"] + REPLACE_ENTRY + ["Reshape"]
    return out, 1, ops


def _attention(mask_shape=None, outputs=1, mask_ops=("Gather",)):
    def build(n):
        n.set_h(QUERY, row_axis=2)
        inputs = [n.h, n.input("k", KV), n.input("v", KV)]
        if mask_shape is not None:
            inputs.append(n.input("mask", mask_shape))
        shapes = [QUERY, KV, KV][:outputs]  # the present K/V outputs, when declared, are not used
        ops = (list(mask_ops) if mask_shape is not None else []) + ["Attention"]
        return n.ops("Attention", inputs, shapes)[0], 2, ops
    return build


def _attention_3d(n):
    k, v = n.input("k", ["B", "T", 8]), n.input("v", ["B", "T", 8])
    return n.op("Attention", [n.h, k, v], BSD, {"q_num_heads": 2, "kv_num_heads": 2}), 1, ["Attention"]


def _repeated(n, name):
    """transformers' repeat_kv: [B,1,T,4] -> Unsqueeze(2) -> Expand -> Reshape [B,2,T,4]."""
    grouped = n.input(name, ["B", 1, "T", 4])
    u = n.op("Unsqueeze", [grouped, n.const([2])], ["B", 1, 1, "T", 4])
    e = n.op("Expand", [u, n.const([1, 1, 2, 1, 1])], ["B", 1, 2, "T", 4])
    return grouped, n.op("Reshape", [e, n.const([0, 2, -1, 4])], KV)


def _attention_grouped_kv(n):
    n.set_h(QUERY, row_axis=2)
    (_, k_rep), (_, v_rep) = _repeated(n, "k"), _repeated(n, "v")
    out = n.op("Attention", [n.h, k_rep, v_rep, n.input("mask", ["S", "T"])], QUERY)
    return out, 2, ["Gather", "Attention"]


ATTENTION_FIRES = {
    "decoder layer: reshape, transpose, mask [B,1,S,T]": _attention_layer,
    "mask [S,T] gathered on its axis 0": _attention(["S", "T"]),
    "mask [B,2,S,T]": _attention(["B", 2, "S", "T"]),
    "no mask, unused present K/V outputs": _attention(None, outputs=3),
    "3-D query with head counts": _attention_3d,
}


@fires(ATTENTION_FIRES)
def test_attention_fires(build):
    check_fires(build)


def test_attention_keeps_a_padding_mask():
    # A mask [B,1,1,T] broadcasts over the query rows and is kept as it is. ORT's CPU
    # Attention (1.32) rejects such a mask ("inconsistent q_sequence_length (between
    # attn_mask and Q)", on the original graph too), so this case checks the op list,
    # that the mask goes in untouched, and the values on ONNX's reference evaluator.
    net = Net()
    out, axis, ops = _attention(["B", 1, 1, "T"], mask_ops=())(net)
    attention = assert_fires(net, out, axis, ops, reference=True)
    assert attention.inputs[3].name == "mask"


def test_attention_takes_grouped_kv_through_repeat_kv():
    net = Net()
    out, axis, ops = _attention_grouped_kv(net)
    attention = assert_fires(net, out, axis, ops)
    assert [t.name for t in attention.inputs[1:3]] == ["k", "v"]  # the cache's grouped K/V, not the copies


def _query_without_transpose(n):
    q = n.op("Reshape", [n.h, n.const([0, 0, 2, 4])], ["B", "S", 2, 4])  # [B, S, H, d]: rows on the heads axis
    return n.op("Attention", [q, n.input("k", KV), n.input("v", KV)], ["B", "S", "T", 4])


def _query_rows_last(n):
    t = n.op("Transpose", [n.h], ["B", 8, "S"], {"perm": [0, 2, 1]})
    k, v = n.input("k", ["B", "T", "S"]), n.input("v", ["B", "T", "S"])
    return n.op("Attention", [t, k, v], ["B", 8, "S"], {"q_num_heads": 1, "kv_num_heads": 1})


def _attention_refusal(attrs=None, past=False, present_used=False, mask_shape=None):
    def build(n):
        n.set_h(QUERY, row_axis=2)
        inputs = [n.h, n.input("k", KV), n.input("v", KV)]
        inputs.append(n.input("mask", mask_shape) if mask_shape else gs.Variable.empty())
        if past:
            inputs += [n.input("past_k", ["B", 2, "P", 4]), n.input("past_v", ["B", 2, "P", 4])]
        y, present_k, _ = n.ops("Attention", inputs, [QUERY, KV, KV], attrs)
        if present_used:
            n.op("Identity", [present_k], KV)
        return y
    return build


def _self_attention(n):
    n.set_h(QUERY, row_axis=2)
    return n.op("Attention", [n.h, n.h, n.h], QUERY)


ATTENTION_REFUSALS = {
    "rows on the heads axis (no transpose)": (_query_without_transpose, "Attention",
                                              "the rows are not the query's sequence axis"),
    "3-D query with the rows last": (_query_rows_last, "Attention", "the rows are not the query's sequence axis"),
    "is_causal=1": (_attention_refusal({"is_causal": 1}), "Attention",
                    "is_causal=1 ties the mask to row positions; an explicit mask is needed"),
    "past key/value": (_attention_refusal(past=True), "Attention", "it takes past key/value or padding inputs"),
    "present key used": (_attention_refusal(present_used=True), "Attention",
                         "its present key/value or QK outputs are used"),
    "mask rows of another size": (_attention_refusal(mask_shape=["B", 1, "L", "T"]), "Attention",
                                  r"cannot tell whether axis 2 of input 'mask' \(size 'L'\)"),
    # K/V over the live rows only: the rule's own "its key or value depends on the
    # restricted rows" branch cannot be reached, restrict_region refuses first.
    "K/V from the restricted rows": (_self_attention, "Attention", NON_DATA),
}


@refuses(ATTENTION_REFUSALS)
def test_attention_refuses(build, op, why):
    check_refuses(build, op, why)


# -- _rotary (ONNX RotaryEmbedding, opset 23) -------------------------------------------


def _rotary_3d(attrs, rotary=4):
    def build(n):
        positions = np.random.default_rng(1).integers(0, DIMS["P"], (DIMS["B"], DIMS["S"]))
        inputs = [n.h, n.input("cos", ["P", rotary // 2]), n.input("sin", ["P", rotary // 2]),
                  n.input("position_ids", ["B", "S"], I64, value=positions)]
        return n.op("RotaryEmbedding", inputs, BSD, {"num_heads": 2, **attrs}), 1, ["Gather", "RotaryEmbedding"]
    return build


def _rotary_4d_caches(n):
    n.set_h(QUERY, row_axis=2)
    inputs = [n.h, n.input("cos", ["B", "S", 2]), n.input("sin", ["B", "S", 2])]
    return n.op("RotaryEmbedding", inputs, QUERY), 2, ["Gather", "Gather", "RotaryEmbedding"]


def _rotary_layer(n):
    q = n.op("Reshape", [n.h, n.const([0, 0, 2, 4])], ["B", "S", 2, 4])
    q = n.op("Transpose", [q], QUERY, {"perm": [0, 2, 1, 3]})
    positions = np.tile(np.arange(DIMS["S"]), (DIMS["B"], 1))
    inputs = [q, n.input("cos", ["P", 2]), n.input("sin", ["P", 2]),
              n.input("position_ids", ["B", "S"], I64, value=positions)]
    out = n.op("RotaryEmbedding", inputs, QUERY)
    return out, 2, REPLACE_ENTRY + ["Reshape", "Transpose", "Gather", "RotaryEmbedding"]


ROTARY_FIRES = {
    "3-D with position_ids": _rotary_3d({}),
    "3-D interleaved, partial rotary": _rotary_3d({"interleaved": 1, "rotary_embedding_dim": 2}, rotary=2),
    "4-D with per-row caches [B,S,d/2]": _rotary_4d_caches,
    "4-D after Reshape and Transpose": _rotary_layer,
}


@fires(ROTARY_FIRES)
def test_rotary_fires(build):
    check_fires(build)


def _rotary_without_transpose(n):
    q = n.op("Reshape", [n.h, n.const([0, 0, 2, 4])], ["B", "S", 2, 4])  # rows on the heads axis
    return n.op("RotaryEmbedding", [q, n.input("cos", ["B", 2, 2]), n.input("sin", ["B", 2, 2])], ["B", "S", 2, 4])


def _rotary_rows_last(n):
    t = n.op("Transpose", [n.h], ["B", 8, "S"], {"perm": [0, 2, 1]})
    inputs = [t, n.input("cos", ["B", 8, 2]), n.input("sin", ["B", 8, 2])]
    return n.op("RotaryEmbedding", inputs, ["B", 8, "S"], {"num_heads": 1})


def _positions_from_rows(n):
    positions = n.row_ints(["B", "S"], axes=(2,))
    inputs = [n.h, n.input("cos", ["P", 2]), n.input("sin", ["P", 2]), positions]
    return n.op("RotaryEmbedding", inputs, BSD, {"num_heads": 2})


ROTARY_REFUSALS = {
    "rows on the heads axis (no transpose)": (_rotary_without_transpose, "RotaryEmbedding",
                                              "the rows are not the input's sequence axis"),
    "3-D with the rows last": (_rotary_rows_last, "RotaryEmbedding", "the rows are not the input's sequence axis"),
    # the rule's own "its angles depend on the restricted rows" branch cannot be reached:
    # restrict_region refuses a row-dependent non-data input first.
    "position_ids from the rows": (_positions_from_rows, "RotaryEmbedding", NON_DATA),
}


@refuses(ROTARY_REFUSALS)
def test_rotary_refuses(build, op, why):
    check_refuses(build, op, why)


# -- restrict_region itself: ops without a rule --------------------------------------


def test_an_op_without_a_rule_is_refused():
    net = Net()
    out = net.op("CumSum", [net.h, net.const(1)], BSD)  # a running sum over the rows
    with pytest.raises(RestrictError, match=r"cannot restrict CumSum node '[^']*' to a subset of rows: "
                                             r"no row rule for op CumSum"):
        restrict(net, out)


# ===================================================================================
# Gaps found in passes/rows.py by the tests above, and fixed: each refuses (or, for
# Expand, restricts correctly) where the rules used to crash or build a wrong graph.
# ===================================================================================


def _after_unknown_shape(op):
    """h -> Identity (no shape in the graph) -> ``op``: the rule reads the unknown shape."""
    def build(n):
        i = n.op("Identity", [n.h], None)
        if op == "Transpose":
            return n.op("Transpose", [i], None, {"perm": [0, 2, 1]})
        if op == "Split":
            return n.ops("Split", [i], [None, None], {"axis": 2, "num_outputs": 2})[0]
        side = {
            "Softmax": [], "ReduceMean": [n.const([2])], "Unsqueeze": [n.const([0])], "Squeeze": [n.const([0])],
            "Slice": [n.const([0]), n.const([2]), n.const([2])], "Reshape": [n.const([0, 0, 2, 4])],
            "Expand": [n.const([1, 1, 8])], "MatMul": [n.input("w", [8, 6])], "Concat": [i],
            "Gather": [n.const([0])], "LayerNormalization": [n.input("scale", [8])],
        }[op]
        attrs = {"Concat": {"axis": 2}, "Gather": {"axis": 2}}.get(op)
        return n.op(op, [i] + side, ["B", "S", 2, 4] if op == "Reshape" else None, attrs)
    return build


@pytest.mark.parametrize("op", ["Transpose", "Softmax", "LayerNormalization", "ReduceMean", "MatMul", "Reshape",
                                "Expand", "Unsqueeze", "Squeeze", "Slice", "Split", "Concat", "Gather"])
def test_gap_unknown_input_shape_is_a_restrict_error(op):
    net = Net()
    out = _after_unknown_shape(op)(net)
    with pytest.raises(RestrictError, match=op):
        restrict(net, out)


def test_gap_attention_mask_of_unknown_shape_is_a_restrict_error():
    net = Net()
    net.set_h(QUERY, row_axis=2)
    mask = net.input("mask", None)
    out = net.op("Attention", [net.h, net.input("k", KV), net.input("v", KV), mask], QUERY)
    with pytest.raises(RestrictError, match="Attention"):
        restrict(net, out)


@pytest.mark.parametrize("target, ops", [([8], ["Expand"]), ([1, 8], REPLACE_ENTRY + ["Expand"])],
                         ids=["shape shorter than the row axis", "shape reaching the row axis"])
def test_gap_expand_with_a_short_shape_vector(target, ops):
    """The shape vector aligns from the right; the row count goes into its entry for the row axis."""
    net = Net()
    out = net.op("Expand", [net.h, net.const(target)], BSD)  # a no-op broadcast of h [B,S,8]
    assert_fires(net, out, 1, ops)


def test_gap_row_count_from_shape_arithmetic_used_off_the_row_axis():
    """Shape(h_T) counts n rows where the source counted S: h[:, :, :S] would become h_T[:, :, :n]."""
    net = Net()
    shape = net.op("Shape", [net.h], [3], dtype=I64)
    rows = net.op("Slice", [shape, net.const([1]), net.const([2])], [1], dtype=I64)  # [S]
    out = net.op("Slice", [net.h, net.const([0]), rows, net.const([2])], ["B", "S", "S"])  # h[:, :, :S]
    with pytest.raises(RestrictError, match="Slice .* its bounds come from the shape of the restricted rows"):
        restrict(net, out)


def test_gap_row_count_cutting_data_outside_the_rows():
    """cos[:S] with S from Shape(h): on the restricted rows it would take the first n positions."""
    net = Net()
    shape = net.op("Shape", [net.h], [3], dtype=I64)
    rows = net.op("Slice", [shape, net.const([1]), net.const([2])], [1], dtype=I64)  # [S]
    table = net.input("table", [16, 8])
    cut = net.op("Slice", [table, net.const([0]), rows, net.const([0])], ["S", 8])
    out = net.op("Add", [net.h, cut], BSD)
    with pytest.raises(RestrictError, match="Slice .* its data does not carry the rows"):
        restrict(net, out)


@pytest.mark.parametrize("attrs", [{}, {"axis": 0}], ids=["default axis", "axis=0"])
def test_gap_softmax_before_opset_13(attrs):
    net = Net()
    net.set_h(BSD, opset=11)
    out = net.op("Softmax", [net.h], BSD, attrs)  # normalises over axes 1.. (0..): the rows included
    with pytest.raises(RestrictError, match="Softmax .* normalises over axes"):
        restrict(net, out)


def test_softmax_before_opset_13_over_later_axes_fires():
    net = Net()
    net.set_h(BSD, opset=11)
    assert_fires(net, net.op("Softmax", [net.h], BSD, {"axis": 2}), 1)


def test_shape_entries_other_than_the_row_count_still_bound_a_slice():
    """rotate_half as the legacy exporter writes it: x[..., :x.shape[-1] // 2], the bound from
    Shape of the restricted rows, but its last entry (D), which the rows do not change."""
    net = Net()
    shape = net.op("Shape", [net.h], [3], dtype=I64)
    last = net.op("Gather", [shape, net.const(-1)], [], {"axis": 0}, dtype=I64)       # D, a scalar
    half = net.op("Div", [last, net.const(2)], [], dtype=I64)
    end = net.op("Unsqueeze", [half, net.const([0])], [1], dtype=I64)
    out = net.op("Slice", [net.h, net.const([0]), end, net.const([-1])], ["B", "S", 4])
    assert_fires(net, out, 1)


def test_a_scalar_row_count_cutting_data_outside_the_rows():
    """Shape(h)[1] as a scalar, then a Range over it: positions 0..n-1, not the kept rows."""
    net = Net()
    shape = net.op("Shape", [net.h], [3], dtype=I64)
    count = net.op("Gather", [shape, net.const(1)], [], {"axis": 0}, dtype=I64)         # S, a scalar
    end = net.op("Unsqueeze", [count, net.const([0])], [1], dtype=I64)
    table = net.input("table", [16, 8])
    cut = net.op("Slice", [table, net.const([0]), end, net.const([0])], ["S", 8])
    with pytest.raises(RestrictError, match="its data does not carry the rows"):
        restrict(net, net.op("Add", [net.h, cut], BSD))
