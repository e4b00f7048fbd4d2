"""Shape inference (vskip_compile/core/shapes.py) on a graph whose shapes are known by hand:
x [5, 3] -> Shape -> Gather(0) = 5 -> Range(0, 5, 1) [5] -> Cast -> y [5]; x @ w [3, 4] -> z [5, 4].

ONNX's own inference leaves Range's length open (its limit is computed); ONNX Runtime's
symbolic inference folds the Shape -> Gather chain and knows it is 5.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from vskip_compile.core.shapes import InferredShapes, shape_table, with_shapes


def range_graph():
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "one"),
             numpy_helper.from_array(np.ones((3, 4), np.float32), "w")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Range", ["zero", "n", "one"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT), helper.make_node("MatMul", ["x", "w"], ["z"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 3])],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in ("y", "z")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])


def test_onnx_first_then_onnx_runtime_only_for_what_stays_unknown():
    shapes = InferredShapes(range_graph())
    assert shapes.get("x") == (5, 3) and shapes.get("z") == (5, 4) and shapes.get("s") == (2,)
    assert shapes.known["r"] == (None,)         # ONNX alone: Range's length is open
    assert shapes.get("r") == (5,) and shapes.get("y") == (5,)   # filled in by ONNX Runtime
    assert shapes.get("nothing") is None


def test_exact_dims_replace_inferred_ones():
    shapes = InferredShapes(range_graph(), exact={"w": (3, 4), "z": (7, 4)})
    assert shapes.get("w") == (3, 4) and shapes.get("z") == (7, 4)


def test_shape_table_keeps_sizes_and_drops_symbols():
    infos = [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 4]),
             helper.make_tensor_value_info("b", TensorProto.FLOAT, None)]
    assert shape_table(infos) == {"a": (None, 4)}


def test_with_shapes_adds_value_infos_and_keeps_the_graph():
    model = range_graph()
    nodes = [n.SerializeToString() for n in model.graph.node]
    with_shapes(model)
    assert [n.SerializeToString() for n in model.graph.node] == nodes
    assert {"s", "n", "r"} <= {v.name for v in model.graph.value_info}
    count = len(model.graph.value_info)
    with_shapes(model)                            # complete now: nothing is added twice
    assert len(model.graph.value_info) == count
