"""Row restriction: recompute a row-wise region of a graph for a subset of its rows.

Most of a decoder layer treats the sequence rows independently (norms, projections,
RoPE, the MLP, the query side of attention). Such a region can be re-run on a subset of
rows by gathering its inputs first::

    before                                   after
    h [B,S,D] -- region --> y [B,S,N]         h -- Gather(rows, axis 1) --> h_T [B,n,D] -- region' --> y_T [B,n,N]
                  ^                                                                   ^
       side inputs: cos/sin [.,.,S,.],          side inputs with a row axis are gathered too;
       mask [B,1,S,S], Reshape targets          Reshape/Expand targets get n in the row entry

The clone is built op by op, tracking which axis of each tensor is the row axis. An op
is restricted only when its rule proves the rows stay independent (an elementwise op
aligned on the row axis, a MatMul whose left operand carries the rows on its
second-to-last axis, a Softmax over another axis, ...); anything else raises
``RestrictError`` saying which op and why, rather than producing a wrong graph.

The ONNX ``Attention`` op (opset 23) is re-emitted for the live queries with K/V as the
cache holds them when they reach it through transformers' ``repeat_kv`` expansion: the op
groups query heads itself (see ``_unrepeated_kv``).

Shapes come from the graph's value info: a side input is gathered when its aligned
dimension is the row dimension (the same symbol or size), kept when it is 1, and refused
when unknown. Row indices are a 1-D int64 tensor shared by every batch row, so plain
``Gather``/``ScatterND`` suffice (no NonZero, no boolean indexing: TensorRT-friendly).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx_graphsurgeon as gs

from vskip_compile.core.errors import VskipError

from .graph_queries import const_ints

INT64_MAX = np.iinfo(np.int64).max


class RestrictError(VskipError):
    """A region could not be restricted to a subset of rows; the message says which op and why."""


class Builder:
    """Adds nodes with unique, readable names under a prefix."""

    def __init__(self, graph: gs.Graph, prefix: str):
        self.graph = graph
        self.prefix = prefix
        self.count = 0
        self.nodes_added = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"{self.prefix}/{hint}_{self.count}"

    def const(self, values, hint: str = "const") -> gs.Constant:
        return gs.Constant(self.name(hint), np.asarray(values))

    def node(self, op: str, inputs: list, attrs: dict | None = None, outputs: int = 1,
             dtypes: list | None = None) -> list[gs.Variable]:
        outs = [gs.Variable(self.name(f"{op.lower()}_out"), dtype=(dtypes or [None] * outputs)[i])
                for i in range(outputs)]
        node = gs.Node(op, name=self.name(op.lower()), attrs=dict(attrs or {}), inputs=list(inputs), outputs=outs)
        self.graph.nodes.append(node)
        self.nodes_added += 1
        return outs

    def op(self, op: str, inputs: list, attrs: dict | None = None, dtype=None) -> gs.Variable:
        return self.node(op, inputs, attrs, 1, [dtype])[0]


class RowSubset:
    """A graph input listing the rows to keep (1-D int64, ascending), with cached gathers."""

    def __init__(self, graph: gs.Graph, builder: Builder, name: str):
        self.name = name
        self.indices = gs.Variable(name, dtype=np.int64, shape=[f"{name}_count"])
        graph.inputs.append(self.indices)
        self.builder = builder
        self.count = builder.op("Shape", [self.indices], dtype=np.int64)  # [1]: n
        self._gathers: dict[tuple[int, int], gs.Variable] = {}
        self._tuples: dict[tuple, gs.Variable] = {}
        # (id of a full tensor) -> its rows, when we built the full tensor by scattering them
        self.known_rows: dict[int, gs.Variable] = {}

    def gather(self, tensor: gs.Tensor, axis: int) -> gs.Variable:
        if axis == 1 and id(tensor) in self.known_rows:
            return self.known_rows[id(tensor)]
        key = (id(tensor), axis)
        if key not in self._gathers:
            self._gathers[key] = self.builder.op("Gather", [tensor, self.indices], {"axis": axis}, tensor.dtype)
        return self._gathers[key]

    def scatter(self, full: gs.Tensor, rows: gs.Variable) -> gs.Variable:
        """``full`` [B,S,D] with its rows replaced by ``rows`` [B,n,D].

        ScatterND with (batch, row) index pairs writes whole rows; ScatterElements would
        compute an index per element and ran 4x slower on ONNX Runtime (0.32 vs 0.08 ms
        for 64 of 1088 rows of width 896).
        """
        out = self.builder.op("ScatterND", [full, self._index_tuples(full, 1), rows], dtype=full.dtype)
        out.shape = None if full.shape is None else list(full.shape)  # later layers read it
        self.known_rows[id(out)] = rows
        return out

    def scatter_along(self, full: gs.Tensor, rows: gs.Variable, axis: int) -> gs.Variable:
        """``full`` with the entries at the kept rows of axis ``axis`` replaced by ``rows``.

        For axis 1 this is ``scatter``; deeper row axes (K/V as [B, heads, S, d]) use the
        same index tuples, over every axis up to the row axis.
        """
        if axis == 1:
            return self.scatter(full, rows)
        out = self.builder.op("ScatterND", [full, self._index_tuples(full, axis), rows], dtype=full.dtype)
        out.shape = None if full.shape is None else list(full.shape)
        return out

    def _index_tuples(self, full: gs.Tensor, axis: int) -> gs.Variable:
        """[d0, .., d(axis-1), n, axis+1] int64: (i0, .., i(axis-1), row) for every kept row.

        Axis 0 is the batch, the same for every tensor of the graph; the axes between it
        and the rows (K/V heads) must be known to share the tuples between tensors.
        """
        dims = None if full.shape is None else list(full.shape)[1:axis]
        known = dims is not None and all(isinstance(d, (str, int, np.integer)) and d not in ("", -1) for d in dims)
        key = (axis, tuple(dims)) if known else (axis, id(full))
        if key in self._tuples:
            return self._tuples[key]
        b = self.builder
        i64 = lambda values, hint: b.const(np.array(values, np.int64), hint)  # noqa: E731
        shape = b.op("Shape", [full], dtype=np.int64)
        leading = b.op("Slice", [shape, i64([0], "start"), i64([axis], "end")], dtype=np.int64)
        target = b.op("Concat", [leading, self.count, i64([1], "one_dim")], {"axis": 0}, dtype=np.int64)
        parts = []
        for j in range(axis):
            size = b.op("Gather", [shape, i64(j, "axis_index")], {"axis": 0}, dtype=np.int64)  # scalar d_j
            ids = b.op("Range", [i64(0, "zero"), size, i64(1, "one")], dtype=np.int64)
            layout = [1] * j + [-1] + [1] * (axis - 1 - j) + [1, 1]
            ids = b.op("Reshape", [ids, i64(layout, "grid_shape")], dtype=np.int64)
            parts.append(b.op("Expand", [ids, target], dtype=np.int64))
        row_ids = b.op("Reshape", [self.indices, i64([1] * axis + [-1, 1], "row_shape")], dtype=np.int64)
        parts.append(b.op("Expand", [row_ids, target], dtype=np.int64))
        self._tuples[key] = b.op("Concat", parts, {"axis": -1}, dtype=np.int64)
        return self._tuples[key]


@dataclass
class Restricted:
    """The restricted version of an original tensor, and the row axis in both."""

    original: gs.Tensor
    tensor: gs.Tensor
    axis: int


def _dims(tensor: gs.Tensor):
    return None if tensor.shape is None else list(tensor.shape)


def _rank(tensor: gs.Tensor) -> int | None:
    shape = _dims(tensor)
    return None if shape is None else len(shape)


def _same_dim(a, b) -> bool:
    if a is None or b is None:
        return False
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b and a != ""
    return int(a) == int(b)


class _Clone:
    """State of one restriction: original tensor id -> restricted / recomputed tensor."""

    def __init__(self, rows: RowSubset, builder: Builder, describe: Callable[[gs.Node], str]):
        self.rows = rows
        self.b = builder
        self.describe = describe
        self.restricted: dict[int, Restricted] = {}
        self.replaced: dict[int, gs.Tensor] = {}
        # Recomputed shape values that may hold the row count (n where the source had S):
        # id -> the positions of a 1-D shape vector that do, or None for "any position".
        self.row_counts: dict[int, set[int] | None] = {}

    # -- helpers for rules ---------------------------------------------------------
    def fail(self, node: gs.Node, why: str):
        raise RestrictError(f"cannot restrict {self.describe(node)} to a subset of rows: {why}")

    def value(self, tensor: gs.Tensor) -> gs.Tensor:
        if id(tensor) in self.restricted:
            return self.restricted[id(tensor)].tensor
        return self.replaced.get(id(tensor), tensor)

    def side(self, node: gs.Node, tensor: gs.Tensor, aligned_axis: int, row_dim) -> gs.Tensor:
        """A side input whose axis ``aligned_axis`` lines up with the rows: gather, keep or refuse."""
        if aligned_axis < 0:
            return self.value(tensor)  # broadcast from a lower rank: no row axis
        dims = _dims(tensor)
        if dims is None or aligned_axis >= len(dims):
            self.fail(node, f"the shape of its input '{tensor.name}' is unknown")
        dim = dims[aligned_axis]
        if isinstance(dim, (int, np.integer)) and int(dim) == 1:
            return self.value(tensor)
        if _same_dim(dim, row_dim):
            if id(tensor) in self.replaced:
                self.fail(node, f"its input '{tensor.name}' has a row axis but was recomputed")
            return self.rows.gather(tensor, aligned_axis)
        self.fail(node, f"cannot tell whether axis {aligned_axis} of input '{tensor.name}' (size {dim!r}) "
                        f"follows the rows (size {row_dim!r})")

    def replace_entry(self, shape: gs.Tensor, index: int) -> gs.Variable:
        """A copy of the 1-D shape vector ``shape`` with entry ``index`` set to the row count."""
        b = self.b
        head = b.op("Slice", [shape, b.const(np.array([0], np.int64), "start"), b.const(np.array([index], np.int64), "end")],
                    dtype=np.int64)
        tail = b.op("Slice", [shape, b.const(np.array([index + 1], np.int64), "start"),
                              b.const(np.array([INT64_MAX], np.int64), "end")], dtype=np.int64)
        return b.op("Concat", [head, self.rows.count, tail], {"axis": 0}, dtype=np.int64)


def _elementwise(c: _Clone, node: gs.Node, r_inputs: list[Restricted]):
    if any(_dims(r.original) is None for r in r_inputs):
        c.fail(node, "the shape of its input is unknown (run shape inference on the graph)")
    offsets = {r.axis - len(_dims(r.original)) for r in r_inputs}
    if len(offsets) != 1:
        c.fail(node, "its inputs carry the rows on different broadcast axes")
    offset = offsets.pop()
    row_dim = _dims(r_inputs[0].original)[r_inputs[0].axis]
    ranks = [_rank(t) for t in node.inputs if t is not None and t.name != ""]
    if any(r is None for r in ranks):
        c.fail(node, "an input has an unknown rank")
    out_rank = max(ranks)
    inputs = []
    for tensor in node.inputs:
        if tensor is None or tensor.name == "":
            inputs.append(tensor)
        elif id(tensor) in c.restricted:
            inputs.append(c.restricted[id(tensor)].tensor)
        else:
            inputs.append(c.side(node, tensor, len(_dims(tensor)) + offset, row_dim))
    return inputs, [out_rank + offset] * len(node.outputs)


def _normalized_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _reduce_over_later_axes(c: _Clone, node: gs.Node, r: Restricted):
    """LayerNormalization / RMSNormalization / Softmax: fine while the reduced axes exclude the rows."""
    rank = len(_dims(r.original))
    default = -1 if node.op in ("Softmax", "LogSoftmax", "RMSNormalization", "LayerNormalization",
                                "SimplifiedLayerNormalization") else None
    if node.op in ("Softmax", "LogSoftmax") and c.b.graph.opset < 13:
        default = 1  # before opset 13: over every axis from ``axis`` on, default 1
    axis = _normalized_axis(int(node.attrs.get("axis", default)), rank)
    if node.op in ("Softmax", "LogSoftmax") and c.b.graph.opset >= 13:
        if axis == r.axis:
            c.fail(node, "it normalises over the row axis")
    elif axis <= r.axis:
        c.fail(node, f"it normalises over axes {axis}.. which include the row axis {r.axis}")
    inputs = [r.tensor] + [c.value(t) for t in node.inputs[1:]]
    for t in node.inputs[1:]:
        if id(t) in c.restricted:
            c.fail(node, "its scale or bias depends on the rows")
    return inputs, [r.axis] + [None] * (len(node.outputs) - 1)


def _reduce(c: _Clone, node: gs.Node, r: Restricted):
    rank = len(_dims(r.original))
    axes = node.attrs.get("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1].name:
        axes = const_ints(node.inputs[1])
        if axes is None:
            c.fail(node, "its axes are not constant")
    if not axes:
        c.fail(node, "it reduces over every axis")
    axes = [_normalized_axis(a, rank) for a in axes]
    if r.axis in axes:
        c.fail(node, "it reduces over the row axis")
    keep = int(node.attrs.get("keepdims", 1))
    out_axis = r.axis if keep else r.axis - sum(a < r.axis for a in axes)
    return [r.tensor] + [c.value(t) for t in node.inputs[1:]], [out_axis]


def _matmul(c: _Clone, node: gs.Node, r_inputs: list[Restricted]):
    a, b = node.inputs
    if id(b) in c.restricted:
        c.fail(node, "its right operand depends on the restricted rows")
    r = c.restricted[id(a)]
    rank_a, rank_b = len(_dims(r.original)), _rank(b)
    if rank_b is None:
        c.fail(node, "its right operand has an unknown rank")
    if rank_a < 2 or r.axis != rank_a - 2:
        c.fail(node, "the rows are not the left operand's second-to-last axis")
    return [r.tensor, c.value(b)], [max(rank_a, rank_b) - 2]


def _transpose(c: _Clone, node: gs.Node, r: Restricted):
    perm = list(node.attrs.get("perm", range(len(_dims(r.original)) - 1, -1, -1)))
    return [r.tensor], [perm.index(r.axis)]


def _reshape(c: _Clone, node: gs.Node, r: Restricted):
    before, after = _dims(r.original), _dims(node.outputs[0])
    if after is None or len(after) <= r.axis:
        c.fail(node, "its output shape is unknown")
    for i in range(r.axis + 1):
        if not _same_dim(before[i], after[i]):
            c.fail(node, f"it does not keep axes 0..{r.axis} (the rows and the axes before them) in place")
    if id(node.inputs[1]) in c.restricted:
        c.fail(node, "its target shape depends on the rows")
    shape = c.replace_entry(c.value(node.inputs[1]), r.axis)
    return [r.tensor, shape], [r.axis]


def _expand(c: _Clone, node: gs.Node, r: Restricted):
    rank = len(_dims(r.original))
    after = _dims(node.outputs[0])
    if after is None:
        c.fail(node, "its output shape is unknown")
    out_axis = len(after) - (rank - r.axis)
    if not _same_dim(after[out_axis], _dims(r.original)[r.axis]):
        c.fail(node, "it broadcasts the row axis")
    target = _dims(node.inputs[1])
    if target is None or len(target) != 1 or not isinstance(target[0], (int, np.integer)):
        c.fail(node, "the length of its shape input is unknown")
    # The shape vector aligns with the output from the right; it may be shorter than the output.
    entry = out_axis - (len(after) - int(target[0]))
    if entry < 0:  # the row axis comes from the input alone: the shape vector leaves it as it is
        return [r.tensor, c.value(node.inputs[1])], [out_axis]
    shape = c.replace_entry(c.value(node.inputs[1]), entry)
    return [r.tensor, shape], [out_axis]


def _axes_of(c: _Clone, node: gs.Node, index: int) -> list[int] | None:
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > index and node.inputs[index].name:
        axes = const_ints(node.inputs[index])
        if axes is None:
            c.fail(node, "its axes are not constant")
        return axes
    return None


def _unsqueeze(c: _Clone, node: gs.Node, r: Restricted):
    axes = _axes_of(c, node, 1)
    out_rank = len(_dims(r.original)) + len(axes)
    axis = r.axis
    for a in sorted(_normalized_axis(a, out_rank) for a in axes):
        if a <= axis:
            axis += 1
    return [r.tensor] + [c.value(t) for t in node.inputs[1:]], [axis]


def _squeeze(c: _Clone, node: gs.Node, r: Restricted):
    rank = len(_dims(r.original))
    axes = _axes_of(c, node, 1)
    if axes is None:
        c.fail(node, "it squeezes every size-1 axis")
    axes = [_normalized_axis(a, rank) for a in axes]
    if r.axis in axes:
        c.fail(node, "it squeezes the row axis")
    return [r.tensor] + [c.value(t) for t in node.inputs[1:]], [r.axis - sum(a < r.axis for a in axes)]


def _slice(c: _Clone, node: gs.Node, r: Restricted):
    rank = len(_dims(r.original))
    if node.inputs[0] is not r.original or any(id(t) in c.restricted for t in node.inputs[1:]):
        c.fail(node, "its bounds depend on the rows")
    if any(id(t) in c.row_counts for t in node.inputs[1:4]):
        # A bound from the row count of Shape(rows) is n where the source had S: right only
        # on the row axis, which a Slice may not cut anyway.
        c.fail(node, "its bounds come from the shape of the restricted rows")
    axes = const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else None
    if axes is None:
        c.fail(node, "its axes are not given as constants")
    if r.axis in [_normalized_axis(a, rank) for a in axes]:
        c.fail(node, "it slices the row axis")
    return [r.tensor] + [c.value(t) for t in node.inputs[1:]], [r.axis]


def _split(c: _Clone, node: gs.Node, r: Restricted):
    rank = len(_dims(r.original))
    if _normalized_axis(int(node.attrs.get("axis", 0)), rank) == r.axis:
        c.fail(node, "it splits the row axis")
    return [r.tensor] + [c.value(t) for t in node.inputs[1:]], [r.axis] * len(node.outputs)


def _concat(c: _Clone, node: gs.Node, r_inputs: list[Restricted]):
    r = r_inputs[0]
    rank = len(_dims(r.original))
    if _normalized_axis(int(node.attrs["axis"]), rank) == r.axis:
        c.fail(node, "it concatenates along the row axis")
    if any(x.axis != r.axis for x in r_inputs):
        c.fail(node, "its inputs carry the rows on different axes")
    row_dim = _dims(r.original)[r.axis]
    inputs = [c.restricted[id(t)].tensor if id(t) in c.restricted else c.side(node, t, r.axis, row_dim)
              for t in node.inputs]
    return inputs, [r.axis]


def _gather(c: _Clone, node: gs.Node, r: Restricted):
    data, indices = node.inputs
    if data is not r.original or id(indices) in c.restricted:
        c.fail(node, "its indices depend on the rows")
    rank = len(_dims(r.original))
    axis = _normalized_axis(int(node.attrs.get("axis", 0)), rank)
    if axis == r.axis:
        c.fail(node, "it gathers along the row axis")
    q = _rank(indices)
    if q is None:
        c.fail(node, "its indices have an unknown rank")
    return [r.tensor, c.value(indices)], [r.axis - 1 + q if axis < r.axis else r.axis]


def _attention(c: _Clone, node: gs.Node, r: Restricted):
    """ONNX Attention (opset 23): the query carries the rows; K, V and past stay whole."""
    if node.inputs[0] is not r.original:
        c.fail(node, "its key or value depends on the restricted rows")
    rank = len(_dims(r.original))
    if r.axis != rank - 2:
        c.fail(node, "the rows are not the query's sequence axis")
    if int(node.attrs.get("is_causal", 0)):
        c.fail(node, "is_causal=1 ties the mask to row positions; an explicit mask is needed")
    if any(t.name for t in node.inputs[4:]):
        c.fail(node, "it takes past key/value or padding inputs, which a prefill graph should not")
    if any(o.outputs for o in node.outputs[1:]):
        c.fail(node, "its present key/value or QK outputs are used")
    heads = _dims(r.original)[1] if rank == 4 else None
    key, value = (_unrepeated_kv(t, heads) or t for t in node.inputs[1:3])
    inputs = [r.tensor, c.value(key), c.value(value)]
    if len(node.inputs) > 3 and node.inputs[3].name:
        mask = node.inputs[3]
        if _dims(mask) is None:
            c.fail(node, f"the shape of its mask '{mask.name}' is unknown")
        inputs.append(c.side(node, mask, len(_dims(mask)) - 2, _dims(r.original)[r.axis]))
    return inputs, [r.axis]


def _unrepeated_kv(tensor: gs.Tensor, query_heads) -> gs.Tensor | None:
    """K or V before transformers' ``repeat_kv``, when ``tensor`` is that expansion.

    repeat_kv copies each of the kv heads [B, kv, S, d] to the query-head count with
    Unsqueeze(axis 2) -> Expand [B, kv, rep, S, d] -> Reshape [B, kv*rep, S, d]. The ONNX
    Attention op takes grouped K/V as they are (query heads a multiple of kv heads), so
    the copy, 7x the cache for Qwen2's 14/2 heads, is not needed: on ONNX Runtime a
    64-query text-row attention over 1088 keys took 1.0 ms with grouped K/V against 1.4 ms
    for Expand + Attention. Returns None when the pattern or its shapes do not match.
    """
    reshape = tensor.inputs[0] if tensor.inputs else None
    if reshape is None or reshape.op != "Reshape":
        return None
    expand = reshape.inputs[0].inputs[0] if reshape.inputs[0].inputs else None
    if expand is None or expand.op != "Expand":
        return None
    unsqueeze = expand.inputs[0].inputs[0] if expand.inputs[0].inputs else None
    if unsqueeze is None or unsqueeze.op != "Unsqueeze":
        return None
    axes = unsqueeze.attrs.get("axes") if "axes" in unsqueeze.attrs else const_ints(unsqueeze.inputs[1])
    source = unsqueeze.inputs[0]
    grouped, expanded, out = _dims(source), _dims(expand.outputs[0]), _dims(tensor)
    if list(axes or []) != [2] or grouped is None or expanded is None or out is None:
        return None
    if len(grouped) != 4 or len(expanded) != 5 or len(out) != 4:
        return None
    kv, heads = grouped[1], out[1]
    if not all(isinstance(d, (int, np.integer)) for d in (kv, heads)) or kv <= 0 or heads % kv:
        return None
    same = all(_same_dim(grouped[i], expanded[j]) for i, j in ((0, 0), (1, 1), (2, 3), (3, 4)))
    same = same and all(_same_dim(grouped[i], out[i]) for i in (0, 2, 3))
    if not same or not _same_dim(expanded[2], heads // kv) or not _same_dim(query_heads, heads):
        return None
    return source


def _rotary(c: _Clone, node: gs.Node, r: Restricted):
    """ONNX RotaryEmbedding (opset 23): rows on the sequence axis of X; the per-row angles
    (position_ids [B,S], or without them cos/sin caches [B,S,d/2]) are gathered with it."""
    if node.inputs[0] is not r.original:
        c.fail(node, "its angles depend on the restricted rows")
    rank = len(_dims(r.original))
    if r.axis != (2 if rank == 4 else 1):
        c.fail(node, "the rows are not the input's sequence axis")
    inputs = [r.tensor, c.value(node.inputs[1]), c.value(node.inputs[2])]
    if len(node.inputs) > 3 and node.inputs[3].name:
        inputs.append(c.rows.gather(node.inputs[3], 1))  # position_ids: one per row
    else:
        # without position_ids the caches are [B, S, d/2] by the op's definition
        inputs[1:3] = [c.rows.gather(t, 1) for t in node.inputs[1:3]]
    return inputs, [r.axis]


_ELEMENTWISE = {
    "Add", "Sub", "Mul", "Div", "Pow", "Sqrt", "Reciprocal", "Neg", "Sigmoid", "Tanh", "Erf", "Relu", "Exp",
    "Log", "Abs", "Cast", "CastLike", "Identity", "Where", "IsNaN", "IsInf", "Max", "Min", "Equal", "Less",
    "LessOrEqual", "Greater", "GreaterOrEqual", "And", "Or", "Not", "Xor", "Softplus", "Gelu", "HardSigmoid",
    "HardSwish", "Mod", "Clip", "Sin", "Cos", "Floor", "Ceil", "Round", "Sign", "Mish", "Elu", "LeakyRelu",
}
_SINGLE_INPUT_RULES = {
    "RMSNormalization": _reduce_over_later_axes, "LayerNormalization": _reduce_over_later_axes,
    "SimplifiedLayerNormalization": _reduce_over_later_axes,
    "Softmax": _reduce_over_later_axes, "LogSoftmax": _reduce_over_later_axes,
    "ReduceMean": _reduce, "ReduceSum": _reduce, "ReduceMax": _reduce, "ReduceMin": _reduce,
    "ReduceL2": _reduce, "ReduceSumSquare": _reduce, "ReduceProd": _reduce,
    "Transpose": _transpose, "Reshape": _reshape, "Expand": _expand, "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze, "Slice": _slice, "Split": _split, "Gather": _gather, "Attention": _attention,
    "RotaryEmbedding": _rotary,
}


# Ops that cut or shape their data input (input 0) by their other inputs.
_SHAPED_DATA = {"Slice", "Gather", "GatherElements", "Expand", "Reshape", "Tile", "Pad", "Resize", "CenterCropPad"}


def restrict_region(rows: RowSubset, builder: Builder, nodes: list[gs.Node], seeds: list[Restricted],
                    describe: Callable[[gs.Node], str] = lambda n: f"{n.op} node '{n.name}'") -> _Clone:
    """Clone ``nodes`` (in topological order) for the rows of ``rows``.

    ``seeds`` give restricted versions of tensors entering the region. Returns the clone
    state; ``state.restricted[id(t)]`` is the restricted version of an original tensor t.
    Nodes whose inputs do not depend on the seeds are left alone.
    """
    state = _Clone(rows, builder, describe)
    for seed in seeds:
        state.restricted[id(seed.original)] = seed
    for node in nodes:
        r_inputs = [state.restricted[id(t)] for t in node.inputs if t is not None and id(t) in state.restricted]
        if not r_inputs:
            if any(id(t) in state.replaced for t in node.inputs):
                # Shape arithmetic on recomputed values: clone as is. Those values count the kept
                # rows (n, where the source counted S); used on data that does not carry the
                # rows (cos[:, :S] -> cos[:, :n]) they would pick the first n positions, not the
                # kept ones: refused.
                data = node.inputs[0] if node.inputs else None
                if node.op in _SHAPED_DATA and data is not None and id(data) not in state.replaced \
                        and any(id(t) in state.row_counts for t in node.inputs[1:]):
                    state.fail(node, f"its {'bounds' if node.op == 'Slice' else 'shape or indices'} come from the "
                                     "row count of the restricted rows, but its data does not carry the rows")
                _emit(state, node, [state.value(t) for t in node.inputs], [None] * len(node.outputs))
                _track_row_counts(state, node)
            continue
        if node.op == "Shape" or node.op == "Size":
            _emit(state, node, [r_inputs[0].tensor], [None])
            _track_row_counts(state, node, r_inputs[0])
            continue
        if any(_dims(r.original) is None for r in r_inputs):
            state.fail(node, "the shape of its input is unknown (run shape inference on the graph)")
        if node.op in _ELEMENTWISE:
            inputs, axes = _elementwise(state, node, r_inputs)
        elif node.op == "MatMul":
            inputs, axes = _matmul(state, node, r_inputs)
        elif node.op == "Concat":
            inputs, axes = _concat(state, node, r_inputs)
        elif node.op in _SINGLE_INPUT_RULES:
            if len(r_inputs) != 1 or node.inputs[0] is not r_inputs[0].original:
                state.fail(node, "a non-data input depends on the rows")
            inputs, axes = _SINGLE_INPUT_RULES[node.op](state, node, r_inputs[0])
        else:
            state.fail(node, f"no row rule for op {node.op}")
        _emit(state, node, inputs, axes)
    return state


def _track_row_counts(state: _Clone, node: gs.Node, shaped: Restricted | None = None) -> None:
    """Follow the row count through shape arithmetic: Shape of restricted rows holds it at
    the row axis; Gather / Slice of a shape vector with constant indices keep only the
    positions they pick; any other op on a value holding it may hold it anywhere."""
    out = node.outputs[0] if node.outputs else None
    if out is None:
        return
    if shaped is not None:  # Shape / Size of the restricted rows
        rank = _rank(shaped.original)
        if node.op == "Size" or rank is None:
            state.row_counts[id(out)] = None
            return
        start = _normalized_axis(int(node.attrs.get("start", 0)), rank)
        end = _normalized_axis(int(node.attrs.get("end", rank)), rank) if "end" in node.attrs else rank
        if start <= shaped.axis < end:
            state.row_counts[id(out)] = {shaped.axis - start}
        return
    data = node.inputs[0] if node.inputs else None
    if data is None or id(data) not in state.row_counts:
        if any(id(t) in state.row_counts for t in node.inputs if t is not None):
            state.row_counts[id(out)] = None
        return
    positions, length = state.row_counts[id(data)], _vector_length(data)
    if positions is not None and length is not None and node.op in ("Gather", "Slice"):
        picked = _picked(node, length)
        if picked is not None:
            kept = {i for i, p in enumerate(picked) if p in positions}
            if kept:
                state.row_counts[id(out)] = kept if _rank(out) == 1 or node.op == "Slice" else None
            return
    state.row_counts[id(out)] = None


def _vector_length(tensor: gs.Tensor) -> int | None:
    dims = _dims(tensor)
    if dims is None or len(dims) != 1 or not isinstance(dims[0], (int, np.integer)):
        return None
    return int(dims[0])


def _picked(node: gs.Node, length: int) -> list[int] | None:
    """The positions of a 1-D vector of ``length`` that a Gather (axis 0) or a Slice (step 1,
    axis 0) with constant indices takes, in order; None where they are not constant."""
    if node.op == "Gather":
        if int(node.attrs.get("axis", 0)) != 0:
            return None
        indices = const_ints(node.inputs[1])
        return None if indices is None else [i + length if i < 0 else i for i in indices]
    starts, ends = const_ints(node.inputs[1]), const_ints(node.inputs[2])
    axes = const_ints(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3].name else [0]
    steps = const_ints(node.inputs[4]) if len(node.inputs) > 4 and node.inputs[4].name else [1]
    if None in (starts, ends, axes, steps) or axes not in ([0], [-1]) or steps != [1]:
        return None
    return list(range(length))[slice(starts[0], ends[0])]


def _emit(state: _Clone, node: gs.Node, inputs: list, axes: list[int | None]) -> None:
    outputs = [o for o in node.outputs]
    if node.op == "Attention":
        outputs = outputs[:1]  # present K/V and QK outputs were checked unused
    new = state.b.node(node.op, inputs, node.attrs, len(outputs), [o.dtype for o in outputs])
    for original, clone, axis in zip(outputs, new, axes):
        if axis is None:
            state.replaced[id(original)] = clone
        else:
            state.restricted[id(original)] = Restricted(original, clone, axis)
