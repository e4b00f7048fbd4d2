"""Causal blocking: a full-query attention core cut into query chunks that skip the keys
no query of the chunk can see.

With a causal mask, query row i sees keys j <= i only. Cutting the S query rows into N
chunks [a_c, b_c), chunk c needs the keys [0, b_c) only::

    before:  O = Attn(Q, K, V, M)                             S x S scores
    after:   O_c = Attn(Q[a_c:b_c], K[:b_c], V[:b_c], M[a_c:b_c, :b_c])   for c = 1..N
             O = Concat(O_1, ..., O_N)                        (1 + ... + N) / N^2 of them

(N = 4: 62.5% of the scores and products). ONNX Runtime's CPU kernels have no causal
flash kernel, so this is where its attention loses to PyTorch's (docs/benchmarks.md);
the bounds are computed from the run's sequence length, so the graph stays dynamic.

Exact where the mask provably hides every key j > i: then a chunk's dropped keys had
probability exactly zero, and every other row sees the same scores. This pass proves it
by structure, never by names: the mask must be built as

    causal:  LessOrEqual(key index, query index)  or  GreaterOrEqual(query index, key index)
             where both indices are one increasing Range (start and step constants, step
             > 0) unsqueezed onto the last axis (keys) and the next-to-last (queries);
    bool:    causal, or And(bool, anything), or Expand / Identity of a bool;
    float:   Where(bool, 0, fill) of a bool, fill -inf or <= -1e30 (an additive mask);

which is how PyTorch's exporter writes transformers' causal-and-padding mask at both
opsets. Masks that are graph inputs (Gemma3's, bidirectional inside an image), offsets
of a KV cache or anything else are not proven and their layers are left as they are. A
query row that sees no key at all (left padding) is padding: its output is not part of
the contract (its softmax is NaN, or uniform over the keys a kernel was given, so it can
differ), and no other row reads it (its key and value rows are masked for every query).

Which cores: layers whose attention keeps every query row (``Rows.ALL`` under the plan;
the skip pass has already restricted the others, whose few query rows gain nothing).
An ``Attention`` node is blocked when it has no past inputs, ``is_causal`` 0 and 4-D
inputs; a decomposed core when every node between its two products is row-wise along
the queries and column-wise along the keys (elementwise ops, a last-axis Softmax).

Opt-in (``vskip-compile --causal-blocks N``): a CPU optimization, measured on ONNX
Runtime only, whose graphs the FLOPs counter does not count.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from vskip_compile.core.errors import VskipError
from vskip_compile.core.plan import Plan, Rows

from .graph_queries import AttentionCore, const_ints, const_values, given, producer
from .locate import DecoderStructure
from .pipeline import LayerChange, PassReport
from .rows import Builder

MAX_BLOCKS = 64
# An additive mask hides a key with -inf or a fill at most this (PyTorch's exporter writes
# float32's lowest): exp(score + fill - row max) is then exactly 0 for any |score| < 1e29.
HIDDEN = -1e30
MAX_MASK_DEPTH = 12           # nodes from a mask back to its index comparison
# Between the two products of a decomposed core: ops that act on each (query, key) entry
# on its own, so cutting rows and dropping key columns commutes with them.
ENTRYWISE = {"Add", "Sub", "Mul", "Div", "Where", "Cast", "Identity", "IsNaN", "Tanh", "Dropout"}


def check_blocks(blocks: int) -> int:
    """``blocks`` if it is 0 (off) or a chunk count in 2-MAX_BLOCKS, else one line on what is."""
    if type(blocks) is not int or not (blocks == 0 or 2 <= blocks <= MAX_BLOCKS):
        raise VskipError(f"--causal-blocks must be 0 (off) or an integer in 2-{MAX_BLOCKS}, got {blocks}")
    return blocks


class CausalBlocks:
    """The pass (see the module docstring); ``blocks`` query chunks per blocked core."""

    name = "causal_blocks"

    def __init__(self, blocks: int):
        if check_blocks(blocks) == 0:
            raise ValueError("CausalBlocks(0): 0 means no causal blocking; leave the pass out")
        self.blocks = blocks

    def run(self, structure: DecoderStructure, plan: Plan) -> PassReport:
        report = PassReport(self.name)
        if structure.graph.opset < 15:   # Shape's start / end attributes
            report.skipped = [(layer.index, f"opset {structure.graph.opset} < 15") for layer in structure.layers]
            return report
        builder = Builder(structure.graph, "vskip_blocks")
        for layer in structure.layers:
            if plan.live_rows(layer.index)[0] is not Rows.ALL:
                continue
            before = builder.nodes_added
            reason = block_core(builder, layer.attention, self.blocks)
            if reason is None:
                report.layers.append(LayerChange(layer.index, plan.actions[layer.index], "-",
                                                 builder.nodes_added - before, f"{self.blocks} causal blocks"))
            else:
                report.skipped.append((layer.index, reason))
        if report.changed:
            structure.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return report


# ----------------------------------------------------------------------------- the proof

def proves_causal(mask) -> bool:
    """True when ``mask`` (bool, or additive float) hides every key j > query i (above)."""
    return _causal_bool(mask, 0) or _causal_additive(mask)


def _causal_additive(mask) -> bool:
    node = producer(mask)
    if node is None or node.op != "Where":
        return False
    _, keep, hide = node.inputs
    keep_value, hide_value = _scalar(keep), _scalar(hide)
    return (keep_value == 0.0 and hide_value is not None and hide_value <= HIDDEN
            and _causal_bool(node.inputs[0], 1))


def _causal_bool(mask, depth: int) -> bool:
    node = producer(mask)
    if node is None or depth > MAX_MASK_DEPTH:
        return False
    if node.op == "And":
        return any(_causal_bool(t, depth + 1) for t in node.inputs)
    if node.op in ("Expand", "Identity"):
        return _causal_bool(node.inputs[0], depth + 1)
    if node.op in ("LessOrEqual", "GreaterOrEqual"):
        keys, queries = node.inputs if node.op == "LessOrEqual" else node.inputs[::-1]
        key_index, query_index = _range_axis(keys), _range_axis(queries)
        return (key_index is not None and query_index is not None and key_index[0] is query_index[0]
                and key_index[1] == -1 and query_index[1] == -2)
    return False


def _range_axis(tensor) -> tuple[gs.Node, int] | None:
    """(Range node, the axis from the end its values run along) for an increasing Range
    with constant start and step, unsqueezed into a tensor of ones elsewhere."""
    inserted: list[list[int]] = []
    node = producer(tensor)
    while node is not None and node.op == "Unsqueeze":
        axes = const_ints(node.inputs[1]) if len(node.inputs) > 1 else list(node.attrs.get("axes", []))
        if axes is None:
            return None
        inserted.append(axes)
        node = producer(node.inputs[0])
    if node is None or node.op != "Range":
        return None
    start, step = _scalar(node.inputs[0]), _scalar(node.inputs[2])
    if start is None or step is None or not step > 0:
        return None
    rank, position = 1, 0                       # the Range's one axis, as Unsqueezes add axes
    for axes in reversed(inserted):
        rank += len(axes)
        for axis in sorted(a % rank for a in axes):
            if axis <= position:
                position += 1
    return node, position - rank


def _scalar(tensor) -> float | None:
    values = const_values(tensor)
    return float(values.reshape(-1)[0]) if values is not None and values.size == 1 else None


# ----------------------------------------------------------------------------- the rewrite

def block_core(b: Builder, core: AttentionCore, blocks: int) -> str | None:
    """Block ``core`` in place; returns why not (one phrase) when it cannot be."""
    if not core.masks:
        return "no mask"
    if not all(_rank(m) is not None and _rank(m) >= 2 and _dim(m, -2) != 1 for m in core.masks):
        return "a mask without a query axis"
    if not all(proves_causal(m) for m in core.masks):
        return "the mask is not provably causal"
    if core.kind == "attention_op":
        node = core.nodes[0]
        if len(node.inputs) != 4 or node.attrs.get("is_causal", 0) or _rank(core.query) != 4:
            return "an Attention node with past inputs, is_causal or 3-D inputs"
        if any(out.outputs for out in node.outputs[1:]):
            return "an Attention node whose extra outputs are used"
        chain, key_axis = [node], -2
    else:
        chain, key_axis = core.nodes[:core.nodes.index(_pv(core)) + 1], -1
        inner = chain[1:-1]
        if any(n.op not in ENTRYWISE and not _last_axis_softmax(n) for n in inner):
            return "an op between the products that is not entry-wise"
    bounds = _bounds(b, core.query, blocks)
    zero, one = bounds[0], b.const(np.array([1], np.int64), "one")
    pieces = []
    for c in range(blocks):
        start, end = bounds[c], bounds[c + 1]
        if core.kind == "attention_op":
            # ONNX Runtime's Attention refuses zero query rows, and a prompt shorter than N
            # has empty chunks: such a chunk computes one row (keys up to it) and drops it.
            end = b.op("Max", [end, one], dtype=np.int64)
            start = b.op("Min", [start, b.op("Sub", [end, one], dtype=np.int64)], dtype=np.int64)
        sliced = {id(core.query): _slice(b, core.query, [start], [end], [-2]),
                  id(core.key): _slice(b, core.key, [zero], [end], [key_axis]),
                  id(core.value): _slice(b, core.value, [zero], [end], [-2])}
        for mask in core.masks:
            sliced[id(mask)] = _slice(b, mask, [start, zero], [end, end], [-2, -1])
        piece = _clone_chain(b, chain, sliced)
        if core.kind == "attention_op":
            piece = _slice(b, piece, [b.op("Sub", [bounds[c], start], dtype=np.int64)],
                           [b.op("Sub", [bounds[c + 1], start], dtype=np.int64)], [-2])
        pieces.append(piece)
    output = chain[-1].outputs[0]
    chain[-1].outputs = [gs.Variable(b.name("unblocked"), dtype=output.dtype)]   # dead: cleanup removes it
    concat = gs.Node("Concat", name=b.name("concat"), attrs={"axis": -2}, inputs=pieces, outputs=[output])
    b.graph.nodes.append(concat)
    b.nodes_added += 1
    return None


def _bounds(b: Builder, query, blocks: int) -> list:
    """[0, S/N, 2S/N, ..., S] as [1]-shaped int64 tensors, S the query rows of this run."""
    rows = b.op("Shape", [query], {"start": -2, "end": -1}, dtype=np.int64)
    bounds = [b.const(np.array([0], np.int64), "zero")]
    for c in range(1, blocks):
        scaled = b.op("Mul", [rows, b.const(np.array([c], np.int64), "chunk")], dtype=np.int64)
        bounds.append(b.op("Div", [scaled, b.const(np.array([blocks], np.int64), "blocks")], dtype=np.int64))
    bounds.append(rows)
    return bounds


def _slice(b: Builder, tensor, starts: list, ends: list, axes: list[int]):
    starts_t = starts[0] if len(starts) == 1 else b.op("Concat", starts, {"axis": 0}, dtype=np.int64)
    ends_t = ends[0] if len(ends) == 1 else b.op("Concat", ends, {"axis": 0}, dtype=np.int64)
    return b.op("Slice", [tensor, starts_t, ends_t, b.const(np.array(axes, np.int64), "axes")], dtype=tensor.dtype)


def _clone_chain(b: Builder, chain: list[gs.Node], sliced: dict) -> gs.Variable:
    """The chain's nodes again over the sliced inputs; returns the last node's output."""
    current = dict(sliced)
    last = None
    for node in chain:
        inputs = [current.get(id(t), t) for t in node.inputs]
        outputs = b.node(node.op, inputs, dict(node.attrs), len(node.outputs), [o.dtype for o in node.outputs])
        for old, new in zip(node.outputs, outputs):
            current[id(old)] = new
        last = outputs[0]
    return last


def _pv(core: AttentionCore) -> gs.Node:
    return next(n for n in core.nodes[1:] if n.op == "MatMul" and n.inputs[1] is core.value)


def _last_axis_softmax(node: gs.Node) -> bool:
    if node.op != "Softmax":
        return False
    rank = _rank(node.inputs[0])
    axis = node.attrs.get("axis", -1)
    return axis == -1 or (rank is not None and axis == rank - 1)


def _rank(tensor) -> int | None:
    shape = getattr(tensor, "shape", None)
    return None if shape is None else len(shape)


def _dim(tensor, axis: int):
    return tensor.shape[axis] if given(tensor) and tensor.shape is not None else None
