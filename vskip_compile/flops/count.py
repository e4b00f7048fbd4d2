"""Count the matrix-product FLOPs of one prefill of a decoder graph, from its shapes.

What is counted: the matrix products, i.e. every ``MatMul``, ``Gemm`` and ONNX
``Attention`` node, at 2 FLOPs per multiply-add, with the shapes the graph really has for
one prompt layout::

    rows:  [ prefix text ][ visual block (V rows) ][ suffix text ]     S rows in all

Elementwise ops, norms, Softmax, RoPE arithmetic, Gather/Scatter are not counted (they are
O(S x d), against O(S x d^2) for the products). Attention products are counted as the
graph computes them: the full S x S scores and probabilities (masked entries included,
since a causal mask removes no work from a MatMul); after skipping, n_q x S.

How the rows are known. The graph's symbolic input dims are fixed (batch B, sequence S,
and, for a compiled graph, the row inputs ``vskip_text_rows`` = S - V rows and
``vskip_suffix_rows`` = the suffix), then shapes are inferred
(:class:`vskip_compile.core.shapes.InferredShapes`: ONNX shape inference with data
propagation; ONNX Runtime's symbolic shape inference for what that leaves unknown), so
every count is exact for that layout. Weights are never read: only initializer dims.

Which layer and role each node has: :mod:`vskip_compile.flops.attribute`.

Row classes. A node's FLOPs are proportional to its query rows r (per batch row). r = S:
the V visual rows' share is V/S of the FLOPs; r = the live text rows or the suffix: all
text. Anything else is refused. Attention products are attributed by query row.

Does not handle (raises ``FlopsError``): Einsum/Conv/quantized or contrib matrix ops,
matrix ops inside If/Loop/Scan subgraphs, shapes that stay unknown after inference (pass
``dims``), exports that output intermediate hidden states (their FFN projections would look
like an LM head).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..core.graph_io import load_graph, recorded_causal_blocks, recorded_plan, recorded_routable
from ..core.hidden_states import hidden_state_layer
from ..core.plan import Plan, Rows
from ..core.routing import attention_rows_input, ffn_rows_input
from ..core.shapes import InferredShapes, ShapeInferenceError
from ..core.visual_rows import SUFFIX_ROWS, TEXT_ROWS, live_mask
from ..passes.graph_queries import import_graph
from .attribute import COUNTED, attribute, where
from .report import FlopsError, FlopsReport, LayerFlops, NodeFlops

# Matrix ops we cannot count from shapes alone, or whose semantics we do not model.
REFUSED = {"Einsum", "Conv", "ConvTranspose", "MatMulInteger", "QLinearMatMul", "QLinearConv",
           "MatMulNBits", "GroupQueryAttention", "MultiHeadAttention", "PackedAttention", "FusedMatMul"}
# A weight larger than this is never copied for shape inference (its dims are enough).
_SMALL_INITIALIZER = 4096
_ABSENT = "vskip-flops-weights-not-read"
# vskip's exporter names Qwen3-VL's DeepStack visual axis so (models/export.py).
_VISUAL_DIM = "visual_rows"
PRODUCT_ROLES = ("qk", "pv")


def mask_layout(visual: np.ndarray) -> dict[str, int]:
    """:func:`count_flops`' layout arguments for a visual-row mask [S]: ``sequence_length``
    S, ``visual_rows`` V = its True rows, ``suffix_rows`` = the rows after the last visual
    one (all S without visual rows). Where the visual rows sit otherwise does not change a
    count (module docstring)."""
    visual = np.asarray(visual, dtype=bool)
    if visual.ndim != 1:
        raise FlopsError(f"the visual-row mask must be one row per position [S], got shape {visual.shape}")
    return {"sequence_length": int(visual.size), "visual_rows": int(visual.sum()),
            "suffix_rows": int(live_mask(Rows.SUFFIX, visual).sum())}


def count_flops(model: onnx.ModelProto | str | Path, sequence_length: int, visual_rows: int, batch: int = 1,
                suffix_rows: int | None = None, dims: dict[str, int] | None = None,
                source: str | None = None, plan: Plan | None = None) -> FlopsReport:
    """Count the matrix-product FLOPs of one prefill of ``model``.

    The prompt is ``sequence_length`` rows: a text prefix, one contiguous block of
    ``visual_rows`` visual rows, and ``suffix_rows`` text rows after it (default: every
    text row, i.e. no prefix). Only ``freeze`` layers with freeze scope
    ``prefix_through_visual`` depend on where the block sits. ``dims`` fixes any other
    symbolic input dim by name. ``model`` may be a path (weights are not loaded) or a
    ModelProto with or without its weights; ``source`` names the file a ModelProto was read
    from (the report's ``source``; a path names itself).

    A compiled graph's recorded plan labels the report (``plan``); a damaged record is
    refused (:func:`vskip_compile.core.graph_io.recorded_plan`). A routable graph
    (``vskip-compile --routable``) computes what the plan it is fed says: ``plan`` is then
    required, and each layer's row inputs count the rows that plan feeds it (every row,
    the text rows or the suffix, as :func:`vskip_compile.core.routing.routing_feeds`).
    """
    S, V, B = int(sequence_length), int(visual_rows), int(batch)
    if S < 1 or B < 1:
        raise FlopsError(f"sequence_length ({S}) and batch ({B}) must be positive")
    if not 0 <= V < S:
        raise FlopsError(f"visual_rows must be in [0, sequence_length): got {V} of {S} (at least one text row)")
    U = S - V if suffix_rows is None else int(suffix_rows)
    if not 0 <= U <= S - V:
        raise FlopsError(f"suffix_rows must be in [0, {S - V}] (the text rows): got {U}")
    if not isinstance(model, onnx.ModelProto):
        source = str(model)
        model = load_graph(source, weights_needed=False)
    if recorded_causal_blocks(model, source or "graph"):
        raise FlopsError(f"{source or 'the graph'} was compiled with --causal-blocks, whose query chunks the FLOPs "
                         "counter does not count yet; count the graph compiled without it (the same products, "
                         "less the chunks' skipped keys)")
    routable = recorded_routable(model, source or "graph")
    routed: dict[str, int] = {}
    if routable is not None:
        if plan is None:
            raise FlopsError(f"{source or 'the graph'} is routable: its FLOPs are those of the plan it is fed; pass "
                             "the plan (vskip flops --plan PLAN.json)")
        if plan.num_layers != routable["num_layers"]:
            raise FlopsError(f"the plan has {plan.num_layers} layers but the routable graph has "
                             f"{routable['num_layers']}")
        counts = {Rows.ALL: S, Rows.TEXT: S - V, Rows.SUFFIX: U}
        for layer in range(plan.num_layers):
            attention, ffn = plan.live_rows(layer)
            routed[attention_rows_input(layer)] = counts[attention]
            routed[ffn_rows_input(layer)] = counts[ffn]
    elif plan is not None:
        raise FlopsError(f"{source or 'the graph'} is not routable: a static graph computes the plan it was compiled "
                         "with (recorded in it); drop the plan")
    if any(hidden_state_layer(o.name) is not None for o in model.graph.output):
        # The last layer's FFN, read by an output, would pass for the LM head.
        raise FlopsError(f"{source or 'the graph'} outputs per-layer hidden states (vskip-compile --hidden-states), "
                         "which the FLOPs counter cannot tell from the LM head; count the graph compiled without "
                         "--hidden-states (the same products)")
    stripped = _shapes_only(model)
    _fix_input_dims(stripped, B, S, V, U, dims or {}, routed)
    graph = import_graph(stripped)
    graph.toposort()
    _refuse_unknown_matrix_ops(stripped.graph)
    shapes = _Shapes(stripped, graph)
    roles = attribute(graph)
    live = {S - V, U}  # row counts of the row subsets a compiled graph computes on
    layers = [LayerFlops(i) for i in range(1 + max((r[0] for r in roles.values() if r[0] is not None),
                                                     default=-1))]
    plan = plan if routable is not None else recorded_plan(model, source or "graph")
    report = FlopsReport(S, V, S - V - U, U, B, layers, plan=None if plan is None else [a.value for a in plan.actions],
                         source=source)
    for node in graph.nodes:
        if node.op not in COUNTED:
            continue
        layer, role = roles.get(id(node), (None, "other"))
        for part_role, flops, rows in _node_flops(node, shapes, B, role):
            if rows == S:
                visual = flops * V // S  # flops is a multiple of S: exact
            elif rows in live:
                visual = 0
            elif layer is None:
                visual = 0  # outside the layers (LM head on the last row): not split by row class
            else:
                raise FlopsError(f"{where(node)} (layer {layer}, {part_role}) computes {rows} rows per batch row: "
                                 f"neither the sequence ({S}) nor a live row subset ({sorted(live)})")
            report.nodes.append(NodeFlops(node.name, node.op, layer, part_role, flops, rows, visual))
            if layer is None:
                if part_role == "head":
                    report.head += flops
                else:
                    report.other += flops
                continue
            entry = layers[layer]
            setattr(entry, part_role, getattr(entry, part_role) + flops)
            entry.visual += visual
            entry.text += flops - visual
    return report


# ---- the graph copy that shape inference works on

def _shapes_only(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` whose large weights are dims only (never read, never copied).

    Small external tensors (shape constants, should an exporter put them there) were read
    into the graph by :func:`vskip_compile.core.graph_io.load_graph`: shape inference needs them.
    """
    copy = onnx.ModelProto()
    for name in ("ir_version", "producer_name", "producer_version", "domain", "model_version"):
        setattr(copy, name, getattr(model, name))
    copy.opset_import.extend(model.opset_import)
    copy.functions.extend(model.functions)
    copy.metadata_props.extend(model.metadata_props)
    g, src = copy.graph, model.graph
    g.name = src.name
    g.node.extend(src.node)
    g.input.extend(src.input)
    g.output.extend(src.output)
    g.sparse_initializer.extend(src.sparse_initializer)
    for tensor in src.initializer:
        small = int(np.prod(tensor.dims)) <= _SMALL_INITIALIZER
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            g.initializer.append(tensor)  # small constants were read in by load_graph
            continue
        if small:
            g.initializer.append(tensor)
            continue
        # The dims are all shape inference and the walks need; the data stays behind.
        absent = g.initializer.add()
        absent.name, absent.data_type = tensor.name, tensor.data_type
        absent.dims.extend(tensor.dims)
        absent.data_location = onnx.TensorProto.EXTERNAL
        entry = absent.external_data.add()
        entry.key, entry.value = "location", _ABSENT
    return copy


def _fix_input_dims(model: onnx.ModelProto, B: int, S: int, V: int, U: int, dims: dict[str, int],
                    routed: dict[str, int] | None = None) -> None:
    """Replace every symbolic graph-input dim by its value for this layout (``routed``: a
    routable graph's row inputs and the rows each is fed)."""
    values = {_VISUAL_DIM: V, **{k: int(v) for k, v in dims.items()}}
    inputs = [i for i in model.graph.input if i.type.HasField("tensor_type")]
    # Batch and sequence: axes 0 and 1 of the stream input, a [batch, sequence, hidden] float
    # input (inputs_embeds; DeepStack's [3, visual_rows, hidden] has a fixed axis 0) or, failing
    # that, the first rank-2 integer input (input_ids).
    stream = next((i for i in inputs if _rank(i) == 3 and _is_float(i) and not _fixed(i, 0)), None) or \
        next((i for i in inputs if _rank(i) == 3 and _is_float(i)), None) or \
        next((i for i in inputs if _rank(i) == 2 and not _is_float(i)), None)
    if stream is None:
        raise FlopsError("no stream input found: expected a [batch, sequence, hidden] float input "
                         "(inputs_embeds) or a [batch, sequence] integer input (input_ids)")
    for axis, value, what in ((0, B, "batch"), (1, S, "sequence_length")):
        dim = stream.type.tensor_type.shape.dim[axis]
        if dim.HasField("dim_value"):
            if dim.dim_value != value:
                raise FlopsError(f"input {stream.name!r} has a fixed {what} of {dim.dim_value}, not {value}")
        elif dim.dim_param:
            values.setdefault(dim.dim_param, value)
    row_counts = {TEXT_ROWS: S - V, SUFFIX_ROWS: U, **(routed or {})}
    unknown = set()
    for tensor in inputs:
        for axis, dim in enumerate(tensor.type.tensor_type.shape.dim):
            if dim.HasField("dim_value"):
                continue
            if tensor.name in row_counts and axis == 0:
                value = row_counts[tensor.name]
            elif dim.dim_param in values:
                value = values[dim.dim_param]
            else:
                unknown.add(f"{tensor.name}[{axis}] ({dim.dim_param or 'unnamed'})")
                continue
            dim.Clear()
            dim.dim_value = value
    if unknown:
        raise FlopsError(f"cannot tell the size of input dims {', '.join(sorted(unknown))}. "
                         "To fix this, pass dims={'<dim name>': size}.")
    del model.graph.value_info[:]  # stale symbolic shapes would only compete with the inferred ones


def _rank(value_info) -> int:
    return len(value_info.type.tensor_type.shape.dim)


def _fixed(value_info, axis: int) -> bool:
    return value_info.type.tensor_type.shape.dim[axis].HasField("dim_value")


def _is_float(value_info) -> bool:
    return value_info.type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                                     onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)


def _refuse_unknown_matrix_ops(graph: onnx.GraphProto) -> None:
    def scan(g: onnx.GraphProto, nested: bool):
        for node in g.node:
            if node.op_type in REFUSED or (node.domain not in ("", "ai.onnx") and node.op_type == "Attention"):
                raise FlopsError(f"{node.op_type} node {node.name!r} ({node.domain or 'ai.onnx'}): this matrix "
                                 "op is not counted; export without fusions or quantization")
            if nested and node.op_type in COUNTED:
                raise FlopsError(f"{node.op_type} node {node.name!r} is inside a subgraph (If/Loop/Scan), whose "
                                 "trip count is unknown from shapes")
            for attr in node.attribute:
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    scan(sub, True)
    scan(graph, False)


class _Shapes:
    """Concrete tensor shapes for the count: :class:`InferredShapes` with the constants' dims."""

    def __init__(self, model: onnx.ModelProto, graph: gs.Graph):
        exact = {t.name: tuple(int(d) for d in t.shape) for t in graph.tensors().values()
                 if isinstance(t, gs.Constant)}
        try:
            self.inferred = InferredShapes(model, exact)
        except ShapeInferenceError as exc:
            raise FlopsError(str(exc)) from None

    def get(self, tensor: gs.Tensor, node: gs.Node) -> tuple[int, ...]:
        shape = self.inferred.get(tensor.name)
        if shape is None or None in shape:
            raise FlopsError(f"{where(node)}: the shape of its input {tensor.name!r} is unknown after shape "
                             f"inference ({shape}); fix the remaining symbolic input dims with dims={{...}}")
        return shape


# ---- FLOPs of one node

def _matmul_flops(a: tuple, b: tuple) -> int:
    """2 * (broadcast batch) * M * K * N for numpy-style MatMul shapes."""
    a = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a[-1] != b[-2]:
        raise FlopsError(f"MatMul shapes {a} x {b} do not agree")
    batch = np.broadcast_shapes(a[:-2], b[:-2])
    return 2 * int(np.prod(batch, dtype=np.int64)) * a[-2] * a[-1] * b[-1]


def _node_flops(node: gs.Node, shapes: _Shapes, B: int, role: str) -> list[tuple[str, int, int]]:
    """[(role, FLOPs, query rows per batch row)] for one counted node."""
    if node.op == "Attention":
        return _attention_flops(node, shapes)
    a, b = shapes.get(node.inputs[0], node), shapes.get(node.inputs[1], node)
    if node.op == "Gemm":
        a = a[::-1] if node.attrs.get("transA", 0) else a
        b = b[::-1] if node.attrs.get("transB", 0) else b
    flops = _matmul_flops(a, b)
    if role in PRODUCT_ROLES:
        rows = a[-2]  # [B, H, queries, .]
    else:
        rows = int(np.prod(a[:-1], dtype=np.int64)) // B  # [B, rows, d] or [B*rows, d]
    return [(role, flops, rows)]


def _attention_flops(node: gs.Node, shapes: _Shapes) -> list[tuple[str, int, int]]:
    """ONNX Attention (opset 23): Q [B,Hq,Sq,dh] or [B,Sq,Hq*dh]; K, V likewise with Hkv; past
    K/V (inputs 4, 5) prepend their rows. Every head scores every key: 2*B*Hq*Sq*Skv*(dh + dv)."""
    q, k, v = (shapes.get(t, node) for t in node.inputs[:3])
    past = node.inputs[4] if len(node.inputs) > 4 and node.inputs[4].name else None
    if len(q) == 4:
        batch, heads, queries, dh = q
        keys, dv = k[2], v[3]
        past_rows = shapes.get(past, node)[2] if past is not None else 0
    else:
        heads, kv_heads = int(node.attrs.get("q_num_heads", 0)), int(node.attrs.get("kv_num_heads", 0))
        if not heads or not kv_heads:
            raise FlopsError(f"{where(node)}: 3-D inputs without q_num_heads/kv_num_heads")
        batch, queries, dh = q[0], q[1], q[2] // heads
        keys, dv = k[1], v[2] // kv_heads
        past_rows = shapes.get(past, node)[2] if past is not None else 0
    keys += past_rows
    scale = 2 * batch * heads * queries * keys
    return [("qk", scale * dh, queries), ("pv", scale * dv, queries)]
