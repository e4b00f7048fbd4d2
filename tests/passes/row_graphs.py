"""Tiny graphs for the row-rule tests of ``passes/rows.py``, and the checks run on them.

A test builds a ``Net`` (an input ``h`` whose rows are on ``row_axis``, plus the ops under
test with explicit shapes), then either

* ``assert_fires(net, out, row_axis, new_ops)``: restricts every node of the graph to the
  rows ``KEPT`` (as ``passes/skip_visual.py`` does: ``restrict_region`` seeded with
  ``Gather(h, rows)``), checks the row axis the rule reports and the ops it added, and
  compares on ONNX Runtime (CPU, graph optimizer off) the restricted output with the
  output of the ORIGINAL graph, exported before the restriction, taken at ``KEPT``
  (``reference=True``: on ONNX's reference evaluator, where ORT's kernel refuses the case); or
* ``restrict(net, out)`` inside ``pytest.raises(RestrictError, ...)``.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
from onnx.reference import ReferenceEvaluator

from vskip_compile.passes.rows import Builder, Restricted, RowSubset, restrict_region

DIMS = {"B": 2, "S": 7, "T": 5, "P": 16}  # the sizes fed for the symbolic dims
KEPT = np.array([0, 2, 5, 6], np.int64)    # the rows kept, of S = 7
BSD = ["B", "S", 8]                        # the default shape of h
FP32_TOL = 1e-5


class Net:
    """A graph under construction: ``h`` (rows on ``row_axis``) and the nodes added to it."""

    def __init__(self):
        self.graph = gs.Graph(opset=23)
        self.values: dict[str, np.ndarray] = {}  # feeds given explicitly (integer inputs)
        self.count = 0
        self.row_axis = 1
        self.h = self.input("h", BSD)

    def set_h(self, shape, row_axis: int = 1, opset: int | None = None) -> gs.Variable:
        """Reshape the input ``h`` (before any node uses it) and say where its rows are."""
        self.h.shape = list(shape)
        self.row_axis = row_axis
        if opset is not None:
            self.graph.opset = opset
        return self.h

    def input(self, name: str, shape, dtype=np.float32, value=None) -> gs.Variable:
        tensor = gs.Variable(name, dtype, None if shape is None else list(shape))
        self.graph.inputs.append(tensor)
        if value is not None:
            self.values[name] = np.asarray(value, dtype)
        return tensor

    def const(self, values, dtype=np.int64) -> gs.Constant:
        self.count += 1
        return gs.Constant(f"c{self.count}", np.asarray(values, dtype))

    def ops(self, op: str, inputs: list, shapes: list, attrs: dict | None = None, dtype=np.float32,
            dtypes: list | None = None) -> list[gs.Variable]:
        """A node with one output per entry of ``shapes`` (None: unknown shape)."""
        self.count += 1
        outs = [gs.Variable(f"{op.lower()}{self.count}_out{i}", (dtypes or [dtype] * len(shapes))[i],
                            None if s is None else list(s)) for i, s in enumerate(shapes)]
        self.graph.nodes.append(gs.Node(op, name=f"{op.lower()}{self.count}", attrs=dict(attrs or {}),
                                        inputs=list(inputs), outputs=outs))
        return outs

    def op(self, op: str, inputs: list, shape, attrs: dict | None = None, dtype=np.float32) -> gs.Variable:
        return self.ops(op, inputs, [shape], attrs, dtype)[0]

    # -- common fragments -------------------------------------------------------
    def row_ints(self, shape=("S",), axes=(0, 2)) -> gs.Variable:
        """An int64 tensor computed from the rows of h [B,S,D] (ReduceMax over ``axes``, Cast):
        a shape, index or position input that depends on the restricted rows."""
        reduced = self.op("ReduceMax", [self.h, self.const(list(axes))], list(shape), {"keepdims": 0})
        return self.op("Cast", [reduced], list(shape), {"to": onnx.TensorProto.INT64}, np.int64)

    def feeds(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        feeds = {}
        for tensor in self.graph.inputs:
            if tensor.name in self.values:
                feeds[tensor.name] = self.values[tensor.name]
                continue
            shape = [DIMS[d] if isinstance(d, str) else int(d) for d in tensor.shape]
            if tensor.dtype == np.bool_:
                feeds[tensor.name] = rng.random(shape) < 0.5
            else:
                assert tensor.dtype == np.float32, f"give a value for input {tensor.name}"
                feeds[tensor.name] = rng.standard_normal(shape).astype(np.float32)
        return feeds


def _export(graph: gs.Graph, check: bool = True) -> onnx.ModelProto:
    model = gs.export_onnx(graph)
    model.ir_version = 10
    if check and all(onnx.defs.has(node.op_type) for node in model.graph.node):  # not ORT's contrib ops
        onnx.checker.check_model(model, full_check=True)
    return model


def _run(model: onnx.ModelProto, feeds: dict, reference: bool = False) -> list[np.ndarray]:
    if reference:  # ONNX's reference evaluator, for the few cases ORT's kernels do not take
        return ReferenceEvaluator(model).run(None, feeds)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def restrict(net: Net, outs) -> tuple[list[Restricted], list[str], gs.Node | None]:
    """Restrict every node of ``net`` to the rows ``KEPT``; returns the restricted ``outs``
    (None where not restricted), the op types restrict_region added, and its last node."""
    graph = net.graph
    outs = outs if isinstance(outs, list) else [outs]
    region = list(graph.nodes)
    builder = Builder(graph, "rows")
    rows = RowSubset(graph, builder, "kept")
    seed = Restricted(net.h, rows.gather(net.h, net.row_axis), net.row_axis)
    start = len(graph.nodes)
    state = restrict_region(rows, builder, region, [seed])
    added = graph.nodes[start:]
    return [state.restricted.get(id(o)) for o in outs], [n.op for n in added], (added[-1] if added else None)


def assert_fires(net: Net, outs, row_axis: int, new_ops: list[str] | None = None,
                 reference: bool = False) -> gs.Node | None:
    """Restrict, check the row axis and added ops, and compare with the original graph on ORT
    (on ONNX's reference evaluator with ``reference``); returns the last node added."""
    outs = outs if isinstance(outs, list) else [outs]
    net.graph.outputs = list(outs)
    feeds = net.feeds(np.random.default_rng(0))
    full = _run(_export(net.graph), feeds, reference)  # the original graph, before restriction (ONNX-checked)
    restricted, added, last = restrict(net, outs)
    assert all(r is not None for r in restricted), "an output was not restricted"
    assert [r.axis for r in restricted] == [row_axis] * len(outs)
    if new_ops is not None:
        assert added == new_ops
    net.graph.outputs = [r.tensor for r in restricted]
    restricted_graph = net.graph.cleanup(remove_unused_graph_inputs=False).toposort()
    got = _run(_export(restricted_graph, check=False), {**feeds, "kept": KEPT}, reference)  # outputs have no shape
    for g, f in zip(got, full):
        want = np.take(f, KEPT, axis=row_axis)
        assert g.shape == want.shape
        if np.issubdtype(want.dtype, np.floating):
            np.testing.assert_allclose(g, want, rtol=FP32_TOL, atol=FP32_TOL)
        else:
            np.testing.assert_array_equal(g, want)
    return last
